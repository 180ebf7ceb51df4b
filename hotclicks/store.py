"""Reading and writing the shared database: the operations both halves need.

Rows that several relays may create at once (deliveries, executions, tracked URLs, recipients,
content variants) are inserted with ``INSERT ... ON CONFLICT DO NOTHING`` and then read back, so the
database's unique constraints decide who wins and everyone gets the same row, on SQLite and on
PostgreSQL alike.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Connection, Select, and_, bindparam, case, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.orm import Session

from . import bots
from .errors import HotClicksError
from .executions import LatestExecution, Marks, execution_for
from .models import (
    Base,
    Click,
    ContentVariant,
    Delivery,
    Execution,
    Message,
    MessageStatus,
    Open,
    OptOut,
    ProfileCopy,
    Recipient,
    RelayAccount,
    TestProfile,
    TrackedUrl,
    utcnow,
)

M = TypeVar("M", bound=Base)


def insert_ignore(
    executor: Session | Connection, table: Any, rows: list[dict[str, Any]], keys: Sequence[str]
) -> None:
    """Insert ``rows`` into ``table`` except those whose ``keys`` exist already (whoever inserted
    them): the database's unique constraints decide between concurrent writers."""
    bind = executor.get_bind() if isinstance(executor, Session) else executor
    dialect = bind.dialect.name
    if dialect == "postgresql":
        statement: Any = postgresql.insert(table)
    elif dialect == "sqlite":
        statement = sqlite.insert(table)
    else:  # pragma: no cover - only SQLite and PostgreSQL are supported
        raise NotImplementedError(f"HotClicks does not support {dialect}")
    executor.execute(statement.on_conflict_do_nothing(index_elements=list(keys)), rows)


def _get_or_create(
    session: Session, model: type[M], keys: Mapping[str, Any], values: Mapping[str, Any] = {}
) -> M:
    query: Select[tuple[M]] = select(model).filter_by(**keys)
    found = session.scalars(query).first()
    if found is not None:
        return found
    insert_ignore(session, model.__table__, [{**keys, **values}], list(keys))
    return session.scalars(query).one()


def key_digest(link_key: str) -> str:
    """The fixed-size digest that stands for a link key in the unique constraint."""
    return hashlib.sha256(link_key.encode("utf-8", "surrogatepass")).hexdigest()


_DELIVERY_T = Delivery.__table__
_EXECUTION_T = Execution.__table__

_DELIVERY_ID = select(_DELIVERY_T.c.id).where(_DELIVERY_T.c.code == bindparam("code"))
_LATEST_EXECUTION = (
    select(
        _EXECUTION_T.c.id,
        _EXECUTION_T.c.key,
        _EXECUTION_T.c.run_key,
        _EXECUTION_T.c.version,
        _EXECUTION_T.c.last_message_at,
    )
    .where(_EXECUTION_T.c.delivery_id == bindparam("delivery_id"))
    .order_by(_EXECUTION_T.c.last_message_at.desc(), _EXECUTION_T.c.id.desc())
    .limit(1)
)
_EXECUTION_ID = select(_EXECUTION_T.c.id).where(
    _EXECUTION_T.c.delivery_id == bindparam("delivery_id"), _EXECUTION_T.c.key == bindparam("key")
)
_TOUCH_EXECUTION = (
    update(_EXECUTION_T)
    .where(
        _EXECUTION_T.c.id == bindparam("execution_id"),
        _EXECUTION_T.c.last_message_at < bindparam("now", type_=_EXECUTION_T.c.last_message_at.type),
    )
    .values(last_message_at=bindparam("now", type_=_EXECUTION_T.c.last_message_at.type))
)
#: How stale an execution's ``last_message_at`` may be. It only decides when a recurring
#: delivery's quiet gap (an hour by default) starts a new run, so a newsletter sent at 100
#: messages a second updates it once a second, not 100 times.
LAST_MESSAGE_RESOLUTION = dt.timedelta(seconds=1)


