"""Each bot rule, through the Flask test client: machine events are kept, flagged, and left out."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
from flask import Flask
from sqlalchemy import select

from flask_hotclicks import HotClicks
from hotclicks.db.models import Click, Delivery, Open
from hotclicks.db.stats import (
    delivery_executions,
    delivery_figures,
    device_figures,
    domain_figures,
    hot_clicks_report,
)

from .conftest import SECRET_KEY
from .flask_seed import send
from .helpers import BASE_URL

BROWSER = {"User-Agent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_0) AppleWebKit/605.1.15 Safari/605.1.15"}


@pytest.fixture
def bot_app(engine, database_url) -> Iterator[Flask]:
    """An app with the default bot rules (the shared ``app`` turns the time-based ones off)."""
    app = Flask("bots")
    app.config.update(HOTCLICKS_DATABASE_URL=database_url, HOTCLICKS_SECRET_KEY=SECRET_KEY, HOTCLICKS_BASE_URL=BASE_URL)
    HotClicks(app)
    yield app
    app.extensions["hotclicks"].dispose()


def recorded(sessions) -> list[tuple[bool, str | None]]:
    with sessions() as session:
        return [(c.is_machine, c.machine_reason) for c in session.scalars(select(Click).order_by(Click.id))]


@pytest.mark.parametrize(
    ("agent", "reason"),
    [
        ("Mozilla/5.0 (Windows NT 10.0) BingPreview/1.0b", "agent:microsoft-safe-links"),
        ("Microsoft Office Existence Discovery", "agent:microsoft-safe-links"),
        ("Mozilla/5.0 Proofpoint URL Defense", "agent:proofpoint"),
        ("Mimecast-LinkScanner/2.0", "agent:mimecast"),
        ("Barracuda Sentinel (EE)", "agent:barracuda"),
        ("Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)", "agent:google-image-proxy"),
        ("python-requests/2.32", "agent:generic-bot"),
    ],
)
def test_known_scanners_and_proxies_are_machines(bot_app, sessions, agent, reason):
    sent = send(sessions)
    response = bot_app.test_client().get(sent.click(0), headers={"User-Agent": agent})
    assert response.status_code == 302  # a scanner is redirected like anyone
    assert recorded(sessions) == [(True, reason)]


@pytest.mark.parametrize("header", [("Purpose", "prefetch"), ("Sec-Purpose", "prefetch;prerender"), ("X-Moz", "prefetch")])
def test_prefetches_are_machines(bot_app, sessions, header):
    sent = send(sessions)
    bot_app.test_client().get(sent.click(0), headers={**BROWSER, header[0]: header[1]})
    assert recorded(sessions) == [(True, "prefetch")]


def test_a_head_request_is_answered_and_not_counted(bot_app, sessions):
    sent = send(sessions)
    assert bot_app.test_client().head(sent.click(0), headers=BROWSER).status_code == 302
    assert recorded(sessions) == []


def test_a_click_seconds_after_delivery_is_a_machine(bot_app, sessions):
    sent = send(sessions, sent_ago=dt.timedelta(seconds=1))
    bot_app.test_client().get(sent.click(0), headers=BROWSER)
    assert recorded(sessions) == [(True, "too-soon-after-delivery")]


def test_the_delivery_window_is_configurable(engine, database_url, sessions):
    app = Flask("slow-scanners")
    app.config.update(HOTCLICKS_DATABASE_URL=database_url, HOTCLICKS_SECRET_KEY=SECRET_KEY,
                      HOTCLICKS_BOT_DELIVERY_SECONDS=120)
    HotClicks(app)
    sent = send(sessions, sent_ago=dt.timedelta(seconds=60))
    try:
        app.test_client().get(sent.click(0), headers=BROWSER)
    finally:
        app.extensions["hotclicks"].dispose()
    assert recorded(sessions) == [(True, "too-soon-after-delivery")]


def test_several_links_of_one_message_within_a_second_are_all_machines(bot_app, sessions):
    sent = send(sessions)
    other = send(sessions, "bob@example.org")
    client = bot_app.test_client()
    client.get(other.click(0), headers=BROWSER)  # another message's click is no part of it
    client.get(sent.click(0), headers=BROWSER)
    client.get(sent.click(1), headers=BROWSER)
    client.get(sent.click(2), headers=BROWSER)
    assert recorded(sessions) == [(False, None), (True, "burst"), (True, "burst"), (True, "burst")]


def test_the_same_link_clicked_twice_is_no_burst(bot_app, sessions):
    sent = send(sessions)
    client = bot_app.test_client()
    client.get(sent.click(0), headers=BROWSER)
    client.get(sent.click(0), headers=BROWSER)
    assert recorded(sessions) == [(False, None), (False, None)]


def test_a_click_on_the_trap_link_marks_the_messages_burst(bot_app, sessions):
    sent = send(sessions)
    client = bot_app.test_client()
    # A scanner that clicks one link, then the hidden one; the burst rule alone is off here
    # only because the links are one each: it is the trap that tells.
    client.get(sent.click(0), headers=BROWSER)
    response = client.get(sent.trap(), headers=BROWSER)
    assert response.status_code == 204 and "Location" not in response.headers
    assert recorded(sessions) == [(True, "trap-burst"), (True, "trap-link")]
    client.get(sent.click(0), headers=BROWSER)  # right after it: the same machine
    assert recorded(sessions)[-1] == (True, "trap-burst")


def test_apple_mail_privacy_protection_opens_are_machine_opens(bot_app, sessions):
    sent = send(sessions)
    client = bot_app.test_client()
    client.get(sent.open(), headers={"User-Agent": "Mozilla/5.0"})
    client.get(sent.open(), headers=BROWSER)
    with sessions() as session:
        opens = [(o.is_machine, o.machine_reason) for o in session.scalars(select(Open).order_by(Open.id))]
    assert opens == [(True, "apple-mpp"), (False, None)]


def opens_recorded(sessions) -> list[tuple[bool, str | None, str | None]]:
    with sessions() as session:
        return [(o.is_machine, o.machine_reason, o.network) for o in session.scalars(select(Open).order_by(Open.id))]


def test_gmails_image_proxy_opens_are_peoples_opens(bot_app, sessions):
    """Gmail loads the images when the person opens the message: the only open Gmail gives."""
    sent = send(sessions)
    gmail = {"User-Agent": "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"}
    bot_app.test_client().get(sent.open(), headers=gmail, environ_base={"REMOTE_ADDR": "66.249.84.10"})
    assert [(machine, reason) for machine, reason, _ in opens_recorded(sessions)] == [(False, "proxy")]
    with sessions() as session:
        (stats,) = delivery_figures(session, "spring-news")
    assert stats.opens == 1


def test_an_open_from_a_scanners_network_is_a_machines(bot_app, sessions):
    sent = send(sessions)
    bot_app.test_client().get(sent.open(), headers=BROWSER, environ_base={"REMOTE_ADDR": "40.107.22.5"})
    assert opens_recorded(sessions) == [(True, "network:microsoft-eop", "microsoft-eop")]


def test_safe_links_fetching_before_the_person_counts_the_person_once(bot_app, sessions):
    """Microsoft fetches the link from its own network a moment before the person's browser
    arrives: the scanner's request is a machine's, the person's counts, and nothing else."""
    sent = send(sessions)
    client = bot_app.test_client()
    client.get(sent.click(1), headers=BROWSER, environ_base={"REMOTE_ADDR": "40.107.22.5"})
    client.get(sent.click(1), headers=BROWSER, environ_base={"REMOTE_ADDR": "198.51.100.7"})
    assert recorded(sessions) == [(True, "network:microsoft-eop"), (False, None)]
    with sessions() as session:
        networks = [c.network for c in session.scalars(select(Click).order_by(Click.id))]
        ips = [c.ip for c in session.scalars(select(Click).order_by(Click.id))]
    assert networks == ["microsoft-eop", None]
    assert ips == ["40.107.22.0", "198.51.100.0"]  # the full address judged, never stored


