"""The reports' arithmetic: aggregates kept from a watermark, hot clicks, badges, tracking figures.

No Flask here: the report views, the CLIs and the benchmark call these plain functions.

How the figures stay cheap at any size
--------------------------------------
The click path stays one lean insert. The aggregates (``LinkStats``, ``LinkClicker``,
``MessageStats``, ``ExecutionStats``, ``VariantStats``, ``ClickBucket``) are brought up to date by
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
must exceed that window. :data:`SETTLE_SECONDS` is comfortably larger than both. A click replayed
from a journal long after its time, whose burst marking changes older clicks already folded, is
the one case where aggregates can drift; :func:`rebuild` starts them again from zero.

Rows deleted by a retention purge stay counted in the aggregates: the reports keep their figures.
"""

from __future__ import annotations

import datetime as dt
import functools
import html as _html
import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, bindparam, case, delete, func, literal, select, text
from sqlalchemy.orm import Session

from . import bots
from .models import (
    ClickBucket,
    ContentVariant,
    Delivery,
    Execution,
    ExecutionStats,
    LinkClicker,
    LinkStats,
    Message,
    MessageStats,
    MessageStatus,
    OptOut,
    ProfileCopy,
    Recipient,
    RollupState,
    TestProfile,
    TrackedUrl,
    VariantStats,
    utcnow,
)
from .rewrite import Link, find_html_links, find_text_links, rewrite_html

__all__ = [
    "SETTLE_SECONDS",
    "ContentChoice",
    "ExecutionFigures",
    "HotClicksReport",
    "LinkFigure",
    "annotate_html",
    "annotate_text",
    "choose_content",
    "click_stream",
    "execution_figures",
    "hot_clicks_report",
    "rebuild",
    "roll_up",
]

#: Seconds a row must have been visible before it is folded (see the module's docstring).
SETTLE_SECONDS = 60.0

#: Most rows of one source folded by one statement set (a large backlog is folded in steps).
BATCH_ROWS = 500_000

_SOURCES = ("message", "click", "open")
_TABLES = {"message": "hotclicks_message", "click": "hotclicks_click", "open": "hotclicks_open"}
_HUMAN = "SUM(CASE WHEN is_machine THEN 0 ELSE 1 END)"
_MACHINE = "SUM(CASE WHEN is_machine THEN 1 ELSE 0 END)"


# -- rolling up ----------------------------------------------------------------------------------


def _ints(result: Iterable[Any]) -> list[tuple[Any, ...]]:
    """Rows with PostgreSQL's numeric sums (Decimal) made ints again."""
    return [tuple(int(v) if isinstance(v, Decimal) else v for v in row) for row in result]


def _hour_expression(dialect: str) -> str:
    if dialect == "postgresql":
        return "CAST(FLOOR(EXTRACT(EPOCH FROM clicked_at) / 3600) AS BIGINT)"
    return "CAST(strftime('%s', clicked_at) AS INTEGER) / 3600"


def _add(session: Session, table: str, keys: Sequence[str], rows: list[dict[str, Any]], counters: Sequence[str]) -> None:
    """Add ``rows``' counters to ``table`` (creating missing rows): one statement per batch."""
    if not rows:
        return
    columns = list(rows[0])
    sets = ", ".join(f"{c} = {table}.{c} + excluded.{c}" for c in counters)
    statement = text(
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(':' + c for c in columns)}) "
        f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {sets}"
    )
    session.execute(statement, rows)


