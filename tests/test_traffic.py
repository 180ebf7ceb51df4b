"""The behaviour model of people and machines (example_app.traffic): labels, counts, repeatability."""

from __future__ import annotations

import ipaddress
from collections import Counter, defaultdict

import pytest

pytest.importorskip("flask_mailman", reason="the example app needs flask-mailman (pip install -e '.[example]')")

from example_app import traffic  # noqa: E402
from hotclicks import networks  # noqa: E402

LINKS = [f"https://shop.example/{i}" for i in range(8)]
RECIPIENTS = [f"r{i}@example.org" for i in range(1500)]


@pytest.fixture(scope="module")
def events() -> list[traffic.Event]:
    return traffic.events(RECIPIENTS, LINKS, seed=11)


def within(address: str, network: str) -> bool:
    ip = ipaddress.ip_address(address)
    return any(ip in ipaddress.ip_network(n) for n in traffic.NETWORKS[network])


def test_the_same_seed_gives_the_same_events_and_another_seed_others(events):
    assert traffic.events(RECIPIENTS, LINKS, seed=11) == events
    assert traffic.events(RECIPIENTS, LINKS, seed=12) != events
    # A recipient's events do not depend on who else receives the message.
    alone = traffic.events(RECIPIENTS[:1], LINKS, seed=11)
    assert alone == [e for e in events if e.message == RECIPIENTS[0]]


def test_every_event_is_labelled_by_its_behaviour_and_in_time_order(events):
    assert {e.behaviour for e in events} == set(traffic.BEHAVIOURS)
    for event in events:
        assert event.label == traffic.BEHAVIOURS[event.behaviour]
        assert (event.kind == "open") == (event.link is None)
        assert event.link is None or event.link in LINKS
        assert dict(event.headers)["User-Agent"]
        assert event.at > 0
    assert [e.at for e in events] == sorted(e.at for e in events)


def test_about_four_recipients_in_ten_are_behind_a_gateway():
    recipients = traffic.recipients_of(RECIPIENTS, seed=11)
    share = sum(r.gateway is not None for r in recipients) / len(recipients)
    assert 0.35 < share < 0.45


def test_apple_mpp_loads_every_message_of_its_recipients_at_delivery(events):
    apple = {r.address for r in traffic.recipients_of(RECIPIENTS, seed=11) if r.mailbox == "apple-mpp"}
    mpp = [e for e in events if e.behaviour == "apple-mpp-open"]
    assert sorted(e.message for e in mpp) == sorted(apple)  # one each, read or not
    for event in mpp:
        assert dict(event.headers)["User-Agent"] == "Mozilla/5.0"
        assert within(event.address, "apple-relay")
        assert event.at <= 60
    # Their own reading loads nothing more: the proxy has the images.
    assert not [e for e in events if e.message in apple and e.kind == "open" and e.label == traffic.PERSON]


def test_people_come_from_documentation_addresses_and_named_networks_from_their_ranges(events):
    for event in events:
        if event.behaviour == "gmail-open":
            assert within(event.address, "google-image-proxy")
            assert "GoogleImageProxy" in dict(event.headers)["User-Agent"]
        elif event.label == traffic.PERSON:
            assert within(event.address, "people")
        elif event.behaviour in ("safe-links-check", "scan-at-delivery", "scan-delayed"):
            assert within(event.address, "microsoft-eop")


def test_gateways_come_from_their_shipped_list_or_from_addresses_no_list_holds():
    index = networks.network_index()
    for gateway, shipped in (("microsoft-eop", "microsoft-eop"), ("proofpoint", None), ("mimecast", None),
                             ("barracuda", None)):
        for cidr in traffic.NETWORKS[gateway]:
            net = ipaddress.ip_network(cidr)
            for address in (net.network_address, net.broadcast_address):
                found = index.match(address)
                assert (found and found.name) == shipped, (gateway, cidr)


def test_each_safe_links_click_is_checked_by_microsoft_a_moment_before(events):
    checks = defaultdict(list)
    for event in events:
        if event.behaviour == "safe-links-check":
            checks[event.message, event.link].append(event.at)
    people = [e for e in events if e.behaviour == "safe-links-person"]
    assert people
    for event in people:
        assert any(0.2 <= event.at - at <= 1.5 for at in checks[event.message, event.link])


def test_people_click_at_their_own_pace(events):
    by_person = defaultdict(list)
    for event in events:
        if event.kind == "click" and event.label == traffic.PERSON:
            by_person[event.message, event.behaviour].append(event)
    kinds = Counter(behaviour for _, behaviour in by_person)
    assert {"click", "quick-reader", "double-tap", "several-links", "safe-links-person"} <= set(kinds)
    for (_, behaviour), clicks in by_person.items():
        if behaviour == "quick-reader":
            assert len(clicks) == 1 and 20 <= clicks[0].at <= 60
        elif behaviour == "double-tap":
            first, second = clicks
            assert first.link == second.link and 0 < second.at - first.at <= 1
        elif behaviour == "several-links":
            assert 2 <= len({c.link for c in clicks}) == len(clicks) <= 3
            assert all(b.at - a.at >= 20 for a, b in zip(clicks, clicks[1:]))
    # Opens are long-tailed: some within minutes, some days later.
    opens = sorted(e.at for e in events if e.behaviour == "open")
    assert opens[0] < 600 and opens[-1] > 86400


def test_the_attractive_links_draw_most_of_peoples_clicks(events):
    clicks = Counter(e.link for e in events if e.kind == "click" and e.label == traffic.PERSON)
    assert clicks[LINKS[0]] > clicks[LINKS[1]] > max(clicks[link] for link in LINKS[2:])


def test_scanners_behave_as_described(events):
    machine = defaultdict(list)
    for event in events:
        if event.label == traffic.MACHINE and event.kind == "click" and event.behaviour != "safe-links-check":
            machine[event.message, event.behaviour].append(event)
    for (_, behaviour), clicks in machine.items():
        gaps = [b.at - a.at for a, b in zip(clicks, clicks[1:])]
        if behaviour == "scan-one-link":
            assert len(clicks) == 1
        else:
            assert sorted(c.link for c in clicks) == sorted(LINKS)  # every link
        if behaviour == "scan-head":
            assert {c.method for c in clicks} == {"HEAD"}
        if behaviour in ("scan-spaced", "scan-delayed"):
            assert min(gaps) > 1.0
            assert "Chrome/" in dict(clicks[0].headers)["User-Agent"]
        if behaviour == "scan-delayed":
            assert clicks[0].at >= 3600
        if behaviour == "scan-at-delivery":
            assert clicks[0].at < 10


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        traffic.events(RECIPIENTS, [], seed=1)
    with pytest.raises(ValueError):
        traffic.events(RECIPIENTS, LINKS, seed=1, weights=[1.0])
