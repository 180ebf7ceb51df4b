"""The relay's database: every statement the relay runs, and the group commit of its transactions.

On the hot path, lean Core statements built once, on one connection: the delivery and the
execution come from :mod:`hotclicks.db.sending`'s Core functions (``delivery_id``,
``resolve_execution_id``); one statement reads every recipient of a transaction with their test
profile and opt-out (what ``sending.get_recipient``, ``test_profile_for`` and ``is_unsubscribed``
tell one at a time), one inserts the transaction's message rows, with the same rule (``INSERT ...
ON CONFLICT DO NOTHING`` then read back, so the database's unique constraints decide who wins).
The rare paths (a new execution's tracked URLs, a content variant's sample) stay with the ORM
functions of :mod:`hotclicks.db.sending`.

Blocking code: the relay calls it from threads, never from its event loop.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, delete, exists, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from hotclicks import db
from hotclicks.executions import Marks, execution_for
from hotclicks.db.models import (
    DeliveryType,
    Execution,
    Message,
    MessageStatus,
    OptOut,
    ProfileCopy,
    Recipient,
    RelayCounter,
    RelayIncident,
    TestProfile,
    TrackedUrl,
    utcnow,
)
from hotclicks.db.sending import (
    LAST_MESSAGE_RESOLUTION,
    delivery_id,
    ensure_tracked_urls,
    ensure_variant,
    resolve_execution_id,
)
from hotclicks.db.upsert import upsert
from hotclicks.links import LinkSpec, variant_signature

from .config import RelayConfig
from .incidents import Incident

__all__ = ["RecipientFacts", "Recorded", "RecordedRow", "Recorder", "RelayDatabase", "recipient_facts", "insert_messages", "set_statuses"]

log = logging.getLogger("smtp_relay")

#: Status reply of a recipient who was not sent a marketing message because they opted out.
REPLY_SUPPRESSED = "not sent: the recipient unsubscribed"


class RelayDatabase:
    """The relay's engine and its session factory: made at start, disposed at stop."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sessions: sessionmaker[Session] = db.session_factory(engine)

    @classmethod
    def connect(cls, url: str, *, check: bool = True) -> RelayDatabase:
        """The database at ``url``; with ``check``, fails at start unless it is migrated."""
        engine = db.create_db_engine(url)
        try:
            if check:
                db.check_migrated(engine)
        except Exception:
            engine.dispose()
            raise
        return cls(engine)

    def dispose(self) -> None:
        """Close the pooled connections (a later statement opens new ones)."""
        self.engine.dispose()


@dataclass(frozen=True)
class RecordedRow:
    """A recipient's message row."""

    address: str
    message_id: int
    suppressed: bool


@dataclass(frozen=True)
class Recorded:
    """What a transaction became in the database."""

    execution_id: int
    rows: list[RecordedRow]
    tracked: dict[tuple[str, str], TrackedUrl]


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



