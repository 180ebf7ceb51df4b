"""What is kept of a clicker: addresses truncated before they are stored."""

from __future__ import annotations

import ipaddress

#: Prefix lengths kept of an address: the network, not the host.
IPV4_PREFIX = 24
IPV6_PREFIX = 48


def anonymize_ip(address: str | None) -> str | None:
    """``address`` with its host part zeroed (IPv4 /24, IPv6 /48); None for None or garbage."""
    if not address:
        return None
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = IPV4_PREFIX if ip.version == 4 else IPV6_PREFIX
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False).network_address)
