"""Delivering spooled copies upstream: retries with exponential backoff, then giving up.

A copy refused (5xx) or given up bounces to its sender (:mod:`.bounces`): the notification is
spooled, before the copy's file is removed, and delivered like any other copy.

Runs on the relay's event loop. A few worker tasks each keep one connection to the upstream open
(aiosmtplib, never blocking the loop) and take copies from a queue; a timer puts deferred copies
back in the queue when their next attempt is due. Outcomes go to the database in batches, off the
loop, by one writer task.

The order of the bookkeeping after the upstream's 250 is: remove the spool file, then record
"sent", both by the writer task's next batch, in a thread. A crash between the 250 and the removal sends that copy again on restart (the documented
duplicate window); a crash after the removal leaves the row "queued" although the copy went out.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import socket
import ssl
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass

import aiosmtplib
from sqlalchemy.exc import SQLAlchemyError

from hotclicks.db.models import MessageStatus, utcnow

from .bounces import build_dsn, original_headers
from .config import RelayConfig
from .incidents import INCIDENT_GIVEN_UP, Incident
from .recorder import Recorder
from .spool import RETRY_TRIGGER, Spool, SpoolEntry, new_id

log = logging.getLogger("smtp_relay")

#: How often deferred copies are looked at (and the retry trigger file), in seconds.
TICK = 0.5
#: A worker's idle upstream connection is closed after this many seconds.
IDLE_CLOSE = 5.0


@dataclass
class _Bounce:
    """A delivery status notification owed to the sender of a copy: who failed, with what reply."""

    entry: SpoolEntry
    failures: list[tuple[str, str]]  #: (recipient, the upstream's reply or the last one)
    gave_up: bool


class Deliverer:
    """Delivers spooled copies upstream until each is sent, refused (5xx) or given up."""

    def __init__(
        self,
        config: RelayConfig,
        spool: Spool,
        recorder: Recorder,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.config = config
        self.spool = spool
        self.recorder = recorder
        self.clock = clock
        self._ready: asyncio.Queue[SpoolEntry] | None = None
        self._deferred: dict[str, SpoolEntry] = {}
        self._sending = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._outcomes: list[tuple[int, MessageStatus, str | None]] = []
        self._finished: list[SpoolEntry] = []
        self._incidents: list[Incident] = []
        self._counters: list[str] = []
        self._bounces: list[_Bounce] = []
        self._reporting_mta = config.hostname or socket.getfqdn()
        self._recording = False
        self._wake_writer: asyncio.Event | None = None
        self._stopping = False

    # -- life cycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Resume the spool as a crash left it, and start delivering."""
        self._ready = asyncio.Queue()
        self._wake_writer = asyncio.Event()
        entries = await asyncio.to_thread(lambda: list(self.spool.entries()))
        if entries:
            log.info("resuming the spool: %d copies waiting", len(entries))
        now = self.clock()
        for entry in entries:
            if entry.next_attempt is not None and entry.next_attempt > now:
                self._deferred[entry.id] = entry
            else:
                self._ready.put_nowait(entry)
        self._tasks = [asyncio.create_task(self._worker(i)) for i in range(self.config.upstream_connections)]
        self._tasks.append(asyncio.create_task(self._timer()))
        self._tasks.append(asyncio.create_task(self._writer()))

    async def stop(self, timeout: float = 30.0) -> None:
        """Stop delivering; copies being sent finish (within ``timeout``), the rest stay spooled."""
        self._stopping = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._sending and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._finished or self._outcomes or self._incidents or self._counters or self._bounces:
            await self._flush()

    # -- feeding and watching ------------------------------------------------------------------

    def submit(self, entries: list[SpoolEntry]) -> None:
        assert self._ready is not None, "start() the deliverer first"
        for entry in entries:
            self._ready.put_nowait(entry)

    def note(self, incidents: list[Incident], counters: list[str]) -> None:
        """Record incidents and counters with the next batch of outcomes."""
        if incidents or counters:
            self._incidents.extend(incidents)
            self._counters.extend(counters)
            self._wake()

    def retry_now(self) -> int:
        """Make every deferred copy due now; how many there were."""
        assert self._ready is not None
        entries = list(self._deferred.values())
        self._deferred.clear()
        for entry in entries:
            self._ready.put_nowait(entry)
        return len(entries)

    def busy(self) -> bool:
        """Whether a copy is due or being sent, or an outcome is not recorded yet."""
        return bool(
            (self._ready and not self._ready.empty())
            or self._sending
            or self._finished
            or self._outcomes
            or self._incidents
            or self._counters
            or self._bounces
            or self._recording
        )

    @property
    def deferred(self) -> list[SpoolEntry]:
        return list(self._deferred.values())

    # -- workers -------------------------------------------------------------------------------

    async def _timer(self) -> None:
        trigger = self.spool.directory / RETRY_TRIGGER
        while True:
            await asyncio.sleep(TICK)
            if trigger.exists():
                trigger.unlink(missing_ok=True)
                count = self.retry_now()
                log.info("retry requested: %d deferred copies retried now", count)
                continue
            now = self.clock()
            for entry in list(self._deferred.values()):
                due = entry.next_attempt
                if due is None or due <= now:
                    del self._deferred[entry.id]
                    assert self._ready is not None
                    self._ready.put_nowait(entry)

    async def _worker(self, number: int) -> None:
        assert self._ready is not None
        client: aiosmtplib.SMTP | None = None
        try:
            while True:
                try:
                    entry = await asyncio.wait_for(self._ready.get(), IDLE_CLOSE if client else None)
                except asyncio.TimeoutError:
                    client = await _close(client)
                    continue
                self._sending += 1
                try:
                    client = await self._deliver(entry, client)
                except Exception:  # a bug must not kill the worker; the copy stays spooled
                    log.exception("unexpected error delivering spool copy %s; retrying it later", entry.id)
                    client = await _close(client)
                    self._defer(entry, "relay error while delivering (see the relay's log)")
                finally:
                    self._sending -= 1
        finally:
            await _close(client)

    def _connect_options(self) -> dict[str, object]:
        config = self.config
        host, port = config.upstream
        options: dict[str, object] = {
            "hostname": host,
            "port": port,
            "timeout": config.upstream_timeout,
            "local_hostname": config.hostname,
            "use_tls": config.upstream_security == "tls",
            "start_tls": config.upstream_security == "starttls",
            "validate_certs": config.upstream_verify,
        }
        if config.upstream_ca_file:
            options["cert_bundle"] = config.upstream_ca_file
        if config.upstream_security != "none" and not config.upstream_verify:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            options["tls_context"] = context
        if config.upstream_username:
            options["username"] = config.upstream_username
            options["password"] = config.upstream_password
        return options

    async def _deliver(self, entry: SpoolEntry, client: aiosmtplib.SMTP | None) -> aiosmtplib.SMTP | None:
        """One attempt at one copy; returns the connection, still open if it is usable."""
        host, port = self.config.upstream
        if client is None or not client.is_connected:
            client = aiosmtplib.SMTP(**self._connect_options())  # type: ignore[arg-type]
            try:
                await client.connect()
            except aiosmtplib.SMTPResponseException as exc:
                client.close()  # the TCP connection may be up even though the greeting failed
                self._temporary_or_failed(entry, exc.code, f"{exc.code} {exc.message}", entry.recipients)
                return None
            except (aiosmtplib.SMTPException, OSError) as exc:
                client.close()
                self._defer(entry, f"upstream {host}:{port} unreachable: {exc}")
                return None
        try:
            data = entry.data if entry.data is not None else await asyncio.to_thread(self.spool.data, entry)
        except OSError as exc:
            self._defer(entry, f"spool file unreadable: {exc}")
            return client
        try:
            errors, reply = await client.sendmail(
                _reverse_path(entry.mail_from), entry.recipients, data, mail_options=entry.mail_options
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            refusal = exc.recipients[0]
            errors = {r.recipient: (r.code, r.message) for r in exc.recipients}
            self._partial(entry, errors, f"{refusal.code} {refusal.message}")
            with suppress(aiosmtplib.SMTPException, OSError):
                await client.rset()
            return client
        except aiosmtplib.SMTPResponseException as exc:
            self._temporary_or_failed(entry, exc.code, f"{exc.code} {exc.message}", entry.recipients)
            return await _close(client)
        except (aiosmtplib.SMTPException, OSError) as exc:
            self._defer(entry, f"upstream connection lost: {exc}")
            return await _close(client)
        if errors:
            self._partial(entry, {r: (resp.code, resp.message) for r, resp in errors.items()}, reply)
        else:
            self._done(entry, MessageStatus.SENT, f"250 {reply}", entry.recipients)
        return client

    # -- outcomes ------------------------------------------------------------------------------

    def _partial(self, entry: SpoolEntry, errors: dict[str, tuple[int, str]], reply: object) -> None:
        """Some recipients refused: the delivered and 5xx ones are done, the 4xx ones retried."""
        delivered = [r for r in entry.recipients if r not in errors]
        failed = [r for r, (code, _) in errors.items() if 500 <= code < 600]
        later = [r for r, (code, _) in errors.items() if not 500 <= code < 600]
        for address in failed:
            code, text = errors[address]
            log.warning("spool copy %s: upstream refused %s: %s %s", entry.id, address, code, text)
        self._bounce(entry, [(address, "{} {}".format(*errors[address])) for address in failed], gave_up=False)
        if not later:
            status = MessageStatus.SENT if delivered else MessageStatus.FAILED
            code, text = next(iter(errors.values()))
            self._done(entry, status, f"{code} {text}", delivered + failed)
            return
        code, text = errors[later[0]]
        entry.recipients = later
        self._defer(entry, f"{code} {text}")

    def _temporary_or_failed(self, entry: SpoolEntry, code: int, reply: str, recipients: list[str]) -> None:
        if 500 <= code < 600:
            self._bounce(entry, [(address, reply) for address in recipients], gave_up=False)
            self._done(entry, MessageStatus.FAILED, reply, recipients)
        else:
            self._defer(entry, reply)

    def _done(self, entry: SpoolEntry, status: MessageStatus, reply: str, recipients: list[str]) -> None:
        self._finished.append(entry)  # its spool file goes with the next batch, before the outcome
        self._log(entry, status, reply, recipients)
        if entry.message_id is not None:
            self._outcomes.append((entry.message_id, status, reply))
        if status is MessageStatus.FAILED and entry.message_id is None:
            self._incidents.append(
                Incident(INCIDENT_GIVEN_UP, f"untracked copy refused by the upstream: {reply}", entry.mail_from, recipients)
            )
        self._wake()

    def _defer(self, entry: SpoolEntry, reply: str) -> None:
        now = self.clock()
        entry.attempts += 1
        entry.last_reply = reply
        entry.data = None  # read it back from the spool when it is due
        if now - entry.accepted >= self.config.max_queue_age:
            reason = f"given up after {entry.attempts} attempts in {now - entry.accepted}; last reply: {reply}"
            self._bounce(entry, [(address, reply) for address in entry.recipients], gave_up=True)
            self._done(entry, MessageStatus.FAILED, reason, entry.recipients)
            self._incidents.append(
                Incident(INCIDENT_GIVEN_UP, reason, entry.mail_from, entry.recipients, entry.message_id)
            )
            return
        delay = min(
            self.config.retry_delay * (2 ** (entry.attempts - 1)), self.config.retry_max_delay
        )
        entry.next_attempt_at = (now + delay).isoformat()
        try:
            self.spool.save_state(entry)
        except OSError:
            log.exception("could not save the retry state of spool copy %s", entry.id)
        self._log(entry, MessageStatus.DEFERRED, reply, entry.recipients)
        if entry.message_id is not None:
            self._outcomes.append((entry.message_id, MessageStatus.DEFERRED, reply))
            self._wake()
        if not self._stopping:
            self._deferred[entry.id] = entry

    def _bounce(self, entry: SpoolEntry, failures: list[tuple[str, str]], gave_up: bool) -> None:
        """Owe the sender a notification; never for a bounce (``<>``), nor with ``--no-bounces``.

        It is spooled by the writer's next batch, before the failed copy's file is removed."""
        if failures and self.config.bounces and _reverse_path(entry.mail_from):
            self._bounces.append(_Bounce(entry, failures, gave_up))
            self._wake()

    def _log(self, entry: SpoolEntry, status: MessageStatus, reply: str, recipients: list[str]) -> None:
        log.info(
            "message %s (spool %s) delivery=%s execution=%s to=%s: %s %s",
            entry.message_id if entry.message_id is not None else "untracked",
            entry.id,
            entry.delivery or "-",
            entry.execution_id if entry.execution_id is not None else "-",
            ",".join(recipients),
            status.value,
            reply,
        )

    def _wake(self) -> None:
        if self._wake_writer is not None:
            self._wake_writer.set()

    async def _writer(self) -> None:
        assert self._wake_writer is not None
        while True:
            await self._wake_writer.wait()
            self._wake_writer.clear()
            if not await self._flush():
                await asyncio.sleep(1.0)  # the database is down: keep the batch, try again
                self._wake()

    async def _flush(self) -> bool:
        finished, outcomes, incidents, counters = self._finished, self._outcomes, self._incidents, self._counters
        self._finished, self._outcomes, self._incidents, self._counters = [], [], [], []
        bounces, self._bounces = self._bounces, []
        notifications: list[SpoolEntry] = []
        self._recording = True
        try:
            await asyncio.to_thread(
                self._remove_and_record, finished, outcomes, incidents, counters, bounces, notifications
            )
            return True
        except SQLAlchemyError:
            log.exception("could not record %d delivery outcomes; will retry", len(outcomes))
            self._outcomes[:0], self._incidents[:0], self._counters[:0] = outcomes, incidents, counters
            return False
        finally:
            self._recording = False
            if notifications and self._ready is not None:
                self.submit(notifications)  # spooled even when the database write failed

    def _remove_and_record(
        self,
        finished: list[SpoolEntry],
        outcomes: list[tuple[int, MessageStatus, str | None]],
        incidents: list[Incident],
        counters: list[str],
        bounces: list[_Bounce],
        notifications: list[SpoolEntry],
    ) -> None:
        """Spool the notifications owed, remove the spool files of copies that are done, then
        record their outcomes; blocking (file system and database), run off the loop, a batch at a
        time. A notification is spooled before its copy's file goes, so a crash loses neither."""
        for bounce in bounces:
            try:
                notification = self._spool_bounce(bounce)
            except Exception:  # a bug must not stop the recording of outcomes
                log.exception("could not make the bounce of spool copy %s; none is sent", bounce.entry.id)
                continue
            if notification is not None:
                notifications.append(notification)
        for entry in finished:
            try:
                self.spool.remove(entry)
            except OSError:
                log.exception("could not remove spool copy %s; it may be sent again on restart", entry.id)
        self.recorder.record(outcomes, incidents, counters)

    def _spool_bounce(self, bounce: _Bounce) -> SpoolEntry | None:
        """Build the notification from the copy's spooled bytes and put it in the spool; blocking."""
        entry = bounce.entry
        try:
            data = self.spool.data(entry)
        except OSError as exc:  # gone already: still say what failed, without the header fields
            log.warning("spool copy %s unreadable for its bounce: %s", entry.id, exc)
            data = b""
        now = self.clock()
        notification = SpoolEntry(
            id=new_id(),
            mail_from="",
            recipients=[entry.mail_from],
            accepted_at=now.isoformat(),
            mail_options=["SMTPUTF8"] if not entry.mail_from.isascii() else [],
            note=f"bounce of spool copy {entry.id}",
            data=build_dsn(
                reporting_mta=self._reporting_mta,
                sender=entry.mail_from,
                arrival=entry.accepted,
                failures=bounce.failures,
                gave_up=bounce.gave_up,
                headers=original_headers(data, self.config.tracking_base),
                now=now,
            ),
        )
        try:
            self.spool.store([notification])
        except OSError:
            log.exception("could not spool the bounce of spool copy %s to %s; none is sent", entry.id, entry.mail_from)
            return None
        log.info(
            "bounce to %s for message %s (spool %s) to=%s: spooled as %s",
            entry.mail_from,
            entry.message_id if entry.message_id is not None else "untracked",
            entry.id,
            ",".join(address for address, _ in bounce.failures),
            notification.id,
        )
        return notification


def _reverse_path(mail_from: str) -> str:
    """The sender for aiosmtplib, which refuses aiosmtpd's spelling of the null sender ("<>")."""
    return "" if mail_from == "<>" else mail_from


async def _close(client: aiosmtplib.SMTP | None) -> None:
    """Say QUIT when the connection still works, and release its socket whatever happens
    (also when a stopping relay cancels the QUIT)."""
    if client is None:
        return None
    try:
        if client.is_connected:
            await asyncio.wait_for(client.quit(), 5)
    except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError):
        pass
    finally:
        client.close()
    return None
