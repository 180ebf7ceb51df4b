"""Rolling up: the reports' aggregates, kept from a watermark, and the tail above it.

No Flask here: the report views, the CLIs and the benchmark call these plain functions;
:mod:`hotclicks.db.stats` reads the aggregates and the tail.

How the figures stay cheap at any size
--------------------------------------
The click path stays one lean insert. The aggregates (``LinkStats``, ``LinkClicker``,
``MessageStats``, ``ExecutionStats``, ``VariantStats``, ``ClickBucket``,
``ReasonStats``, ``DeviceStats``) are brought up to date by
:func:`roll_up`, which folds the clicks, opens and messages whose id is above a watermark, with a
handful of set-based statements. A report then reads the aggregates of its execution's links
*plus* the rows above the watermark (the "tail"), counted live through the primary key. So a
report's cost grows with the number of links and the size of the tail, never with the clicks
already folded.

Which rows may be folded: a row whose id is below the watermark must never appear afterwards.
On PostgreSQL, ids come from a sequence and transactions commit in any order, so a click with id
100 can become visible after one with id 101. :func:`roll_up` therefore never folds up to the
current largest id: it notes that id (``pending_upto``) and the time, and folds up to it only
once ``settle`` seconds have passed, when every transaction that took a smaller id has ended (a
click's transaction is one insert). The same delay covers the bot rules, which may mark a click
as a machine's a few seconds after it was recorded (``bots.BotRules.trap_seconds``): ``settle``
must exceed that window. :data:`SETTLE_SECONDS` is comfortably larger than both. A click judged
again later (a trap click or a sweep seen after it was folded, a journal replayed long after its
time) is moved between people's and machines' figures by :func:`apply_rejudged`, in the same
transaction as its new verdict; :func:`rebuild` starts every aggregate again from zero.

Rows deleted by a retention purge stay counted in the aggregates: the reports keep their figures.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, Connection, bindparam, delete, select, text
from sqlalchemy.orm import Session

from .. import devices
from .models import (
    ClickBucket,
    DeviceStats,
    DomainStats,
    ExecutionStats,
    LinkClicker,
    LinkStats,
    MessageStats,
    MessageStatus,
    ReasonStats,
    RollupState,
    TrackedUrl,
    VariantStats,
    utcnow,
)
from .upsert import upsert

__all__ = ["BATCH_ROWS", "SETTLE_SECONDS", "Rejudged", "apply_rejudged", "needs_roll_up", "rebuild", "roll_up"]

#: Seconds a row must have been visible before it is folded (see the module's docstring).
SETTLE_SECONDS = 60.0

#: Most rows of one source folded by one statement set (a large backlog is folded in steps).
BATCH_ROWS = 500_000

_SOURCES = ("message", "click", "open")
_TABLES = {"message": "hotclicks_message", "click": "hotclicks_click", "open": "hotclicks_open"}
_HUMAN = "SUM(CASE WHEN is_machine THEN 0 ELSE 1 END)"
_MACHINE = "SUM(CASE WHEN is_machine THEN 1 ELSE 0 END)"


def device_expression(column: str = "device") -> str:
    """A click's device family in SQL; clicks recorded before the family was read are ``unknown``."""
    return f"COALESCE({column}, '{devices.UNKNOWN}')"


# -- rolling up ----------------------------------------------------------------------------------


def ints(result: Iterable[Any]) -> list[tuple[Any, ...]]:
    """Rows with PostgreSQL's numeric sums (Decimal) made ints again."""
    return [tuple(int(v) if isinstance(v, Decimal) else v for v in row) for row in result]


def hour_expression(dialect: str) -> str:
    if dialect == "postgresql":
        return "CAST(FLOOR(EXTRACT(EPOCH FROM clicked_at) / 3600) AS BIGINT)"
    return "CAST(strftime('%s', clicked_at) AS INTEGER) / 3600"


def domain_expression(dialect: str, address: str = "r.address") -> str:
    """The domain of a recipient's ``address`` in SQL: what follows its first ``@``, lower-cased."""
    find = "strpos" if dialect == "postgresql" else "instr"
    return f"LOWER(SUBSTR({address}, {find}({address}, '@') + 1))"


