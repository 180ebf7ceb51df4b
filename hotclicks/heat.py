"""The hot clicks' arithmetic: each link's share of an execution's clicks, over plain figures.

No database here: :mod:`hotclicks.db.stats` reads the counts and hands them over, the Flask
extension shows the result. The execution, tracked URL and variant a figure belongs to are
whatever objects the caller has (the ORM rows in practice); only their attributes are read.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "MEASURES",
    "WINDOWS",
    "Comparison",
    "ExecutionFigures",
    "HotClicksReport",
    "LinkFigure",
    "VariantChange",
    "VariantShare",
    "compare",
    "cumulative_shares",
    "hot_clicks",
    "match",
    "percent",
    "share_variants",
    "time_to_share",
    "window_end_hour",
]

#: What a link's share is of: all clicks, or unique clickers (of each link, added up).
MEASURES = ("clicks", "unique")


def percent(part: int, whole: int) -> float:
    """``part`` per hundred of ``whole``, to two decimals; 0 when ``whole`` is 0."""
    return round(100.0 * part / whole, 2) if whole else 0.0


@dataclass
class LinkFigure:
    """One tracked URL's line of the hot clicks: counts and share, as the viewer asked for them."""

    tracked_url: Any  #: the tracked URL (``id``, ``url``, ``part``, ``link_key``, ``label``, ...)
    clicks: int = 0
    machine_clicks: int = 0
    clickers: int = 0
    all_clickers: int = 0
    #: The figures shown (people only, or with machines) and the link's share of them, in %.
    shown_clicks: int = 0
    shown_clickers: int = 0
    percent: float = 0.0
    #: Set by :func:`compare`: the matched link's share in the other execution (None: no match)
    #: and the change in percentage points.
    compare_percent: float | None = None
    delta_points: float | None = None
    compared: bool = False


@dataclass
class VariantShare:
    variant: Any  #: the content variant (``id``, ``sample_source``, ...)
    profile_name: str | None
    recipients: int
    recipients_percent: float
    clicks: int
    clicks_percent: float


@dataclass
class HotClicksReport:
    execution: Any
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


def hot_clicks(execution: Any, links: list[LinkFigure], *, include_machine: bool, measure: str) -> HotClicksReport:
    """The report of ``links``' counted figures: what is shown of each, and its share in %.

    Percentages are of all the execution's clicks (or, with ``measure="unique"``, of the unique
    clickers of every link added up); machine clicks count only with ``include_machine``.
    """
    if measure not in MEASURES:
        raise ValueError("measure is 'clicks' or 'unique'")
    for figure in links:
        figure.shown_clicks = figure.clicks + (figure.machine_clicks if include_machine else 0)
        figure.shown_clickers = figure.all_clickers if include_machine else figure.clickers
    total_clicks = sum(f.shown_clicks for f in links)
    total_unique = sum(f.shown_clickers for f in links)
    for figure in links:
        if measure == "unique":
            figure.percent = percent(figure.shown_clickers, total_unique)
        else:
            figure.percent = percent(figure.shown_clicks, total_clicks)
    return HotClicksReport(execution, include_machine, measure, links, total_clicks, total_unique)


def share_variants(
    report: HotClicksReport, variants: Iterable[tuple[Any, str | None, int, int, int]], recipients: int
) -> None:
    """Fill ``report``'s variant shares from each variant's (variant, test profile's name,
    messages, people's clicks, machine clicks) and the execution's ``recipients``."""
    report.recipients = recipients
    claimed = 0
    for variant, profile_name, messages, human, machine in variants:
        clicks = human + (machine if report.include_machine else 0)
        claimed += clicks
        report.variants.append(
            VariantShare(variant, profile_name, messages, percent(messages, recipients), clicks,
                         percent(clicks, report.total_clicks))
        )
    report.anonymous_or_unknown_clicks = max(0, report.total_clicks - claimed)


