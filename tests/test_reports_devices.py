"""Where people click from: the hot clicks filtered by device family, the delivery page's clicks
per family, from the device aggregates plus the live tail (folded or not, the same figures)."""

from __future__ import annotations

import datetime as dt

import pytest
from bs4 import BeautifulSoup
from sqlalchemy import func, select

from hotclicks import bots
from hotclicks.db import rollup, stats
from hotclicks.db.events import ClickEvent, record_clicks
from hotclicks.db.journal import _decode, _encode
from hotclicks.db.models import Click, Execution, Message, MessageStatus, Recipient, RollupState

from .test_reports import LATEST_PERCENT, T0, seed

IPHONE = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
          "Version/17.4 Mobile/15E148 Safari/604.1")
WINDOWS = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"
SALE, BLOG = "https://shop.example/sale#1", "https://blog.example/spring#1"


def seed_devices(sessions):
    """The shared seed (its clicks' agent names no platform: unknown), plus in the latest
    execution three clicks from an iPhone and one from a tablet whose agent was not stored on
    the sale, one from an iPhone and a scanner's from a Windows desktop on the blog."""
    seeded = seed(sessions)
    rules = bots.BotRules(delivery_seconds=0, burst_seconds=0)
    at = T0 + dt.timedelta(days=7, hours=5)
    with sessions.begin() as session:
        messages = list(session.scalars(select(Message.id).where(Message.execution_id == seeded.latest)
                                        .order_by(Message.id)))

        def event(key: str, recipient: int, agent: str | None, device: str | None = None,
                  machine: bool = False) -> ClickEvent:
            return ClickEvent(messages[recipient], seeded.urls[(seeded.latest, key)], at, agent, None,
                              "test-scanner" if machine else None, device=device)

        assert all(record_clicks(session, [
            event(SALE, 6, IPHONE), event(SALE, 6, IPHONE), event(SALE, 8, IPHONE),
            event(SALE, 9, None, device="tablet"),
            event(BLOG, 8, IPHONE),
            event(BLOG, 7, WINDOWS, machine=True),
        ], rules))
    return seeded


def fold(sessions, how: str) -> None:
    with sessions.begin() as session:
        if how == "folded":
            rollup.roll_up(session, settle=0)
        elif how == "half":  # the first half of the clicks folded, the rest the live tail
            top = session.scalar(select(func.max(Click.id)))
            rollup._fold_messages(session, 0, 10**9)
            rollup._fold_opens(session, 0, 10**9)
            rollup._fold_clicks(session, 0, top - 3)
            for name, mark in (("message", 10**9), ("open", 10**9), ("click", top - 3)):
                session.add(RollupState(name=name, watermark=mark))


def _percent(report, seeded, key: str) -> float:
    return next(link["percent"] for link in report["links"] if link["id"] == seeded.urls[(seeded.latest, key)])


@pytest.mark.parametrize("how", ["live", "folded", "half"])
def test_the_hot_clicks_filtered_by_device_give_the_shares_of_that_familys_clicks(client, sessions, how):
    seeded = seed_devices(sessions)
    fold(sessions, how)
    url = "/hotclicks/api/deliveries/spring-news/hot-clicks"
    assert client.get(url).get_json()["total_clicks"] == 25
    mobile = client.get(url + "?device=mobile").get_json()
    assert (mobile["device"], mobile["total_clicks"], mobile["measure"]) == ("mobile", 4, "clicks")
    assert (_percent(mobile, seeded, SALE), _percent(mobile, seeded, BLOG)) == (75.0, 25.0)
    tablet = client.get(url + "?device=tablet").get_json()
    assert (tablet["total_clicks"], _percent(tablet, seeded, SALE)) == (1, 100.0)
    unknown = client.get(url + "?device=unknown").get_json()
    assert unknown["total_clicks"] == 20
    assert {k: _percent(unknown, seeded, k) for k in LATEST_PERCENT} == LATEST_PERCENT
    assert client.get(url + "?device=desktop").get_json()["total_clicks"] == 0  # a scanner's only
    desktop = client.get(url + "?device=desktop&machine=1").get_json()
    assert (desktop["total_clicks"], _percent(desktop, seeded, BLOG)) == (1, 100.0)
    # Unique clickers are not kept per device; a time window does not combine with a device.
    assert client.get(url + "?device=mobile&measure=unique").get_json()["measure"] == "clicks"
    both = client.get(url + "?device=mobile&within=24h").get_json()
    assert (both["device"], both["within"], both["total_clicks"]) == ("mobile", None, 4)
    assert client.get(url + "?device=fridge").get_json()["device"] is None