def domain_join(session: Session, message: str = "g") -> tuple[str, str]:
    """The join from a message ``g`` to its recipient, and its domain's expression."""
    return (f" JOIN hotclicks_recipient r ON r.id = {message}.recipient_id",
            domain_expression(session.get_bind().dialect.name))


def _add_domains(session: Session, rows: Iterable[tuple[int, str, int]], column: str) -> None:
    """Add each (execution, domain, n) of ``rows`` to ``DomainStats``' ``column``."""
    values = [{"execution_id": e, "domain": d, "messages": 0, "openers": 0, "clickers": 0, column: n}
              for e, d, n in rows if n]
    upsert(session, DomainStats.__table__, values, ["execution_id", "domain"], add=[column])


def _fold_messages(session: Session, lo: int, hi: int) -> None:
    rows = ints(session.execute(
        text(
            "SELECT execution_id, variant_id, COUNT(*) FROM hotclicks_message "
            "WHERE id > :lo AND id <= :hi GROUP BY execution_id, variant_id"
        ),
        {"lo": lo, "hi": hi},
    ).all())
    per_execution: dict[int, int] = {}
    variants = []
    for execution_id, variant_id, count in rows:
        per_execution[execution_id] = per_execution.get(execution_id, 0) + count
        if variant_id is not None:
            variants.append({"variant_id": variant_id, "execution_id": execution_id, "messages": count,
                             "clicks": 0, "machine_clicks": 0})
    upsert(session, ExecutionStats.__table__, [_execution_row(e, messages=n) for e, n in per_execution.items()],
           ["execution_id"], add=["messages"])
    upsert(session, VariantStats.__table__, variants, ["variant_id"], add=["messages"])
    join, domain = domain_join(session)
    _add_domains(session, ints(session.execute(
        text(
            f"SELECT g.execution_id, {domain}, SUM(CASE WHEN g.status = :suppressed THEN 0 ELSE 1 END) "
            f"FROM hotclicks_message g{join} WHERE g.id > :lo AND g.id <= :hi GROUP BY g.execution_id, {domain}"
        ),
        {"lo": lo, "hi": hi, "suppressed": MessageStatus.SUPPRESSED.value},
    ).all()), "messages")


def _execution_row(execution_id: int, **values: int) -> dict[str, Any]:
    row = {"execution_id": execution_id}
    for column in ("messages", "clicks", "machine_clicks", "clickers", "all_clickers", "opens",
                   "machine_opens", "openers", "all_openers"):
        row[column] = values.get(column, 0)
    return row


_EXECUTION_COUNTERS = ["messages", "clicks", "machine_clicks", "clickers", "all_clickers", "opens",
                       "machine_opens", "openers", "all_openers"]


