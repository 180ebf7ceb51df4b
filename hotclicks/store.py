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

from sqlalchemy import Select, and_, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

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
    Recipient,
    TestProfile,
    TrackedUrl,
    utcnow,
)

M = TypeVar("M", bound=Base)


def _insert_ignore(session: Session, model: type[M], values: dict[str, Any], keys: Sequence[str]) -> None:
    """Insert a row unless one with the same ``keys`` exists (whoever inserted it)."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        statement: Any = postgresql.insert(model)
    elif dialect == "sqlite":
        statement = sqlite.insert(model)
    else:  # pragma: no cover - only SQLite and PostgreSQL are supported
        raise NotImplementedError(f"HotClicks does not support {dialect}")
    session.execute(statement.values(**values).on_conflict_do_nothing(index_elements=list(keys)))


def _get_or_create(
    session: Session, model: type[M], keys: Mapping[str, Any], values: Mapping[str, Any] = {}
) -> M:
    query: Select[tuple[M]] = select(model).filter_by(**keys)
    found = session.scalars(query).first()
    if found is not None:
        return found
    _insert_ignore(session, model, {**keys, **values}, list(keys))
    return session.scalars(query).one()


def key_digest(link_key: str) -> str:
    """The fixed-size digest that stands for a link key in the unique constraint."""
    return hashlib.sha256(link_key.encode("utf-8", "surrogatepass")).hexdigest()


def get_delivery(session: Session, marks: Marks) -> Delivery:
    return _get_or_create(session, Delivery, {"code": marks.delivery}, {"type": marks.type, "created_at": utcnow()})


def resolve_execution(
    session: Session,
    marks: Marks,
    now: dt.datetime,
    *,
    period: str = "month",
    quiet_gap: dt.timedelta | None = None,
) -> Execution:
    """The execution a marked message sent at ``now`` belongs to, created on first sight."""
    delivery = get_delivery(session, marks)
    latest_row = session.scalars(
        select(Execution)
        .where(Execution.delivery_id == delivery.id)
        .order_by(Execution.last_message_at.desc(), Execution.id.desc())
        .limit(1)
    ).first()
    latest = (
        LatestExecution(latest_row.run_key, latest_row.version, latest_row.last_message_at)
        if latest_row is not None
        else None
    )
    options: dict[str, Any] = {"latest": latest, "period": period}
    if quiet_gap is not None:
        options["quiet_gap"] = quiet_gap
    key = execution_for(marks, now, **options)
    execution = _get_or_create(
        session,
        Execution,
        {"delivery_id": delivery.id, "key": key.key},
        {
            "run_key": key.run_key,
            "period": key.period,
            "version": key.version,
            "started_at": now,
            "last_message_at": now,
        },
    )
    session.execute(
        update(Execution)
        .where(Execution.id == execution.id, Execution.last_message_at < now)
        .values(last_message_at=now)
    )
    return execution


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
    digests = {key_digest(key): (part, key) for part, key in wanted}
    query = select(TrackedUrl).where(
        TrackedUrl.execution_id == execution.id, TrackedUrl.key_digest.in_(list(digests))
    )
    found = {(t.part, t.link_key): t for t in session.scalars(query)}
    missing = [spec for ident, spec in wanted.items() if ident not in found]
    for spec in missing:
        _insert_ignore(
            session,
            TrackedUrl,
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
            },
            ["execution_id", "part", "key_digest"],
        )
    if missing:
        found = {(t.part, t.link_key): t for t in session.scalars(query)}
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


def set_message_status(
    session: Session, message_id: int, status: MessageStatus, reply: str | None = None
) -> None:
    values: dict[str, Any] = {"status": status, "status_reply": reply}
    if status is MessageStatus.SENT:
        values["sent_at"] = utcnow()
    session.execute(update(Message).where(Message.id == message_id).values(**values))


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


def latest_execution(session: Session, delivery: Delivery) -> Execution | None:
    return session.scalars(
        select(Execution)
        .where(Execution.delivery_id == delivery.id)
        .order_by(Execution.started_at.desc(), Execution.id.desc())
        .limit(1)
    ).first()


@dataclass(frozen=True, slots=True)
class LinkClicks:
    """One tracked URL's line of the hot clicks report."""

    tracked_url: TrackedUrl
    clicks: int
    unique_clickers: int
    percent: float


def hot_clicks(session: Session, execution: Execution, *, include_machine: bool = False) -> list[LinkClicks]:
    """Each tracked URL of ``execution`` with its share of the execution's clicks.

    Percentages are of all the execution's clicks, over every variant, so they add up to 100
    over all links (and to less for the links one profile sees).
    """
    conditions = [Click.tracked_url_id == TrackedUrl.id]
    if not include_machine:
        conditions.append(Click.is_machine.is_(False))
    counts = (
        select(
            TrackedUrl,
            func.count(Click.id),
            func.count(func.distinct(Click.message_id)),
        )
        .outerjoin(Click, and_(*conditions))
        .where(TrackedUrl.execution_id == execution.id)
        .group_by(TrackedUrl.id)
        .order_by(TrackedUrl.part, TrackedUrl.position, TrackedUrl.id)
    )
    rows = session.execute(counts).all()
    total = sum(clicks for _, clicks, _ in rows)
    return [
        LinkClicks(url, clicks, unique, round(100.0 * clicks / total, 2) if total else 0.0)
        for url, clicks, unique in rows
    ]