def delivery_id(connection: Connection, marks: Marks) -> int:
    """The id of the delivery ``marks`` name, created (with their type) on first sight."""
    found = connection.scalar(_DELIVERY_ID, {"code": marks.delivery})
    if found is not None:
        return found
    insert_ignore(
        connection, _DELIVERY_T, [{"code": marks.delivery, "type": marks.type, "created_at": utcnow()}], ["code"]
    )
    return connection.execute(_DELIVERY_ID, {"code": marks.delivery}).scalar_one()


def resolve_execution_id(
    connection: Connection,
    marks: Marks,
    now: dt.datetime,
    *,
    delivery: int,
    period: str = "month",
    quiet_gap: dt.timedelta | None = None,
) -> int:
    """The id of the execution a message of ``delivery`` sent at ``now`` belongs to, created on
    first sight, its ``last_message_at`` moved to ``now`` (unless it is less than
    :data:`LAST_MESSAGE_RESOLUTION` older): lean Core statements, as the relay's hot path wants
    them."""
    row = connection.execute(_LATEST_EXECUTION, {"delivery_id": delivery}).first()
    latest = LatestExecution(row.run_key, row.version, row.last_message_at) if row is not None else None
    options: dict[str, Any] = {"latest": latest, "period": period}
    if quiet_gap is not None:
        options["quiet_gap"] = quiet_gap
    key = execution_for(marks, now, **options)
    if row is not None and row.key == key.key:
        execution = row.id
        if dt.timedelta(0) <= now - row.last_message_at < LAST_MESSAGE_RESOLUTION:
            return execution  # recent enough: no write of the execution's row per message
    else:
        execution = connection.scalar(_EXECUTION_ID, {"delivery_id": delivery, "key": key.key})
        if execution is None:
            insert_ignore(
                connection,
                _EXECUTION_T,
                [
                    {
                        "delivery_id": delivery,
                        "key": key.key,
                        "run_key": key.run_key,
                        "period": key.period,
                        "version": key.version,
                        "started_at": now,
                        "last_message_at": now,
                    }
                ],
                ["delivery_id", "key"],
            )
            execution = connection.execute(_EXECUTION_ID, {"delivery_id": delivery, "key": key.key}).scalar_one()
    connection.execute(_TOUCH_EXECUTION, {"execution_id": execution, "now": now})
    return execution


def get_delivery(session: Session, marks: Marks) -> Delivery:
    """The delivery ``marks`` name, created (with their type) on first sight."""
    return session.get_one(Delivery, delivery_id(session.connection(), marks))


def resolve_execution(
    session: Session,
    marks: Marks,
    now: dt.datetime,
    *,
    period: str = "month",
    quiet_gap: dt.timedelta | None = None,
) -> Execution:
    """The execution a marked message sent at ``now`` belongs to, created on first sight."""
    connection = session.connection()
    execution = resolve_execution_id(
        connection, marks, now, delivery=delivery_id(connection, marks), period=period, quiet_gap=quiet_gap
    )
    return session.get_one(Execution, execution, populate_existing=True)


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """What the relay knows of one link when it registers the tracked URLs of a message."""

    part: str  #: "html" or "text"
    key: str
    url: str  #: the target without personal query parameters
    name: str | None
    label: str
    position: int