def _fold_clicks(session: Session, lo: int, hi: int) -> None:
    """Fold the clicks with ``lo < id <= hi`` into every aggregate.

    Long on purpose: which (link, message) and message pairs are new must be read before the
    same batch updates ``LinkClicker`` and ``MessageStats``, so the order of these statements is
    the logic, and it reads best in one place.
    """
    span = {"lo": lo, "hi": hi}
    where = "WHERE id > :lo AND id <= :hi"
    # What the batch adds to each link, and how many (link, message) pairs it makes new.
    links = ints(session.execute(
        text(
            f"WITH b AS (SELECT tracked_url_id AS u, message_id AS m, {_HUMAN} AS h, {_MACHINE} AS x "
            f"FROM hotclicks_click {where} GROUP BY tracked_url_id, message_id) "
            "SELECT b.u, t.execution_id, SUM(b.h), SUM(b.x), "
            "SUM(CASE WHEN b.m IS NOT NULL AND b.h > 0 AND COALESCE(lc.clicks, 0) = 0 THEN 1 ELSE 0 END), "
            "SUM(CASE WHEN b.m IS NOT NULL AND lc.tracked_url_id IS NULL THEN 1 ELSE 0 END) "
            "FROM b JOIN hotclicks_tracked_url t ON t.id = b.u "
            "LEFT JOIN hotclicks_link_clicker lc ON lc.tracked_url_id = b.u AND lc.message_id = b.m "
            "GROUP BY b.u, t.execution_id"
        ),
        span,
    ).all())
    # What it adds to each message, hence to its execution's clickers and its variant's clicks.
    messages = ints(session.execute(
        text(
            f"WITH b AS (SELECT message_id AS m, {_HUMAN} AS h, {_MACHINE} AS x "
            f"FROM hotclicks_click {where} AND message_id IS NOT NULL GROUP BY message_id) "
            "SELECT g.execution_id, g.variant_id, SUM(b.h), SUM(b.x), "
            "SUM(CASE WHEN b.h > 0 AND COALESCE(s.clicks, 0) = 0 THEN 1 ELSE 0 END), "
            "SUM(CASE WHEN COALESCE(s.clicks, 0) + COALESCE(s.machine_clicks, 0) = 0 THEN 1 ELSE 0 END) "
            "FROM b JOIN hotclicks_message g ON g.id = b.m "
            "LEFT JOIN hotclicks_message_stats s ON s.message_id = b.m "
            "GROUP BY g.execution_id, g.variant_id"
        ),
        span,
    ).all())
    # Which domains gain a people's clicker: messages whose first people's click is in the batch.
    join, domain = domain_join(session)
    new_clickers = ints(session.execute(
        text(
            f"WITH b AS (SELECT message_id AS m FROM hotclicks_click {where} AND message_id IS NOT NULL "
            "AND NOT is_machine GROUP BY message_id) "
            f"SELECT g.execution_id, {domain}, COUNT(*) FROM b JOIN hotclicks_message g ON g.id = b.m{join} "
            "LEFT JOIN hotclicks_message_stats s ON s.message_id = b.m WHERE COALESCE(s.clicks, 0) = 0 "
            f"GROUP BY g.execution_id, {domain}"
        ),
        span,
    ).all())
    on_conflict = "ON CONFLICT ({keys}) DO UPDATE SET {sets}"
    session.execute(
        text(
            "INSERT INTO hotclicks_link_clicker (tracked_url_id, message_id, clicks, machine_clicks) "
            f"SELECT tracked_url_id, message_id, {_HUMAN}, {_MACHINE} FROM hotclicks_click {where} "
            "AND message_id IS NOT NULL GROUP BY tracked_url_id, message_id "
            + on_conflict.format(
                keys="tracked_url_id, message_id",
                sets="clicks = hotclicks_link_clicker.clicks + excluded.clicks, "
                "machine_clicks = hotclicks_link_clicker.machine_clicks + excluded.machine_clicks",
            )
        ),
        span,
    )
    session.execute(
        text(
            "INSERT INTO hotclicks_message_stats "
            "(message_id, execution_id, clicks, machine_clicks, opens, machine_opens) "
            "SELECT c.message_id, g.execution_id, SUM(CASE WHEN c.is_machine THEN 0 ELSE 1 END), "
            "SUM(CASE WHEN c.is_machine THEN 1 ELSE 0 END), 0, 0 "
            "FROM hotclicks_click c JOIN hotclicks_message g ON g.id = c.message_id "
            "WHERE c.id > :lo AND c.id <= :hi GROUP BY c.message_id, g.execution_id "
            + on_conflict.format(
                keys="message_id",
                sets="clicks = hotclicks_message_stats.clicks + excluded.clicks, "
                "machine_clicks = hotclicks_message_stats.machine_clicks + excluded.machine_clicks",
            )
        ),
        span,
    )
    hour = hour_expression(session.get_bind().dialect.name)
    session.execute(
        text(
            "INSERT INTO hotclicks_click_bucket (tracked_url_id, hour, clicks, machine_clicks) "
            f"SELECT tracked_url_id, {hour}, {_HUMAN}, {_MACHINE} FROM hotclicks_click {where} "
            f"GROUP BY tracked_url_id, {hour} "
            + on_conflict.format(
                keys="tracked_url_id, hour",
                sets="clicks = hotclicks_click_bucket.clicks + excluded.clicks, "
                "machine_clicks = hotclicks_click_bucket.machine_clicks + excluded.machine_clicks",
            )
        ),
        span,
    )
    session.execute(
        text(
            "INSERT INTO hotclicks_device_stats (tracked_url_id, device, clicks, machine_clicks) "
            f"SELECT tracked_url_id, {device_expression()}, {_HUMAN}, {_MACHINE} FROM hotclicks_click {where} "
            f"GROUP BY tracked_url_id, {device_expression()} "
            + on_conflict.format(
                keys="tracked_url_id, device",
                sets="clicks = hotclicks_device_stats.clicks + excluded.clicks, "
                "machine_clicks = hotclicks_device_stats.machine_clicks + excluded.machine_clicks",
            )
        ),
        span,
    )
    upsert(
        session,
        LinkStats.__table__,
        [
            {"tracked_url_id": u, "execution_id": e, "clicks": h, "machine_clicks": x,
             "clickers": nh, "all_clickers": na}
            for u, e, h, x, nh, na in links
        ],
        ["tracked_url_id"],
        add=["clicks", "machine_clicks", "clickers", "all_clickers"],
    )
    executions: dict[int, dict[str, int]] = {}
    for _, e, h, x, _, _ in links:
        row = executions.setdefault(e, {"clicks": 0, "machine_clicks": 0, "clickers": 0, "all_clickers": 0})
        row["clicks"] += h
        row["machine_clicks"] += x
    variants = []
    for e, v, h, x, nh, na in messages:
        row = executions.setdefault(e, {"clicks": 0, "machine_clicks": 0, "clickers": 0, "all_clickers": 0})
        row["clickers"] += nh
        row["all_clickers"] += na
        if v is not None:
            variants.append({"variant_id": v, "execution_id": e, "messages": 0, "clicks": h, "machine_clicks": x})
    upsert(session, ExecutionStats.__table__, [_execution_row(e, **values) for e, values in executions.items()],
           ["execution_id"], add=_EXECUTION_COUNTERS)
    upsert(session, VariantStats.__table__, variants, ["variant_id"], add=["clicks", "machine_clicks"])
    _add_domains(session, new_clickers, "clickers")
    _fold_reasons(
        session,
        "SELECT t.execution_id, 'click', c.machine_reason, COUNT(*) FROM hotclicks_click c "
        "JOIN hotclicks_tracked_url t ON t.id = c.tracked_url_id "
        "WHERE c.id > :lo AND c.id <= :hi AND c.machine_reason IS NOT NULL "
        "GROUP BY t.execution_id, c.machine_reason",
        span,
    )


