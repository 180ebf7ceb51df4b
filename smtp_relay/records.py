"""The relay's bookkeeping on its hot path: lean Core statements, built once, on one connection.

These do what :mod:`hotclicks.store`'s ``get_delivery``, ``resolve_execution``, ``get_recipient``,
``test_profile_for`` and ``is_unsubscribed`` do, with the same rules (``INSERT ... ON CONFLICT DO
NOTHING`` then read back, so the database's unique constraints decide who wins), in fewer round
trips and without the ORM's per-statement overhead: one statement finds the latest execution, one
touches it, one reads every recipient of a transaction with their test profile and opt-out, one
inserts the transaction's message rows. The rare paths (a new execution's tracked URLs, a content
variant's sample) stay with the ORM functions of :mod:`hotclicks.store`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, exists, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from hotclicks.executions import LatestExecution, Marks, execution_for
from hotclicks.models import Delivery, Execution, Message, MessageStatus, OptOut, Recipient, TestProfile, utcnow

_DELIVERY = Delivery.__table__
_EXECUTION = Execution.__table__
_RECIPIENT = Recipient.__table__
_PROFILE = TestProfile.__table__
_OPT_OUT = OptOut.__table__
_MESSAGE = Message.__table__

#: Recipients read per statement (well under SQLite's and PostgreSQL's parameter limits).
CHUNK = 500

_DELIVERY_ID = select(_DELIVERY.c.id).where(_DELIVERY.c.code == bindparam("code"))
_LATEST_EXECUTION = (
    select(
        _EXECUTION.c.id,
        _EXECUTION.c.key,
        _EXECUTION.c.run_key,
        _EXECUTION.c.version,
        _EXECUTION.c.last_message_at,
    )
    .where(_EXECUTION.c.delivery_id == bindparam("delivery_id"))
    .order_by(_EXECUTION.c.last_message_at.desc(), _EXECUTION.c.id.desc())
    .limit(1)
)
_EXECUTION_ID = select(_EXECUTION.c.id).where(
    _EXECUTION.c.delivery_id == bindparam("delivery_id"), _EXECUTION.c.key == bindparam("key")
)
_TOUCH_EXECUTION = (
    update(_EXECUTION)
    .where(
        _EXECUTION.c.id == bindparam("execution_id"),
        _EXECUTION.c.last_message_at < bindparam("now", type_=_EXECUTION.c.last_message_at.type),
    )
    .values(last_message_at=bindparam("now", type_=_EXECUTION.c.last_message_at.type))
)
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


def _insert_ignore(connection: Connection, table: Any, rows: list[dict[str, Any]], keys: Sequence[str]) -> None:
    """Insert ``rows`` except those whose ``keys`` exist already (whoever inserted them)."""
    dialect = connection.dialect.name
    if dialect == "postgresql":
        statement: Any = postgresql.insert(table)
    elif dialect == "sqlite":
        statement = sqlite.insert(table)
    else:  # pragma: no cover - only SQLite and PostgreSQL are supported
        raise NotImplementedError(f"HotClicks does not support {dialect}")
    connection.execute(statement.on_conflict_do_nothing(index_elements=list(keys)), rows)


def delivery_id(connection: Connection, marks: Marks) -> int:
    """The id of the delivery ``marks`` name, created (with their type) on first sight."""
    found = connection.scalar(_DELIVERY_ID, {"code": marks.delivery})
    if found is not None:
        return found
    _insert_ignore(
        connection, _DELIVERY, [{"code": marks.delivery, "type": marks.type, "created_at": utcnow()}], ["code"]
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
    first sight, its ``last_message_at`` moved to ``now`` (``store.resolve_execution``'s rules)."""
    row = connection.execute(_LATEST_EXECUTION, {"delivery_id": delivery}).first()
    latest = LatestExecution(row.run_key, row.version, row.last_message_at) if row is not None else None
    options: dict[str, Any] = {"latest": latest, "period": period}
    if quiet_gap is not None:
        options["quiet_gap"] = quiet_gap
    key = execution_for(marks, now, **options)
    if row is not None and row.key == key.key:
        execution = row.id
    else:
        execution = connection.scalar(_EXECUTION_ID, {"delivery_id": delivery, "key": key.key})
        if execution is None:
            _insert_ignore(
                connection,
                _EXECUTION,
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
        _insert_ignore(
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
