"""Turning one accepted SMTP transaction into the copies to forward: the relay's real work.

This is blocking code (CPU for the rewriting, the database for the bookkeeping); the handler runs
it in a worker thread so the event loop keeps serving other clients.

A message the relay cannot understand is never dropped: it goes on unchanged, and the reason is
logged and recorded as a relay incident.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, delete, insert
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from hotclicks import links
from hotclicks.errors import MimeError
from hotclicks.executions import HEADERS, MarkError, Marks, execution_for, read_marks
from hotclicks.mime import ParsedMessage, edit_headers, read_headers
from hotclicks.db.models import (
    DeliveryType,
    Execution,
    Message,
    MessageStatus,
    ProfileCopy,
    RelayCounter,
    RelayIncident,
    TestProfile,
    TrackedUrl,
    utcnow,
)
from hotclicks.db.sending import LAST_MESSAGE_RESOLUTION, delivery_id, ensure_tracked_urls, ensure_variant, resolve_execution_id
from hotclicks.links import LinkSpec, variant_signature
from hotclicks.tokens import TokenSigner

from . import records
from .config import RelayConfig
from .dkim import DkimSigner
from .rewriting import CopyMaker, CopyRenderer, LinkOptions, ScannedPart, scan_message, storable

log = logging.getLogger("smtp_relay")

#: RelayCounter names.
COUNTER_UNTRACKED = "untracked"
#: RelayIncident kinds.
INCIDENT_UNPARSED = "forwarded-unchanged"
INCIDENT_DKIM_KEPT = "dkim-kept"
INCIDENT_DKIM_STRIPPED = "dkim-stripped"
INCIDENT_DKIM_RESIGNED = "dkim-resigned"
INCIDENT_GIVEN_UP = "given-up"
#: Status reply of a recipient who was not sent a marketing message because they opted out.
REPLY_SUPPRESSED = "not sent: the recipient unsubscribed"

_UNSUBSCRIBE_HEADERS = ("List-Unsubscribe", "List-Unsubscribe-Post")
_DKIM_HEADER = "DKIM-Signature"
_ANGLE = re.compile(r"<([^<>]*)>")
#: Any line break. The relay's SMTP client (aiosmtplib) sends every bare CR or LF as CRLF.
_LINE_BREAK = re.compile(rb"\r\n|\n|\r")


@dataclass
class Outgoing:
    """One copy to forward: to whom, the exact bytes, and its broad log row (None if untracked)."""

    recipients: list[str]
    data: bytes
    message_id: int | None = None
    note: str | None = None
    delivery: str | None = None
    execution_id: int | None = None


@dataclass
class Incident:
    kind: str
    reason: str
    mail_from: str | None = None
    recipients: Sequence[str] = ()
    message_id: int | None = None
    message_id_header: str | None = None


@dataclass
class Prepared:
    """What a transaction became: the copies to spool and what to record without hurry."""

    copies: list[Outgoing]
    #: Broad log rows written for it (to take back if the copies cannot be spooled).
    message_ids: list[int] = field(default_factory=list)
    incidents: list[Incident] = field(default_factory=list)
    counters: list[str] = field(default_factory=list)
    suppressed: list[str] = field(default_factory=list)


@dataclass(eq=False)
class _Job:
    """One transaction's bookkeeping, waiting for its group commit."""

    marks: Marks
    recipients: list[str]
    specs: list[LinkSpec]
    signature: str
    sample_html: str | None
    sample_text: str | None
    message_id_header: str | None
    incidents: list[Incident]
    now: dt.datetime
    finished: bool = False
    result: Any = None
    error: BaseException | None = None

    def finish(self, result: Any = None, error: BaseException | None = None) -> None:
        self.result, self.error, self.finished = result, error, True

    def outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.result


@dataclass
class _Learned:
    """What a batch's transaction found out, remembered once it is committed."""

    jobs: list[_Job]
    results: dict[int, Any] = field(default_factory=dict)
    deliveries: dict[str, int] = field(default_factory=dict)
    known: dict[tuple[int, str], tuple[dict[tuple[str, str], TrackedUrl], int]] = field(default_factory=dict)
    executions: dict[tuple[int, str], tuple[int, dt.datetime]] = field(default_factory=dict)