@pytest.mark.parametrize("how", ["live", "folded", "half"])
def test_the_delivery_shows_the_clicks_by_device_family(client, sessions, how):
    seed_devices(sessions)
    fold(sessions, how)
    people = client.get("/hotclicks/api/deliveries/spring-news").get_json()["devices"]
    assert people == [
        {"device": "desktop", "clicks": 0, "share": 0.0},
        {"device": "mobile", "clicks": 4, "share": 16.0},
        {"device": "tablet", "clicks": 1, "share": 4.0},
        {"device": "unknown", "clicks": 20, "share": 80.0},
    ]
    everyone = client.get("/hotclicks/api/deliveries/spring-news?machine=1").get_json()["devices"]
    assert [(d["device"], d["clicks"]) for d in everyone] == [("desktop", 1), ("mobile", 4), ("tablet", 1),
                                                              ("unknown", 24)]
    page = BeautifulSoup(client.get("/hotclicks/deliveries/spring-news").data, "html.parser")
    rows = [[td.get_text(strip=True) for td in tr.find_all("td")] for tr in page.find("table", id="devices").tbody("tr")]
    assert rows == [["desktop", "0", "0.0%"], ["mobile", "4", "16.0%"], ["tablet", "1", "4.0%"], ["unknown", "20", "80.0%"]]
    assert "device=mobile" in page.find("table", id="devices").find("a", string="mobile")["href"]


def test_the_journal_keeps_a_clicks_device_and_reads_the_lines_of_older_versions():
    event = ClickEvent(7, 9, T0, None, None, device="tablet")
    assert _decode(_encode(event)) == event
    old = b'{"k":"c","u":9,"m":7,"t":"2026-03-02T09:00:00+00:00","a":null,"i":null,"r":null}\n'
    assert _decode(old).device is None  # read again from its stored agent when recorded


def seed_domains(sessions):
    """The device seed, plus in the latest execution a Gmail-like domain (one message delivered
    and clicked, one suppressed) and a domain whose only message failed."""
    seeded = seed_devices(sessions)
    at = T0 + dt.timedelta(days=7)
    with sessions.begin() as session:
        made = {}
        for address, status in (("Ann@Mail.Example.COM", MessageStatus.SENT),
                                ("bob@mail.example.com", MessageStatus.SUPPRESSED),
                                ("cy@b.example", MessageStatus.FAILED)):
            recipient = Recipient(address=address, created_at=at)
            session.add(recipient)
            session.flush()
            message = Message(execution_id=seeded.latest, recipient_id=recipient.id, status=status,
                              created_at=at, sent_at=at)
            session.add(message)
            session.flush()
            made[address] = message.id
        rules = bots.BotRules(delivery_seconds=0, burst_seconds=0)
        url = seeded.urls[(seeded.latest, BLOG)]
        assert all(record_clicks(session, [ClickEvent(made["Ann@Mail.Example.COM"], url, at + dt.timedelta(hours=9),
                                                      IPHONE, None)] * 2, rules))
    return seeded


@pytest.mark.parametrize("how", ["live", "folded", "half"])
def test_the_delivery_lists_its_top_recipient_domains(client, sessions, how):
    seed_domains(sessions)
    fold(sessions, how)
    data = client.get("/hotclicks/api/deliveries/spring-news").get_json()
    assert data["domains"] == [
        {"domain": "example.org", "sent": 13, "delivered": 12, "opened": 6, "clicked": 8, "click_rate": 66.67},
        {"domain": "b.example", "sent": 1, "delivered": 0, "opened": 0, "clicked": 0, "click_rate": 0.0},
        {"domain": "mail.example.com", "sent": 1, "delivered": 1, "opened": 0, "clicked": 1, "click_rate": 100.0},
    ]
    latest = data["executions"][0]  # the domains add up to the execution's own figures
    assert (latest["sent"], latest["delivered"], latest["unique_openers"], latest["unique_clickers"]) == (15, 13, 6, 9)
    page = BeautifulSoup(client.get("/hotclicks/deliveries/spring-news").data, "html.parser")
    rows = [[td.get_text(strip=True) for td in tr.find_all("td")] for tr in page.find("table", id="domains").tbody("tr")]
    assert rows[0] == ["example.org", "13", "12", "6", "8", "66.67%"]
    with sessions() as session:
        execution = session.get(Execution, data["execution"]["id"])
        assert [name for name, _ in stats.domain_figures(session, execution, limit=2)] == ["example.org", "b.example"]


def test_upgrading_to_0005_counts_the_folded_clicks_as_unknown_and_keeps_the_domains(engine, sessions):
    from hotclicks import db

    seeded = seed(sessions)
    fold(sessions, "folded")

    def figures():
        with sessions() as session:
            latest = session.get(Execution, seeded.latest)
            return (stats.device_figures(session, [latest.id])[latest.id],
                    [(name, f.sent, f.delivered, f.openers, f.clickers) for name, f in stats.domain_figures(session, latest)])

    before = figures()
    assert before[0]["unknown"] == (20, 4)
    db.downgrade(engine, "0004")
    db.upgrade(engine)
    assert figures() == before
