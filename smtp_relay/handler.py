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

from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy.exc import SQLAlchemyError

from hotclicks.models import utcnow

from .config import RelayConfig
from .delivery import Deliverer
from .processing import MessageProcessor, Prepared
from .spool import Spool, SpoolEntry, is_disk_full, new_id

log = logging.getLogger("smtp_relay")

#: Replies, named so that tests and logs speak of the same thing (aiosmtpd's statuscodes style).
REPLY_OK = "250 2.0.0 OK: queued"
REPLY_SPOOL_FULL = "451 4.3.1 Insufficient system storage, try again later"
REPLY_SPOOL_ERROR = "451 4.3.0 Local error writing the message, try again later"
REPLY_DATABASE_UNAVAILABLE = "451 4.3.0 Tracking database unavailable, try again later"
REPLY_TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
REPLY_RELAY_DENIED = "550 5.7.1 Relaying denied: authenticate first or send from an allowed network"
REPLY_SHUTTING_DOWN = "421 4.3.2 Relay shutting down, try again later"

#: Threads accepting transactions (rewriting, recording, fsyncing). Most of their time is spent
#: waiting for a disk or the database, so more than asyncio's default of CPUs + 4.
ACCEPT_THREADS = 32

#: MAIL FROM parameters passed on to the upstream server as they came.
_PASSED_MAIL_OPTIONS = ("SMTPUTF8", "BODY=8BITMIME")


class RelaySMTP(SMTP):
    """aiosmtpd's SMTP, accepting the long lines real mail has (some exceed RFC 5322's 998)."""

    line_length_limit = 256 * 1024


class RelayHandler:
    """The relay's aiosmtpd handler; owns the spool and the deliverer."""

    def __init__(self, config: RelayConfig, processor: MessageProcessor, spool: Spool) -> None:
        self.config = config
        self.processor = processor
        self.spool = spool
        self.deliverer = Deliverer(config, spool, processor)
        self._networks = config.networks
        self._in_flight = 0
        self._closing = False
        self._executor: ThreadPoolExecutor | None = None

    # -- life cycle (on the relay's loop) ------------------------------------------------------

    async def start(self) -> None:
        self._executor = ThreadPoolExecutor(ACCEPT_THREADS, thread_name_prefix="relay-accept")
        await self.deliverer.start()

    async def stop(self, timeout: float = 30.0) -> None:
        """Refuse new mail, let transactions in flight finish, stop delivering; the rest waits in
        the spool for the next start."""
        self._closing = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._in_flight and loop.time() < deadline:
            await asyncio.sleep(0.01)
        await self.deliverer.stop(max(0.0, deadline - loop.time()))
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

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
                prepared, entries = await loop.run_in_executor(
                    self._executor, self._accept, mail_from, recipients, options, raw
                )
            except SQLAlchemyError as exc:
                log.error("cannot record the message from %s (%s); answered 451", mail_from, exc)
                return REPLY_DATABASE_UNAVAILABLE
            except OSError as exc:
                log.error("cannot spool the message from %s (%s); answered 451", mail_from, exc)
                return REPLY_SPOOL_FULL if is_disk_full(exc) else REPLY_SPOOL_ERROR
            self.deliverer.submit(entries)
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
    ) -> tuple[Prepared, list[SpoolEntry]]:
        """Rewrite, record and spool a transaction; blocking, run in a thread."""
        started = time.perf_counter()
        prepared = self.processor.prepare(mail_from, recipients, raw)
        accepted_at = utcnow().isoformat()
        entries = [
            SpoolEntry(
                id=new_id(),
                mail_from=mail_from,
                recipients=copy.recipients,
                accepted_at=accepted_at,
                mail_options=options,
                message_id=copy.message_id,
                delivery=copy.delivery,
                execution_id=copy.execution_id,
                note=copy.note,
                data=copy.data,
            )
            for copy in prepared.copies
        ]
        try:
            self.spool.store(entries)
        except OSError:
            try:
                self.processor.forget(prepared.message_ids)
            except SQLAlchemyError:
                log.exception("could not take back the rows of a refused message")
            raise
        log.debug("accepted %d copies in %.1f ms", len(entries), (time.perf_counter() - started) * 1000)
        return prepared, entries
