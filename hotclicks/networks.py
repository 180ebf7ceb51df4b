"""Named client networks: which published list of scanners, image proxies or relays an address is in.

Link scanners and image proxies often say nothing in their user agent, but they come from
networks their operators publish. Each list is a small text file::

    # name: microsoft-eop
    # kind: scanner
    # source: https://endpoints.office.com/endpoints/worldwide
    # retrieved: 2023-07-31
    # note: why this list, where it was taken from (several note lines are joined)
    40.107.0.0/16
    2a01:111:f403::/48

The lists HotClicks ships live in ``hotclicks/data/networks/``; an operator's directory of files
in the same format replaces shipped lists of the same name and adds others.

:class:`NetworkIndex` flattens every prefix of every list, per address family, into sorted
disjoint integer ranges, so a lookup is one :func:`bisect.bisect_right`, never a scan of the
prefixes. Where lists overlap, **the most
specific prefix wins** (a /24 of one list inside a /16 of another answers for the /24); the same
prefix in two lists answers for the list given first.

Nothing here imports Flask or SQLAlchemy; reading and copying the files is the only I/O.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import re
import shutil
import socket
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Union

from .errors import ConfigurationError, HotClicksError

__all__ = [
    "KINDS",
    "KIND_APPLE_RELAY",
    "KIND_IMAGE_PROXY",
    "KIND_SCANNER",
    "InvalidNetworkList",
    "NetworkIndex",
    "NetworkList",
    "NetworkMatch",
    "check",
    "combine",
    "install_list",
    "load_lists",
    "network_index",
    "parse_list",
    "read_list",
    "remove_list",
    "shipped_lists",
]

#: A link scanner or security gateway: it follows links nobody clicked.
KIND_SCANNER = "scanner"
#: A mail provider's image proxy: it loads pixels whether or not anyone reads the message.
KIND_IMAGE_PROXY = "image-proxy"
#: Apple's relays (iCloud Private Relay, Mail Privacy Protection): a person or a machine.
KIND_APPLE_RELAY = "apple-relay"
#: Every kind a list may have.
KINDS = (KIND_SCANNER, KIND_IMAGE_PROXY, KIND_APPLE_RELAY)

#: The file name suffix of a network list.
SUFFIX = ".txt"

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_HEADER = re.compile(r"^#\s*([a-z]+)\s*:\s*(.*?)\s*$")
_REQUIRED = ("name", "kind", "source", "retrieved")
#: The upper 96 bits of an IPv4-mapped IPv6 address (``::ffff:192.0.2.1``).
_MAPPED = 0xFFFF


class InvalidNetworkList(ConfigurationError):
    """A network list file cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class NetworkList:
    """One named list of networks, as read from its file."""

    name: str
    kind: str
    #: Where the original publisher publishes the data (a URL).
    source: str
    #: When the data was taken from the publisher.
    retrieved: dt.date
    note: str
    networks: tuple[Network, ...]


@dataclass(frozen=True, slots=True)
class NetworkMatch:
    """The list an address belongs to."""

    name: str
    kind: str


def parse_list(text: str, *, origin: str = "<string>") -> NetworkList:
    """Read a network list from its text; ``origin`` (a file name) starts every error message."""
    header: dict[str, str] = {}
    notes: list[str] = []
    networks: list[Network] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            found = _HEADER.match(line)
            if found and not networks:  # header lines come first; later comments are comments
                key, value = found.groups()
                if key == "note":
                    notes.append(value)
                elif key in _REQUIRED:
                    if key in header:
                        raise InvalidNetworkList(f"{origin}, line {number}: a second '# {key}:' line")
                    header[key] = value
            continue
        try:
            networks.append(ipaddress.ip_network(line.split("#", 1)[0].strip()))
        except ValueError as exc:
            raise InvalidNetworkList(
                f"{origin}, line {number}: {line!r} is not a network like 192.0.2.0/24 or 2001:db8::/32 ({exc})"
            ) from None
    for key in _REQUIRED:
        if not header.get(key):
            raise InvalidNetworkList(f"{origin}: the header has no '# {key}:' line")
    name, kind = header["name"], header["kind"]
    if not _NAME.match(name):
        raise InvalidNetworkList(
            f"{origin}: name {name!r} must be lower-case letters, digits, '-' or '_' (like microsoft-eop)"
        )
    if kind not in KINDS:
        raise InvalidNetworkList(f"{origin}: kind {kind!r} is not one of {', '.join(KINDS)}")
    try:
        retrieved = dt.date.fromisoformat(header["retrieved"])
    except ValueError:
        raise InvalidNetworkList(
            f"{origin}: retrieved {header['retrieved']!r} is not a date like 2026-08-17"
        ) from None
    if not networks:
        raise InvalidNetworkList(f"{origin}: no networks (one CIDR per line after the header)")
    return NetworkList(name, kind, header["source"], retrieved, " ".join(notes), tuple(networks))