def ensure_tracked_urls(
    session: Session, execution: Execution, links: Iterable[LinkSpec]
) -> dict[tuple[str, str], TrackedUrl]:
    """The tracked URLs of ``links`` in ``execution``, keyed by (part, link key)."""
    wanted: dict[tuple[str, str], LinkSpec] = {}
    for link in links:
        wanted.setdefault((link.part, link.key), link)
    if not wanted:
        return {}
    digests = list({key_digest(key) for _, key in wanted})

    def load() -> dict[tuple[str, str], TrackedUrl]:
        found = {}
        for at in range(0, len(digests), 10_000):  # PostgreSQL takes 65,535 parameters at most
            query = select(TrackedUrl).where(
                TrackedUrl.execution_id == execution.id,
                TrackedUrl.key_digest.in_(digests[at : at + 10_000]),
            )
            found.update({(t.part, t.link_key): t for t in session.scalars(query)})
        return found

    found = load()
    missing = [spec for ident, spec in wanted.items() if ident not in found]
    if missing:  # one executemany: a message may hold many thousands of links
        insert_ignore(
            session,
            TrackedUrl.__table__,
            [
                {
                    "execution_id": execution.id,
                    "part": spec.part,
                    "link_key": spec.key,
                    "key_digest": key_digest(spec.key),
                    "url": spec.url,
                    "name": spec.name,
                    "label": spec.label[:200],
                    "position": spec.position,
                    "created_at": utcnow(),
                }
                for spec in missing
            ],
            ["execution_id", "part", "key_digest"],
        )
        found = load()
    return {ident: found[ident] for ident in wanted}


def variant_signature(links: Iterable[LinkSpec]) -> str:
    """Variants of dynamic content differ by the set of links they contain."""
    keys = sorted({f"{link.part}\x00{link.key}" for link in links})
    return hashlib.sha256("\x01".join(keys).encode("utf-8", "surrogatepass")).hexdigest()


def ensure_variant(
    session: Session,
    execution: Execution,
    signature: str,
    *,
    html: str | None,
    text: str | None,
    test_profile: TestProfile | None = None,
) -> ContentVariant:
    """The content variant of ``signature``, keeping the first sample (a test profile's wins)."""
    variant = _get_or_create(
        session,
        ContentVariant,
        {"execution_id": execution.id, "signature": signature},
        {
            "html": html,
            "text": text,
            "sample_source": "test-profile" if test_profile else "recipient",
            "test_profile_id": test_profile.id if test_profile else None,
            "created_at": utcnow(),
        },
    )
    if test_profile is not None and variant.test_profile_id is None:
        variant.html, variant.text = html, text
        variant.sample_source, variant.test_profile_id = "test-profile", test_profile.id
    return variant


def get_recipient(session: Session, address: str, external_id: str | None = None) -> Recipient:
    recipient = _get_or_create(
        session, Recipient, {"address": address.lower()}, {"external_id": external_id, "created_at": utcnow()}
    )
    if external_id and recipient.external_id != external_id:
        recipient.external_id = external_id
    return recipient


def test_profile_for(session: Session, address: str) -> TestProfile | None:
    return session.scalars(select(TestProfile).where(TestProfile.address == address.lower())).first()


test_profile_for.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


def record_click(
    session: Session,
    *,
    message_id: int,
    tracked_url_id: int,
    user_agent: str | None,
    ip: str | None,
    is_machine: bool = False,
    machine_reason: str | None = None,
    at: dt.datetime | None = None,
) -> None:
    """Record one click; lean Core insert, since it sits on the redirect's hot path."""
    session.execute(
        Click.__table__.insert().values(
            message_id=message_id,
            tracked_url_id=tracked_url_id,
            clicked_at=at or utcnow(),
            user_agent=user_agent[:500] if user_agent else None,
            ip=ip,
            is_machine=is_machine,
            machine_reason=machine_reason,
        )
    )


def record_open(
    session: Session,
    *,
    message_id: int,
    user_agent: str | None,
    ip: str | None,
    is_machine: bool = False,
    machine_reason: str | None = None,
    at: dt.datetime | None = None,
) -> None:
    """Record one open of the pixel."""
    session.execute(
        Open.__table__.insert().values(
            message_id=message_id,
            opened_at=at or utcnow(),
            user_agent=user_agent[:500] if user_agent else None,
            ip=ip,
            is_machine=is_machine,
            machine_reason=machine_reason,
        )
    )


# -- tracking events: clicks and opens, judged by the bot rules, in batches ----------------------
# These take an ORM session or a plain Core connection: they only execute Core statements, and the
# hot path (the click route, the journal's writer) uses a connection for less overhead.