def test_a_checker_spacing_its_clicks_is_a_sweep(bot_app, sessions):
    """Four different links of one message within 20 s, whatever the pace: a link checker."""
    sent = send(sessions, link_count=6)
    client = bot_app.test_client()
    start = dt.datetime.now(dt.timezone.utc)
    for i in range(4):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("flask_hotclicks.tracking.utcnow", lambda i=i: start + dt.timedelta(seconds=4 * i))
            client.get(sent.click(i), headers=BROWSER)
    assert recorded(sessions) == [(True, "sweep")] * 4


def test_a_person_reading_then_clicking_two_links_is_a_person(bot_app, sessions):
    sent = send(sessions, link_count=6)
    client = bot_app.test_client()
    start = dt.datetime.now(dt.timezone.utc)
    for i, seconds in enumerate((0, 25)):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("flask_hotclicks.tracking.utcnow", lambda seconds=seconds: start + dt.timedelta(seconds=seconds))
            client.get(sent.click(i), headers=BROWSER)
    assert recorded(sessions) == [(False, None), (False, None)]


def test_a_click_judged_again_moves_every_figure(bot_app, sessions):
    """A people's click already folded into the report's aggregates, then a trap click of the
    same scanner pass: the click becomes a machine's, with its row, and every figure follows —
    the same figures as folding everything again from the start."""
    from hotclicks.db import rollup

    sent = send(sessions)
    client = bot_app.test_client()
    client.get(sent.click(0), headers=BROWSER)
    with sessions.begin() as session:
        rollup.roll_up(session, settle=0)

    def figures() -> tuple:
        with sessions() as session:
            delivery = session.scalars(select(Delivery)).one()
            report = hot_clicks_report(session, delivery_executions(session, delivery)[0], variants=False)
            (stats,) = delivery_figures(session, "spring-news")
            desktop = device_figures(session, [stats.execution.id])[stats.execution.id]["desktop"]
            domain_clickers = sum(f.clickers for _, f in domain_figures(session, stats.execution))
            return ([line.shown_clicks for line in report.links], stats.clicks, stats.clickers, stats.machine_clicks,
                    desktop, domain_clickers)

    assert figures() == ([1, 0, 0], 1, 1, 0, (1, 0), 1)
    client.get(sent.trap(), headers=BROWSER)
    assert recorded(sessions) == [(True, "trap-burst"), (True, "trap-link")]
    judged_again = figures()
    assert judged_again == ([0, 0, 0], 0, 0, 2, (0, 2), 0)
    with sessions.begin() as session:
        rollup.roll_up(session, settle=0)
    assert figures() == judged_again
    with sessions.begin() as session:
        rollup.rebuild(session)
        rollup.roll_up(session, settle=0)
    assert figures() == judged_again


def test_machine_clicks_are_left_out_of_the_figures(bot_app, sessions):
    sent = send(sessions)
    client = bot_app.test_client()
    client.get(sent.click(0), headers=BROWSER)
    client.get(sent.click(1), headers={"User-Agent": "Mimecast-LinkScanner/2.0"})
    with sessions() as session:
        delivery = session.scalars(select(Delivery)).one()
        report = hot_clicks_report(session, delivery_executions(session, delivery)[0], variants=False)
        (stats,) = delivery_figures(session, "spring-news")
    assert [line.shown_clicks for line in report.links] == [1, 0, 0]  # and no trap link among them
    assert (stats.clicks, stats.clickers, stats.machine_clicks) == (1, 1, 1)