class Recorder:
    """Writes what the relay learns: a transaction's rows (group-committed), delivery outcomes,
    incidents and counters; remembers what never changes (deliveries, tracked URLs, variants)."""

    def __init__(self, config: RelayConfig, sessions: sessionmaker[Session], clock: Callable[[], dt.datetime] = utcnow) -> None:
        self.config = config
        self.sessions = sessions
        self.clock = clock
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

    def write_transaction(
        self,
        marks: Marks,
        recipients: list[str],
        specs: list[LinkSpec],
        samples: tuple[str | None, str | None],
        message_id_header: str | None,
        incidents: list[Incident],
    ) -> Recorded:
        """Record a transaction: its execution, tracked URLs, variant, a message row per recipient
        and ``incidents``; returns once the commit holding them has returned."""
        job = _Job(
            marks=marks,
            recipients=recipients,
            specs=specs,
            signature=variant_signature(specs),
            sample_html=samples[0],
            sample_text=samples[1],
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

    def _commit_grouped(self, job: _Job) -> Recorded:
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
    ) -> Recorded:
        marks = job.marks
        marketing = marks.type is not DeliveryType.TRANSACTIONAL
        delivery = self._deliveries.get(marks.delivery) or learned.deliveries.get(marks.delivery)
        if delivery is None:
            delivery = delivery_id(connection, marks)
        learned.deliveries[marks.delivery] = delivery
        execution_id = self._execution_id(connection, job, delivery, learned)
        known = self._known.get((execution_id, job.signature)) or learned.known.get((execution_id, job.signature))
        if known is None:
            execution = session.get(Execution, execution_id)
            assert execution is not None
            tracked = ensure_tracked_urls(session, execution, job.specs)
            known_variant = None
        else:
            tracked, known_variant = known
        facts = recipient_facts(connection, job.recipients, marks.recipient_id)
        variants, known_variant = self._variant_ids(session, job, execution_id, facts, known_variant)
        rows = []
        for address, variant_id in zip(job.recipients, variants):
            recipient = facts[address.lower()]
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
        message_ids = insert_messages(connection, rows)
        _add_profile_copies(connection, job, execution_id, facts, message_ids, rows)
        _add_incidents(session, job.incidents)
        session.flush()
        if known_variant is not None:
            learned.known[(execution_id, job.signature)] = (tracked, known_variant)
        return Recorded(
            execution_id,
            [
                RecordedRow(address, message_id, row["status"] is MessageStatus.SUPPRESSED)
                for address, message_id, row in zip(job.recipients, message_ids, rows)
            ],
            tracked,
        )

    def _variant_ids(
        self,
        session: Session,
        job: _Job,
        execution_id: int,
        facts: dict[str, RecipientFacts],
        known_variant: int | None,
    ) -> tuple[list[int], int | None]:
        """Each recipient's content variant; and the variant later recipients without a test
        profile can take as it is (one with a sample in place), if there is one now."""
        variants = []
        for address in job.recipients:
            recipient = facts[address.lower()]
            keep = recipient.profile_id is not None or self.config.keep_recipient_samples
            if known_variant is not None and recipient.profile_id is None:
                variants.append(known_variant)
                continue
            execution = session.get(Execution, execution_id)  # from the session's identity map after the first
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
            variants.append(variant_id)
            if keep:  # a sample is in place: later recipients need not look
                known_variant = variant_id
        return variants, known_variant

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
            set_statuses(session.connection(), list(outcomes), self.clock())
            _add_incidents(session, incidents)
            day = self.clock().strftime("%Y-%m-%d")
            for name, count in Counter(counters).items():
                _increment(session, day, name, count)


def _add_profile_copies(
    connection: Connection,
    job: _Job,
    execution_id: int,
    facts: dict[str, RecipientFacts],
    message_ids: list[int],
    rows: list[dict[str, Any]],
) -> None:
    """Each test profile's own copy, even when its variant has a sample already: personalised
    content differs inside a variant, and the report shows a profile what it received."""
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
    upsert(session, RelayCounter.__table__, [{"day": day, "name": name, "value": count}], ["day", "name"], add=["value"])


_RECIPIENT = Recipient.__table__
_PROFILE = TestProfile.__table__
_OPT_OUT = OptOut.__table__
_MESSAGE = Message.__table__

#: Recipients read per statement (well under SQLite's and PostgreSQL's parameter limits).
CHUNK = 500

_RECIPIENT_FACTS = select(
    _RECIPIENT.c.id,
    _RECIPIENT.c.address,
    _RECIPIENT.c.external_id,
    select(_PROFILE.c.id).where(_PROFILE.c.address == _RECIPIENT.c.address).scalar_subquery().label("profile_id"),
    exists()
    .where(_OPT_OUT.c.recipient_id == _RECIPIENT.c.id, _OPT_OUT.c.cancelled_at.is_(None))
    .label("unsubscribed"),
).where(_RECIPIENT.c.address.in_(bindparam("addresses", expanding=True)))
_SET_EXTERNAL_ID = (
    update(_RECIPIENT)
    .where(_RECIPIENT.c.id.in_(bindparam("ids", expanding=True)))
    .values(external_id=bindparam("new_external_id"))
)
_INSERT_MESSAGES = insert(_MESSAGE).returning(_MESSAGE.c.id, sort_by_parameter_order=True)