@dataclass(frozen=True, slots=True)
class ClickEvent:
    """A click as the click route saw it, before the history rules judged it."""

    message_id: int
    tracked_url_id: int
    at: dt.datetime
    user_agent: str | None
    ip: str | None
    #: ``bots.request_reason``'s answer: why the request alone shows a machine, or None.
    request_reason: str | None = None
    #: The tracked URL is the hidden trap link.
    is_trap: bool = False


@dataclass(frozen=True, slots=True)
class OpenEvent:
    message_id: int
    at: dt.datetime
    user_agent: str | None
    ip: str | None
    request_reason: str | None = None


@dataclass(frozen=True, slots=True)
class _MessageFacts:
    delivered_at: dt.datetime
    tracking_opt_out: bool
    recent: list[bots.RecentClick]


def _message_facts(
    session: Session | Connection, message_ids: Iterable[int], since: dt.datetime | None, until: dt.datetime | None
) -> dict[int, _MessageFacts]:
    """For each message: when it was delivered, whether its recipient opted out of tracking, and
    its clicks between ``since`` and ``until`` — one indexed query (message by id, clicks by
    message id)."""
    ids = sorted(set(message_ids))
    if not ids:
        return {}
    click_on = Click.message_id == Message.id
    if since is not None and until is not None:
        click_on = and_(click_on, Click.clicked_at >= since, Click.clicked_at <= until)
    else:
        click_on = and_(click_on, Click.id.is_(None))  # facts only, no history
    query = (
        select(
            Message.id,
            Message.sent_at,
            Message.created_at,
            Recipient.tracking_opt_out,
            Click.tracked_url_id,
            Click.clicked_at,
            Click.machine_reason,
        )
        .join(Recipient, Recipient.id == Message.recipient_id)
        .outerjoin(Click, click_on)
        .where(Message.id.in_(ids))
    )
    facts: dict[int, _MessageFacts] = {}
    for mid, sent_at, created_at, opt_out, url_id, clicked_at, reason in session.execute(query):
        fact = facts.get(mid)
        if fact is None:
            fact = facts[mid] = _MessageFacts(sent_at or created_at, bool(opt_out), [])
        if url_id is not None:
            fact.recent.append(bots.RecentClick(url_id, clicked_at, reason == bots.REASON_TRAP))
    return facts


def _bulk_insert(session: Session | Connection, table: Any, rows: list[dict[str, Any]]) -> None:
    """Insert ``rows`` in the caller's transaction: with PostgreSQL's COPY through psycopg (one
    round trip, no per-row statement), else as one executemany."""
    connection = session.connection() if isinstance(session, Session) else session
    if len(rows) > 1 and connection.dialect.driver == "psycopg":
        columns = list(rows[0])
        raw = connection.connection.driver_connection
        assert raw is not None
        quoted = ", ".join(f'"{c}"' for c in columns)
        statement = f'COPY "{table.name}" ({quoted}) FROM STDIN'
        dbapi = connection.dialect.dbapi
        try:
            with raw.cursor() as cursor, cursor.copy(statement) as copy:
                for row in rows:
                    copy.write_row([row[c] for c in columns])
        except (dbapi.IntegrityError, dbapi.DataError) as exc:  # type: ignore[union-attr]
            # As SQLAlchemy would have raised it, for callers that handle refused rows.
            wrapper = IntegrityError if isinstance(exc, dbapi.IntegrityError) else DataError  # type: ignore[union-attr]
            raise wrapper(statement, None, exc) from exc
        return
    session.execute(table.insert(), rows)


def _mark_burst(session: Session | Connection, message_id: int, at: dt.datetime, seconds: float, reason: str) -> None:
    window = dt.timedelta(seconds=seconds)
    session.execute(
        update(Click)
        .where(
            Click.message_id == message_id,
            Click.is_machine.is_(False),
            Click.clicked_at >= at - window,
            Click.clicked_at <= at + window,
        )
        .values(is_machine=True, machine_reason=reason)
    )


