"""The bot rules as pure functions: each rule flags a scanner, and leaves the person it could be
mistaken for alone."""

from __future__ import annotations

import datetime as dt

import pytest

from hotclicks import bots
from hotclicks.bots import BotRules, ClickFact, FleetRow, OpenFact, Verdict, judge_message, judge_open

DELIVERED = dt.datetime(2024, 5, 6, 9, 0, tzinfo=dt.timezone.utc)
BROWSER = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_0) AppleWebKit/605.1.15 Safari/605.1.15"
GMAIL = "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
PERSON = Verdict(False)


def at(seconds: float) -> dt.datetime:
    return DELIVERED + dt.timedelta(seconds=seconds)


def click(link: int, seconds: float, **fact) -> ClickFact:
    return ClickFact(link, at(seconds), **fact)


def judge(*clicks: ClickFact, visible_links: int = 10, opens=(), rules: BotRules = bots.DEFAULT_RULES) -> list:
    verdicts = judge_message(clicks, delivered_at=DELIVERED, visible_links=visible_links, opens=opens, rules=rules)
    return [v.reason if v.is_machine else None for v in verdicts]


# -- per request ----------------------------------------------------------------------------------


def test_an_image_proxy_agent_is_no_machine_for_an_open_but_is_for_a_click():
    assert bots.request_reason("GET", {}, GMAIL, is_open=True) is None
    assert bots.request_reason("GET", {}, GMAIL) == "agent:google-image-proxy"  # proxies follow no links


def test_a_gmail_proxy_open_is_a_peoples_open_flagged_proxy():
    assert judge_open(OpenFact(at(600), GMAIL)) == Verdict(False, "proxy")
    assert judge_open(OpenFact(at(600), "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html")) == Verdict(False, "proxy")
    assert judge_open(OpenFact(at(600), BROWSER, network="gmail", network_kind="image-proxy")) == Verdict(False, "proxy")


def test_apple_mail_privacy_protection_opens_are_machine_opens():
    assert judge_open(OpenFact(at(2), "Mozilla/5.0")) == Verdict(True, "apple-mpp")
    assert judge_open(OpenFact(at(2), "Mozilla/5.0", network="icloud", network_kind="apple-relay")) == Verdict(True, "apple-mpp")
    # as the open route computes its request reason today
    reason = bots.request_reason("GET", {}, "Mozilla/5.0", is_open=True)
    assert judge_open(OpenFact(at(2), "Mozilla/5.0", reason)) == Verdict(True, "apple-mpp")
    assert judge_open(OpenFact(at(2), "Mozilla/5.0"), BotRules(apple_mpp_opens=False)) == Verdict(False, "proxy")


def test_a_person_browsing_through_icloud_private_relay_is_a_person():
    assert judge_open(OpenFact(at(600), BROWSER, network="icloud", network_kind="apple-relay")) == PERSON
    assert judge(click(1, 600, network="icloud", network_kind="apple-relay")) == [None]


def test_opens_and_clicks_from_a_scanner_network_are_machines():
    assert judge_open(OpenFact(at(600), BROWSER, network="mimecast", network_kind="scanner")) == Verdict(True, "network:mimecast")
    assert judge(click(1, 600, network="proofpoint", network_kind="scanner")) == ["network:proofpoint"]


def test_a_declared_scanner_stays_a_machine():
    reason = bots.request_reason("GET", {}, "Mimecast-LinkScanner/2.0")
    assert judge(click(1, 600, request_reason=reason)) == ["agent:mimecast"]
    assert judge_open(OpenFact(at(600), "curl/8", bots.request_reason("GET", {}, "curl/8", is_open=True))).is_machine


# -- one message's clicks -------------------------------------------------------------------------


def test_too_soon_after_delivery():
    assert judge(click(1, 3)) == ["too-soon-after-delivery"]
    assert judge(click(1, 30)) == [None]


def test_the_trap_link_and_the_clicks_around_it():
    assert judge(click(1, 600), click(99, 605, is_trap=True), click(2, 612), click(3, 700)) == [
        "trap-burst", "trap-link", "trap-burst", None,
    ]


def test_a_click_judged_human_turns_machine_when_a_trap_click_follows():
    first = click(1, 600)
    assert judge(first) == [None]
    assert judge(first, click(99, 604, is_trap=True)) == ["trap-burst", "trap-link"]


def test_two_links_within_a_second():
    assert judge(click(1, 600), click(2, 600.6)) == ["burst", "burst"]


def test_a_double_tap_on_one_link_is_a_person():
    assert judge(click(1, 600), click(1, 600.3)) == [None, None]