def read_list(path: str | Path) -> NetworkList:
    """Read one network list file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidNetworkList(f"{path}: cannot be read ({exc})") from None
    return parse_list(text, origin=str(path))


def load_lists(directory: str | Path | None) -> list[NetworkList]:
    """The lists of an operator's directory (``<name>.txt`` files), by name; none if it is absent."""
    if directory is None:
        return []
    directory = Path(directory)
    if not directory.is_dir():
        return []
    lists = []
    for path in sorted(directory.glob(f"*{SUFFIX}")):
        network_list = read_list(path)
        if path.stem != network_list.name:
            raise InvalidNetworkList(
                f"{path}: its header names the list {network_list.name!r}: "
                f"rename the file {network_list.name}{SUFFIX}"
            )
        lists.append(network_list)
    return lists


@functools.cache
def _shipped() -> tuple[NetworkList, ...]:
    folder = resources.files("hotclicks") / "data" / "networks"
    entries = sorted((e for e in folder.iterdir() if e.name.endswith(SUFFIX)), key=lambda e: e.name)
    return tuple(parse_list(e.read_text(encoding="utf-8"), origin=f"hotclicks/data/networks/{e.name}") for e in entries)


def shipped_lists() -> list[NetworkList]:
    """The lists HotClicks ships, by name (read once per process)."""
    return list(_shipped())


def combine(shipped: Iterable[NetworkList], operator: Iterable[NetworkList]) -> list[NetworkList]:
    """``shipped`` with each list of ``operator`` replacing the shipped one of its name, by name."""
    lists = {network_list.name: network_list for network_list in shipped}
    lists.update((network_list.name, network_list) for network_list in operator)
    return [lists[name] for name in sorted(lists)]


class _Ranges:
    """Disjoint ``[start, end]`` integer ranges of one address family, sorted, with their match."""

    __slots__ = ("starts", "ends", "matches")

    def __init__(self, prefixes: Sequence[tuple[int, int, int, NetworkMatch]]) -> None:
        starts: list[int] = []
        ends: list[int] = []
        matches: list[NetworkMatch] = []

        def emit(start: int, end: int, match: NetworkMatch) -> None:
            if start > end:
                return
            if ends and ends[-1] + 1 == start and matches[-1] is match:
                ends[-1] = end
            else:
                starts.append(start)
                ends.append(end)
                matches.append(match)

        # CIDR prefixes are nested or disjoint: walk them by start (widest first) keeping the
        # enclosing ones on a stack, and give each stretch of addresses to the innermost prefix.
        stack: list[tuple[int, int, NetworkMatch]] = []
        position = 0
        for start, end, _, match in sorted(prefixes, key=lambda p: (p[0], p[2])):
            while stack and stack[-1][1] < start:
                _, top_end, top_match = stack.pop()
                emit(position, top_end, top_match)
                position = top_end + 1
            if stack and stack[-1][0] == start and stack[-1][1] == end:
                continue  # the same prefix in a later list: the first list keeps it
            if stack:
                emit(position, start - 1, stack[-1][2])
            position = start
            stack.append((start, end, match))
        while stack:
            _, top_end, top_match = stack.pop()
            emit(position, top_end, top_match)
            position = top_end + 1
        self.starts, self.ends, self.matches = starts, ends, matches

    def find(self, value: int) -> NetworkMatch | None:
        i = bisect_right(self.starts, value) - 1
        if i >= 0 and value <= self.ends[i]:
            return self.matches[i]
        return None

    def __len__(self) -> int:
        return len(self.starts)