def _fold_messages(session: Session, lo: int, hi: int) -> None:
    rows = _ints(session.execute(
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
    _add(session, "hotclicks_execution_stats", ["execution_id"],
         [_execution_row(e, messages=n) for e, n in per_execution.items()], ["messages"])
    _add(session, "hotclicks_variant_stats", ["variant_id"], variants, ["messages"])


def _execution_row(execution_id: int, **values: int) -> dict[str, Any]:
    row = {"execution_id": execution_id}
    for column in ("messages", "clicks", "machine_clicks", "clickers", "all_clickers", "opens",
                   "machine_opens", "openers", "all_openers"):
        row[column] = values.get(column, 0)
    return row


_EXECUTION_COUNTERS = ["messages", "clicks", "machine_clicks", "clickers", "all_clickers", "opens",
                       "machine_opens", "openers", "all_openers"]


def _fold_clicks(session: Session, lo: int, hi: int) -> None:
    span = {"lo": lo, "hi": hi}
    where = "WHERE id > :lo AND id <= :hi"
    # What the batch adds to each link, and how many (link, message) pairs it makes new.
    links = _ints(session.execute(
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
    messages = _ints(session.execute(
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
    upsert = "ON CONFLICT ({keys}) DO UPDATE SET {sets}"
    session.execute(
        text(
            "INSERT INTO hotclicks_link_clicker (tracked_url_id, message_id, clicks, machine_clicks) "
            f"SELECT tracked_url_id, message_id, {_HUMAN}, {_MACHINE} FROM hotclicks_click {where} "
            "AND message_id IS NOT NULL GROUP BY tracked_url_id, message_id "
            + upsert.format(
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
            + upsert.format(
                keys="message_id",
                sets="clicks = hotclicks_message_stats.clicks + excluded.clicks, "
                "machine_clicks = hotclicks_message_stats.machine_clicks + excluded.machine_clicks",
            )
        ),
        span,
    )
    hour = _hour_expression(session.get_bind().dialect.name)
    session.execute(
        text(
            "INSERT INTO hotclicks_click_bucket (tracked_url_id, hour, clicks, machine_clicks) "
            f"SELECT tracked_url_id, {hour}, {_HUMAN}, {_MACHINE} FROM hotclicks_click {where} "
            f"GROUP BY tracked_url_id, {hour} "
            + upsert.format(
                keys="tracked_url_id, hour",
                sets="clicks = hotclicks_click_bucket.clicks + excluded.clicks, "
                "machine_clicks = hotclicks_click_bucket.machine_clicks + excluded.machine_clicks",
            )
        ),
        span,
    )
    _add(
        session,
        "hotclicks_link_stats",
        ["tracked_url_id"],
        [
            {"tracked_url_id": u, "execution_id": e, "clicks": h, "machine_clicks": x,
             "clickers": nh, "all_clickers": na}
            for u, e, h, x, nh, na in links
        ],
        ["clicks", "machine_clicks", "clickers", "all_clickers"],
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
    _add(session, "hotclicks_execution_stats", ["execution_id"],
         [_execution_row(e, **values) for e, values in executions.items()], _EXECUTION_COUNTERS)
    _add(session, "hotclicks_variant_stats", ["variant_id"], variants, ["clicks", "machine_clicks"])


def _fold_opens(session: Session, lo: int, hi: int) -> None:
    span = {"lo": lo, "hi": hi}
    rows = _ints(session.execute(
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
    _add(
        session,
        "hotclicks_execution_stats",
        ["execution_id"],
        [_execution_row(e, opens=h, machine_opens=x, openers=nh, all_openers=na) for e, h, x, nh, na in rows],
        _EXECUTION_COUNTERS,
    )


_FOLD = {"message": _fold_messages, "click": _fold_clicks, "open": _fold_opens}


def _watermarks(session: Session) -> dict[str, int]:
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
            session.execute(
                text(
                    "INSERT INTO hotclicks_rollup_state (name, watermark) VALUES (:n, 0) "
                    "ON CONFLICT (name) DO NOTHING"
                ),
                {"n": name},
            )
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
    """Forget every aggregate: the next :func:`roll_up` folds all rows again from the start."""
    session.info.pop("hotclicks_watermarks", None)
    for model in (ClickBucket, LinkClicker, LinkStats, VariantStats, MessageStats, ExecutionStats, RollupState):
        session.execute(delete(model))


# -- hot clicks ----------------------------------------------------------------------------------


def _tail_text(sql: str) -> Any:
    """A statement over the rows above a watermark ``:w``, with the watermark written in the SQL.

    A prepared statement's generic plan would guess that ``id > $1`` keeps a third of the table
    and scan it all; with the value in the text, the planner sees how few rows the tail holds.
    """
    return text(sql).bindparams(bindparam("w", type_=BigInteger(), literal_execute=True))


def _url_executions(session: Session, execution_ids: Iterable[int]) -> dict[int, int]:
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


def _in_urls(session: Session, execution_ids: Iterable[int]) -> str:
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


@dataclass
class LinkFigure:
    """One tracked URL's line of the hot clicks: counts and share, as the viewer asked for them."""

    tracked_url: TrackedUrl
    clicks: int = 0
    machine_clicks: int = 0
    clickers: int = 0
    all_clickers: int = 0
    #: The figures shown (people only, or with machines) and the link's share of them, in %.
    shown_clicks: int = 0
    shown_clickers: int = 0
    percent: float = 0.0


@dataclass
class VariantShare:
    variant: ContentVariant
    profile_name: str | None
    recipients: int
    recipients_percent: float
    clicks: int
    clicks_percent: float


@dataclass
class HotClicksReport:
    execution: Execution
    include_machine: bool
    measure: str  #: "clicks" or "unique"
    links: list[LinkFigure]
    total_clicks: int  #: the execution's clicks shown (the base of "clicks" percentages)
    total_unique: int  #: the links' unique clickers added up (the base of "unique" percentages)
    variants: list[VariantShare] = field(default_factory=list)
    anonymous_or_unknown_clicks: int = 0  #: clicks no variant can claim (tracking opt-outs)
    recipients: int = 0

    @property
    def base(self) -> int:
        return self.total_unique if self.measure == "unique" else self.total_clicks

    def by_key(self, part: str) -> dict[str, LinkFigure]:
        return {f.tracked_url.link_key: f for f in self.links if f.tracked_url.part == part}


def _percent(part: int, whole: int) -> float:
    return round(100.0 * part / whole, 2) if whole else 0.0


def _link_figures(session: Session, execution_id: int) -> list[LinkFigure]:
    urls = session.execute(
        select(TrackedUrl, LinkStats)
        .outerjoin(LinkStats, LinkStats.tracked_url_id == TrackedUrl.id)
        .where(TrackedUrl.execution_id == execution_id)
        .order_by(TrackedUrl.part, TrackedUrl.position, TrackedUrl.id)
    ).all()
    figures: dict[int, LinkFigure] = {}
    for url, stats in urls:
        if url.name == bots.TRAP_LINK_NAME:  # the hidden trap link is no link of the content
            continue
        figure = LinkFigure(url)
        if stats is not None:
            figure.clicks, figure.machine_clicks = stats.clicks, stats.machine_clicks
            figure.clickers, figure.all_clickers = stats.clickers, stats.all_clickers
        figures[url.id] = figure
    watermark = _watermarks(session)["click"]
    tail = _ints(session.execute(
        _tail_text(
            f"WITH b AS (SELECT +c.tracked_url_id AS u, +c.message_id AS m, "
            "SUM(CASE WHEN c.is_machine THEN 0 ELSE 1 END) AS h, SUM(CASE WHEN c.is_machine THEN 1 ELSE 0 END) AS x "
            f"FROM hotclicks_click c WHERE c.id > :w AND {_in_urls(session, [execution_id])} "
            "GROUP BY +c.tracked_url_id, +c.message_id) "
            "SELECT b.u, SUM(b.h), SUM(b.x), "
            "SUM(CASE WHEN b.m IS NOT NULL AND b.h > 0 AND COALESCE(lc.clicks, 0) = 0 THEN 1 ELSE 0 END), "
            "SUM(CASE WHEN b.m IS NOT NULL AND lc.tracked_url_id IS NULL THEN 1 ELSE 0 END) "
            "FROM b LEFT JOIN hotclicks_link_clicker lc ON lc.tracked_url_id = b.u AND lc.message_id = b.m "
            "GROUP BY b.u"
        ),
        {"w": watermark},
    ).all())
    for u, h, x, new_clickers, new_all in tail:
        figure = figures.get(u)
        if figure is None:
            continue
        figure.clicks += h
        figure.machine_clicks += x
        figure.clickers += new_clickers
        figure.all_clickers += new_all
    return list(figures.values())


def hot_clicks_report(
    session: Session,
    execution: Execution,
    *,
    include_machine: bool = False,
    measure: str = "clicks",
    variants: bool = True,
) -> HotClicksReport:
    """Each link of ``execution`` with its share of the execution's clicks (or unique clickers).

    Percentages are of all the execution's clicks over every variant: they add up to 100 over all
    links, and to less over the links one profile sees. With ``measure="unique"``, a link's share
    is of the unique clickers of every link added up (a person who clicked two links counts on
    each). Machine clicks are left out unless ``include_machine``. Never summed across executions:
    tracked URLs belong to one execution.
    """
    if measure not in ("clicks", "unique"):
        raise ValueError("measure is 'clicks' or 'unique'")
    links = _link_figures(session, execution.id)
    for figure in links:
        figure.shown_clicks = figure.clicks + (figure.machine_clicks if include_machine else 0)
        figure.shown_clickers = figure.all_clickers if include_machine else figure.clickers
    total_clicks = sum(f.shown_clicks for f in links)
    total_unique = sum(f.shown_clickers for f in links)
    for figure in links:
        if measure == "unique":
            figure.percent = _percent(figure.shown_clickers, total_unique)
        else:
            figure.percent = _percent(figure.shown_clicks, total_clicks)
    report = HotClicksReport(execution, include_machine, measure, links, total_clicks, total_unique)
    if variants:
        _variant_shares(session, report)
    return report


def _variant_shares(session: Session, report: HotClicksReport) -> None:
    execution_id = report.execution.id
    rows = session.execute(
        select(ContentVariant, VariantStats, TestProfile.name)
        .outerjoin(VariantStats, VariantStats.variant_id == ContentVariant.id)
        .outerjoin(TestProfile, TestProfile.id == ContentVariant.test_profile_id)
        .where(ContentVariant.execution_id == execution_id)
        .order_by(ContentVariant.id)
    ).all()
    marks = _watermarks(session)
    counts: dict[int | None, list[int]] = {}
    for _, stats, _ in rows:
        if stats is not None:
            counts[stats.variant_id] = [stats.messages, stats.clicks, stats.machine_clicks]
    for variant_id, n in session.execute(
        select(Message.variant_id, func.count())
        .where(Message.id > literal(marks["message"], BigInteger(), literal_execute=True), (Message.execution_id + 0) == execution_id)
        .group_by(Message.variant_id)
    ):
        counts.setdefault(variant_id, [0, 0, 0])[0] += n
    tail = _ints(session.execute(
        _tail_text(
            "SELECT g.variant_id, SUM(b.h), SUM(b.x) FROM (SELECT +c.message_id AS m, "
            "SUM(CASE WHEN c.is_machine THEN 0 ELSE 1 END) AS h, SUM(CASE WHEN c.is_machine THEN 1 ELSE 0 END) AS x "
            f"FROM hotclicks_click c WHERE c.id > :w AND {_in_urls(session, [execution_id])} "
            "GROUP BY +c.message_id) b "
            "JOIN hotclicks_message g ON g.id = b.m GROUP BY g.variant_id"
        ),
        {"w": marks["click"], "e": execution_id},
    ).all())
    for variant_id, h, x in tail:
        entry = counts.setdefault(variant_id, [0, 0, 0])
        entry[1] += h
        entry[2] += x
    stats_row = session.get(ExecutionStats, execution_id)
    recipients = (stats_row.messages if stats_row else 0) + sum(
        n for (n,) in session.execute(
            select(func.count()).where(Message.id > literal(marks["message"], BigInteger(), literal_execute=True), (Message.execution_id + 0) == execution_id)
        )
    )
    report.recipients = recipients
    claimed = 0
    for variant, _, profile_name in rows:
        messages, h, x = counts.get(variant.id, [0, 0, 0])
        clicks = h + (x if report.include_machine else 0)
        claimed += clicks
        report.variants.append(
            VariantShare(variant, profile_name, messages, _percent(messages, recipients), clicks,
                         _percent(clicks, report.total_clicks))
        )
    report.anonymous_or_unknown_clicks = max(0, report.total_clicks - claimed)


# -- content and badges --------------------------------------------------------------------------


@dataclass(frozen=True)
class ContentChoice:
    """The content the hot clicks page shows, and where it comes from."""

    html: str | None
    text: str | None
    #: "preview" (the host app's renderer), "test-profile" (the copy that profile received),
    #: "variant-sample" (the relay's sample of a variant), or "none".
    source: str
    variant: ContentVariant | None = None
    note: str = ""


def choose_content(
    session: Session,
    execution: Execution,
    profile: TestProfile | None,
    preview: tuple[str | None, str | None] | None = None,
) -> ContentChoice:
    """What to show: the host app's preview, else the profile's own copy (the latest it received in
    the execution), else a variant's sample.

    Without a profile, the sample of the variant most recipients got stands for "a recipient with
    no attributes" when there is no preview renderer.
    """
    if preview is not None and (preview[0] or preview[1]):
        return ContentChoice(preview[0], preview[1], "preview")
    variants = list(
        session.scalars(select(ContentVariant).where(ContentVariant.execution_id == execution.id).order_by(ContentVariant.id))
    )
    if profile is not None:
        own = session.execute(
            select(ProfileCopy, Message.variant_id)
            .join(Message, Message.id == ProfileCopy.message_id)
            .where(ProfileCopy.execution_id == execution.id, ProfileCopy.test_profile_id == profile.id)
            .order_by(ProfileCopy.message_id.desc())
            .limit(1)
        ).first()
        if own is not None:
            copy, variant_id = own
            return ContentChoice(copy.html, copy.text, "test-profile",
                                 next((v for v in variants if v.id == variant_id), None),
                                 f"The copy {profile.name} received in this execution.")
        for variant in variants:  # kept before each profile's copy was (a variant's sample slot)
            if variant.test_profile_id == profile.id:
                return ContentChoice(variant.html, variant.text, "test-profile", variant,
                                     f"The copy {profile.name} received in this execution.")
        received = session.scalar(
            select(Message.variant_id)
            .join(Recipient, Recipient.id == Message.recipient_id)
            .where(Message.execution_id == execution.id, Recipient.address == profile.address,
                   Message.variant_id.is_not(None))
            .limit(1)
        )
        for variant in variants:
            if variant.id == received:
                return ContentChoice(variant.html, variant.text, "variant-sample", variant,
                                     f"A sample of the variant {profile.name} received (another recipient's copy).")
        return ContentChoice(None, None, "none", None,
                             f"{profile.name} received no copy of this execution and no preview renderer is registered.")
    if not variants:
        return ContentChoice(None, None, "none", None, "The relay kept no sample of this execution's content.")
    sizes = {v: n for v, n in session.execute(
        select(VariantStats.variant_id, VariantStats.messages).where(VariantStats.execution_id == execution.id)
    )}
    marks = _watermarks(session)
    for v, n in session.execute(
        select(Message.variant_id, func.count())
        .where(Message.id > literal(marks["message"], BigInteger(), literal_execute=True), (Message.execution_id + 0) == execution.id)
        .group_by(Message.variant_id)
    ):
        sizes[v] = sizes.get(v, 0) + n
    chosen = max(variants, key=lambda v: (v.sample_source == "recipient", sizes.get(v.id, 0), -v.id))
    return ContentChoice(chosen.html, chosen.text, "variant-sample", chosen,
                         "A sample of the variant most recipients received, kept by the relay.")


#: Heat scale: a badge's level is the number of thresholds its percentage reaches (0 to 9).
HEAT_THRESHOLDS = (0.5, 2.5, 5, 10, 15, 20, 30, 45, 60)
#: Colours of the heat levels, cold to hot.
HEAT_COLOURS = ("#dbe9f6", "#c6e2ef", "#c8ecc2", "#e7f1a6", "#fde68a", "#fcc97a",
                "#f9a66c", "#f37f5e", "#e4534f", "#c2243e")


def heat_level(percent: float) -> int:
    return sum(1 for threshold in HEAT_THRESHOLDS if percent >= threshold)


#: The badges' style inside the email's sandboxed frame (no script: hover and focus are CSS).
BADGE_CSS = """
.hc-badge{position:relative;display:inline-block;margin:0 4px 0 0;padding:1px 6px;border-radius:9px;
font:bold 12px/16px system-ui,sans-serif;color:#111;border:1px solid #444;vertical-align:middle;
cursor:default;text-decoration:none;white-space:nowrap;z-index:10}
.hc-badge:focus{outline:3px solid #1a5fb4;outline-offset:1px}
.hc-untracked{background:#eee;color:#555;border-style:dashed;font-weight:normal}
.hc-tip{display:none;position:absolute;left:0;top:100%;margin-top:4px;padding:6px 8px;background:#222;
color:#fff;font:12px/16px system-ui,sans-serif;border-radius:4px;white-space:normal;width:max-content;
max-width:320px;overflow-wrap:anywhere;z-index:20;text-align:left}
.hc-badge:hover .hc-tip,.hc-badge:focus .hc-tip{display:block}
""" + "".join(f".hc-heat-{i}{{background:{c}}}" for i, c in enumerate(HEAT_COLOURS)) + ".hc-heat-9,.hc-heat-8{color:#fff}"


@dataclass(frozen=True)
class Badge:
    """What one link of the content shows: its figure, or None when it is not tracked."""

    index: int
    key: str
    url: str
    figure: LinkFigure | None

    def text(self, measure: str) -> str:
        return "not tracked" if self.figure is None else f"{self.figure.percent:g}%"

    def tip(self, measure: str) -> str:
        if self.figure is None:
            return f"Not tracked in this execution. {self.url}"
        f = self.figure
        return (f"{f.shown_clicks} click{'s' if f.shown_clicks != 1 else ''}, "
                f"{f.shown_clickers} unique clicker{'s' if f.shown_clickers != 1 else ''}. {f.tracked_url.url}")


def _badges(links: Iterable[Link], figures: dict[str, LinkFigure]) -> list[Badge]:
    return [Badge(link.index, link.key, link.url, figures.get(link.key)) for link in links]


_DANGEROUS_TAGS = ("script", "iframe", "frame", "frameset", "object", "embed", "applet", "base", "noscript")
_MARKER = re.compile(r"^hc-link:(\d+)$")


def annotate_html(
    html: str,
    figures: dict[str, LinkFigure],
    *,
    measure: str = "clicks",
    personal_params: Collection[str] = (),
    show_images: bool = False,
) -> tuple[str, list[Badge]]:
    """The email's HTML with a badge before each link, made safe to show, and the badges.

    Links are found as the relay finds them (``find_html_links``), so each badge is matched to its
    tracked URL by the same key. The document is then parsed with BeautifulSoup to add the badges
    and to drop what could run or load: scripts, frames, event handler attributes,
    ``javascript:`` URLs, meta refreshes, and remote images unless ``show_images`` (loading them
    would tell the sender someone looked). It is still shown in a sandboxed frame with a strict
    Content-Security-Policy: this clean-up is a second wall, not the first.

    The parsed and cleaned document, with a slot where each badge goes, is kept per content (a
    small cache), so a report only fills the slots: its cost does not grow with the email's size.
    """
    prepared, links = _prepare_html(html, tuple(sorted(personal_params)), show_images)
    badges = _badges(links, figures)
    by_index = {b.index: b for b in badges}

    def fill(match: re.Match[str]) -> str:
        badge = by_index[int(match.group(1))]
        level = "hc-untracked" if badge.figure is None else f"hc-heat-{heat_level(badge.figure.percent)}"
        percent = "" if badge.figure is None else f"{badge.figure.percent:g}"
        label, tip = _html.escape(badge.text(measure)), _html.escape(badge.tip(measure))
        return (
            f'<span class="hc-badge {level}" tabindex="0" data-hc-link="{badge.index}" '
            f'data-hc-percent="{percent}" aria-label="{label}: {tip}">{label}'
            f'<span class="hc-tip" role="tooltip">{tip}</span></span>'
        )

    return _SLOT.sub(fill, prepared), badges


def html_badges(html: str, figures: dict[str, LinkFigure], *, personal_params: Collection[str] = ()) -> list[Badge]:
    """The badges of the HTML's links, without rendering anything (the JSON report's)."""
    return _badges(_html_links(html, tuple(sorted(personal_params))), figures)


_SLOT = re.compile(r"<!--hc-slot:(\d+)-->")


@functools.lru_cache(maxsize=64)
def _html_links(html: str, personal_params: tuple[str, ...]) -> list[Link]:
    return find_html_links(html, personal_params=personal_params)


@functools.lru_cache(maxsize=32)
def _prepare_html(html: str, personal_params: tuple[str, ...], show_images: bool) -> tuple[str, list[Link]]:
    from bs4 import BeautifulSoup, Comment

    links = _html_links(html, personal_params)
    marked = rewrite_html(html, {link.index: f"hc-link:{link.index}" for link in links},
                          personal_params=personal_params)
    soup = BeautifulSoup(marked, "html.parser")
    for tag in soup.find_all(_DANGEROUS_TAGS):
        tag.decompose()
    for tag in soup.find_all("meta"):
        if str(tag.get("http-equiv", "")).lower() == "refresh":
            tag.decompose()
    for comment in soup.find_all(string=lambda s: isinstance(s, Comment)):
        comment.extract()  # Outlook's conditional markup: nothing a browser shows
    for tag in soup.find_all(True):
        for name in list(tag.attrs):
            value = tag.attrs[name]
            lowered = name.lower()
            if lowered.startswith("on") or lowered in ("formaction", "srcdoc"):
                del tag.attrs[name]
            elif isinstance(value, str) and value.strip().lower().startswith(("javascript:", "vbscript:")):
                del tag.attrs[name]
            elif not show_images and lowered in ("src", "srcset", "background", "poster") and not (
                isinstance(value, str) and value.startswith("data:")
            ):
                tag.attrs["data-hc-" + lowered] = value
                del tag.attrs[name]
    by_index = {link.index: link for link in links}
    for tag in soup.find_all(href=_MARKER):
        match = _MARKER.match(tag["href"])
        assert match is not None
        link = by_index[int(match.group(1))]
        tag["href"] = f"#hc-link-{link.index}"
        tag["title"] = link.url
        if tag.name != "area":  # an image map's area has no room for a badge
            tag.insert_before(Comment(f"hc-slot:{link.index}"))
    style = soup.new_tag("style")
    style.string = BADGE_CSS
    head = soup.find("head")
    if head is not None:
        head.append(style)
    else:
        soup.insert(0, style)
    return str(soup), links


@dataclass(frozen=True)
class TextPiece:
    """A piece of the text version: plain text, or a link with its badge."""

    text: str
    badge: Badge | None = None


def annotate_text(text: str, figures: dict[str, LinkFigure], *, personal_params: Collection[str] = ()) -> list[TextPiece]:
    """The text version cut into plain pieces and links, each link with its badge."""
    links = find_text_links(text, personal_params=personal_params)
    badges = _badges(links, figures)
    pieces: list[TextPiece] = []
    position = 0
    for link, badge in zip(links, badges):
        if link.start > position:
            pieces.append(TextPiece(text[position:link.start]))
        pieces.append(TextPiece(text[link.start:link.end], badge))
        position = link.end
    if position < len(text):
        pieces.append(TextPiece(text[position:]))
    return pieces


# -- tracking figures ----------------------------------------------------------------------------


@dataclass
class ExecutionFigures:
    """One execution's line of the tracking reports (machine events left out)."""

    execution: Execution
    sent: int = 0  #: handed to the relay, suppressed ones aside
    delivered: int = 0
    failed: int = 0
    opens: int = 0
    openers: int = 0
    clicks: int = 0
    clickers: int = 0
    machine_clicks: int = 0
    opt_outs: int = 0
    last_send: dt.datetime | None = None

    @property
    def click_rate(self) -> float:
        """Unique clickers per hundred delivered messages."""
        return _percent(self.clickers, self.delivered)

    @property
    def reactivity(self) -> float:
        """Unique clickers per hundred unique openers."""
        return _percent(self.clickers, self.openers)

    def add(self, other: ExecutionFigures) -> None:
        for name in ("sent", "delivered", "failed", "opens", "openers", "clicks", "clickers",
                     "machine_clicks", "opt_outs"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        if other.last_send and (self.last_send is None or other.last_send > self.last_send):
            self.last_send = other.last_send


def execution_figures(session: Session, executions: Sequence[Execution]) -> dict[int, ExecutionFigures]:
    """The figures of ``executions``: folded aggregates plus the rows above the watermark.

    Message statuses change after the fact (queued, then sent or failed), so they are counted from
    the broad log itself, grouped by execution through its index.
    """
    ids = [e.id for e in executions]
    figures = {e.id: ExecutionFigures(e, last_send=e.last_message_at) for e in executions}
    if not ids:
        return figures
    for row in session.scalars(select(ExecutionStats).where(ExecutionStats.execution_id.in_(ids))):
        f = figures[row.execution_id]
        f.clicks, f.clickers, f.machine_clicks = row.clicks, row.clickers, row.machine_clicks
        f.opens, f.openers = row.opens, row.openers
    for execution_id, sent, delivered, failed in session.execute(
        select(
            Message.execution_id,
            func.count(case((Message.status != MessageStatus.SUPPRESSED, 1))),
            func.count(case((Message.status == MessageStatus.SENT, 1))),
            func.count(case((Message.status == MessageStatus.FAILED, 1))),
        ).where(Message.execution_id.in_(ids)).group_by(Message.execution_id)
    ):
        f = figures[execution_id]
        f.sent, f.delivered, f.failed = sent, delivered, failed
    for execution_id, n in session.execute(
        select(Message.execution_id, func.count(OptOut.id))
        .join(OptOut, OptOut.message_id == Message.id)
        .where(Message.execution_id.in_(ids)).group_by(Message.execution_id)
    ):
        figures[execution_id].opt_outs = n
    marks = _watermarks(session)
    params = {"w": marks["click"]}
    in_ids = ", ".join(str(int(i)) for i in ids)
    for execution_id, h, x in session.execute(
        _tail_text(
            "SELECT +c.tracked_url_id, SUM(CASE WHEN c.is_machine THEN 0 ELSE 1 END), "
            "SUM(CASE WHEN c.is_machine THEN 1 ELSE 0 END) FROM hotclicks_click c "
            f"WHERE c.id > :w AND {_in_urls(session, ids)} GROUP BY +c.tracked_url_id"
        ),
        params,
    ):
        execution_id = _url_executions(session, ids)[execution_id]
        figures[execution_id].clicks += h
        figures[execution_id].machine_clicks += x
    for execution_id, new_clickers in session.execute(
        _tail_text(
            "SELECT g.execution_id, COUNT(*) FROM (SELECT +message_id AS message_id FROM hotclicks_click "
            "WHERE id > :w AND NOT is_machine GROUP BY +message_id) b "
            "JOIN hotclicks_message g ON g.id = b.message_id "
            "LEFT JOIN hotclicks_message_stats s ON s.message_id = b.message_id "
            f"WHERE g.execution_id IN ({in_ids}) AND COALESCE(s.clicks, 0) = 0 GROUP BY g.execution_id"
        ),
        params,
    ):
        figures[execution_id].clickers += new_clickers
    for execution_id, opens, new_openers in session.execute(
        _tail_text(
            "SELECT g.execution_id, SUM(b.n), SUM(CASE WHEN COALESCE(s.opens, 0) = 0 THEN 1 ELSE 0 END) "
            "FROM (SELECT +message_id AS message_id, COUNT(*) AS n FROM hotclicks_open "
            "WHERE id > :w AND NOT is_machine GROUP BY +message_id) b "
            "JOIN hotclicks_message g ON g.id = b.message_id "
            "LEFT JOIN hotclicks_message_stats s ON s.message_id = b.message_id "
            f"WHERE g.execution_id IN ({in_ids}) GROUP BY g.execution_id"
        ),
        {"w": marks["open"]},
    ):
        figures[execution_id].opens += int(opens)
        figures[execution_id].openers += int(new_openers)
    return figures


def execution_counts(session: Session, executions: Sequence[Execution], *, include_machine: bool = False) -> dict[int, tuple[int, int]]:
    """Each execution's messages and clicks, from the aggregates and the tail alone (cheap at any
    size: the execution switcher of the hot clicks shows them)."""
    ids = [e.id for e in executions]
    counts = {i: [0, 0] for i in ids}
    if not ids:
        return {}
    for row in session.scalars(select(ExecutionStats).where(ExecutionStats.execution_id.in_(ids))):
        counts[row.execution_id] = [row.messages, row.clicks + (row.machine_clicks if include_machine else 0)]
    marks = _watermarks(session)
    for execution_id, n in session.execute(
        select(Message.execution_id, func.count())
        .where(Message.id > literal(marks["message"], BigInteger(), literal_execute=True), (Message.execution_id + 0).in_(ids))
        .group_by(Message.execution_id)
    ):
        counts[execution_id][0] += n
    machine = "" if include_machine else " AND NOT c.is_machine"
    for execution_id, n in session.execute(
        _tail_text(
            "SELECT +c.tracked_url_id, COUNT(*) FROM hotclicks_click c "
            f"WHERE c.id > :w{machine} AND {_in_urls(session, ids)} "
            "GROUP BY +c.tracked_url_id"
        ),
        {"w": marks["click"]},
    ):
        counts[_url_executions(session, ids)[execution_id]][1] += n
    return {i: (m, c) for i, (m, c) in counts.items()}


def delivery_executions(session: Session, delivery: Delivery) -> list[Execution]:
    """A delivery's executions, newest first (the first one is the hot clicks' default)."""
    return list(
        session.scalars(
            select(Execution)
            .where(Execution.delivery_id == delivery.id)
            .order_by(Execution.started_at.desc(), Execution.id.desc())
        )
    )


def click_stream(session: Session, execution: Execution, *, include_machine: bool = False) -> list[tuple[dt.datetime, int]]:
    """The execution's clicks per hour (UTC), oldest first, hours without clicks left out."""
    url_ids = select(TrackedUrl.id).where(TrackedUrl.execution_id == execution.id).scalar_subquery()
    hours: dict[int, int] = {}
    for hour, h, x in session.execute(
        select(ClickBucket.hour, func.sum(ClickBucket.clicks), func.sum(ClickBucket.machine_clicks))
        .where(ClickBucket.tracked_url_id.in_(url_ids))
        .group_by(ClickBucket.hour)
    ):
        hours[int(hour)] = hours.get(int(hour), 0) + int(h) + (int(x) if include_machine else 0)
    hour_sql = _hour_expression(session.get_bind().dialect.name).replace("clicked_at", "c.clicked_at")
    for hour, h, x in session.execute(
        _tail_text(
            f"SELECT {hour_sql}, SUM(CASE WHEN c.is_machine THEN 0 ELSE 1 END), "
            "SUM(CASE WHEN c.is_machine THEN 1 ELSE 0 END) FROM hotclicks_click c "
            f"WHERE c.id > :w AND {_in_urls(session, [execution.id])} GROUP BY {hour_sql}"
        ),
        {"w": _watermarks(session)["click"], "e": execution.id},
    ):
        hours[int(hour)] = hours.get(int(hour), 0) + int(h) + (int(x) if include_machine else 0)
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    return [(epoch + dt.timedelta(hours=h), n) for h, n in sorted(hours.items()) if n]


def escape(value: object) -> str:
    return _html.escape(str(value), quote=True)