def _fold_reasons(session: Session, select_sql: str, span: dict[str, int]) -> None:
    """Add the batch's events per (execution, source, reason) to ``ReasonStats``."""
    session.execute(
        text(
            f"INSERT INTO hotclicks_reason_stats (execution_id, source, reason, events) {select_sql} "
            "ON CONFLICT (execution_id, source, reason) DO UPDATE SET "
            "events = hotclicks_reason_stats.events + excluded.events"
        ),
        span,
    )


def _fold_opens(session: Session, lo: int, hi: int) -> None:
    span = {"lo": lo, "hi": hi}
    join, domain = domain_join(session)
    new_openers = ints(session.execute(
        text(
            "WITH b AS (SELECT message_id AS m FROM hotclicks_open WHERE id > :lo AND id <= :hi AND NOT is_machine "
            f"GROUP BY message_id) SELECT g.execution_id, {domain}, COUNT(*) FROM b "
            f"JOIN hotclicks_message g ON g.id = b.m{join} LEFT JOIN hotclicks_message_stats s ON s.message_id = b.m "
            f"WHERE COALESCE(s.opens, 0) = 0 GROUP BY g.execution_id, {domain}"
        ),
        span,
    ).all())
    _add_domains(session, new_openers, "openers")
    rows = ints(session.execute(
        text(
            f"WITH b AS (SELECT message_id AS m, {_HUMAN} AS h, {_MACHINE} AS x FROM hotclicks_open "
            "WHERE id > :lo AND id <= :hi GROUP BY message_id) "
            "SELECT g.execution_id, SUM(b.h), SUM(b.x), "
            "SUM(CASE WHEN b.h > 0 AND COALESCE(s.opens, 0) = 0 THEN 1 ELSE 0 END), "
            "SUM(CASE WHEN COALESCE(s.opens, 0) + COALESCE(s.machine_opens, 0) = 0 THEN 1 ELSE 0 END) "
            "FROM b JOIN hotclicks_message g ON g.id = b.m "
            "LEFT JOIN hotclicks_message_stats s ON s.message_id = b.m GROUP BY g.execution_id"
        ),
        span,
    ).all())
    session.execute(
        text(
            "INSERT INTO hotclicks_message_stats "
            "(message_id, execution_id, clicks, machine_clicks, opens, machine_opens) "
            "SELECT o.message_id, g.execution_id, 0, 0, SUM(CASE WHEN o.is_machine THEN 0 ELSE 1 END), "
            "SUM(CASE WHEN o.is_machine THEN 1 ELSE 0 END) "
            "FROM hotclicks_open o JOIN hotclicks_message g ON g.id = o.message_id "
            "WHERE o.id > :lo AND o.id <= :hi GROUP BY o.message_id, g.execution_id "
            "ON CONFLICT (message_id) DO UPDATE SET opens = hotclicks_message_stats.opens + excluded.opens, "
            "machine_opens = hotclicks_message_stats.machine_opens + excluded.machine_opens"
        ),
        span,
    )
    upsert(
        session,
        ExecutionStats.__table__,
        [_execution_row(e, opens=h, machine_opens=x, openers=nh, all_openers=na) for e, h, x, nh, na in rows],
        ["execution_id"],
        add=_EXECUTION_COUNTERS,
    )
    _fold_reasons(
        session,
        "SELECT g.execution_id, 'open', o.machine_reason, COUNT(*) FROM hotclicks_open o "
        "JOIN hotclicks_message g ON g.id = o.message_id "
        "WHERE o.id > :lo AND o.id <= :hi AND o.machine_reason IS NOT NULL "
        "GROUP BY g.execution_id, o.machine_reason",
        span,
    )


