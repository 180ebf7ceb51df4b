"""Sending: deliveries, executions, tracked URLs, content variants and recipients.

The relay registers each message through these; rows several relays may create at once are
written with :func:`~hotclicks.db.upsert.upsert` and read back, so everyone gets the same row.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, bindparam, select, update
from sqlalchemy.orm import Session

from ..executions import LatestExecution, Marks, execution_for
from ..links import LinkSpec, key_digest
from .models import ContentVariant, Delivery, Execution, Recipient, TestProfile, TrackedUrl, utcnow
from .upsert import get_or_create, upsert

__all__ = [
    "LAST_MESSAGE_RESOLUTION",
    "delivery_id",
    "ensure_tracked_urls",
    "ensure_variant",
    "get_recipient",
    "resolve_execution",
    "resolve_execution_id",
    "test_profile_for",
]

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
    upsert(
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
            upsert(
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
        upsert(
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
    variant = get_or_create(
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
    recipient = get_or_create(
        session, Recipient, {"address": address.lower()}, {"external_id": external_id, "created_at": utcnow()}
    )
    if external_id and recipient.external_id != external_id:
        recipient.external_id = external_id
    return recipient


def test_profile_for(session: Session, address: str) -> TestProfile | None:
    return session.scalars(select(TestProfile).where(TestProfile.address == address.lower())).first()


test_profile_for.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