class NetworkIndex:
    """Looks addresses up in several network lists at once; build it once, query it often."""

    def __init__(self, lists: Iterable[NetworkList] = ()) -> None:
        self.lists: tuple[NetworkList, ...] = tuple(lists)
        v4: list[tuple[int, int, int, NetworkMatch]] = []
        v6: list[tuple[int, int, int, NetworkMatch]] = []
        for network_list in self.lists:
            match = NetworkMatch(network_list.name, network_list.kind)
            for network in network_list.networks:
                start = int(network.network_address)
                entry = (start, start + network.num_addresses - 1, network.prefixlen, match)
                (v4 if network.version == 4 else v6).append(entry)
        self._v4 = _Ranges(v4)
        self._v6 = _Ranges(v6)

    def match(self, address: str | ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> NetworkMatch | None:
        """The list ``address`` is in (IPv4, IPv6 or IPv4-mapped IPv6), or None, also for garbage."""
        if isinstance(address, str):
            text = address.strip()
            family = socket.AF_INET6 if ":" in text else socket.AF_INET
            try:  # ten times faster than ipaddress.ip_address, which is left for the odd forms
                value = int.from_bytes(socket.inet_pton(family, text), "big")
            except (OSError, ValueError):
                try:
                    parsed = ipaddress.ip_address(text)
                except ValueError:
                    return None
                family, value = (socket.AF_INET if parsed.version == 4 else socket.AF_INET6), int(parsed)
        elif isinstance(address, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
            family = socket.AF_INET if address.version == 4 else socket.AF_INET6
            value = int(address)
        else:
            return None
        if family == socket.AF_INET:
            return self._v4.find(value)
        if value >> 32 == _MAPPED:
            return self._v4.find(value & 0xFFFFFFFF)
        return self._v6.find(value)

    def __len__(self) -> int:
        """How many disjoint ranges the index holds (both families)."""
        return len(self._v4) + len(self._v6)


@functools.cache
def _shipped_index() -> NetworkIndex:
    return NetworkIndex(_shipped())


def network_index(directory: str | Path | None = None) -> NetworkIndex:
    """The index of the shipped lists and an operator's ``directory`` (see :func:`combine`)."""
    operator = load_lists(directory)
    if not operator:
        return _shipped_index()  # the common case: built once per process, shared by every app
    return NetworkIndex(combine(_shipped(), operator))


def check(address: str, directory: str | Path | None = None) -> NetworkMatch | None:
    """The list ``address`` is in, read afresh from the files (for the CLI; servers keep an index)."""
    try:
        ipaddress.ip_address(address.strip())
    except ValueError:
        raise HotClicksError(f"{address!r} is not an IPv4 or IPv6 address") from None
    return network_index(directory).match(address)


def install_list(path: str | Path, directory: str | Path) -> NetworkList:
    """Check the list file at ``path`` and copy it into ``directory`` as ``<name>.txt``."""
    network_list = read_list(path)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{network_list.name}{SUFFIX}"
    if Path(path).resolve() != target.resolve():
        shutil.copyfile(path, target)
    return network_list


def remove_list(name: str, directory: str | Path | None) -> None:
    """Delete the operator's list ``name`` from ``directory``; shipped lists cannot be removed."""
    target = Path(directory) / f"{name}{SUFFIX}" if directory is not None and _NAME.match(name) else None
    if target is None or not target.is_file():
        if any(network_list.name == name for network_list in _shipped()):
            raise InvalidNetworkList(
                f"{name!r} is a shipped network list: it cannot be removed, only replaced by an operator list "
                "of the same name"
            )
        raise InvalidNetworkList(f"no operator network list {name!r} in {directory}")
    target.unlink()
