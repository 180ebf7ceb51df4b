"""The reports' queries: hot clicks, content samples, tracking figures, deliveries, recipients.

Each question the report pages, their JSON and CSV twins and the CLIs ask is one function here;
the figures are the aggregates :mod:`hotclicks.db.rollup` keeps plus the tail above its
watermark, and the arithmetic over them is :mod:`hotclicks.heat`'s. No Flask here.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, func, literal, or_, select, text
from sqlalchemy.orm import Session

from .. import bots, devices, heat
from .models import (
    Click,
    ClickBucket,
    ContentVariant,
    Delivery,
    DeviceStats,
    DomainStats,
    Execution,
    ExecutionStats,
    LinkStats,
    Message,
    MessageStatus,
    Open,
    OptOut,
    ProfileCopy,
    ReasonStats,
    Recipient,
    TestProfile,
    TrackedUrl,
    VariantStats,
)
from .rollup import device_expression, domain_join, hour_expression, in_urls, ints, tail_text, url_executions, watermarks

__all__ = [
    "ContentChoice",
    "choose_content",
    "click_stream",
    "delivery_executions",
    "delivery_figures",
    "delivery_totals",
    "device_figures",
    "domain_figures",
    "execution_counts",
    "execution_figures",
    "execution_messages",
    "find_delivery",
    "find_recipients",
    "hot_clicks_report",
    "reason_figures",
    "recipient_clicks",
    "recipient_opens",
    "recipient_opt_outs",
]


def _link_figures(
    session: Session, execution_id: int, before_hour: int | None = None, device: str | None = None
) -> list[heat.LinkFigure]:
    if device is not None:
        return _device_link_figures(session, execution_id, device)
    if before_hour is not None:
        return _window_figures(session, execution_id, before_hour)
    urls = session.execute(
        select(TrackedUrl, LinkStats)
        .outerjoin(LinkStats, LinkStats.tracked_url_id == TrackedUrl.id)
        .where(TrackedUrl.execution_id == execution_id)
        .order_by(TrackedUrl.part, TrackedUrl.position, TrackedUrl.id)
    ).all()
    figures: dict[int, heat.LinkFigure] = {}
    for url, stats in urls:
        if url.name == bots.TRAP_LINK_NAME:  # the hidden trap link is no link of the content
            continue
        figure = heat.LinkFigure(url)
        if stats is not None:
            figure.clicks, figure.machine_clicks = stats.clicks, stats.machine_clicks
            figure.clickers, figure.all_clickers = stats.clickers, stats.all_clickers
        figures[url.id] = figure
    watermark = watermarks(session)["click"]
    tail = ints(session.execute(
        tail_text(
            f"WITH b AS (SELECT +c.tracked_url_id AS u, +c.message_id AS m, "
            "SUM(CASE WHEN c.is_machine THEN 0 ELSE 1 END) AS h, SUM(CASE WHEN c.is_machine THEN 1 ELSE 0 END) AS x "
            f"FROM hotclicks_click c WHERE c.id > :w AND {in_urls(session, [execution_id])} "
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


def _content_links(session: Session, execution_id: int) -> dict[int, heat.LinkFigure]:
    return {
        url.id: heat.LinkFigure(url)
        for url in session.scalars(
            select(TrackedUrl).where(TrackedUrl.execution_id == execution_id)
            .order_by(TrackedUrl.part, TrackedUrl.position, TrackedUrl.id)
        )
        if url.name != bots.TRAP_LINK_NAME
    }


def _window_figures(session: Session, execution_id: int, before_hour: int) -> list[heat.LinkFigure]:
    """Each link's clicks in the hour buckets before ``before_hour`` (plus the tail's): the hourly
    aggregates hold clicks, not clickers, so a window has no unique clickers."""
    figures = _content_links(session, execution_id)
    if not figures:
        return []
    rows = session.execute(
        select(ClickBucket.tracked_url_id, func.sum(ClickBucket.clicks), func.sum(ClickBucket.machine_clicks))
        .where(ClickBucket.tracked_url_id.in_(list(figures)), ClickBucket.hour < before_hour)
        .group_by(ClickBucket.tracked_url_id)
    ).all()
    hour_sql = hour_expression(session.get_bind().dialect.name).replace("clicked_at", "c.clicked_at")
    rows += session.execute(
        tail_text(
            "SELECT +c.tracked_url_id, SUM(CASE WHEN c.is_machine THEN 0 ELSE 1 END), "
            "SUM(CASE WHEN c.is_machine THEN 1 ELSE 0 END) FROM hotclicks_click c "
            f"WHERE c.id > :w AND {in_urls(session, [execution_id])} AND {hour_sql} < :before "
            "GROUP BY +c.tracked_url_id"
        ),
        {"w": watermarks(session)["click"], "before": before_hour},
    ).all()
    for u, h, x in ints(rows):
        if u in figures:
            figures[u].clicks += int(h)
            figures[u].machine_clicks += int(x)
    return list(figures.values())


def _device_counts(session: Session, execution_ids: Sequence[int]) -> dict[tuple[int, str], list[int]]:
    """People's and machines' clicks per (tracked URL, device family) of ``execution_ids``:
    ``DeviceStats`` plus the tail."""
    urls = url_executions(session, execution_ids)
    counts: dict[tuple[int, str], list[int]] = {}
    if not urls:
        return counts
    rows = session.execute(
        select(DeviceStats.tracked_url_id, DeviceStats.device, DeviceStats.clicks, DeviceStats.machine_clicks)
        .where(DeviceStats.tracked_url_id.in_(list(urls)))
    ).all()
    rows += session.execute(
        tail_text(
            f"SELECT +c.tracked_url_id, {device_expression('c.device')}, "
            "SUM(CASE WHEN c.is_machine THEN 0 ELSE 1 END), SUM(CASE WHEN c.is_machine THEN 1 ELSE 0 END) "
            f"FROM hotclicks_click c WHERE c.id > :w AND {in_urls(session, execution_ids)} "
            "GROUP BY +c.tracked_url_id, c.device"
        ),
        {"w": watermarks(session)["click"]},
    ).all()
    for u, device, h, x in rows:
        entry = counts.setdefault((u, device), [0, 0])
        entry[0] += int(h)
        entry[1] += int(x)
    return counts


def _device_link_figures(session: Session, execution_id: int, device: str) -> list[heat.LinkFigure]:
    """Each link's clicks from one device family: the device aggregates keep clicks, not
    clickers, so a device filter has no unique clickers."""
    figures = _content_links(session, execution_id)
    for (u, family), (h, x) in _device_counts(session, [execution_id]).items():
        if family == device and u in figures:
            figures[u].clicks += h
            figures[u].machine_clicks += x
    return list(figures.values())


def device_figures(session: Session, execution_ids: Sequence[int]) -> dict[int, dict[str, tuple[int, int]]]:
    """Each execution's people's and machines' clicks per device family (every family of
    :data:`hotclicks.devices.FAMILIES`, in its order), from ``DeviceStats`` plus the tail."""
    ids = list(execution_ids)
    found = {e: {family: [0, 0] for family in devices.FAMILIES} for e in ids}
    urls = url_executions(session, ids)
    for (u, family), (h, x) in _device_counts(session, ids).items():
        entry = found[urls[u]].setdefault(family, [0, 0])
        entry[0] += h
        entry[1] += x
    return {e: {family: (h, x) for family, (h, x) in families.items()} for e, families in found.items()}


def hot_clicks_report(
    session: Session,
    execution: Execution,
    *,
    include_machine: bool = False,
    measure: str = "clicks",
    variants: bool = True,
    within: str | None = None,
    device: str | None = None,
) -> heat.HotClicksReport:
    """Each link of ``execution`` with its share of the execution's clicks (or unique clickers).

    Percentages are of all the execution's clicks over every variant: they add up to 100 over all
    links, and to less over the links one profile sees. With ``measure="unique"``, a link's share
    is of the unique clickers of every link added up (a person who clicked two links counts on
    each). Machine clicks are left out unless ``include_machine``. Never summed across executions:
    tracked URLs belong to one execution.

    ``within`` (a key of :data:`heat.WINDOWS`) counts only the clicks of that long after the
    execution's first message, from the hourly buckets (see :func:`heat.window_end_hour` for the
    rounding); the measure is then clicks: the buckets keep no clickers.

    ``device`` (one of :data:`hotclicks.devices.FAMILIES`) counts only that family's clicks, each
    link's share of them, from the device aggregates; the measure is then clicks too, and a time
    window cannot be combined with it (the device aggregates keep no hours).
    """
    if measure not in heat.MEASURES:
        raise ValueError("measure is 'clicks' or 'unique'")
    before = None
    if within is not None:
        if within not in heat.WINDOWS:
            raise ValueError(f"within is one of {', '.join(heat.WINDOWS)}")
        before, measure = heat.window_end_hour(execution.started_at, within), "clicks"
    if device is not None:
        if device not in devices.FAMILIES:
            raise ValueError(f"device is one of {', '.join(devices.FAMILIES)}")
        if within is not None:
            raise ValueError("a device filter and a time window do not combine")
        measure = "clicks"
    report = heat.hot_clicks(execution, _link_figures(session, execution.id, before, device),
                             include_machine=include_machine, measure=measure)
    if variants:
        _variant_shares(session, report)
    return report


def _variant_shares(session: Session, report: heat.HotClicksReport) -> None:
    execution_id = report.execution.id
    rows = session.execute(
        select(ContentVariant, VariantStats, TestProfile.name)
        .outerjoin(VariantStats, VariantStats.variant_id == ContentVariant.id)
        .outerjoin(TestProfile, TestProfile.id == ContentVariant.test_profile_id)
        .where(ContentVariant.execution_id == execution_id)
        .order_by(ContentVariant.id)
    ).all()
    marks = watermarks(session)
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
    tail = ints(session.execute(
        tail_text(
            "SELECT g.variant_id, SUM(b.h), SUM(b.x) FROM (SELECT +c.message_id AS m, "
            "SUM(CASE WHEN c.is_machine THEN 0 ELSE 1 END) AS h, SUM(CASE WHEN c.is_machine THEN 1 ELSE 0 END) AS x "
            f"FROM hotclicks_click c WHERE c.id > :w AND {in_urls(session, [execution_id])} "
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
    heat.share_variants(
        report,
        [(variant, profile_name, *counts.get(variant.id, [0, 0, 0])) for variant, _, profile_name in rows],
        recipients,
    )


# -- content -------------------------------------------------------------------------------------


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
    marks = watermarks(session)
    for v, n in session.execute(
        select(Message.variant_id, func.count())
        .where(Message.id > literal(marks["message"], BigInteger(), literal_execute=True), (Message.execution_id + 0) == execution.id)
        .group_by(Message.variant_id)
    ):
        sizes[v] = sizes.get(v, 0) + n
    chosen = max(variants, key=lambda v: (v.sample_source == "recipient", sizes.get(v.id, 0), -v.id))
    return ContentChoice(chosen.html, chosen.text, "variant-sample", chosen,
                         "A sample of the variant most recipients received, kept by the relay.")


# -- tracking figures ----------------------------------------------------------------------------


def execution_figures(session: Session, executions: Sequence[Execution]) -> dict[int, heat.ExecutionFigures]:
    """The figures of ``executions``: folded aggregates plus the rows above the watermark.

    Message statuses change after the fact (queued, then sent or failed), so they are counted from
    the broad log itself, grouped by execution through its index. Long because each figure has
    its own source (aggregate, log, tail); one function keeps them one answer for every page and
    ``flask hotclicks stats``.
    """
    ids = [e.id for e in executions]
    figures = {e.id: heat.ExecutionFigures(e, last_send=e.last_message_at) for e in executions}
    if not ids:
        return figures
    for row in session.scalars(select(ExecutionStats).where(ExecutionStats.execution_id.in_(ids))):
        f = figures[row.execution_id]
        f.clicks, f.clickers, f.machine_clicks = row.clicks, row.clickers, row.machine_clicks
        f.opens, f.openers = row.opens, row.openers
    # Grouped by status, so that the (execution, status) index alone answers.
    for execution_id, status, n in session.execute(
        select(Message.execution_id, Message.status, func.count())
        .where(Message.execution_id.in_(ids)).group_by(Message.execution_id, Message.status)
    ):
        f = figures[execution_id]
        f.sent += n if status != MessageStatus.SUPPRESSED else 0
        f.delivered += n if status == MessageStatus.SENT else 0
        f.failed += n if status == MessageStatus.FAILED else 0
    for execution_id, n in session.execute(
        select(Message.execution_id, func.count(OptOut.id))
        .join(OptOut, OptOut.message_id == Message.id)
        .where(Message.execution_id.in_(ids)).group_by(Message.execution_id)
    ):
        figures[execution_id].opt_outs = n
    marks = watermarks(session)
    params = {"w": marks["click"]}
    in_ids = ", ".join(str(int(i)) for i in ids)
    for execution_id, h, x in session.execute(
        tail_text(
            "SELECT +c.tracked_url_id, SUM(CASE WHEN c.is_machine THEN 0 ELSE 1 END), "
            "SUM(CASE WHEN c.is_machine THEN 1 ELSE 0 END) FROM hotclicks_click c "
            f"WHERE c.id > :w AND {in_urls(session, ids)} GROUP BY +c.tracked_url_id"
        ),
        params,
    ):
        execution_id = url_executions(session, ids)[execution_id]
        figures[execution_id].clicks += h
        figures[execution_id].machine_clicks += x
    for execution_id, new_clickers in session.execute(
        tail_text(
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
        tail_text(
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


#: Recipient domains the delivery page lists.
TOP_DOMAINS = 10


def domain_figures(session: Session, execution: Execution, *, limit: int = TOP_DOMAINS) -> list[tuple[str, heat.ExecutionFigures]]:
    """The execution's ``limit`` recipient domains with the most messages, each with its sent,
    delivered, unique openers and clickers (people's) and click rate.

    Sent, openers and clickers are ``DomainStats`` plus the tail. Statuses change after the fact,
    so the delivered are the sent less the messages of the broad log not (yet) accepted.
    """
    marks = watermarks(session)
    join, domain = domain_join(session)
    found: dict[str, heat.ExecutionFigures] = {}

    def figures(name: str) -> heat.ExecutionFigures:
        return found.setdefault(name, heat.ExecutionFigures(execution))

    for row in session.scalars(select(DomainStats).where(DomainStats.execution_id == execution.id)):
        f = figures(row.domain)
        f.sent, f.openers, f.clickers = row.messages, row.openers, row.clickers
    for name, n in session.execute(
        tail_text(
            f"SELECT {domain}, COUNT(*) FROM hotclicks_message g{join} WHERE g.id > :w "
            f"AND g.execution_id + 0 = :e AND g.status <> :suppressed GROUP BY {domain}"
        ),
        {"e": execution.id, "suppressed": MessageStatus.SUPPRESSED.value, "w": marks["message"]},
    ):
        figures(name).sent += int(n)
    new_people = (
        "SELECT {domain}, COUNT(*) FROM (SELECT +{m}.message_id AS m FROM {table} {m} WHERE {m}.id > :w AND NOT {m}.is_machine"
        "{urls} GROUP BY +{m}.message_id) b JOIN hotclicks_message g ON g.id = b.m{join} "
        "LEFT JOIN hotclicks_message_stats s ON s.message_id = b.m "
        "WHERE g.execution_id = :e AND COALESCE(s.{counter}, 0) = 0 GROUP BY {domain}"
    )
    for table, m, counter, attribute, urls in (
        ("hotclicks_click", "c", "clicks", "clickers", f" AND {in_urls(session, [execution.id])}"),
        ("hotclicks_open", "o", "opens", "openers", ""),
    ):
        for name, n in session.execute(
            tail_text(new_people.format(domain=domain, m=m, table=table, urls=urls, join=join, counter=counter)),
            {"e": execution.id, "w": marks["click" if m == "c" else "open"]},
        ):
            f = figures(name)
            setattr(f, attribute, getattr(f, attribute) + int(n))
    # Delivered: the sent less those not (yet) accepted, few once sending is done, found through
    # the (execution, status) index without reading the accepted ones.
    waiting = [m.value for m in MessageStatus if m not in (MessageStatus.SENT, MessageStatus.SUPPRESSED)]
    undelivered = dict(session.execute(
        text(
            f"SELECT {domain}, COUNT(*) FROM hotclicks_message g{join} "
            f"WHERE g.execution_id = :e AND g.status IN ({', '.join(repr(w) for w in waiting)}) GROUP BY {domain}"
        ),
        {"e": execution.id},
    ).all())
    for name, f in found.items():
        f.delivered = f.sent - int(undelivered.get(name, 0))
    top = sorted(found.items(), key=lambda item: (-item[1].sent, item[0]))[:limit]
    return top


def execution_counts(session: Session, executions: Sequence[Execution], *, include_machine: bool = False) -> dict[int, tuple[int, int]]:
    """Each execution's messages and clicks, from the aggregates and the tail alone (cheap at any
    size: the execution switcher of the hot clicks shows them)."""
    ids = [e.id for e in executions]
    counts = {i: [0, 0] for i in ids}
    if not ids:
        return {}
    for row in session.scalars(select(ExecutionStats).where(ExecutionStats.execution_id.in_(ids))):
        counts[row.execution_id] = [row.messages, row.clicks + (row.machine_clicks if include_machine else 0)]
    marks = watermarks(session)
    for execution_id, n in session.execute(
        select(Message.execution_id, func.count())
        .where(Message.id > literal(marks["message"], BigInteger(), literal_execute=True), (Message.execution_id + 0).in_(ids))
        .group_by(Message.execution_id)
    ):
        counts[execution_id][0] += n
    machine = "" if include_machine else " AND NOT c.is_machine"
    for execution_id, n in session.execute(
        tail_text(
            "SELECT +c.tracked_url_id, COUNT(*) FROM hotclicks_click c "
            f"WHERE c.id > :w{machine} AND {in_urls(session, ids)} "
            "GROUP BY +c.tracked_url_id"
        ),
        {"w": marks["click"]},
    ):
        counts[url_executions(session, ids)[execution_id]][1] += n
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
    hour_sql = hour_expression(session.get_bind().dialect.name).replace("clicked_at", "c.clicked_at")
    for hour, h, x in session.execute(
        tail_text(
            f"SELECT {hour_sql}, SUM(CASE WHEN c.is_machine THEN 0 ELSE 1 END), "
            "SUM(CASE WHEN c.is_machine THEN 1 ELSE 0 END) FROM hotclicks_click c "
            f"WHERE c.id > :w AND {in_urls(session, [execution.id])} GROUP BY {hour_sql}"
        ),
        {"w": watermarks(session)["click"], "e": execution.id},
    ):
        hours[int(hour)] = hours.get(int(hour), 0) + int(h) + (int(x) if include_machine else 0)
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    return [(epoch + dt.timedelta(hours=h), n) for h, n in sorted(hours.items()) if n]




def delivery_figures(session: Session, code: str) -> list[heat.ExecutionFigures] | None:
    """Every execution of delivery ``code`` with its figures, newest first; None: no such delivery
    (``flask hotclicks stats``: the same figures as the pages)."""
    delivery = find_delivery(session, code)
    if delivery is None:
        return None
    executions = delivery_executions(session, delivery)
    figures = execution_figures(session, executions)
    return [figures[e.id] for e in executions]


# -- deliveries, messages and recipients ---------------------------------------------------------


def find_delivery(session: Session, code: str) -> Delivery | None:
    return session.scalars(select(Delivery).where(Delivery.code == code)).first()


def delivery_totals(session: Session, search: str = "") -> list[tuple[Delivery, int, heat.ExecutionFigures]]:
    """Each delivery whose code contains ``search`` (all when empty), by code: how many executions
    it has and their figures added up."""
    statement = select(Delivery).order_by(Delivery.code)
    if search:
        statement = statement.where(Delivery.code.contains(search, autoescape=True))
    deliveries = list(session.scalars(statement))
    executions = list(
        session.scalars(select(Execution).where(Execution.delivery_id.in_([d.id for d in deliveries])))
    ) if deliveries else []
    figures = execution_figures(session, executions)
    totals = []
    for delivery in deliveries:
        mine = [e for e in executions if e.delivery_id == delivery.id]
        total = heat.ExecutionFigures(mine[0] if mine else None)
        for execution in mine:
            total.add(figures[execution.id])
        totals.append((delivery, len(mine), total))
    return totals


def execution_messages(
    session: Session,
    execution: Execution,
    *,
    search: str = "",
    status: str = "",
    offset: int = 0,
    limit: int | None = None,
) -> tuple[list[tuple[Message, str]], int]:
    """The execution's messages with their recipient's address, by id, and how many match: those
    whose address contains ``search`` and whose status is ``status`` (any when not a status)."""
    conditions: list[Any] = [Message.execution_id == execution.id]
    if status in {s.value for s in MessageStatus}:
        conditions.append(Message.status == MessageStatus(status))
    counted = select(func.count(Message.id)).where(*conditions)
    if search:  # only then is the recipient needed to count: an index of the log counts the rest
        conditions.append(Recipient.address.contains(search, autoescape=True))
        counted = counted.join(Recipient, Recipient.id == Message.recipient_id).where(conditions[-1])
    count = session.scalar(counted) or 0
    statement = select(Message, Recipient.address).join(Recipient, Recipient.id == Message.recipient_id).where(*conditions)
    rows = session.execute(statement.order_by(Message.id).limit(limit).offset(offset or None)).all()
    return [(m, address) for m, address in rows], count


def find_recipients(session: Session, search: str, limit: int) -> list[Recipient]:
    """Recipients whose address contains ``search`` or whose external id is ``search``."""
    return list(session.scalars(
        select(Recipient)
        .where(or_(Recipient.address.contains(search, autoescape=True), Recipient.external_id == search))
        .order_by(Recipient.address)
        .limit(limit)
    ))


def recipient_clicks(
    session: Session, recipient: Recipient, *, include_machine: bool = False
) -> list[tuple[Click, TrackedUrl, Execution, str]]:
    """The recipient's clicks, newest first, each with its tracked URL, execution and delivery code."""
    query = (
        select(Click, TrackedUrl, Execution, Delivery.code)
        .join(Message, Message.id == Click.message_id)
        .join(TrackedUrl, TrackedUrl.id == Click.tracked_url_id)
        .join(Execution, Execution.id == Message.execution_id)
        .join(Delivery, Delivery.id == Execution.delivery_id)
        .where(Message.recipient_id == recipient.id)
        .order_by(Click.clicked_at.desc(), Click.id.desc())
    )
    if not include_machine:
        query = query.where(Click.is_machine.is_(False))
    return [(c, t, e, code) for c, t, e, code in session.execute(query)]


