"""The relay's bookkeeping on its hot path: lean Core statements, built once, on one connection.

The delivery and the execution come from :mod:`hotclicks.db.sending`'s Core functions (``delivery_id``,
``resolve_execution_id``); these add the per-transaction batch: one statement reads every recipient
of a transaction with their test profile and opt-out (what ``sending.get_recipient``,
``test_profile_for`` and ``is_unsubscribed`` tell one at a time), one inserts the transaction's
message rows, with the same rule (``INSERT ... ON CONFLICT DO NOTHING`` then read back, so the
database's unique constraints decide who wins). The rare paths (a new execution's tracked URLs, a content
variant's sample) stay with the ORM functions of :mod:`hotclicks.db.sending`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, exists, insert, select, update

from hotclicks.db.models import Message, MessageStatus, OptOut, Recipient, TestProfile, utcnow
from hotclicks.db.upsert import upsert

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