@dataclass
class ExecutionFigures:
    """One execution's line of the tracking reports (machine events left out)."""

    execution: Any
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
        return percent(self.clickers, self.delivered)

    @property
    def reactivity(self) -> float:
        """Unique clickers per hundred unique openers."""
        return percent(self.clickers, self.openers)

    def add(self, other: ExecutionFigures) -> None:
        """Add ``other``'s counts to these (a delivery's line sums its executions')."""
        for name in ("sent", "delivered", "failed", "opens", "openers", "clicks", "clickers",
                     "machine_clicks", "opt_outs"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        if other.last_send and (self.last_send is None or other.last_send > self.last_send):
            self.last_send = other.last_send


# -- comparing two executions ---------------------------------------------------------------------


def match(these: Iterable[Any], others: Iterable[Any], *keys: Any) -> tuple[list[tuple[Any, Any]], list[Any]]:
    """Pair each of ``these`` with one of ``others``: by the first key function, then the next
    among those still unpaired (a key of None never matches).

    Returns each of ``these`` with its match or None, in order, and the ``others`` left unpaired.
    """
    these, others = list(these), list(others)
    pairs: dict[int, int] = {}  #: index in these -> index in others
    for key in keys:
        taken = set(pairs.values())
        waiting: dict[Any, list[int]] = {}
        for j, other in enumerate(others):
            k = None if j in taken else key(other)
            if k is not None:
                waiting.setdefault(k, []).append(j)
        for i, item in enumerate(these):
            k = None if i in pairs else key(item)
            if k is not None and waiting.get(k):
                pairs[i] = waiting[k].pop(0)
    taken = set(pairs.values())
    left = [other for j, other in enumerate(others) if j not in taken]
    return [(item, others[pairs[i]] if i in pairs else None) for i, item in enumerate(these)], left


def _link_name(figure: LinkFigure) -> Any:
    return figure.tracked_url.name or None


def _link_place(figure: LinkFigure) -> Any:
    url = figure.tracked_url
    return (url.part, url.position, url.url)


@dataclass
class VariantChange:
    share: VariantShare
    other: VariantShare | None  #: the matched variant of the other execution

    @property
    def delta_points(self) -> float | None:
        return None if self.other is None else round(self.share.clicks_percent - self.other.clicks_percent, 2)


@dataclass
class Comparison:
    """Two executions of one delivery, link by link: what changed for the next send."""

    report: HotClicksReport
    other: HotClicksReport
    new: list[LinkFigure]  #: links of this execution the other has no match for
    gone: list[LinkFigure]  #: links of the other execution this one has no match for
    variants: list[VariantChange] = field(default_factory=list)
    gone_variants: list[VariantShare] = field(default_factory=list)


def _variant_signature(v: VariantShare) -> Any:
    return getattr(v.variant, "signature", None)


def _variant_profile(v: VariantShare) -> Any:
    return v.profile_name


def compare(report: HotClicksReport, other: HotClicksReport) -> Comparison:
    """Match ``report``'s links to ``other``'s and set each one's ``compare_percent`` and
    ``delta_points`` (points of share gained or lost).

    A link matches by its explicit name (``data-hc-link``) when both have one, else by part,
    position and target: tracked URLs are per execution, so their ids never match. Variants match
    by their test profile, else by their set of links. Both reports must use the same measure.
    """
    pairs, gone = match(report.links, other.links, _link_name, _link_place)
    new = []
    for figure, matched in pairs:
        figure.compared = True
        if matched is None:
            figure.compare_percent = figure.delta_points = None
            new.append(figure)
        else:
            figure.compare_percent = matched.percent
            figure.delta_points = round(figure.percent - matched.percent, 2)
    variant_pairs, gone_variants = match(report.variants, other.variants, _variant_profile, _variant_signature)
    return Comparison(report, other, new, gone, [VariantChange(v, o) for v, o in variant_pairs], gone_variants)


# -- when people click ----------------------------------------------------------------------------

#: The time windows of the hot clicks, in hours from the execution's first message.
WINDOWS = {"1h": 1, "6h": 6, "24h": 24, "7d": 168}

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def _hour(when: dt.datetime) -> int:
    """Hours since the Unix epoch of ``when``'s hour (the ``ClickBucket.hour`` it falls in)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return int((when - _EPOCH).total_seconds() // 3600)


def window_end_hour(started_at: dt.datetime, within: str) -> int:
    """The first hour bucket *not* counted in the window ``within`` (a key of :data:`WINDOWS`).

    Clicks are kept per hour, so an hour that begins before the window's exact end counts whole:
    the window runs from the first message to the end of the hour its exact end falls in (up to
    59 minutes more than asked, never less).
    """
    end = started_at + dt.timedelta(hours=WINDOWS[within])
    hour = _hour(end)
    return hour + 1 if end > _EPOCH + dt.timedelta(hours=hour) else hour


def cumulative_shares(stream: Iterable[tuple[dt.datetime, int]], started_at: dt.datetime) -> list[tuple[int, float]]:
    """The share (%) of all clicks reached by the end of each hour with clicks, as (hours since the
    first message's hour, cumulative %), oldest first."""
    points = sorted((_hour(when), n) for when, n in stream)
    total = sum(n for _, n in points)
    start, seen, curve = _hour(started_at), 0, []
    for hour, n in points:
        seen += n
        curve.append((max(0, hour - start + 1), percent(seen, total)))
    return curve


def time_to_share(curve: list[tuple[int, float]], share: float) -> int | None:
    """Whole hours from the first message's hour until ``share`` % of the clicks were made (None:
    no click yet)."""
    return next((hours for hours, reached in curve if reached >= share), None)
