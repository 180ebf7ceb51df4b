"""Assembling a relay from its config: for the CLI, for embedding and for tests."""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import Any

from aiosmtpd.controller import Controller

from hotclicks.tokens import TokenSigner

from .auth import Authenticator, DatabaseAuthenticator, FileAuthenticator
from .config import RelayConfig, is_loopback
from .dkim import DkimSigner
from .handler import RelayHandler, RelaySMTP
from .processing import MessageProcessor
from .recorder import RelayDatabase
from .spool import Spool

__all__ = ["RelayController", "build_handler", "is_loopback", "smtp_kwargs"]


def build_handler(config: RelayConfig, *, check_database: bool = True) -> RelayHandler:
    """The handler for ``config``; fails at start when a setting, the spool or the database is wrong."""
    signer = TokenSigner(config.secret_key, config.fallback_keys)
    dkim_signer = (
        DkimSigner(config.dkim_key_file, config.dkim_selector, config.dkim_domain)  # type: ignore[arg-type]
        if config.dkim_key_file
        else None
    )
    authenticator: Authenticator | None = FileAuthenticator(config.auth_file) if config.auth_file else None
    database = RelayDatabase.connect(config.database_url, check=check_database)
    if config.auth_database:
        authenticator = DatabaseAuthenticator(database.sessions)
    spool = Spool(config.spool_dir)
    try:
        spool.open()
    except Exception:
        database.dispose()
        raise
    processor = MessageProcessor(config, database.sessions, signer, dkim_signer=dkim_signer)
    return RelayHandler(config, database, processor, spool, authenticator)


def _tls_context(config: RelayConfig) -> ssl.SSLContext | None:
    if not config.tls_cert_file:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(config.tls_cert_file, config.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        from hotclicks.errors import ConfigurationError

        raise ConfigurationError(
            f"cannot load the TLS certificate --tls-cert-file/--tls-key-file: {exc}"
        ) from None
    return context


def smtp_kwargs(config: RelayConfig, authenticator: Authenticator | None = None) -> dict[str, Any]:
    """How the relay's SMTP server behaves: bytes untouched, 8BITMIME and SMTPUTF8, a size limit,
    an idle timeout, AUTH only over TLS and required when the listening address is not loopback."""
    context = _tls_context(config)
    kwargs: dict[str, Any] = {
        "data_size_limit": config.max_message_size,
        "enable_SMTPUTF8": True,
        "decode_data": False,
        "hostname": config.hostname or socket.getfqdn(),
        "ident": "HotClicks relay",
        "timeout": config.client_timeout.total_seconds(),
        # Never offer AUTH in plaintext. With implicit TLS every byte is encrypted already, but
        # aiosmtpd only knows about STARTTLS, so it is told not to ask for it.
        "auth_require_tls": not config.implicit_tls,
    }
    if context is not None and not config.implicit_tls:
        kwargs["tls_context"] = context
        kwargs["require_starttls"] = not is_loopback(config.listen[0])
    if authenticator is not None:
        kwargs["authenticator"] = authenticator
        # Without an allow-list, a client on a non-loopback address must authenticate.
        kwargs["auth_required"] = not config.allow_networks and not is_loopback(config.listen[0])
    return kwargs


class RelayController(Controller):
    """aiosmtpd's Controller running our SMTP class: a relay in a thread, for tests and embedding.

    ``start()`` also resumes the spool and starts delivering; ``stop()`` lets transactions in
    flight finish first. 250 comes before delivery, so tests call :meth:`wait_idle`.
    """

    def __init__(self, config: RelayConfig, handler: RelayHandler | None = None) -> None:
        self.config = config
        handler = handler or build_handler(config)
        kwargs = smtp_kwargs(config, handler.authenticator)
        ssl_context = None
        if config.implicit_tls:
            ssl_context = _tls_context(config)
        super().__init__(
            handler,
            hostname=config.listen[0],
            port=config.listen[1],
            server_hostname=kwargs.pop("hostname"),
            ssl_context=ssl_context,
            **kwargs,
        )

    def factory(self) -> RelaySMTP:
        return RelaySMTP(self.handler, **self.SMTP_kwargs)

    def _run_on_loop(self, coroutine: Any, timeout: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def start(self) -> None:
        super().start()
        self._run_on_loop(self.handler.start(), 30)

    def stop(self, no_assert: bool = False) -> None:
        try:
            self._run_on_loop(self.handler.stop(), 60)
        finally:
            super().stop(no_assert)
            self.handler.close()

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Block until the relay has delivered (or deferred) everything it accepted."""
        self._run_on_loop(self.handler.wait_idle(timeout), timeout + 5)

    def retry_now(self) -> int:
        return self._run_on_loop(self._retry(), 10)

    async def _retry(self) -> int:
        return self.handler.deliverer.retry_now()
