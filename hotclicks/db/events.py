"""Tracking events: clicks and opens, judged by the bot rules and recorded in batches.

These take an ORM session or a plain Core connection: they only execute Core statements, and the
hot path (the click route, the journal's writer) uses a connection for less overhead.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, or_, select, update
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.orm import Session

from .. import bots
from .models import Click, Message, Open, Recipient, TrackedUrl

__all__ = [
    "ClickEvent",
    "OpenEvent",
    "click_exists",
    "open_exists",
    "record_clicks",
    "record_opens",
    "tracked_url_target",
]


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