_FOLD = {"message": _fold_messages, "click": _fold_clicks, "open": _fold_opens}


def watermarks(session: Session) -> dict[str, int]:
    """The watermarks, read once per session (a report reads them for each of its figures)."""
    cached = session.info.get("hotclicks_watermarks")
    if cached is None:
        found = {name: mark for name, mark in session.execute(select(RollupState.name, RollupState.watermark))}
        cached = session.info["hotclicks_watermarks"] = {name: int(found.get(name, 0)) for name in _SOURCES}
    return dict(cached)


def roll_up(
    session: Session, *, settle: float = SETTLE_SECONDS, now: dt.datetime | None = None, batch: int = BATCH_ROWS
) -> dict[str, int]:
    """Fold the settled clicks, opens and messages into the aggregates; how many of each.

    Safe to call from several processes at once: each source's state row is locked (an UPDATE)
    before it is read, so one caller folds and the others find nothing left. The caller commits.
    ``settle=0`` folds everything visible at once: for a single writer (benchmarks, tests).
    """
    now = now or utcnow()
    session.info.pop("hotclicks_watermarks", None)
    session.info.pop("hotclicks_urls", None)
    folded = {}
    for name in _SOURCES:
        table = _TABLES[name]
        locked = session.execute(
            text("UPDATE hotclicks_rollup_state SET name = name WHERE name = :n"), {"n": name}
        ).rowcount
        if not locked:
            upsert(session, RollupState.__table__, [{"name": name, "watermark": 0}], ["name"])
            session.execute(text("UPDATE hotclicks_rollup_state SET name = name WHERE name = :n"), {"n": name})
        state = session.get(RollupState, name, populate_existing=True)
        assert state is not None
        top = session.scalar(text(f"SELECT MAX(id) FROM {table}")) or 0
        upto: int | None = None
        if settle <= 0:
            upto = top
        elif state.pending_upto is not None and state.pending_at is not None and (
            now - state.pending_at
        ).total_seconds() >= settle:
            upto = state.pending_upto
        start = state.watermark
        if upto is not None and upto > start:
            lo = start
            while lo < upto:
                hi = min(upto, lo + batch)
                _FOLD[name](session, lo, hi)
                lo = hi
            state.watermark = upto
        if upto is not None or state.pending_upto is None:
            state.pending_upto, state.pending_at = (top, now) if top > state.watermark else (None, None)
        state.updated_at = now
        folded[name] = state.watermark - start
    session.flush()
    return folded