def record_clicks(
    session: Session | Connection, events: Sequence[ClickEvent], rules: bots.BotRules = bots.DEFAULT_RULES
) -> list[bots.Verdict | None]:
    """Judge and record a batch of clicks; one verdict per event (None: its message is gone).

    One query reads what the history rules need (delivery time, tracking opt-out, the messages'
    recent clicks), one multi-row insert writes the batch. A burst or a trap click also marks the
    message's other clicks of the same moment as machine. A recipient who opted out of tracking
    is recorded anonymously: no message, no user agent, no address.
    """
    if not events:
        return []
    window = bots.history_window(rules)
    facts = _message_facts(
        session,
        (e.message_id for e in events),
        min(e.at for e in events) - window,
        max(e.at for e in events) + window,
    )
    verdicts: list[bots.Verdict | None] = []
    rows: list[dict[str, Any]] = []
    bursts: list[tuple[int, dt.datetime, float, str]] = []
    for event in events:
        fact = facts.get(event.message_id)
        if fact is None:
            verdicts.append(None)
            continue
        verdict = bots.classify_click(
            at=event.at,
            tracked_url_id=event.tracked_url_id,
            request=event.request_reason,
            delivered_at=fact.delivered_at,
            recent=fact.recent,
            is_trap=event.is_trap,
            rules=rules,
        )
        verdicts.append(verdict)
        fact.recent.append(
            bots.RecentClick(event.tracked_url_id, event.at, verdict.reason == bots.REASON_TRAP)
        )
        if verdict.reason == bots.REASON_TRAP:
            bursts.append((event.message_id, event.at, rules.trap_seconds, bots.REASON_TRAP_BURST))
        elif verdict.reason == bots.REASON_BURST:
            bursts.append((event.message_id, event.at, rules.burst_seconds, bots.REASON_BURST))
        anonymous = fact.tracking_opt_out
        rows.append(
            {
                "message_id": None if anonymous else event.message_id,
                "tracked_url_id": event.tracked_url_id,
                "clicked_at": event.at,
                "user_agent": None if anonymous or not event.user_agent else event.user_agent[:500],
                "ip": None if anonymous else event.ip,
                "is_machine": verdict.is_machine,
                "machine_reason": verdict.reason,
            }
        )
    if rows:
        _bulk_insert(session, Click.__table__, rows)
    for message_id, at, seconds, reason in bursts:
        _mark_burst(session, message_id, at, seconds, reason)
    return verdicts


def record_opens(session: Session | Connection, events: Sequence[OpenEvent]) -> list[bots.Verdict | None]:
    """Judge and record a batch of opens; None for an open not recorded (message gone, or its
    recipient opted out of tracking: an open cannot be anonymous)."""
    if not events:
        return []
    facts = _message_facts(session, (e.message_id for e in events), None, None)
    verdicts: list[bots.Verdict | None] = []
    rows = []
    for event in events:
        fact = facts.get(event.message_id)
        if fact is None or fact.tracking_opt_out:
            verdicts.append(None)
            continue
        verdict = bots.classify_open(request=event.request_reason)
        verdicts.append(verdict)
        rows.append(
            {
                "message_id": event.message_id,
                "opened_at": event.at,
                "user_agent": event.user_agent[:500] if event.user_agent else None,
                "ip": event.ip,
                "is_machine": verdict.is_machine,
                "machine_reason": verdict.reason,
            }
        )
    if rows:
        _bulk_insert(session, Open.__table__, rows)
    return verdicts


def click_exists(session: Session | Connection, event: ClickEvent) -> bool:
    """Whether ``event`` is recorded already (a journal replayed after a crash)."""
    return (
        session.scalar(
            select(Click.id)
            .where(
                Click.tracked_url_id == event.tracked_url_id,
                or_(Click.message_id == event.message_id, Click.message_id.is_(None)),
                Click.clicked_at == event.at,
            )
            .limit(1)
        )
        is not None
    )