def test_a_sweep_of_links_spaced_more_than_a_second_apart():
    # a scanner posing as a browser, starting late and pacing itself
    clicks = [click(link, 30 + 3 * link) for link in range(1, 6)]
    assert judge(*clicks, visible_links=12) == ["sweep"] * 5


def test_a_person_reading_then_clicking_two_links_20_seconds_apart():
    assert judge(click(1, 600), click(2, 620), visible_links=3) == [None, None]
    assert judge(click(1, 600), click(2, 604), click(3, 640), visible_links=12) == [None, None, None]


def test_every_visible_link_clicked():
    clicks = [click(1, 30), click(2, 45), click(3, 70)]
    assert judge(*clicks, visible_links=3) == ["all-links"] * 3
    assert judge(*clicks, visible_links=4) == [None] * 3  # one left: a person's pace
    slow = [click(1, 30), click(2, 200), click(3, 400)]
    assert judge(*slow, visible_links=3) == [None] * 3  # every link, at a reader's pace


def test_a_message_of_two_links_both_clicked_is_a_person():
    assert judge(click(1, 600), click(2, 610), visible_links=2) == [None, None]


def test_safe_links_at_the_moment_a_person_clicks():
    scanner = click(1, 3600, network="microsoft", network_kind="scanner")
    person = click(1, 3600.8)
    assert judge(scanner, person) == ["network:microsoft", None]
    # nor does the scanner's fetch of another link make the person's a burst
    assert judge(click(2, 3600.2, network="microsoft", network_kind="scanner"), person) == ["network:microsoft", None]


def test_a_declared_agent_does_not_make_a_persons_click_a_burst():
    assert judge(click(1, 600, request_reason="agent:proofpoint"), click(2, 600.5)) == ["agent:proofpoint", None]


def test_clicks_before_any_reader_only_when_turned_on():
    assert judge(click(1, 30)) == [None]  # people reading with images off never open
    rules = BotRules(unread_seconds=60)
    assert judge(click(1, 30), rules=rules) == ["before-any-reader"]
    assert judge(click(1, 30), opens=[OpenFact(at(20), GMAIL)], rules=rules) == [None]
    assert judge(click(1, 30), opens=[OpenFact(at(2), "Mozilla/5.0")], rules=rules) == ["before-any-reader"]
    assert judge(click(1, 90), rules=rules) == [None]


def test_rules_turn_off_with_zero():
    rules = BotRules(delivery_seconds=0, burst_seconds=0, sweep_seconds=0, all_links_seconds=0)
    clicks = [click(link, 1 + link * 0.1) for link in range(1, 4)]
    assert judge(*clicks, visible_links=3, rules=rules) == [None] * 3


# -- across messages ------------------------------------------------------------------------------


def delivered(minutes: float) -> dt.datetime:
    return DELIVERED + dt.timedelta(minutes=minutes)


def test_a_fleet_clicks_many_recipients_just_after_delivery():
    rows = [FleetRow("203.0.113.0", n, delivered(3 * n) + dt.timedelta(seconds=40), delivered(3 * n)) for n in range(6)]
    fleets = bots.fleet_keys(rows)
    assert fleets == {"203.0.113.0"}
    assert all(bots.is_fleet(row, fleets) for row in rows)
    late = FleetRow("203.0.113.0", 9, delivered(60), delivered(0))
    assert not bots.is_fleet(late, fleets)  # the same address an hour later: a person's


def test_a_company_nat_is_no_fleet():
    # 40 people behind one address: six read the message as it arrives, the others later
    early = [FleetRow("198.51.100.0", n, delivered(0) + dt.timedelta(seconds=30 + 10 * n), delivered(0)) for n in range(6)]
    later = [FleetRow("198.51.100.0", n, delivered(5 + 7 * n), delivered(0)) for n in range(6, 40)]
    assert bots.fleet_keys(early + later) == frozenset()
    assert bots.fleet_keys(early) == {"198.51.100.0"}  # the limit: seen alone, the first minutes look alike


def test_few_recipients_are_no_fleet():
    rows = [FleetRow("192.0.2.0", n, delivered(n) + dt.timedelta(seconds=20), delivered(n)) for n in range(4)]
    assert bots.fleet_keys(rows) == frozenset()
    assert bots.fleet_keys(rows, BotRules(fleet_recipients=4)) == {"192.0.2.0"}
    assert bots.fleet_keys(rows, BotRules(fleet_recipients=4, fleet_share=0)) == frozenset()


@pytest.mark.parametrize("rules", [bots.DEFAULT_RULES, BotRules(fleet_history_seconds=60)])
def test_the_fleet_window_covers_the_delivery_window(rules):
    assert bots.fleet_window(rules) >= dt.timedelta(seconds=rules.fleet_delivery_seconds)
