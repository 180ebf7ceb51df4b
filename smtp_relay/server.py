"""Assembling a relay from its config: for the CLI, for embedding and for tests."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from aiosmtpd.controller import Controller

from hotclicks import db
from hotclicks.errors import ConfigurationError
from hotclicks.tokens import TokenSigner

from .config import RelayConfig
from .handler import RelayHandler, RelaySMTP
from .processing import MessageProcessor


def is_loopback(host: str) -> bool:
    """Whether ``host`` names only this machine (an address of 127.0.0.0/8, ::1 or localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_handler(config: RelayConfig, *, check_database: bool = True) -> RelayHandler:
    """The handler for ``config``; fails at start when a setting or the database is wrong."""
    if not is_loopback(config.listen[0]):
        raise ConfigurationError(
            f"refusing to listen on {config.listen[0]}: the relay would be an open relay. "
            "Listen on 127.0.0.1 (the default) and let your applications and MTA connect there."
        )
    signer = TokenSigner(config.secret_key, config.fallback_keys)
    engine = db.create_db_engine(config.database_url)
    if check_database:
        db.check_migrated(engine)
    processor = MessageProcessor(config, db.session_factory(engine), signer)
    return RelayHandler(config, processor)


def smtp_kwargs(config: RelayConfig) -> dict[str, Any]:
    """How the relay's SMTP server behaves: bytes untouched, 8BITMIME and SMTPUTF8, a size limit."""
    return {
        "data_size_limit": config.max_message_size,
        "enable_SMTPUTF8": True,
        "decode_data": False,
        "hostname": config.hostname or socket.getfqdn(),
        "ident": "HotClicks relay",
    }


class RelayController(Controller):
    """aiosmtpd's Controller running our SMTP class: a relay in a thread, for tests and embedding."""

    def __init__(self, config: RelayConfig, handler: RelayHandler | None = None) -> None:
        self.config = config
        kwargs = smtp_kwargs(config)
        super().__init__(
            handler or build_handler(config),
            hostname=config.listen[0],
            port=config.listen[1],
            server_hostname=kwargs.pop("hostname"),
            **kwargs,
        )

    def factory(self) -> RelaySMTP:
        return RelaySMTP(self.handler, **self.SMTP_kwargs)
