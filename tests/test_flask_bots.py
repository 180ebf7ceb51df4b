"""Each bot rule, through the Flask test client: machine events are kept, flagged, and left out."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
from flask import Flask
from sqlalchemy import select

from flask_hotclicks import HotClicks
from hotclicks.db.models import Click, Delivery, Open
from hotclicks.db.stats import delivery_executions, delivery_figures, hot_clicks_report

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
    assert opens == [(True, "agent:apple-mail-privacy-protection"), (False, None)]


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
