"""The reports' core: aggregates from a watermark, hot clicks percentages, badges, figures.

The seed below is shared with the report pages' and the browser tests: one delivery, two
executions, two content variants (one per test profile) in the latest one, clicks of people and
of machines, an anonymous click, a link of the content that has no tracked URL, and a planted
script in one variant.
"""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass, field

import pytest
from sqlalchemy import func, select

from flask_hotclicks import annotate
from hotclicks import bots, heat, links
from hotclicks.db import rollup, sending, stats, subscribers
from hotclicks.db.events import ClickEvent, OpenEvent, record_clicks, record_opens
from hotclicks.db.models import (
    Click,
    Delivery,
    DeliveryType,
    Execution,
    Message,
    MessageStatus,
    Recipient,
    RollupState,
    TestProfile,
    TrackedUrl,
)
from hotclicks.rewrite import find_html_links, find_text_links

T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.timezone.utc)

#: The hero link and the planted script differ between the two variants; the rest is shared.
_HTML = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Spring</title></head>
<body style="margin:0;font-family:Georgia,serif">
<h1 style="color:#333">Spring news</h1>
<p><a href="https://shop.example/sale" style="color:#b00">Shop the spring sale</a></p>
<p><a href="{hero}"><img src="https://shop.example/hero.png" alt="{hero_label}" width="200"></a></p>
<p>Read <a href="https://blog.example/spring">our story</a>.</p>
<p><a href="https://shop.example/careers">We are hiring</a></p>
{extra}
<p>Last chance: <a href="https://shop.example/sale">the sale ends Sunday</a></p>
</body></html>
"""
TEXT = "Spring is here. Shop now: https://shop.example/spring\nOur story: https://blog.example/spring\n"
#: A script, an inline handler and a javascript: link planted in the men's variant.
PLANTED = (
    '<script>window.top.hcPwned = 1; parent.document.title = "pwned"; fetch("/beacon");</script>'
    '<img src="x" onerror="window.top.hcPwned = 2">'
    '<a href="javascript:window.top.hcPwned=3">javascript</a>'
)
WOMEN_HTML = _HTML.format(hero="https://shop.example/women", hero_label="Women's collection", extra="")
MEN_HTML = _HTML.format(hero="https://shop.example/men", hero_label="Men's collection", extra=PLANTED)

#: Human clicks per link of the latest execution, by target and occurrence (the link keys).
LATEST_CLICKS = {
    "https://shop.example/sale#1": 6,
    "https://shop.example/sale#2": 2,
    "https://blog.example/spring#1": 4,
    "https://shop.example/women#1": 5,
    "https://shop.example/men#1": 3,
}
#: Percentages of the latest execution (of its 20 people's clicks).
LATEST_PERCENT = {
    "https://shop.example/sale#1": 30.0,
    "https://shop.example/sale#2": 10.0,
    "https://blog.example/spring#1": 20.0,
    "https://shop.example/women#1": 25.0,
    "https://shop.example/men#1": 15.0,
}
#: The first execution: 1 click on the sale, 3 on the blog.
FIRST_PERCENT = {"https://shop.example/sale#1": 25.0, "https://blog.example/spring#1": 75.0}
#: Link never registered as a tracked URL (the content has it, no execution tracks it).
UNTRACKED = "https://shop.example/careers#1"


@dataclass
class Seeded:
    delivery: str
    first: int
    latest: int
    anna: int
    marc: int
    urls: dict[tuple[int, str], int] = field(default_factory=dict)  #: (execution id, key) -> id


def _specs(html: str, text: str) -> list[links.LinkSpec]:
    specs = [
        links.LinkSpec("html", link.key, link.key.rsplit("#", 1)[0], None, link.label, link.index)
        for link in find_html_links(html)
        if link.key != UNTRACKED
    ]
    specs += [
        links.LinkSpec("text", link.key, link.key.rsplit("#", 1)[0], None, "", link.index)
        for link in find_text_links(text)
    ]
    return specs


def seed(sessions, code: str = "spring-news") -> Seeded:
    """The delivery every report test reads; see the module's docstring."""
    with sessions.begin() as session:
        delivery = Delivery(code=code, type=DeliveryType.ONE_OFF, created_at=T0)
        session.add(delivery)
        session.flush()
        anna = TestProfile(name="Anna (woman, 30)", address="anna@test.example",
                           attributes={"gender": "f", "age": 30}, created_at=T0)
        marc = TestProfile(name="Marc (man, 40)", address="marc@test.example",
                           attributes={"gender": "m", "age": 40}, created_at=T0)
        session.add_all([anna, marc])
        first = Execution(delivery_id=delivery.id, key="v1", version="v1", started_at=T0,
                          last_message_at=T0 + dt.timedelta(hours=1))
        latest = Execution(delivery_id=delivery.id, key="v2", version="v2",
                           started_at=T0 + dt.timedelta(days=7), last_message_at=T0 + dt.timedelta(days=7, hours=1))
        session.add_all([first, latest])
        session.flush()
        seeded = Seeded(code, first.id, latest.id, anna.id, marc.id)
        recipients = [Recipient(address=f"r{i}@example.org", created_at=T0) for i in range(12)]
        recipients.append(Recipient(address="optout@example.org", tracking_opt_out=True, created_at=T0))
        session.add_all(recipients)
        session.flush()

        def execution_content(execution: Execution, variants: list[tuple[str, TestProfile]], when: dt.datetime):
            made = []
            for html, profile in variants:
                specs = _specs(html, TEXT)
                urls = sending.ensure_tracked_urls(session, execution, specs)
                for (part, key), url in urls.items():
                    seeded.urls[(execution.id, key if part == "html" else "text:" + key)] = url.id
                variant = sending.ensure_variant(session, execution, links.variant_signature(specs),
                                               html=html, text=TEXT, test_profile=profile)
                made.append(variant)
            return made

        messages: dict[tuple[int, int], int] = {}

        def send(execution: Execution, variants, when: dt.datetime) -> None:
            for i, recipient in enumerate(recipients):
                variant = variants[i % len(variants)]
                status = MessageStatus.FAILED if i == 11 else MessageStatus.SENT
                message = Message(execution_id=execution.id, recipient_id=recipient.id, variant_id=variant.id,
                                  status=status, created_at=when, sent_at=when)
                session.add(message)
                session.flush()
                messages[(execution.id, i)] = message.id

        v1 = execution_content(first, [(WOMEN_HTML, anna)], T0)
        send(first, v1, T0)
        v2 = execution_content(latest, [(WOMEN_HTML, anna), (MEN_HTML, marc)], T0 + dt.timedelta(days=7))
        send(latest, v2, T0 + dt.timedelta(days=7))

        # The seed says which clicks are machines' (a user agent the rules call a scanner's): no
        # history rule second-guesses it. An anonymous click is one of a recipient who opted out of
        # tracking (recipient 10, who clicks nothing else).
        rules = bots.BotRules(delivery_seconds=0, burst_seconds=0)
        subscribers.set_tracking_opt_out(session, recipients[10].id)

        def click(execution_id: int, key: str, recipient: int | None, n: int = 1, machine: bool = False,
                  at: dt.datetime | None = None) -> None:
            event = ClickEvent(
                message_id=messages[(execution_id, 10 if recipient is None else recipient)],
                tracked_url_id=seeded.urls[(execution_id, key)],
                at=at or T0 + dt.timedelta(days=7, hours=2),
                user_agent="Mozilla/5.0",
                ip=None,
                request_reason="test-scanner" if machine else None,
            )
            assert all(record_clicks(session, [event] * n, rules))

        # The first execution: 1 click on the sale, 3 on the blog.
        click(first.id, "https://shop.example/sale#1", 0, at=T0 + dt.timedelta(hours=3))
        click(first.id, "https://blog.example/spring#1", 1, n=3, at=T0 + dt.timedelta(hours=4))
        # The latest: even recipients got the women's variant, odd ones the men's.
        click(latest.id, "https://shop.example/sale#1", 0, n=3)  # r0 three times
        click(latest.id, "https://shop.example/sale#1", 1, n=2)
        click(latest.id, "https://shop.example/sale#1", None)  # an anonymous click (opted out)
        click(latest.id, "https://shop.example/sale#2", 2, n=2, at=T0 + dt.timedelta(days=8))
        click(latest.id, "https://blog.example/spring#1", 3, n=4)
        click(latest.id, "https://blog.example/spring#1", 5, n=4, machine=True)  # a scanner
        click(latest.id, "https://shop.example/women#1", 0)
        click(latest.id, "https://shop.example/women#1", 2)
        click(latest.id, "https://shop.example/women#1", 4, n=3)
        click(latest.id, "https://shop.example/men#1", 1, n=3)
        opened = T0 + dt.timedelta(days=7, hours=1)
        record_opens(session, [OpenEvent(messages[(latest.id, i)], opened, None, None) for i in range(6)]
                     + [OpenEvent(messages[(latest.id, 7)], opened, None, None, "test-scanner")])  # six people, a machine
        subscribers.unsubscribe(session, recipients[3].id, message_id=messages[(latest.id, 3)])
    return seeded