@dataclass(frozen=True)
class _Row:
    address: str
    message_id: int
    suppressed: bool


def _mailto_of(list_unsubscribe: str | None) -> str | None:
    """The sender's own mailto unsubscribe address, kept beside ours."""
    for target in _ANGLE.findall(list_unsubscribe or ""):
        target = target.strip()
        if target.lower().startswith("mailto:") and target.isascii() and target.isprintable():
            return target[len("mailto:"):]
    return None


class MessageProcessor:
    """Resolves a message's execution, records it, and rewrites one copy per recipient."""

    def __init__(
        self,
        config: RelayConfig,
        sessions: sessionmaker[Session],
        signer: TokenSigner,
        clock: Callable[[], dt.datetime] = utcnow,
        dkim_signer: DkimSigner | None = None,
        renderer: CopyRenderer | None = None,
    ) -> None:
        self.config = config
        self.sessions = sessions
        self.signer = signer
        self.clock = clock
        self.dkim = dkim_signer
        #: (execution id, variant signature) -> its tracked URLs and variant id. Tracked URLs and
        #: variants are never deleted, so once seen they need not be looked up again.
        self._known: dict[tuple[int, str], tuple[dict[tuple[str, str], TrackedUrl], int]] = {}
        #: Delivery code -> id. Deliveries are never deleted.
        self._deliveries: dict[str, int] = {}
        #: (delivery id, execution key) -> (execution id, when this relay last resolved it), for
        #: the executions whose key the message's marks decide alone (all but a recurring
        #: delivery without a run header, whose run depends on the latest execution).
        self._executions: dict[tuple[int, str], tuple[int, dt.datetime]] = {}
        self._group = threading.Condition()
        self._waiting: list[_Job] = []
        self._leading = False
        self._link_options = LinkOptions(
            frozenset(config.personal_params), frozenset(config.excluded_domains), (config.tracking_base + "/",)
        )
        self.renderer = renderer or CopyRenderer(
            CopyMaker(config.secret_key, config.fallback_keys, config.base_url, config.open_pixel, self._link_options),
            config.rewrite_workers,
        )

    # -- the work -----------------------------------------------------------------------------

    def prepare(self, mail_from: str, recipients: Sequence[str], raw: bytes) -> Prepared:
        """The copies to forward for a transaction; blocking, run it in a thread."""
        recipients = list(recipients)
        if not raw.count(b"\r") == raw.count(b"\n") == raw.count(b"\r\n"):
            # Parse what the upstream will get: a bare CR read as nothing here but sent as a
            # line break would move header fields into the body or break a boundary line.
            raw = _LINE_BREAK.sub(b"\r\n", raw)
        try:
            headers = read_headers(raw)
            marks = read_marks(headers)
        except (MimeError, MarkError) as exc:
            log.warning("forwarding unchanged, untracked: %s", exc)
            return Prepared(
                [Outgoing(recipients, raw, note=f"untracked: {exc}")],
                incidents=[Incident(INCIDENT_UNPARSED, str(exc), mail_from, recipients)],
                counters=[COUNTER_UNTRACKED],
            )
        if marks is None:
            return Prepared([Outgoing(recipients, raw, note="untracked")], counters=[COUNTER_UNTRACKED])
        message_id_header = storable(headers.get("Message-ID") or "")[:998] or None
        remove = list(HEADERS)
        dkim_incident = None
        if headers.get(_DKIM_HEADER) is not None:
            if self.dkim is not None:
                reason = "the message was DKIM-signed; the relay removed that signature and signed it with its own key"
                dkim_incident = Incident(INCIDENT_DKIM_RESIGNED, reason, mail_from, recipients, None, message_id_header)
            elif self.config.dkim_signed == "strip":
                reason = "the message was DKIM-signed; the relay removed that signature (--dkim-signed strip)"
                dkim_incident = Incident(INCIDENT_DKIM_STRIPPED, reason, mail_from, recipients, None, message_id_header)
            else:
                reason = (
                    "forwarded unchanged, not tracked: the message was DKIM-signed and the relay has "
                    "no key to sign it again (--dkim-key-file) nor leave to strip it (--dkim-signed strip)"
                )
                log.info("delivery %s: %s", marks.delivery, reason)
                return Prepared(
                    [Outgoing(recipients, raw, note="untracked: DKIM-signed", delivery=marks.delivery)],
                    incidents=[Incident(INCIDENT_DKIM_KEPT, reason, mail_from, recipients, None, message_id_header)],
                    counters=[COUNTER_UNTRACKED],
                )
            remove.append(_DKIM_HEADER)
        marketing = marks.type is not DeliveryType.TRANSACTIONAL
        mailto = None
        if marketing:
            mailto = _mailto_of(headers.get("List-Unsubscribe"))
            remove.extend(_UNSUBSCRIBE_HEADERS)
        stripped = edit_headers(raw, remove=remove)
        incidents = [dkim_incident] if dkim_incident else []
        try:
            parsed, scanned = scan_message(stripped, self._link_options)
        except MimeError as exc:
            log.warning("delivery %s: forwarding without rewriting links: %s", marks.delivery, exc)
            incidents.append(Incident(INCIDENT_UNPARSED, f"links not rewritten: {exc}", mail_from, recipients, None, message_id_header))
            parsed, scanned = None, None
        execution_id, rows, tracked = self._record(marks, recipients, scanned or [], message_id_header, incidents)
        try:
            copies, failed = self._copies(rows, stripped, parsed, scanned, tracked, marketing, mailto, marks.delivery, execution_id)
        except Exception:
            # The rows are committed; a transaction answered 451 must leave none behind.
            try:
                self.forget([row.message_id for row in rows])
            except SQLAlchemyError:
                log.exception("could not take back the rows of a refused message")
            raise
        return Prepared(
            copies,
            incidents=[
                Incident(INCIDENT_UNPARSED, reason, mail_from, [address], message_id, message_id_header)
                for address, message_id, reason in failed
            ],
            message_ids=[row.message_id for row in rows],
            suppressed=[row.address for row in rows if row.suppressed],
        )

    def _copies(
        self,
        rows: list[_Row],
        stripped: bytes,
        parsed: ParsedMessage | None,
        scanned: list[ScannedPart] | None,
        tracked: dict[tuple[str, str], TrackedUrl],
        marketing: bool,
        mailto: str | None,
        delivery: str,
        execution_id: int,
    ) -> tuple[list[Outgoing], list[tuple[str, int, str]]]:
        """Each recipient's copy; and (address, message id, reason) of those sent without tracking."""
        sent = [row for row in rows if not row.suppressed]
        rendered: list[bytes | MimeError] = []
        if parsed is not None and scanned is not None:
            targets = {key: (url.id, url.url) for key, url in tracked.items()}
            rendered = self.renderer.render(parsed, scanned, [row.message_id for row in sent], targets)
        copies, failed = [], []
        for i, row in enumerate(sent):
            data, note = stripped, None
            result = rendered[i] if rendered else None
            if result is None:
                note = "links not rewritten: the message could not be parsed"
            elif isinstance(result, MimeError):
                log.warning("message %s: forwarding without rewriting links: %s", row.message_id, result)
                note = f"links not rewritten: {result}"
                failed.append((row.address, row.message_id, note))
            else:
                data = result
            if marketing:
                unsubscribe = links.list_unsubscribe_headers(
                    self.signer, self.config.base_url, row.message_id, mailto=mailto
                )
                data = edit_headers(data, add=list(unsubscribe.items()))
            if self.dkim is not None:
                data = self.dkim.sign(data)
            copies.append(Outgoing([row.address], data, row.message_id, note, delivery, execution_id))
        return copies, failed

    def _record(
        self,
        marks: Marks,
        recipients: list[str],
        scanned: list[ScannedPart],
        message_id_header: str | None,
        incidents: list[Incident],
    ) -> tuple[int, list[_Row], dict[tuple[str, str], TrackedUrl]]:
        specs = [spec for s in scanned for spec in s.specs]
        sample_html = next((storable(s.part.text) for s in scanned if s.name == "html"), None)
        sample_text = next((storable(s.part.text) for s in scanned if s.name == "text"), None)
        job = _Job(
            marks=marks,
            recipients=recipients,
            specs=specs,
            signature=variant_signature(specs),
            sample_html=sample_html,
            sample_text=sample_text,
            message_id_header=message_id_header,
            incidents=incidents,
            now=self.clock(),
        )
        return self._commit_grouped(job)

    # -- group commit -------------------------------------------------------------------------
    # Transactions arriving while another batch is being committed wait, then the first of them
    # writes all that waited in one database transaction and one commit. Nobody returns (and so
    # nobody is answered 250) before the commit that holds its rows has returned. If a batch
    # fails, each of its transactions is tried again alone, so one bad message cannot make the
    # others fail.

    def _commit_grouped(self, job: _Job) -> tuple[int, list[_Row], dict[tuple[str, str], TrackedUrl]]:
        with self._group:
            self._waiting.append(job)
            while self._leading and not job.finished:
                self._group.wait()
            if not job.finished:
                self._leading = True
                batch, self._waiting = self._waiting, []
            else:
                batch = []
        if batch:
            try:
                self._commit_batch(batch)
            finally:
                with self._group:
                    for other in batch:
                        if not other.finished:  # only if something else than Exception flew
                            other.finish(error=RuntimeError("the batch holding this transaction was interrupted"))
                    self._leading = False
                    self._group.notify_all()
        return job.outcome()

    def _commit_batch(self, batch: list[_Job]) -> None:
        try:
            learned = self._write([*batch])
        except Exception as exc:
            if len(batch) == 1:
                batch[0].finish(error=exc)
                return
            for job in batch:
                try:
                    learned = self._write([job])
                except Exception as exc_alone:
                    job.finish(error=exc_alone)
                else:
                    self._learn(learned)
            return
        self._learn(learned)

    def _learn(self, learned: _Learned) -> None:
        """Remember, once committed, what never changes: delivery ids, tracked URLs, variants."""
        if len(self._deliveries) > 10_000:
            self._deliveries.clear()
        self._deliveries.update(learned.deliveries)
        if len(self._known) > 10_000:
            self._known.clear()
        self._known.update(learned.known)
        if len(self._executions) > 10_000:
            self._executions.clear()
        self._executions.update(learned.executions)
        for job in learned.jobs:
            job.finish(result=learned.results[id(job)])

    def _write(self, jobs: list[_Job]) -> _Learned:
        """Record ``jobs`` in one transaction; what they became, applied once it is committed."""
        learned = _Learned(jobs)
        with self.sessions.begin() as session:
            connection = session.connection()
            for job in jobs:
                learned.results[id(job)] = self._write_one(session, connection, job, learned)
        return learned

    def _execution_id(self, connection: Connection, job: _Job, delivery: int, learned: _Learned) -> int:
        """The message's execution: from memory when this relay resolved it less than
        LAST_MESSAGE_RESOLUTION ago and the marks alone decide it (no statement per message),
        else from the database (which moves its last_message_at)."""
        marks = job.marks
        key = None
        if marks.type is not DeliveryType.RECURRING or marks.run is not None:
            key = (delivery, execution_for(marks, job.now, period=self.config.transactional_period).key)
            seen = learned.executions.get(key) or self._executions.get(key)
            if seen is not None and dt.timedelta(0) <= job.now - seen[1] < LAST_MESSAGE_RESOLUTION:
                return seen[0]
        execution_id = resolve_execution_id(
            connection,
            marks,
            job.now,
            delivery=delivery,
            period=self.config.transactional_period,
            quiet_gap=self.config.quiet_gap,
        )
        if key is not None:
            learned.executions[key] = (execution_id, job.now)
        return execution_id

    def _write_one(
        self, session: Session, connection: Connection, job: _Job, learned: _Learned
    ) -> tuple[int, list[_Row], dict[tuple[str, str], TrackedUrl]]:
        marks = job.marks
        marketing = marks.type is not DeliveryType.TRANSACTIONAL
        delivery = self._deliveries.get(marks.delivery) or learned.deliveries.get(marks.delivery)
        if delivery is None:
            delivery = delivery_id(connection, marks)
        learned.deliveries[marks.delivery] = delivery
        execution_id = self._execution_id(connection, job, delivery, learned)
        execution: Execution | None = None
        known = self._known.get((execution_id, job.signature)) or learned.known.get((execution_id, job.signature))
        if known is None:
            execution = session.get(Execution, execution_id)
            assert execution is not None
            tracked = ensure_tracked_urls(session, execution, job.specs)
            known_variant = None
        else:
            tracked, known_variant = known
        facts = records.recipient_facts(connection, job.recipients, marks.recipient_id)
        rows = []
        for address in job.recipients:
            recipient = facts[address.lower()]
            keep = recipient.profile_id is not None or self.config.keep_recipient_samples
            if known_variant is not None and recipient.profile_id is None:
                variant_id = known_variant
            else:
                if execution is None:
                    execution = session.get(Execution, execution_id)
                    assert execution is not None
                profile = session.get(TestProfile, recipient.profile_id) if recipient.profile_id is not None else None
                variant_id = ensure_variant(
                    session,
                    execution,
                    job.signature,
                    html=job.sample_html if keep else None,
                    text=job.sample_text if keep else None,
                    test_profile=profile,
                ).id
                if keep:  # a sample is in place: later recipients need not look
                    known_variant = variant_id
            suppressed = marketing and recipient.unsubscribed
            rows.append(
                {
                    "execution_id": execution_id,
                    "recipient_id": recipient.id,
                    "variant_id": variant_id,
                    "status": MessageStatus.SUPPRESSED if suppressed else MessageStatus.QUEUED,
                    "status_reply": REPLY_SUPPRESSED if suppressed else None,
                    "message_id_header": job.message_id_header,
                    "created_at": job.now,
                }
            )
        session.flush()  # a variant's sample, before the messages that point at it
        message_ids = records.insert_messages(connection, rows)
        # Each test profile's own copy, even when its variant has a sample already: personalised
        # content differs inside a variant, and the report shows a profile what it received.
        copies = [
            {
                "message_id": message_id,
                "execution_id": execution_id,
                "test_profile_id": facts[address.lower()].profile_id,
                "html": job.sample_html,
                "text": job.sample_text,
                "created_at": job.now,
            }
            for address, message_id, row in zip(job.recipients, message_ids, rows)
            if facts[address.lower()].profile_id is not None and row["status"] is not MessageStatus.SUPPRESSED
        ]
        if copies:
            connection.execute(insert(ProfileCopy), copies)
        _add_incidents(session, job.incidents)
        session.flush()
        if known_variant is not None:
            learned.known[(execution_id, job.signature)] = (tracked, known_variant)
        return (
            execution_id,
            [
                _Row(address, message_id, row["status"] is MessageStatus.SUPPRESSED)
                for address, message_id, row in zip(job.recipients, message_ids, rows)
            ],
            tracked,
        )

    # -- bookkeeping after the fact -------------------------------------------------------------

    def forget(self, message_ids: Sequence[int]) -> None:
        """Take back the broad log rows of a transaction that was refused after all (451)."""
        if message_ids:
            with self.sessions.begin() as session:
                session.execute(delete(ProfileCopy).where(ProfileCopy.message_id.in_(list(message_ids))))
                session.execute(delete(Message).where(Message.id.in_(list(message_ids))))

    def record(
        self,
        outcomes: Iterable[tuple[int, MessageStatus, str | None]] = (),
        incidents: Iterable[Incident] = (),
        counters: Iterable[str] = (),
    ) -> None:
        """Write delivery outcomes, incidents and counters in one transaction; blocking."""
        with self.sessions.begin() as session:
            records.set_statuses(session.connection(), list(outcomes), self.clock())
            _add_incidents(session, incidents)
            day = self.clock().strftime("%Y-%m-%d")
            for name, count in Counter(counters).items():
                _increment(session, day, name, count)


def _add_incidents(session: Session, incidents: Iterable[Incident]) -> None:
    for incident in incidents:
        session.add(
            RelayIncident(
                at=utcnow(),
                kind=incident.kind,
                reason=incident.reason,
                message_id=incident.message_id,
                message_id_header=incident.message_id_header,
                mail_from=(incident.mail_from or "")[:320] or None,
                recipients=",".join(incident.recipients) or None,
            )
        )


def _increment(session: Session, day: str, name: str, count: int) -> None:
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(RelayCounter).values(day=day, name=name, value=count)
    session.execute(
        statement.on_conflict_do_update(
            index_elements=["day", "name"], set_={"value": RelayCounter.value + count}
        )
    )
