"""What the relay takes from aiosmtpd beyond its documented API, named in one place.

``smtp_relay.handler.RelaySMTP`` overrides or calls these private attributes of aiosmtpd's
``SMTP`` (setup.py pins ``aiosmtpd<1.5`` for them). An aiosmtpd release that renames or reshapes
one fails here, with its name, before the relay misbehaves in a way harder to read.
"""

from __future__ import annotations

import asyncio
import inspect

import aiosmtpd
import pytest
from aiosmtpd.smtp import SMTP, AuthResult

#: Private methods of aiosmtpd's SMTP the relay overrides or calls, and whether they are coroutines.
PRIVATE_METHODS = {
    "_call_handler_hook": True,  # wrapped (busy while the handler works) and called by smtp_DATA
    "_set_post_data_state": False,  # called by smtp_DATA after a message
    "_reset_timeout": False,  # called by the idle timeout
    "_timeout_cb": False,  # overridden: idle counts from the last byte received
    "_authenticate": False,  # overridden: credentials are checked in a thread
}
#: Private attributes of an SMTP instance the relay reads, and their type once connected.
PRIVATE_ATTRIBUTES = {
    "_reader": asyncio.StreamReader,  # smtp_DATA reads the message in large pieces from it
    "_timeout_duration": float,  # the idle timeout
}
#: Public methods the relay overrides or calls, for their shape: (name, coroutine).
PUBLIC_METHODS = {
    "smtp_DATA": True,
    "smtp_AUTH": True,
    "auth_PLAIN": True,
    "auth_LOGIN": True,
    "check_helo_needed": True,
    "check_auth_needed": True,
    "push": True,
    "connection_made": False,
    "connection_lost": False,
    "data_received": False,
}


def test_the_installed_aiosmtpd_is_the_series_the_relay_is_written_for():
    assert aiosmtpd.__version__.startswith("1.4.")


@pytest.mark.parametrize(("name", "coroutine"), sorted({**PRIVATE_METHODS, **PUBLIC_METHODS}.items()))
def test_each_smtp_method_the_relay_uses_exists_with_its_kind(name, coroutine):
    method = getattr(SMTP, name, None)
    assert callable(method), f"aiosmtpd's SMTP has no method {name} any more"
    assert inspect.iscoroutinefunction(method) is coroutine, f"SMTP.{name} changed between coroutine and plain function"


def test_the_private_method_signatures_the_relay_relies_on():
    assert list(inspect.signature(SMTP._call_handler_hook).parameters) == ["self", "command", "args"]
    assert list(inspect.signature(SMTP._reset_timeout).parameters) == ["self", "duration"]
    assert list(inspect.signature(SMTP._authenticate).parameters) == ["self", "mechanism", "auth_data"]
    assert list(inspect.signature(SMTP._set_post_data_state).parameters) == ["self"]
    assert list(inspect.signature(SMTP._timeout_cb).parameters) == ["self"]


class _Handler:
    async def handle_DATA(self, server, session, envelope):  # pragma: no cover - never called
        return "250 OK"


def test_each_private_attribute_the_relay_reads_exists_once_connected():
    async def connect() -> SMTP:
        loop = asyncio.get_running_loop()
        server = SMTP(_Handler(), loop=loop, timeout=12.5)
        transport = _Transport()
        server.connection_made(transport)  # type: ignore[arg-type]
        try:
            for name, kind in PRIVATE_ATTRIBUTES.items():
                assert isinstance(getattr(server, name, None), kind), f"SMTP instances have no {kind.__name__} {name}"
            assert server._timeout_duration == 12.5
            # public, relied upon: the handler, the envelope, the transport
            assert isinstance(server.event_handler, _Handler) and server.transport is transport
        finally:
            server._writer.close()  # the test's own tidying, not the relay's
            server.connection_lost(None)
        return server

    asyncio.run(connect())


def test_auth_result_takes_the_keywords_the_relay_passes():
    result = AuthResult(success=False, handled=False, message="454 try later", auth_data="login")
    assert (result.success, result.handled, result.message, result.auth_data) == (False, False, "454 try later", "login")


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 2525) if name == "peername" else default

    def write(self, data) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True