def needs_roll_up(session: Session, *, settle: float = SETTLE_SECONDS, now: dt.datetime | None = None) -> bool:
    """Whether :func:`roll_up` has anything to do (read-only, cheap: a report asks it first)."""
    now = now or utcnow()
    states = {s.name: s for s in session.scalars(select(RollupState))}
    for name in _SOURCES:
        state = states.get(name)
        watermark = state.watermark if state else 0
        if state is not None and state.pending_upto is not None:
            if state.pending_at is None or (now - state.pending_at).total_seconds() >= settle:
                return True
            continue
        top = session.scalar(text(f"SELECT MAX(id) FROM {_TABLES[name]}")) or 0
        if top > watermark:
            return True
    return False


def rebuild(session: Session) -> None:
    """Forget every aggregate: the next :func:`roll_up` folds all rows again from the start.

    The state rows are locked first, as :func:`roll_up` locks them: a roll-up under way in another
    process commits before the aggregates are deleted, so none of its rows survives the rebuild.
    """
    session.info.pop("hotclicks_watermarks", None)
    session.execute(text("UPDATE hotclicks_rollup_state SET name = name"))
    for model in (ClickBucket, DeviceStats, DomainStats, LinkClicker, LinkStats, VariantStats, MessageStats, ExecutionStats,
                  ReasonStats, RollupState):
        session.execute(delete(model))


# -- clicks judged again after they were folded ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rejudged:
    """A stored click whose verdict the bot rules changed (``hotclicks.db.events``)."""

    click_id: int
    tracked_url_id: int
    message_id: int
    clicked_at: dt.datetime
    was_machine: bool
    was_reason: str | None
    is_machine: bool
    reason: str | None
    device: str | None = None


