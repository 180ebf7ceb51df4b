"""Tracking events: clicks and opens, judged by the bot rules and recorded in batches.

These take an ORM session or a plain Core connection: they only execute Core statements, and the
hot path (the click route, the journal's writer) uses a connection for less overhead.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, and_, bindparam, func, or_, select, update
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.orm import Session

from .. import bots, devices
from .models import Click, Message, Open, Recipient, TrackedUrl
from .rollup import Rejudged, apply_rejudged

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
    """A click as the click route saw it, before the message rules judged it."""

    message_id: int
    tracked_url_id: int
    at: dt.datetime
    user_agent: str | None
    ip: str | None
    #: ``bots.request_reason``'s answer: why the request alone shows a machine, or None.
    request_reason: str | None = None
    #: The tracked URL is the hidden trap link.
    is_trap: bool = False
    #: The named network list the client's full address is in, and its kind (``hotclicks.networks``).
    network: str | None = None
    network_kind: str | None = None
    #: The device family of the request's user agent (``hotclicks.devices``), read by the route
    #: whether or not the agent is stored; None: read here from ``user_agent``.
    device: str | None = None


@dataclass(frozen=True, slots=True)
class OpenEvent:
    message_id: int
    at: dt.datetime
    user_agent: str | None
    ip: str | None
    request_reason: str | None = None
    network: str | None = None
    network_kind: str | None = None


@dataclass(slots=True)
class _StoredClick:
    id: int
    tracked_url_id: int
    at: dt.datetime
    is_machine: bool
    reason: str | None
    network: str | None
    device: str | None

    def fact(self) -> bots.ClickFact:
        """What the rules knew of it when it came: its request's and its network's own reasons
        are in its stored reason; a reason from its company (a burst...) is judged again."""
        reason = self.reason
        request = reason if reason and (reason in _REQUEST_REASONS or reason.startswith(_AGENT)) else None
        kind = bots.NETWORK_SCANNER if reason and reason.startswith(_NETWORK) else None
        return bots.ClickFact(self.tracked_url_id, self.at, request, self.network, kind, reason == bots.REASON_TRAP)


_REQUEST_REASONS = frozenset({bots.REASON_HEAD, bots.REASON_PREFETCH})
_AGENT = bots.REASON_AGENT + ":"
_NETWORK = bots.REASON_NETWORK + ":"


@dataclass(slots=True)
class _MessageFacts:
    execution_id: int
    recipient_id: int
    delivered_at: dt.datetime
    tracking_opt_out: bool
    clicks: list[_StoredClick] = field(default_factory=list)


def _message_facts(
    session: Session | Connection, message_ids: Iterable[int], since: dt.datetime | None, until: dt.datetime | None
) -> dict[int, _MessageFacts]:
    """For each message: its execution, when it was delivered, whether its recipient opted out of
    tracking, and its clicks between ``since`` and ``until`` — one indexed query (message by id,
    clicks by message id)."""
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
            Message.execution_id,
            Message.recipient_id,
            Message.sent_at,
            Message.created_at,
            Recipient.tracking_opt_out,
            Click.id,
            Click.tracked_url_id,
            Click.clicked_at,
            Click.is_machine,
            Click.machine_reason,
            Click.network,
            Click.device,
        )
        .join(Recipient, Recipient.id == Message.recipient_id)
        .outerjoin(Click, click_on)
        .where(Message.id.in_(ids))
    )
    facts: dict[int, _MessageFacts] = {}
    for mid, execution_id, recipient_id, sent_at, created_at, opt_out, click_id, url_id, at, machine, reason, network, device in session.execute(query):
        fact = facts.get(mid)
        if fact is None:
            fact = facts[mid] = _MessageFacts(execution_id, recipient_id, sent_at or created_at, bool(opt_out))
        if click_id is not None:
            fact.clicks.append(_StoredClick(click_id, url_id, at, bool(machine), reason, network, device))
    return facts


def _visible_links(session: Session | Connection, execution_ids: Iterable[int]) -> dict[int, int]:
    """How many links a person can see in each execution's HTML (its text's when it has none):
    what "every visible link clicked" counts against. Over all of an execution's variants, so
    never fewer than one message shows."""
    wanted = sorted(set(execution_ids))
    if not wanted:
        return {}
    counts: dict[int, dict[str, int]] = {}
    rows = session.execute(
        select(TrackedUrl.execution_id, TrackedUrl.part, func.count())
        .where(TrackedUrl.execution_id.in_(wanted), or_(TrackedUrl.name.is_(None), TrackedUrl.name != bots.TRAP_LINK_NAME))
        .group_by(TrackedUrl.execution_id, TrackedUrl.part)
    )
    for execution_id, part, count in rows:
        counts.setdefault(execution_id, {})[part] = int(count)
    return {e: parts.get("html") or parts.get("text", 0) for e, parts in counts.items()}


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


_SET_VERDICT = (
    update(Click.__table__)
    .where(Click.__table__.c.id == bindparam("click_id"))
    .values(is_machine=bindparam("new_machine"), machine_reason=bindparam("new_reason"))
)


def record_clicks(
    session: Session | Connection, events: Sequence[ClickEvent], rules: bots.BotRules = bots.DEFAULT_RULES
) -> list[bots.Verdict | None]:
    """Judge and record a batch of clicks; one verdict per event (None: its message is gone).

    One query reads what the message rules need (delivery time, tracking opt-out, the messages'
    clicks around the batch's), one multi-row insert writes the batch. The rules judge each
    message's clicks again with the new ones (``bots.judge_message``): a stored click they now
    judge differently is updated, and moved in the report aggregates it was folded into
    (:func:`hotclicks.db.rollup.apply_rejudged`). A recipient who opted out of tracking is
    recorded anonymously: no message, no user agent, no address.
    """
    if not events:
        return []
    window = bots.message_window(rules)
    facts = _message_facts(
        session,
        (e.message_id for e in events),
        min(e.at for e in events) - window,
        max(e.at for e in events) + window,
    )
    batches: dict[int, list[int]] = {}
    for index, event in enumerate(events):
        if event.message_id in facts:
            batches.setdefault(event.message_id, []).append(index)
    visible = _visible_links(
        session,
        (facts[m].execution_id for m, indexes in batches.items()
         if _may_cover_every_link(facts[m].clicks, [events[i] for i in indexes], rules)),
    )
    verdicts: list[bots.Verdict | None] = [None] * len(events)
    changed: list[Rejudged] = []
    for message_id, indexes in batches.items():
        fact = facts[message_id]
        stored = fact.clicks
        judged = bots.judge_message(
            [c.fact() for c in stored]
            + [
                bots.ClickFact(e.tracked_url_id, e.at, e.request_reason, e.network, e.network_kind, e.is_trap)
                for e in (events[i] for i in indexes)
            ],
            delivered_at=fact.delivered_at,
            visible_links=visible.get(fact.execution_id, 0),
            rules=rules,
        )
        for click, verdict in zip(stored, judged):
            if verdict.is_machine != click.is_machine:
                changed.append(Rejudged(click.id, click.tracked_url_id, message_id, click.at, click.is_machine,
                                        click.reason, verdict.is_machine, verdict.reason, click.device))
        for index, verdict in zip(indexes, judged[len(stored):]):
            verdicts[index] = verdict
    _judge_fleets(session, events, verdicts, facts, changed, rules)
    rows: list[dict[str, Any]] = []
    for event, verdict in zip(events, verdicts):
        if verdict is None:
            continue
        anonymous = facts[event.message_id].tracking_opt_out
        rows.append(
            {
                "message_id": None if anonymous else event.message_id,
                "tracked_url_id": event.tracked_url_id,
                "clicked_at": event.at,
                "user_agent": None if anonymous or not event.user_agent else event.user_agent[:500],
                "ip": None if anonymous else event.ip,
                "is_machine": verdict.is_machine,
                "machine_reason": verdict.reason,
                "network": event.network,
                "device": event.device or devices.device_family(event.user_agent),
            }
        )
    if rows:
        _bulk_insert(session, Click.__table__, rows)
    if changed:
        changed.sort(key=lambda c: c.click_id)  # rows locked in one order by every writer
        session.execute(
            _SET_VERDICT,
            [{"click_id": c.click_id, "new_machine": c.is_machine, "new_reason": c.reason} for c in changed],
        )
        apply_rejudged(session, changed)
    return verdicts


#: Clients (stored network prefixes) this process last found to be fleets: their later clicks, early
#: or not, have the fleet judged again, so that a company's NAT stops being one as its people click.
_FLEET_CLIENTS: set[str] = set()


def _judge_fleets(
    session: Session | Connection,
    events: Sequence[ClickEvent],
    verdicts: list[bots.Verdict | None],
    facts: dict[int, _MessageFacts],
    changed: list[Rejudged],
    rules: bots.BotRules,
) -> None:
    """The fleet rule (``bots.fleet_keys``): one client clicking many recipients' messages just
    after their delivery. Judged when the batch has such an early click (or a click of a client
    found a fleet before), over the client's clicks of the last ``fleet_history_seconds``; its
    verdicts may go back (a NAT whose people click later stops being a fleet)."""
    if rules.fleet_share <= 0 or rules.fleet_recipients < 1:
        return
    early = dt.timedelta(seconds=rules.fleet_delivery_seconds)
    clients = {
        event.ip
        for event, verdict in zip(events, verdicts)
        if verdict is not None and event.ip and not facts[event.message_id].tracking_opt_out and bots.may_be_fleet(event.ip)
        and (event.ip in _FLEET_CLIENTS or (not verdict.is_machine and event.at - facts[event.message_id].delivered_at <= early))
    }
    if not clients:
        return
    since = min(e.at for e in events) - bots.fleet_window(rules)
    stored = session.execute(
        select(Click.id, Click.ip, Message.recipient_id, Click.clicked_at, Message.sent_at, Message.created_at,
               Click.is_machine, Click.machine_reason, Click.tracked_url_id, Click.message_id, Click.device)
        .join(Message, Message.id == Click.message_id)
        .where(Click.ip.in_(sorted(clients)), Click.clicked_at >= since)
    ).all()
    rows = [bots.FleetRow(ip, recipient, at, sent or created) for _, ip, recipient, at, sent, created, *_ in stored]
    batch = [
        (index, bots.FleetRow(event.ip, facts[event.message_id].recipient_id, event.at, facts[event.message_id].delivered_at))
        for index, event in enumerate(events)
        if verdicts[index] is not None and event.ip in clients and not facts[event.message_id].tracking_opt_out
    ]
    fleets = bots.fleet_keys(rows + [row for _, row in batch], rules)
    _FLEET_CLIENTS.difference_update(clients)
    _FLEET_CLIENTS.update(fleets)
    fleet = bots.Verdict(True, bots.REASON_FLEET)
    for index, row in batch:
        if not verdicts[index].is_machine and bots.is_fleet(row, fleets, rules):  # type: ignore[union-attr]
            verdicts[index] = fleet
    known = {c.click_id for c in changed}
    for (click_id, ip, recipient, at, sent, created, machine, reason, url_id, message_id, device), row in zip(stored, rows):
        if click_id in known:
            continue
        if not machine and bots.is_fleet(row, fleets, rules):
            changed.append(Rejudged(click_id, url_id, message_id, at, False, reason, True, bots.REASON_FLEET, device))
        elif machine and reason == bots.REASON_FLEET and not bots.is_fleet(row, fleets, rules):
            changed.append(Rejudged(click_id, url_id, message_id, at, True, reason, False, None, device))


def _may_cover_every_link(stored: Sequence[_StoredClick], new: Sequence[ClickEvent], rules: bots.BotRules) -> bool:
    """Whether a message's clicks reach enough different links for "every visible link clicked"
    to apply: only then is the execution's link count read."""
    links = {c.tracked_url_id for c in stored} | {e.tracked_url_id for e in new}
    return len(links) >= max(rules.all_links_min, 2)


def record_opens(
    session: Session | Connection, events: Sequence[OpenEvent], rules: bots.BotRules = bots.DEFAULT_RULES
) -> list[bots.Verdict | None]:
    """Judge and record a batch of opens; None for an open not recorded (message gone, or its
    recipient opted out of tracking: an open cannot be anonymous). An open through Gmail's or
    Yahoo's image proxy is a people's open noted ``proxy``; Apple's proxy's, a machine's."""
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
        verdict = bots.judge_open(
            bots.OpenFact(event.at, event.user_agent, event.request_reason, event.network, event.network_kind), rules
        )
        verdicts.append(verdict)
        rows.append(
            {
                "message_id": event.message_id,
                "opened_at": event.at,
                "user_agent": event.user_agent[:500] if event.user_agent else None,
                "ip": event.ip,
                "is_machine": verdict.is_machine,
                "machine_reason": verdict.reason,
                "network": event.network,
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
