"""The aiosmtpd handler: accept a transaction, have it rewritten, spool the copies, answer.

Unlike aiosmtpd's own ``Proxy``, this never blocks the event loop (the rewriting, the database
and the spool's fsync run in a thread; forwarding uses aiosmtplib, in :mod:`.delivery`) and never
answers 250 for mail that is not safely on disk: 250 means every copy is fsync'd in the spool.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from collections import Counter
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session, syntax
from sqlalchemy.exc import SQLAlchemyError

from .auth import Authenticator, AuthThrottle, client_key
from .config import RelayConfig
from .delivery import Deliverer
from .processing import MessageProcessor, Prepared
from .recorder import RelayDatabase
from .spool import Spool, is_disk_full
from .timings import StageTimes

log = logging.getLogger("smtp_relay")

#: Replies, named so that tests and logs speak of the same thing (aiosmtpd's statuscodes style).
REPLY_OK = "250 2.0.0 OK: queued"
REPLY_SPOOL_FULL = "451 4.3.1 Insufficient system storage, try again later"
REPLY_SPOOL_ERROR = "451 4.3.0 Local error writing the message, try again later"
REPLY_LOCAL_ERROR = "451 4.3.0 Local error in processing, try again later"
REPLY_DATABASE_UNAVAILABLE = "451 4.3.0 Tracking database unavailable, try again later"
REPLY_TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
REPLY_RELAY_DENIED = "550 5.7.1 Relaying denied: authenticate first or send from an allowed network"
REPLY_SHUTTING_DOWN = "421 4.3.2 Relay shutting down, try again later"
REPLY_TOO_MANY_CONNECTIONS = "421 4.7.0 Too many connections, try again later"
REPLY_TOO_MANY_FROM_CLIENT = "421 4.7.0 Too many connections from your address, try again later"
REPLY_AUTH_THROTTLED = "421 4.7.0 Too many failed authentication attempts, try again later"
REPLY_AUTH_UNAVAILABLE = "454 4.7.0 Temporary authentication failure, try again later"
#: aiosmtpd's own replies to DATA, kept word for word.
REPLY_DATA_GO_AHEAD = "354 End data with <CR><LF>.<CR><LF>"
REPLY_LINE_TOO_LONG = "500 Line too long (see RFC5321 4.5.3.1.6)"
REPLY_TOO_MUCH_DATA = "552 Error: Too much mail data"

#: Threads accepting transactions (rewriting, recording, fsyncing). Most of their time is spent
#: waiting for a disk or the database, so more than asyncio's default of CPUs + 4.
ACCEPT_THREADS = 32

#: MAIL FROM parameters passed on to the upstream server as they came.
_PASSED_MAIL_OPTIONS = ("SMTPUTF8", "BODY=8BITMIME")


class _PendingAuth(AuthResult):
    """Credentials aiosmtpd parsed, not checked yet: :class:`RelaySMTP` checks them in a thread."""

    def __init__(self, login: bytes, password: bytes) -> None:
        super().__init__(success=False, handled=False)
        self.login, self.password = login, password


class RelaySMTP(SMTP):
    """aiosmtpd's SMTP with what a relay facing strangers needs.

    - the long lines real mail has (some exceed RFC 5322's 998);
    - a connection limit, in all and per client (421 beyond it), checked before the greeting;
    - an idle timeout that counts from the last byte received (aiosmtpd's counts from the last
      command, which would cut a slow but steady DATA), paused while the handler works;
    - AUTH checked in a thread (scrypt and the database never block the loop), failures logged
      with the client and login and throttled per client (:class:`~smtp_relay.auth.AuthThrottle`);
    - DATA read in large pieces, not a line at a time (:meth:`smtp_DATA`).

    Some of this uses aiosmtpd's private attributes (``_reader``,
    ``_set_post_data_state``, ``_call_handler_hook``, the timeout's, ``_authenticate``), hence
    ``aiosmtpd<1.5`` in setup.py; ``tests/test_aiosmtpd_contract.py`` names each of them and fails
    first when an aiosmtpd release changes one.
    """

    line_length_limit = 256 * 1024

    def __init__(self, handler: RelayHandler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.relay = handler
        self.client: str | None = None  #: the client's address once admitted
        self._last_received = 0.0
        self._busy = 0
        #: The relay's own DATA reading needs bytes and the relay's DATA hook; else aiosmtpd's.
        self._read_in_pieces = not kwargs.get("decode_data", False) and callable(getattr(handler, "handle_DATA", None))

    # -- connections ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is None:  # the connection itself, not its STARTTLS layer
            peer = transport.get_extra_info("peername")
            host = peer[0] if isinstance(peer, tuple) and peer else str(peer)
            refusal = self.relay.admit(self, host)
            if refusal is not None:
                log.warning("connection from %s refused: %s", host, refusal)
                transport.write(refusal.encode() + b"\r\n")  # type: ignore[attr-defined]
                transport.close()
                return
            self.client = host
        self._last_received = self.loop.time()
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self.client is None:  # refused: aiosmtpd never saw it
            return
        self.relay.release(self)
        super().connection_lost(error)

    def data_received(self, data: bytes) -> None:
        self._last_received = self.loop.time()
        super().data_received(data)

    def _timeout_cb(self) -> None:
        quiet = self.loop.time() - self._last_received
        if self._busy or quiet < self._timeout_duration:
            self._reset_timeout(max(self._timeout_duration - quiet, 0.05) if not self._busy else None)
            return
        log.info("%s disconnected: nothing received for %.0f s", self.client, quiet)
        super()._timeout_cb()

    async def _call_handler_hook(self, command: str, *args: Any) -> Any:
        self._busy += 1
        try:
            return await super()._call_handler_hook(command, *args)
        finally:
            self._busy -= 1
            self._last_received = self.loop.time()

    def in_transaction(self) -> bool:
        """Whether a MAIL was accepted and its DATA not finished (nor the transaction reset)."""
        return self.envelope is not None and self.envelope.mail_from is not None

    async def close_with(self, reply: str) -> None:
        """Say ``reply`` (a 421) and hang up."""
        if self.transport is None or self.transport.is_closing():
            return
        try:
            await asyncio.wait_for(self.push(reply), 1)
        except (OSError, asyncio.TimeoutError):
            pass
        if self.transport is not None:
            self.transport.close()

    # -- DATA ----------------------------------------------------------------------------------

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA, reading the message in large pieces instead of a line at a time.

        aiosmtpd awaits one ``readuntil(b"\\r\\n")`` per line, which cost the relay a third of its
        CPU time on a newsletter of 60 KB (800 lines); here the stream is searched for the end of
        the terminator (``.<CR><LF>``), a few times per message. The rules are aiosmtpd's (RFC 5321
        4.5.2): the message ends at a line holding a lone dot, a leading dot is removed from every
        other line, a message over ``data_size_limit`` gets 552 and a line over
        ``line_length_limit`` 500, both once the whole message has been read.
        """
        if not self._read_in_pieces:
            await super().smtp_DATA(arg)  # not the relay's setup: aiosmtpd's own reading
            return
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push(REPLY_DATA_GO_AHEAD)
        try:
            content = await read_data(self._reader, self.data_size_limit)
        except asyncio.CancelledError:
            log.info("connection lost during DATA")
            self._hang_up()
            raise
        except asyncio.IncompleteReadError:
            log.info("connection closed during DATA")
            self._hang_up()
            return
        if content is None:
            await self.push(REPLY_TOO_MUCH_DATA)
            self._set_post_data_state()
            return
        if len(content) > self.line_length_limit and longest_line(content) > self.line_length_limit:
            await self.push(REPLY_LINE_TOO_LONG)
            self._set_post_data_state()
            return
        content = unstuff(content)
        self.envelope.content = self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push(status)

    def _hang_up(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # -- AUTH ----------------------------------------------------------------------------------

    async def smtp_AUTH(self, arg: str) -> None:
        assert self.session is not None and self.client is not None
        wait = self.relay.login_throttle.retry_after(client_key(self.client), self.loop.time())
        if wait > 0 and not self.session.authenticated:
            log.warning("AUTH from %s refused: too many failed attempts (again in %.0f s)", self.client, wait)
            await self.close_with(REPLY_AUTH_THROTTLED)
            return
        await super().smtp_AUTH(arg)

    def _authenticate(self, mechanism: str, auth_data: Any) -> AuthResult:
        # Only parsed here; checked in _checked, off the loop.
        return _PendingAuth(auth_data.login, auth_data.password)

    async def auth_PLAIN(self, server: Any, args: list[str]) -> AuthResult:
        return await self._checked("PLAIN", await super().auth_PLAIN(server, args))

    async def auth_LOGIN(self, server: Any, args: list[str]) -> AuthResult:
        return await self._checked("LOGIN", await super().auth_LOGIN(server, args))

    async def _checked(self, mechanism: str, parsed: AuthResult) -> AuthResult:
        if not isinstance(parsed, _PendingAuth):  # malformed or aborted: already answered
            return parsed
        assert self.client is not None
        login = parsed.login.decode("utf-8", "replace")
        key = client_key(self.client)
        throttle, started = self.relay.login_throttle, self.loop.time()
        if not throttle.attempt(key, started):
            log.warning("AUTH from %s refused: too many failed attempts", self.client)
            await self.close_with(REPLY_AUTH_THROTTLED)
            return AuthResult(success=False, handled=True)
        authenticator = self.relay.authenticator
        try:
            ok = authenticator is not None and await self.loop.run_in_executor(
                None, authenticator.check, login, parsed.password.decode("utf-8", "replace")
            )
        except SQLAlchemyError as exc:
            throttle.succeeded(key, started)  # not the client's failure
            log.error("AUTH from %s for %r not checked: the database is unavailable (%s)", self.client, login[:200], exc)
            return AuthResult(success=False, handled=False, message=REPLY_AUTH_UNAVAILABLE)
        if ok:
            throttle.succeeded(key, started)
            log.info("AUTH %s from %s as %r", mechanism, self.client, login[:200])
            return AuthResult(success=True, auth_data=login)
        log.warning(
            "failed AUTH %s from %s for login %r (%d of %d failures allowed in %s)",
            mechanism, self.client, login[:200], throttle.failures(key), throttle.max_failures,
            self.relay.config.auth_failure_window,
        )
        await asyncio.sleep(self.relay.config.auth_failure_delay.total_seconds())
        return AuthResult(success=False, handled=False)


async def read_data(reader: asyncio.StreamReader, size_limit: int | None) -> bytes | None:
    """The bytes of a DATA section up to its terminating line, dot-stuffed as sent; None when
    there were more than ``size_limit`` (all of them read anyway, none kept).

    Raises ``asyncio.IncompleteReadError`` when the stream ends first.
    """
    pieces: list[bytes] = []
    size = 0
    tail = b"\r\n"  # the stream's last bytes read so far: DATA's own line ending to begin with
    too_much = False
    while True:
        try:
            piece = await reader.readuntil(b".\r\n")
        except asyncio.LimitOverrunError as exc:  # no end in sight within the reader's limit
            piece = await reader.readexactly(exc.consumed)
        # The end is ".\r\n" right after a line break; else it is a line ending with a dot.
        end = piece.endswith(b".\r\n") and (tail + piece[-5:-3])[-2:] == b"\r\n"
        size += len(piece) - (3 if end else 0)
        if size_limit and size > size_limit:
            too_much = True
            pieces.clear()  # keep nothing of a message that will be refused
        if not too_much:
            pieces.append(piece[:-3] if end else piece)
        if end:
            return None if too_much else b"".join(pieces)
        tail = (tail + piece[-2:])[-2:]


def unstuff(data: bytes) -> bytes:
    """``data`` without the dot added at the start of each line that began with one (RFC 5321
    4.5.2); lines end with CRLF, as the terminating line is found."""
    if data[:1] == b".":
        data = data[1:]
    return data.replace(b"\r\n.", b"\r\n")


def longest_line(data: bytes) -> int:
    """Length of the longest line of ``data``, its CRLF included."""
    return max(map(len, data.split(b"\r\n"))) + 2


class RelayHandler:
    """The relay's aiosmtpd handler; owns the database, the spool and the deliverer."""

    def __init__(
        self,
        config: RelayConfig,
        database: RelayDatabase,
        processor: MessageProcessor,
        spool: Spool,
        authenticator: Authenticator | None = None,
    ) -> None:
        self.config = config
        self.database = database
        self.processor = processor
        self.spool = spool
        self.deliverer = Deliverer(config, spool, processor.recorder)
        self.authenticator = authenticator
        #: Not named auth_...: aiosmtpd takes every auth_* attribute of a handler for a mechanism.
        self.login_throttle = AuthThrottle(config.auth_max_failures, config.auth_failure_window.total_seconds())
        #: Client connections open now, and how many per client address.
        self.connections: set[RelaySMTP] = set()
        self._per_client: Counter[str] = Counter()
        self._networks = config.networks
        self._in_flight = 0
        self._closing = False
        self._executor: ThreadPoolExecutor | None = None
        #: CPU time per stage, when asked for (``HOTCLICKS_STAGE_TIMES``); None: not kept.
        self.timings = StageTimes.from_environment()
        if self.timings is not None:
            recorder, renderer = processor.recorder, processor.renderer
            recorder.write_transaction = self.timings.timed("record", recorder.write_transaction)  # type: ignore[method-assign]
            renderer.render = self.timings.timed("render", renderer.render)  # type: ignore[method-assign]
        self._loop_cpu = 0.0

    # -- life cycle (on the relay's loop) ------------------------------------------------------

    async def start(self) -> None:
        self._loop_cpu = time.thread_time()
        self._executor = ThreadPoolExecutor(ACCEPT_THREADS, thread_name_prefix="relay-accept")
        await asyncio.get_running_loop().run_in_executor(self._executor, self.processor.renderer.start)
        await self.deliverer.start()

    async def stop(self, timeout: float = 30.0) -> None:
        """Refuse new connections and transactions, let the transactions in flight finish (a
        client in the middle of DATA completes it and is answered), hang up on the others with
        421, send what is ready to go, stop delivering; the rest waits in the spool for the next
        start. Everything within ``timeout``."""
        self._closing = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            idle = [c for c in self.connections if not c.in_transaction() and not c._busy]
            await asyncio.gather(*(c.close_with(REPLY_SHUTTING_DOWN) for c in idle))
            if not self.connections and not self._in_flight:
                break
            await asyncio.sleep(0.01)
        for connection in list(self.connections):  # still in a transaction at the deadline
            log.warning("%s: transaction not finished at shutdown, connection closed", connection.client)
            await connection.close_with(REPLY_SHUTTING_DOWN)
        while self.deliverer.busy() and loop.time() < deadline:
            await asyncio.sleep(0.01)
        await self.deliverer.stop(max(0.0, deadline - loop.time()))
        await loop.run_in_executor(None, self.processor.renderer.stop)
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None
        await loop.run_in_executor(None, self.database.dispose)
        if self.timings is not None:
            self.timings.add("loop", time.thread_time() - self._loop_cpu)
            self.timings.dump()

    def close(self) -> None:
        """Release what the handler holds once it is stopped: the spool's lock, the database's
        connections."""
        self.spool.close()
        self.database.dispose()

    def admit(self, connection: RelaySMTP, client: str) -> str | None:
        """Take a new client connection in, or the 421 reply that refuses it."""
        if self._closing:
            return REPLY_SHUTTING_DOWN
        if len(self.connections) >= self.config.max_connections:
            return REPLY_TOO_MANY_CONNECTIONS
        if self._per_client[client] >= self.config.max_connections_per_client:
            return REPLY_TOO_MANY_FROM_CLIENT
        self.connections.add(connection)
        self._per_client[client] += 1
        return None

    def release(self, connection: RelaySMTP) -> None:
        if connection in self.connections:
            self.connections.discard(connection)
            assert connection.client is not None
            self._per_client[connection.client] -= 1
            if not self._per_client[connection.client]:
                del self._per_client[connection.client]

    def idle(self) -> bool:
        return not self._in_flight and not self.deliverer.busy()

    async def wait_idle(self, timeout: float = 30.0) -> None:
        """Wait until nothing is being accepted, sent or recorded and no copy is due now."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.idle():
            if loop.time() > deadline:
                raise TimeoutError(f"the relay was still busy after {timeout} s")
            await asyncio.sleep(0.005)

    # -- SMTP ----------------------------------------------------------------------------------

    def _allowed(self, session: Session) -> bool:
        if session.authenticated:
            return True
        if not self._networks:
            # Loopback-only (checked at start), or AUTH required by aiosmtpd itself.
            return True
        try:
            peer = ipaddress.ip_address(session.peer[0])
        except (ValueError, TypeError, IndexError):
            return False
        return any(peer in network for network in self._networks)

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]) -> str:
        if self._closing:
            return REPLY_SHUTTING_DOWN
        if not self._allowed(session):
            return REPLY_RELAY_DENIED
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]) -> str:
        if len(envelope.rcpt_tos) >= self.config.max_recipients:
            return REPLY_TOO_MANY_RECIPIENTS
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content
        assert isinstance(raw, bytes), "the relay runs aiosmtpd with decode_data=False"
        mail_from = envelope.mail_from or ""
        recipients = list(envelope.rcpt_tos)
        options = [o for o in envelope.mail_options if o.upper() in _PASSED_MAIL_OPTIONS]
        self._in_flight += 1
        try:
            try:
                loop = asyncio.get_running_loop()
                prepared = await loop.run_in_executor(
                    self._executor, self._accept, mail_from, recipients, options, raw
                )
            except SQLAlchemyError as exc:
                log.error("cannot record the message from %s (%s); answered 451", mail_from, exc)
                return REPLY_DATABASE_UNAVAILABLE
            except OSError as exc:
                log.error("cannot spool the message from %s (%s); answered 451", mail_from, exc)
                return REPLY_SPOOL_FULL if is_disk_full(exc) else REPLY_SPOOL_ERROR
            except Exception:
                # A bug met by some message must not refuse it for good (aiosmtpd would answer
                # 500 and the sender bounce it): with a 451 the sender keeps it and tries again.
                log.exception("unexpected error accepting the message from %s; answered 451", mail_from)
                return REPLY_LOCAL_ERROR
            self.deliverer.submit(prepared.copies)
            self.deliverer.note(prepared.incidents, prepared.counters)
            if prepared.suppressed:
                log.info(
                    "messages to %s suppressed (unsubscribed): %s",
                    ",".join(prepared.suppressed),
                    ", ".join(str(i) for i in prepared.message_ids),
                )
            return REPLY_OK
        finally:
            self._in_flight -= 1

    def _accept(
        self, mail_from: str, recipients: list[str], options: list[str], raw: bytes
    ) -> Prepared:
        """Decide, record, render and spool a transaction; blocking, run in a thread."""
        started, cpu = time.perf_counter(), time.thread_time()
        prepared = self.processor.prepare(mail_from, recipients, raw, options)
        prepared_cpu = time.thread_time()
        try:
            self.spool.store(prepared.copies)
            if self.timings is not None:
                self.timings.transaction(prepare=prepared_cpu - cpu, spool=time.thread_time() - prepared_cpu)
        except OSError:
            try:
                self.processor.forget(prepared.message_ids)
            except SQLAlchemyError:
                log.exception("could not take back the rows of a refused message")
            raise
        log.debug("accepted %d copies in %.1f ms", len(prepared.copies), (time.perf_counter() - started) * 1000)
        return prepared
