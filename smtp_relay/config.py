"""The relay's settings, as flags, ``HOTCLICKS_*`` environment variables and a TOML file give them.

:class:`RelayConfig` is validated when built, so a mistake fails at start with a message that says
what to fix, never in the middle of a transaction. Its defaults are those of
:mod:`hotclicks.settings`, the one place each setting is declared.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass, field
from functools import partial
from urllib.parse import urlsplit

from hotclicks.errors import ConfigurationError
from hotclicks.executions import PERIODS
from hotclicks.settings import DEFAULT_SPOOL_DIR, DKIM_SIGNED_POLICIES, LIST_UNSUBSCRIBE_POLICIES, UPSTREAM_SECURITY, default

__all__ = [
    "DEFAULT_SPOOL_DIR", "DKIM_SIGNED_POLICIES", "UPSTREAM_SECURITY", "RelayConfig",
    "is_loopback", "parse_host_port", "parse_networks",
]


def parse_host_port(value: str, what: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) as a pair, or a ConfigurationError saying why not."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigurationError(f"{what} must be HOST:PORT, like 127.0.0.1:2525, not {value!r}")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """Whether ``host`` names only this machine (an address of 127.0.0.0/8, ::1 or localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_networks(values: tuple[str, ...] | list[str], what: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ConfigurationError(f"{what}: {value!r} is not a network like 10.0.0.0/8 or 192.0.2.7") from None
    return tuple(networks)


@dataclass(frozen=True)
class RelayConfig:
    """Everything the relay needs to know; validated when built, so mistakes fail at start."""

    listen: tuple[str, int]
    upstream: tuple[str, int]
    database_url: str
    base_url: str
    secret_key: str
    fallback_keys: tuple[str, ...] = default("fallback_keys")
    #: Query parameters that identify a recipient; links differing only in them are one link.
    personal_params: frozenset[str] = frozenset(default("personal_params"))
    #: Links to these domains (and their subdomains) are not tracked.
    excluded_domains: frozenset[str] = frozenset(default("excluded_domains"))
    #: Add the open pixel to HTML parts.
    open_pixel: bool = default("open_pixel")
    #: Add the hidden trap link to HTML parts (a click on it is a scanner's).
    trap_link: bool = default("trap_link")
    #: A marketing message's own List-Unsubscribe: "keep" (as the sender wrote it) or "replace" (ours).
    list_unsubscribe: str = default("list_unsubscribe")
    #: A transactional delivery's execution period: "day", "week" or "month".
    transactional_period: str = default("transactional_period")
    #: A recurring delivery without a run header starts a new run after this long without mail.
    quiet_gap: dt.timedelta = default("quiet_gap")
    #: Largest message accepted, in bytes (answered 552 above it).
    max_message_size: int = default("max_message_size")
    #: Most recipients per transaction (answered 452 above it, as RFC 5321 asks).
    max_recipients: int = default("max_recipients")
    #: Seconds to wait for the upstream server before counting it down.
    upstream_timeout: float = default("upstream_timeout")
    #: The upstream connection: "none", "starttls" or "tls".
    upstream_security: str = default("upstream_security")
    #: Check the upstream's certificate (on by default; off only for a test upstream).
    upstream_verify: bool = default("upstream_verify")
    #: A CA bundle to check the upstream's certificate with (the system's when None).
    upstream_ca_file: str | None = default("upstream_ca_file")
    upstream_username: str | None = default("upstream_username")
    upstream_password: str | None = default("upstream_password")
    #: Connections kept open to the upstream, each delivering one copy at a time.
    upstream_connections: int = default("upstream_connections")
    #: Worker processes rewriting the copies (0: the relay process does it). The relay's other
    #: work shares one core (one Python process); a worker lets rewriting use another. Unset,
    #: "auto" as on the command line: 1 on a machine of 2 cores or more, resolved when built.
    rewrite_workers: int = field(default_factory=partial(default, "rewrite_workers"))
    #: Relay processes sharing the listening socket, each with its spool ``<spool_dir>/<n>``; only
    #: the command line's supervisor reads it (1: no supervisor). "auto": one per core.
    processes: int = field(default_factory=partial(default, "processes"))
    #: The name the relay gives itself (SMTP banner and EHLO); the machine's FQDN when None.
    hostname: str | None = default("hostname")
    #: Where accepted messages wait for delivery; a directory of this relay alone.
    spool_dir: str = default("spool_dir")
    #: First retry delay after a temporary failure; it doubles each time up to ``retry_max_delay``.
    retry_delay: dt.timedelta = default("retry_delay")
    retry_max_delay: dt.timedelta = default("retry_max_delay")
    #: A copy still not delivered this long after it was accepted is given up (marked failed).
    max_queue_age: dt.timedelta = default("max_queue_age")
    #: Send the sender a delivery status notification (RFC 3464) for a copy refused for good or
    #: given up: a client that relays through us has already handed the mail off.
    bounces: bool = default("bounces")
    #: Keep a sample of each content variant from real recipients (test profiles' always are).
    keep_recipient_samples: bool = default("keep_recipient_samples")
    #: DKIM signing key (PEM), selector and domain; all three or none.
    dkim_key_file: str | None = default("dkim_key_file")
    dkim_selector: str | None = default("dkim_selector")
    dkim_domain: str | None = default("dkim_domain")
    #: A message already DKIM-signed, when the relay has no key: "keep" or "strip".
    dkim_signed: str = default("dkim_signed")
    #: TLS certificate and key for STARTTLS (or implicit TLS with ``implicit_tls``).
    tls_cert_file: str | None = default("tls_cert_file")
    tls_key_file: str | None = default("tls_key_file")
    implicit_tls: bool = default("implicit_tls")
    #: Client credentials: a file of ``user:hash`` lines (``hotclicks-relay hash-password``).
    auth_file: str | None = default("auth_file")
    #: Client credentials: the database's relay accounts (``hotclicks-relay accounts add``).
    auth_database: bool = default("auth_database")
    #: Failed AUTH attempts a client address (an IPv6 /64) may make in ``auth_failure_window``;
    #: beyond them its AUTH is answered 421 and the connection closed until the oldest ages out.
    auth_max_failures: int = default("auth_max_failures")
    auth_failure_window: dt.timedelta = default("auth_failure_window")
    #: Pause before answering a failed AUTH (the connection waits, the relay does not).
    auth_failure_delay: dt.timedelta = default("auth_failure_delay")
    #: Client networks allowed to send without AUTH (anything else must authenticate).
    allow_networks: tuple[str, ...] = default("allow_networks")
    #: A client that sends nothing for this long (idle, or stopped in the middle of a command or
    #: of DATA) is disconnected, freeing its slot. RFC 5321 asks servers to wait 5 minutes.
    client_timeout: dt.timedelta = default("client_timeout")
    #: Client connections open at once, in all and from one address; more are answered 421.
    max_connections: int = default("max_connections")
    max_connections_per_client: int = default("max_connections_per_client")

    def __post_init__(self) -> None:
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigurationError(
                "--base-url (HOTCLICKS_BASE_URL) must be the public http(s) URL under which the "
                f"Flask app serves the tracking routes, like https://t.example.com/t, not {self.base_url!r}"
            )
        if self.transactional_period not in PERIODS:
            raise ConfigurationError(
                f"the transactional period must be one of {', '.join(PERIODS)}, "
                f"not {self.transactional_period!r}"
            )
        if self.list_unsubscribe not in LIST_UNSUBSCRIBE_POLICIES:
            raise ConfigurationError(
                f"--list-unsubscribe must be one of {', '.join(LIST_UNSUBSCRIBE_POLICIES)}, not {self.list_unsubscribe!r}"
            )
        if self.upstream_security not in UPSTREAM_SECURITY:
            raise ConfigurationError(
                f"--upstream-security must be one of {', '.join(UPSTREAM_SECURITY)}, not {self.upstream_security!r}"
            )
        if self.dkim_signed not in DKIM_SIGNED_POLICIES:
            raise ConfigurationError(
                f"--dkim-signed must be one of {', '.join(DKIM_SIGNED_POLICIES)}, not {self.dkim_signed!r}"
            )
        dkim = (self.dkim_key_file, self.dkim_selector, self.dkim_domain)
        if any(dkim) and not all(dkim):
            raise ConfigurationError(
                "DKIM signing needs all three of --dkim-key-file, --dkim-selector and --dkim-domain"
            )
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ConfigurationError("TLS needs both --tls-cert-file and --tls-key-file")
        if self.implicit_tls and not self.tls_cert_file:
            raise ConfigurationError("--implicit-tls needs --tls-cert-file and --tls-key-file")
        if self.auth_file and self.auth_database:
            raise ConfigurationError("choose one source of SMTP AUTH credentials: --auth-file or --auth-database")
        if self.auth_configured and not self.tls_cert_file:
            which = "--auth-file" if self.auth_file else "--auth-database"
            raise ConfigurationError(
                f"{which} needs --tls-cert-file and --tls-key-file: passwords are only "
                "accepted over STARTTLS or implicit TLS"
            )
        if bool(self.upstream_username) != bool(self.upstream_password):
            raise ConfigurationError("upstream AUTH needs both --upstream-username and --upstream-password")
        for name in (
            "max_message_size", "max_recipients", "upstream_connections", "auth_max_failures",
            "max_connections", "max_connections_per_client", "processes",
        ):
            if getattr(self, name) < 1:
                raise ConfigurationError(f"--{name.replace('_', '-')} must be at least 1")
        for name in ("client_timeout", "auth_failure_window"):
            if getattr(self, name) <= dt.timedelta(0):
                raise ConfigurationError(f"--{name.replace('_', '-')} must be longer than 0 s")
        self.networks  # validates
        if not is_loopback(self.listen[0]) and not (self.auth_configured or self.allow_networks):
            raise ConfigurationError(
                f"refusing to listen on {self.listen[0]}: anyone who can reach it could send mail "
                "through the relay (an open relay). Listen on 127.0.0.1 (the default), or configure "
                "SMTP AUTH (--auth-file or --auth-database, with --tls-cert-file/--tls-key-file) or the client networks "
                "allowed to send (--allow-networks 10.0.0.0/8,...)."
            )

    @property
    def auth_configured(self) -> bool:
        return bool(self.auth_file or self.auth_database)

    @property
    def networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return parse_networks(self.allow_networks, "--allow-networks")

    @property
    def tracking_base(self) -> str:
        """The base URL without a trailing slash, to which ``/c/<token>`` etc. are appended."""
        return self.base_url.rstrip("/")