def _by_key(report: heat.HotClicksReport, part: str = "html") -> dict[str, heat.LinkFigure]:
    return report.by_key(part)


def _raw_counts(session, execution_id: int) -> dict[int, tuple[int, int]]:
    rows = session.execute(
        select(Click.tracked_url_id, func.count(), func.count(func.distinct(Click.message_id)))
        .join(TrackedUrl, TrackedUrl.id == Click.tracked_url_id)
        .where(TrackedUrl.execution_id == execution_id, Click.is_machine.is_(False))
        .group_by(Click.tracked_url_id)
    )
    return {u: (n, d) for u, n, d in rows}


@pytest.mark.parametrize("folded", ["live", "folded", "half"])
def test_hot_clicks_give_each_links_share_of_the_executions_clicks_folded_or_not(sessions, folded):
    seeded = seed(sessions)
    with sessions.begin() as session:
        if folded == "folded":
            rollup.roll_up(session, settle=0)
        elif folded == "half":  # fold the first half of the clicks: the rest is the live tail
            top = session.scalar(select(func.max(Click.id)))
            rollup._fold_messages(session, 0, 10**9)
            rollup._fold_opens(session, 0, 10**9)
            rollup._fold_clicks(session, 0, top // 2)
            for name, mark in (("message", 10**9), ("open", 10**9), ("click", top // 2)):
                session.add(RollupState(name=name, watermark=mark))
    with sessions() as session:
        latest = session.get(Execution, seeded.latest)
        report = stats.hot_clicks_report(session, latest)
        figures = _by_key(report)
        assert report.total_clicks == 20
        assert {k: figures[k].percent for k in LATEST_PERCENT} == LATEST_PERCENT
        assert figures["https://shop.example/sale#1"].shown_clicks == 6
        assert figures["https://shop.example/sale#1"].shown_clickers == 2  # the anonymous click is no clicker
        assert figures["https://shop.example/women#1"].shown_clickers == 3
        assert UNTRACKED not in figures
        assert _by_key(report, "text")["https://shop.example/spring#1"].percent == 0.0
        raw = _raw_counts(session, latest.id)
        for figure in report.links:
            clicks, clickers = raw.get(figure.tracked_url.id, (0, 0))
            assert figure.shown_clicks == clicks


def test_machine_clicks_are_left_out_unless_asked_and_unique_clickers_are_a_measure(sessions):
    seeded = seed(sessions)
    with sessions() as session:
        latest = session.get(Execution, seeded.latest)
        with_machines = stats.hot_clicks_report(session, latest, include_machine=True)
        assert with_machines.total_clicks == 24
        assert _by_key(with_machines)["https://blog.example/spring#1"].shown_clicks == 8
        assert _by_key(with_machines)["https://blog.example/spring#1"].percent == pytest.approx(33.33)
        unique = stats.hot_clicks_report(session, latest, measure="unique")
        # clickers: sale#1 2, sale#2 1, blog 1, women 3, men 1 -> 8
        assert unique.total_unique == 8
        assert _by_key(unique)["https://shop.example/women#1"].percent == 37.5


def test_percentages_are_never_summed_across_executions(sessions):
    seeded = seed(sessions)
    with sessions() as session:
        first = stats.hot_clicks_report(session, session.get(Execution, seeded.first))
        assert first.total_clicks == 4
        assert {k: f.percent for k, f in _by_key(first).items() if f.shown_clicks} == FIRST_PERCENT


def test_rolling_up_waits_for_the_settle_delay_and_then_folds_exactly_once(sessions):
    seed(sessions)
    now = T0 + dt.timedelta(days=30)
    with sessions.begin() as session:
        assert rollup.needs_roll_up(session, now=now)
        assert rollup.roll_up(session, now=now) == {"message": 0, "click": 0, "open": 0}  # noted only
    with sessions.begin() as session:
        assert rollup.roll_up(session, now=now + dt.timedelta(seconds=10)) == {"message": 0, "click": 0, "open": 0}
    with sessions.begin() as session:
        folded = rollup.roll_up(session, now=now + dt.timedelta(seconds=61))
        assert folded["click"] == session.scalar(select(func.count(Click.id)))
        assert not rollup.needs_roll_up(session, now=now + dt.timedelta(seconds=61))
    with sessions.begin() as session:  # nothing new: nothing folded twice
        assert rollup.roll_up(session, now=now + dt.timedelta(seconds=200)) == {"message": 0, "click": 0, "open": 0}
        figures = stats.execution_figures(session, [session.scalars(select(Execution).where(Execution.key == "v2")).one()])
        (latest,) = figures.values()
        assert (latest.clicks, latest.machine_clicks, latest.clickers) == (20, 4, 5)


def _roll_up_at_once(sessions, now: dt.datetime, callers: int = 4) -> list[dict[str, int]]:
    """``callers`` roll-ups started together, each in a thread and a transaction of its own."""
    start, results, errors = threading.Barrier(callers), [], []

    def call() -> None:
        try:
            start.wait(10)
            with sessions.begin() as session:
                results.append(rollup.roll_up(session, now=now))
        except Exception as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    return results


def test_roll_ups_running_at_once_fold_each_row_exactly_once(sessions):
    """Gunicorn workers' roll-up threads and a cron job may call it together: they serialize on
    the state rows, one folds, the others find nothing left (the first time too, with no rows)."""
    seed(sessions)
    now = T0 + dt.timedelta(days=30)
    assert _roll_up_at_once(sessions, now) == [{"message": 0, "click": 0, "open": 0}] * 4  # noted only
    folded = _roll_up_at_once(sessions, now + dt.timedelta(seconds=61))
    with sessions() as session:
        clicks = session.scalar(select(func.count(Click.id)))
        assert sorted(f["click"] for f in folded) == [0, 0, 0, clicks]
        latest = session.scalars(select(Execution).where(Execution.key == "v2")).one()
        f = stats.execution_figures(session, [latest])[latest.id]
        assert (f.clicks, f.machine_clicks, f.clickers, f.opens) == (20, 4, 5, 6)
        assert not rollup.needs_roll_up(session, now=now + dt.timedelta(seconds=61))


def test_execution_figures_count_sends_opens_clickers_reactivity_and_opt_outs(sessions):
    seeded = seed(sessions)
    for fold in (False, True):
        with sessions.begin() as session:
            if fold:
                rollup.roll_up(session, settle=0)
            latest = session.get(Execution, seeded.latest)
            f = stats.execution_figures(session, [latest])[latest.id]
            assert (f.sent, f.delivered, f.failed) == (13, 12, 1)
            assert (f.opens, f.openers) == (6, 6)
            # r0 to r4 clicked (r5 only through a scanner; the opted-out one anonymously)
            assert (f.clicks, f.clickers, f.machine_clicks) == (20, 5, 4)
            assert f.opt_outs == 1
            assert f.reactivity == pytest.approx(83.33)  # five clickers of six openers
            assert f.click_rate == pytest.approx(41.67)  # five clickers of twelve delivered


def test_variant_shares_of_recipients_and_clicks(sessions):
    seeded = seed(sessions)
    with sessions() as session:
        report = stats.hot_clicks_report(session, session.get(Execution, seeded.latest))
        shares = {v.profile_name: (v.recipients, v.recipients_percent, v.clicks) for v in report.variants}
        # women: even recipients r0 r2 .. r12 (7 incl. the opted-out one), men: odd ones (6)
        assert shares["Anna (woman, 30)"][:2] == (7, 53.85)
        assert shares["Marc (man, 40)"][:2] == (6, 46.15)
        # clicks: r0 3+1, r2 2+1, r4 3 -> 10 women; r1 2+3, r3 4 -> 9 men; 1 anonymous
        assert shares["Anna (woman, 30)"][2] == 10
        assert shares["Marc (man, 40)"][2] == 9
        assert report.anonymous_or_unknown_clicks == 1


def test_badges_match_links_by_key_and_say_not_tracked_for_a_link_without_tracked_url(sessions):
    seeded = seed(sessions)
    with sessions() as session:
        report = stats.hot_clicks_report(session, session.get(Execution, seeded.latest))
        html, badges = annotate.annotate_html(WOMEN_HTML, report.by_key("html"))
        assert [b.text("clicks") for b in badges] == ["30%", "25%", "20%", "not tracked", "10%"]
        assert "https://shop.example/hero.png" not in html.replace('data-hc-src="https://shop.example/hero.png"', "")
        shown, _ = annotate.annotate_html(MEN_HTML, report.by_key("html"))
        assert "<script" not in shown and "onerror" not in shown and "javascript:" not in shown
        pieces = annotate.annotate_text(TEXT, report.by_key("text"))
        assert [p.badge.text("clicks") for p in pieces if p.badge] == ["0%", "0%"]


def test_content_comes_from_the_preview_else_the_profiles_copy_else_a_sample(sessions):
    seeded = seed(sessions)
    with sessions() as session:
        latest = session.get(Execution, seeded.latest)
        marc = session.get(TestProfile, seeded.marc)
        assert stats.choose_content(session, latest, None, ("<p>hi</p>", None)).source == "preview"
        mine = stats.choose_content(session, latest, marc)
        assert mine.source == "test-profile" and "shop.example/men" in (mine.html or "")
        default = stats.choose_content(session, latest, None)
        assert default.source == "variant-sample"
        stranger = TestProfile(name="Zoe", address="zoe@test.example", attributes={})
        session.add(stranger)
        session.flush()
        assert stats.choose_content(session, latest, stranger).source == "none"