def recipient_opens(
    session: Session, recipient: Recipient, *, include_machine: bool = False
) -> list[tuple[Open, Execution, str]]:
    """The recipient's opens, newest first, each with its execution and delivery code."""
    query = (
        select(Open, Execution, Delivery.code)
        .join(Message, Message.id == Open.message_id)
        .join(Execution, Execution.id == Message.execution_id)
        .join(Delivery, Delivery.id == Execution.delivery_id)
        .where(Message.recipient_id == recipient.id)
        .order_by(Open.opened_at.desc())
    )
    if not include_machine:
        query = query.where(Open.is_machine.is_(False))
    return [(o, e, code) for o, e, code in session.execute(query)]


def recipient_opt_outs(session: Session, recipient: Recipient) -> list[tuple[OptOut, str | None]]:
    """The recipient's opt-outs, newest first, each with the code of the delivery it came from."""
    return [
        (o, code)
        for o, code in session.execute(
            select(OptOut, Delivery.code)
            .outerjoin(Message, Message.id == OptOut.message_id)
            .outerjoin(Execution, Execution.id == Message.execution_id)
            .outerjoin(Delivery, Delivery.id == Execution.delivery_id)
            .where(OptOut.recipient_id == recipient.id)
            .order_by(OptOut.created_at.desc())
        )
    ]