def open_exists(session: Session | Connection, event: OpenEvent) -> bool:
    return (
        session.scalar(
            select(Open.id)
            .where(Open.message_id == event.message_id, Open.opened_at == event.at)
            .limit(1)
        )
        is not None
    )


def tracked_url_target(session: Session, tracked_url_id: int) -> tuple[str, bool] | None:
    """A tracked URL's target and whether it is the trap link; None when there is no such URL."""
    row = session.execute(
        select(TrackedUrl.url, TrackedUrl.name).where(TrackedUrl.id == tracked_url_id)
    ).first()
    if row is None:
        return None
    return row.url, row.name == bots.TRAP_LINK_NAME


# -- opt-outs ------------------------------------------------------------------------------------

#: OptOut.source values.
OPT_OUT_SOURCES = ("link", "one-click", "api")


def message_recipient(session: Session, message_id: int) -> Recipient | None:
    return session.scalars(
        select(Recipient).join(Message, Message.recipient_id == Recipient.id).where(Message.id == message_id)
    ).first()


def active_opt_out(session: Session, recipient_id: int) -> OptOut | None:
    return session.scalars(
        select(OptOut)
        .where(OptOut.recipient_id == recipient_id, OptOut.cancelled_at.is_(None))
        .order_by(OptOut.id)
        .limit(1)
    ).first()


def is_unsubscribed(session: Session, recipient_id: int) -> bool:
    """Whether the recipient has an opt-out in force (the relay suppresses marketing mail)."""
    return active_opt_out(session, recipient_id) is not None


def unsubscribe(
    session: Session, recipient_id: int, *, message_id: int | None = None, source: str = "link"
) -> OptOut:
    """Unsubscribe a recipient (idempotent: an opt-out in force is returned as it is)."""
    if source not in OPT_OUT_SOURCES:
        raise ValueError(f"source must be one of {', '.join(OPT_OUT_SOURCES)}, not {source!r}")
    existing = active_opt_out(session, recipient_id)
    if existing is not None:
        return existing
    opt_out = OptOut(recipient_id=recipient_id, message_id=message_id, source=source, created_at=utcnow())
    session.add(opt_out)
    session.flush()
    return opt_out


def resubscribe(session: Session, recipient_id: int) -> int:
    """Cancel the recipient's opt-outs in force; how many there were."""
    result = session.execute(
        update(OptOut)
        .where(OptOut.recipient_id == recipient_id, OptOut.cancelled_at.is_(None))
        .values(cancelled_at=utcnow())
    )
    return result.rowcount or 0


def set_tracking_opt_out(session: Session, recipient_id: int, opted_out: bool = True) -> None:
    """Stop (or resume) tracking a recipient: their later clicks count anonymously."""
    session.execute(update(Recipient).where(Recipient.id == recipient_id).values(tracking_opt_out=opted_out))


# -- test profiles -------------------------------------------------------------------------------


class ProfileError(HotClicksError, ValueError):
    """A test profile cannot be created or changed as asked; the text says why."""


def list_profiles(session: Session) -> list[TestProfile]:
    return list(session.scalars(select(TestProfile).order_by(TestProfile.name)))


def get_profile(session: Session, name_or_id: str | int) -> TestProfile | None:
    if isinstance(name_or_id, int) or (isinstance(name_or_id, str) and name_or_id.isdigit()):
        found = session.get(TestProfile, int(name_or_id))
        if found is not None:
            return found
    return session.scalars(select(TestProfile).where(TestProfile.name == str(name_or_id))).first()


def _check_profile(session: Session, name: str, address: str, exclude: int | None = None) -> None:
    if not name.strip():
        raise ProfileError("a test profile needs a name")
    if "@" not in address:
        raise ProfileError(f"{address!r} is not an email address")
    clash = session.scalars(
        select(TestProfile).where(
            or_(TestProfile.name == name, TestProfile.address == address),
            TestProfile.id != (exclude if exclude is not None else -1),
        )
    ).first()
    if clash is not None:
        what = "name" if clash.name == name else "address"
        raise ProfileError(f"the test profile {clash.name!r} already has this {what}")