def _hour(moment: dt.datetime) -> int:
    """Hours since the Unix epoch, UTC, as :func:`hour_expression` computes them in SQL."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return int((moment - dt.datetime(1970, 1, 1)).total_seconds()) // 3600


def apply_rejudged(executor: Session | Connection, changes: Sequence[Rejudged]) -> None:
    """Move the clicks the bot rules judged again from people's to machines' figures (or back)
    in every aggregate they were folded into, in the caller's transaction.

    Rare (a trap click, a sweep), so plain statements per click. The click state row is locked
    first (as :func:`roll_up` locks it): a roll-up folds a click either before this reads the
    watermark (then this corrects it) or after this commits (then it folds the new verdict).
    Clicks above the watermark need nothing: the reports count them live.
    """
    if not changes:
        return
    run = executor.execute
    run(text("UPDATE hotclicks_rollup_state SET name = name WHERE name = 'click'"))
    mark = executor.scalar(text("SELECT watermark FROM hotclicks_rollup_state WHERE name = 'click'")) or 0
    domain = domain_expression(executor.dialect.name if isinstance(executor, Connection) else executor.get_bind().dialect.name)
    for change in changes:
        if change.click_id > mark:
            continue
        found = run(
            text(
                f"SELECT t.execution_id, g.variant_id, {domain} FROM hotclicks_tracked_url t, hotclicks_message g "
                "JOIN hotclicks_recipient r ON r.id = g.recipient_id WHERE t.id = :u AND g.id = :m"
            ),
            {"u": change.tracked_url_id, "m": change.message_id},
        ).first()
        if found is None:
            continue
        execution_id, variant_id, domain_name = found
        people = -1 if change.is_machine and not change.was_machine else 1 if change.was_machine and not change.is_machine else 0
        keys = {"u": change.tracked_url_id, "m": change.message_id, "e": execution_id, "v": variant_id,
                "h": _hour(change.clicked_at), "p": people, "x": -people,
                "d": change.device or devices.UNKNOWN, "dn": domain_name}
        if people:
            # Distinct people's clickers change when a (link, message) or a message gains its
            # first people's click or loses its last.
            link_before = executor.scalar(
                text("SELECT clicks FROM hotclicks_link_clicker WHERE tracked_url_id = :u AND message_id = :m"), keys
            ) or 0
            message_before = executor.scalar(
                text("SELECT clicks FROM hotclicks_message_stats WHERE message_id = :m"), keys
            ) or 0
            keys["lc"] = _crossing(link_before, people)
            keys["mc"] = _crossing(message_before, people)
            for statement in (
                "UPDATE hotclicks_link_clicker SET clicks = clicks + :p, machine_clicks = machine_clicks + :x "
                "WHERE tracked_url_id = :u AND message_id = :m",
                "UPDATE hotclicks_link_stats SET clicks = clicks + :p, machine_clicks = machine_clicks + :x, "
                "clickers = clickers + :lc WHERE tracked_url_id = :u",
                "UPDATE hotclicks_message_stats SET clicks = clicks + :p, machine_clicks = machine_clicks + :x "
                "WHERE message_id = :m",
                "UPDATE hotclicks_execution_stats SET clicks = clicks + :p, machine_clicks = machine_clicks + :x, "
                "clickers = clickers + :mc WHERE execution_id = :e",
                "UPDATE hotclicks_variant_stats SET clicks = clicks + :p, machine_clicks = machine_clicks + :x "
                "WHERE variant_id = :v",
                "UPDATE hotclicks_click_bucket SET clicks = clicks + :p, machine_clicks = machine_clicks + :x "
                "WHERE tracked_url_id = :u AND hour = :h",
                "UPDATE hotclicks_device_stats SET clicks = clicks + :p, machine_clicks = machine_clicks + :x "
                "WHERE tracked_url_id = :u AND device = :d",
                "UPDATE hotclicks_domain_stats SET clickers = clickers + :mc WHERE execution_id = :e AND domain = :dn",
            ):
                run(text(statement), keys)
        if change.was_reason != change.reason:
            if change.was_reason is not None:
                run(
                    text("UPDATE hotclicks_reason_stats SET events = events - 1 "
                         "WHERE execution_id = :e AND source = 'click' AND reason = :r"),
                    {"e": execution_id, "r": change.was_reason},
                )
            if change.reason is not None:
                upsert(executor, ReasonStats.__table__,
                       [{"execution_id": execution_id, "source": "click", "reason": change.reason, "events": 1}],
                       ["execution_id", "source", "reason"], add=["events"])


def _crossing(before: int, change: int) -> int:
    """How a count of distinct clickers moves when one's people's clicks go from ``before`` to
    ``before + change``."""
    after = before + change
    return 1 if before <= 0 < after else -1 if after <= 0 < before else 0


# -- reading the tail ----------------------------------------------------------------------------


def tail_text(sql: str) -> Any:
    """A statement over the rows above a watermark ``:w``, with the watermark written in the SQL.

    A prepared statement's generic plan would guess that ``id > $1`` keeps a third of the table
    and scan it all; with the value in the text, the planner sees how few rows the tail holds.
    """
    return text(sql).bindparams(bindparam("w", type_=BigInteger(), literal_execute=True))


def url_executions(session: Session, execution_ids: Iterable[int]) -> dict[int, int]:
    """The execution of each tracked URL of ``execution_ids`` (read once per session)."""
    wanted = tuple(sorted(execution_ids))
    cache = session.info.setdefault("hotclicks_url_executions", {})
    found = cache.get(wanted)
    if found is None:
        found = cache[wanted] = {
            u: e for u, e in session.execute(
                select(TrackedUrl.id, TrackedUrl.execution_id).where(TrackedUrl.execution_id.in_(wanted))
            )
        }
    return found


def in_urls(session: Session, execution_ids: Iterable[int]) -> str:
    """``+c.tracked_url_id IN (...)`` for the tracked URLs of ``execution_ids``.

    The tail is read through the primary key (``c.id > watermark``): the unary ``+`` keeps the
    planner from walking every click of the links through the (tracked_url_id, message_id) index.
    """
    wanted = tuple(sorted(execution_ids))
    cache = session.info.setdefault("hotclicks_urls", {})
    ids = cache.get(wanted)
    if ids is None:
        ids = cache[wanted] = list(session.scalars(select(TrackedUrl.id).where(TrackedUrl.execution_id.in_(wanted))))
    return f"+c.tracked_url_id IN ({', '.join(str(int(i)) for i in ids) or 'NULL'})"
