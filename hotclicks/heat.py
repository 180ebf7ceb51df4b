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
    "ExecutionFigures",
    "HotClicksReport",
    "LinkFigure",
    "VariantShare",
    "hot_clicks",
    "percent",
    "share_variants",
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