def reason_figures(session: Session, execution_ids: Sequence[int]) -> dict[int, dict[str, dict[str, int]]]:
    """How many of each execution's clicks and opens carry each bot-rule reason:
    ``{execution: {"click": {reason: n}, "open": {reason: n}}}``, from ``ReasonStats`` plus the
    tail. Machine reasons, and the notes of people's events (``proxy``)."""
    ids = list(execution_ids)
    found: dict[int, dict[str, dict[str, int]]] = {e: {"click": {}, "open": {}} for e in ids}
    if not ids:
        return found

    def add(execution_id: int, source: str, reason: str, n: int) -> None:
        counts = found[execution_id][source]
        counts[reason] = counts.get(reason, 0) + int(n)

    for row in session.scalars(select(ReasonStats).where(ReasonStats.execution_id.in_(ids))):
        add(row.execution_id, row.source, row.reason, row.events)
    marks = watermarks(session)
    urls = url_executions(session, ids)
    for url_id, reason, n in session.execute(
        tail_text(
            "SELECT +c.tracked_url_id, c.machine_reason, COUNT(*) FROM hotclicks_click c "
            f"WHERE c.id > :w AND {in_urls(session, ids)} AND c.machine_reason IS NOT NULL "
            "GROUP BY +c.tracked_url_id, c.machine_reason"
        ),
        {"w": marks["click"]},
    ):
        add(urls[url_id], "click", reason, n)
    in_ids = ", ".join(str(int(i)) for i in ids)
    for execution_id, reason, n in session.execute(
        tail_text(
            # The tail first, through the primary key, then its messages (as the other tails).
            "SELECT g.execution_id, b.r, SUM(b.n) FROM (SELECT +message_id AS m, machine_reason AS r, "
            "COUNT(*) AS n FROM hotclicks_open WHERE id > :w AND machine_reason IS NOT NULL "
            "GROUP BY +message_id, machine_reason) b JOIN hotclicks_message g ON g.id = b.m "
            f"WHERE g.execution_id IN ({in_ids}) GROUP BY g.execution_id, b.r"
        ),
        {"w": marks["open"]},
    ):
        add(execution_id, "open", reason, n)
    for sources in found.values():
        for source, counts in sources.items():
            sources[source] = {r: n for r, n in sorted(counts.items(), key=lambda item: (-item[1], item[0])) if n}
    return found