def create_profile(
    session: Session, name: str, address: str, attributes: Mapping[str, Any] | None = None
) -> TestProfile:
    """A new test profile; ``ProfileError`` when its name or address is taken."""
    name, address = name.strip(), address.strip().lower()
    _check_profile(session, name, address)
    profile = TestProfile(name=name, address=address, attributes=dict(attributes or {}), created_at=utcnow())
    session.add(profile)
    try:
        session.flush()
    except IntegrityError:  # created by someone else meanwhile
        raise ProfileError(f"a test profile named {name!r} or with address {address} exists") from None
    return profile


def update_profile(
    session: Session,
    name_or_id: str | int,
    *,
    name: str | None = None,
    address: str | None = None,
    attributes: Mapping[str, Any] | None = None,
    remove: Iterable[str] = (),
    replace_attributes: bool = False,
) -> TestProfile:
    """Change a test profile: rename it, change its address, set or remove attributes."""
    profile = get_profile(session, name_or_id)
    if profile is None:
        raise ProfileError(f"no test profile {name_or_id!r}")
    new_name = name.strip() if name is not None else profile.name
    new_address = address.strip().lower() if address is not None else profile.address
    _check_profile(session, new_name, new_address, exclude=profile.id)
    values = {} if replace_attributes else dict(profile.attributes or {})
    values.update(attributes or {})
    for key in remove:
        values.pop(key, None)
    profile.name, profile.address, profile.attributes = new_name, new_address, values
    session.flush()
    return profile


def delete_profile(session: Session, name_or_id: str | int) -> None:
    profile = get_profile(session, name_or_id)
    if profile is None:
        raise ProfileError(f"no test profile {name_or_id!r}")
    session.execute(
        update(ContentVariant).where(ContentVariant.test_profile_id == profile.id).values(test_profile_id=None)
    )
    session.execute(delete(ProfileCopy).where(ProfileCopy.test_profile_id == profile.id))
    session.delete(profile)
    session.flush()


# -- relay accounts (SMTP AUTH) ------------------------------------------------------------------


class AccountError(HotClicksError, ValueError):
    """A relay account cannot be created or changed as asked; the text says why."""


def relay_accounts(session: Session) -> list[RelayAccount]:
    return list(session.scalars(select(RelayAccount).order_by(RelayAccount.login)))


def add_relay_account(session: Session, login: str, password_hash: str, *, replace: bool = False) -> RelayAccount:
    """A new account (or, with ``replace``, a new password for an existing one, enabled again).

    Takes the hash, not the password: hashing belongs to the relay, the store never sees secrets.
    """
    if not login or login != login.strip() or any(not c.isprintable() for c in login) or len(login) > 200:
        raise AccountError(f"{login!r} is not a usable login (printable, no surrounding spaces, at most 200 characters)")
    account = session.scalars(select(RelayAccount).where(RelayAccount.login == login)).first()
    if account is None:
        account = RelayAccount(login=login, password_hash=password_hash, created_at=utcnow())
        session.add(account)
    elif replace:
        account.password_hash, account.disabled_at = password_hash, None
    else:
        raise AccountError(f"the account {login!r} exists already (add --replace to set a new password)")
    session.flush()
    return account


def disable_relay_account(session: Session, login: str) -> RelayAccount:
    account = session.scalars(select(RelayAccount).where(RelayAccount.login == login)).first()
    if account is None:
        raise AccountError(f"no account {login!r}")
    if account.disabled_at is None:
        account.disabled_at = utcnow()
        session.flush()
    return account


def relay_password_hash(session: Session, login: str) -> str | None:
    """The password hash of an enabled account, or None (no such login, or disabled)."""
    return session.scalar(
        select(RelayAccount.password_hash).where(RelayAccount.login == login, RelayAccount.disabled_at.is_(None))
    )


# -- retention and figures -----------------------------------------------------------------------