@dataclass(frozen=True, slots=True)
class RecipientFacts:
    """What the relay needs to know of one recipient, read in one statement."""

    id: int
    external_id: str | None
    #: The test profile with this address, if any.
    profile_id: int | None
    #: An opt-out is in force (checked at the moment of the transaction, never cached).
    unsubscribed: bool


def _read_facts(connection: Connection, addresses: list[str]) -> dict[str, RecipientFacts]:
    found: dict[str, RecipientFacts] = {}
    for start in range(0, len(addresses), CHUNK):
        rows = connection.execute(_RECIPIENT_FACTS, {"addresses": addresses[start:start + CHUNK]})
        for row in rows:
            found[row.address] = RecipientFacts(row.id, row.external_id, row.profile_id, bool(row.unsubscribed))
    return found


def recipient_facts(
    connection: Connection, addresses: Sequence[str], external_id: str | None = None
) -> dict[str, RecipientFacts]:
    """Each recipient (by lower-cased address), created on first sight, with its test profile and
    whether it opted out; ``external_id`` is set on those that had another one."""
    wanted = list(dict.fromkeys(address.lower() for address in addresses))
    found = _read_facts(connection, wanted)
    missing = [address for address in wanted if address not in found]
    if missing:
        now = utcnow()
        upsert(
            connection,
            _RECIPIENT,
            [{"address": address, "external_id": external_id, "created_at": now} for address in missing],
            ["address"],
        )
        found.update(_read_facts(connection, missing))
    if external_id:
        stale = [facts.id for facts in found.values() if facts.external_id != external_id]
        if stale:
            for start in range(0, len(stale), CHUNK):
                connection.execute(_SET_EXTERNAL_ID, {"ids": stale[start:start + CHUNK], "new_external_id": external_id})
    return found


def insert_messages(connection: Connection, rows: list[dict[str, Any]]) -> list[int]:
    """Insert message rows; their ids, in the order of ``rows``."""
    if not rows:
        return []
    if len(rows) == 1:
        return [connection.execute(_INSERT_MESSAGES, rows[0]).scalar_one()]
    return list(connection.execute(_INSERT_MESSAGES, rows).scalars())


_SET_STATUS = (
    update(_MESSAGE)
    .where(_MESSAGE.c.id == bindparam("message_id"))
    .values(status=bindparam("new_status", type_=_MESSAGE.c.status.type), status_reply=bindparam("reply"))
)
_SET_SENT = (
    update(_MESSAGE)
    .where(_MESSAGE.c.id == bindparam("message_id"))
    .values(
        status=bindparam("new_status", type_=_MESSAGE.c.status.type),
        status_reply=bindparam("reply"),
        sent_at=bindparam("when", type_=_MESSAGE.c.sent_at.type),
    )
)


def set_statuses(
    connection: Connection, outcomes: Sequence[tuple[int, MessageStatus, str | None]], sent_at: dt.datetime
) -> None:
    """Write delivery outcomes in order (a later outcome of a message wins), one executemany per
    run of the same kind."""
    batch: list[dict[str, Any]] = []
    batch_sent: bool | None = None
    for message_id, status, reply in outcomes:
        sent = status is MessageStatus.SENT
        if batch and sent is not batch_sent:
            connection.execute(_SET_SENT if batch_sent else _SET_STATUS, batch)
            batch = []
        batch_sent = sent
        row: dict[str, Any] = {"message_id": message_id, "new_status": status, "reply": reply}
        if sent:
            row["when"] = sent_at
        batch.append(row)
    if batch:
        connection.execute(_SET_SENT if batch_sent else _SET_STATUS, batch)
