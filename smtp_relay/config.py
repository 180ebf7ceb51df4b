"""The relay's settings, read from flags and ``HOTCLICKS_*`` environment variables."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from hotclicks.errors import ConfigurationError
from hotclicks.executions import DEFAULT_QUIET_GAP, PERIODS


def parse_host_port(value: str, what: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) as a pair, or a ConfigurationError saying why not."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigurationError(f"{what} must be HOST:PORT, like 127.0.0.1:2525, not {value!r}")
    return host, int(port)


@dataclass(frozen=True)
class RelayConfig:
    """Everything the relay needs to know; validated when built, so mistakes fail at start."""

    listen: tuple[str, int]
    upstream: tuple[str, int]
    database_url: str
    base_url: str
    secret_key: str
    fallback_keys: tuple[str, ...] = ()
    #: Query parameters that identify a recipient; links differing only in them are one link.
    personal_params: frozenset[str] = frozenset()
    #: Links to these domains (and their subdomains) are not tracked.
    excluded_domains: frozenset[str] = frozenset()
    #: Add the open pixel to HTML parts.
    open_pixel: bool = True
    #: A transactional delivery's execution period: "day", "week" or "month".
    transactional_period: str = "month"
    #: A recurring delivery without a run header starts a new run after this long without mail.
    quiet_gap: dt.timedelta = DEFAULT_QUIET_GAP
    #: Largest message accepted, in bytes (answered 552 above it).
    max_message_size: int = 32 * 1024 * 1024
    #: Seconds to wait for the upstream server before counting it down.
    upstream_timeout: float = 60.0
    hostname: str | None = field(default=None)

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

    @property
    def tracking_base(self) -> str:
        """The base URL without a trailing slash, to which ``/c/<token>`` etc. are appended."""
        return self.base_url.rstrip("/")