def purge_events(session: Session, before: dt.datetime) -> dict[str, int]:
    """Delete clicks and opens older than ``before`` and opt-outs cancelled before it.

    Tracked URLs, messages and opt-outs in force are kept: old links keep working and
    unsubscribed people stay unsubscribed.
    """
    counts = {}
    counts["clicks"] = session.execute(delete(Click).where(Click.clicked_at < before)).rowcount or 0
    counts["opens"] = session.execute(delete(Open).where(Open.opened_at < before)).rowcount or 0
    counts["cancelled opt-outs"] = (
        session.execute(
            delete(OptOut).where(OptOut.cancelled_at.is_not(None), OptOut.cancelled_at < before)
        ).rowcount
        or 0
    )
    return counts


@dataclass(frozen=True, slots=True)
class ExecutionStats:
    """One execution's line of the tracking statistics (machine events left out)."""

    execution: Execution
    sent: int  #: messages handed to the relay (suppressed ones aside)
    delivered: int  #: accepted upstream
    failed: int
    opens: int
    unique_openers: int
    clicks: int
    unique_clickers: int  #: known clickers (anonymous clicks count in ``clicks`` only)
    opt_outs: int
    machine_clicks: int  #: bot clicks filtered out of the figures above

    @property
    def reactivity(self) -> float:
        """Unique clickers per hundred unique openers."""
        return round(100.0 * self.unique_clickers / self.unique_openers, 2) if self.unique_openers else 0.0


def delivery_stats(session: Session, code: str) -> list[ExecutionStats] | None:
    """Every execution of delivery ``code`` with its figures, newest first; None: no such delivery."""
    delivery = session.scalars(select(Delivery).where(Delivery.code == code)).first()
    if delivery is None:
        return None
    executions = list(
        session.scalars(
            select(Execution)
            .where(Execution.delivery_id == delivery.id)
            .order_by(Execution.started_at.desc(), Execution.id.desc())
        )
    )
    ids = [e.id for e in executions]
    if not ids:
        return []

    def per_execution(query: Select[Any]) -> dict[int, tuple[Any, ...]]:
        return {row[0]: tuple(row[1:]) for row in session.execute(query)}

    messages = per_execution(
        select(
            Message.execution_id,
            func.count(case((Message.status != MessageStatus.SUPPRESSED, 1))),
            func.count(case((Message.status == MessageStatus.SENT, 1))),
            func.count(case((Message.status == MessageStatus.FAILED, 1))),
        )
        .where(Message.execution_id.in_(ids))
        .group_by(Message.execution_id)
    )
    opens = per_execution(
        select(Message.execution_id, func.count(Open.id), func.count(func.distinct(Open.message_id)))
        .join(Open, Open.message_id == Message.id)
        .where(Message.execution_id.in_(ids), Open.is_machine.is_(False))
        .group_by(Message.execution_id)
    )
    clicks = per_execution(
        select(
            TrackedUrl.execution_id,
            func.count(case((Click.is_machine.is_(False), 1))),
            func.count(func.distinct(case((Click.is_machine.is_(False), Click.message_id)))),
            func.count(case((Click.is_machine.is_(True), 1))),
        )
        .join(Click, Click.tracked_url_id == TrackedUrl.id)
        .where(TrackedUrl.execution_id.in_(ids))
        .group_by(TrackedUrl.execution_id)
    )
    opt_outs = per_execution(
        select(Message.execution_id, func.count(OptOut.id))
        .join(OptOut, OptOut.message_id == Message.id)
        .where(Message.execution_id.in_(ids))
        .group_by(Message.execution_id)
    )
    return [
        ExecutionStats(
            e,
            *messages.get(e.id, (0, 0, 0)),
            *opens.get(e.id, (0, 0)),
            *clicks.get(e.id, (0, 0, 0))[:2],
            *opt_outs.get(e.id, (0,)),
            clicks.get(e.id, (0, 0, 0))[2],
        )
        for e in executions
    ]
