"""The hot clicks beyond the seeds: two executions compared, the shares within a time window, the
cumulative share of clicks over time, the page at a glance (pure parts, JSON and pages)."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

import pytest
from bs4 import BeautifulSoup

from hotclicks import heat
from hotclicks.db import rollup

from .test_reports import T0, seed


def _url(name, part, position, url):
    return SimpleNamespace(name=name, part=part, position=position, url=url, link_key=f"{url}#1")


def _figure(percent, name=None, part="html", position=0, url="https://a.example/"):
    return heat.LinkFigure(_url(name, part, position, url), percent=percent)


def _report(links, variants=()):
    report = heat.HotClicksReport(None, False, "clicks", list(links), 0, 0)
    report.variants = list(variants)
    return report


def test_links_match_by_name_first_then_by_part_position_and_target():
    hero = _figure(40, name="hero", position=0, url="https://shop.example/new-hero")
    moved = _figure(10, position=5, url="https://shop.example/sale")  # moved: another position
    same = _figure(50, position=2, url="https://blog.example/")
    other_hero = _figure(25, name="hero", position=3, url="https://shop.example/old-hero")
    other_sale = _figure(5, position=1, url="https://shop.example/sale")
    other_same = _figure(70, position=2, url="https://blog.example/")
    comparison = heat.compare(_report([hero, moved, same]), _report([other_hero, other_sale, other_same]))
    assert (hero.compare_percent, hero.delta_points) == (25, 15)  # by name, though its target changed
    assert (same.compare_percent, same.delta_points) == (70, -20)
    assert (moved.compare_percent, moved.delta_points) == (None, None)
    assert comparison.new == [moved] and comparison.gone == [other_sale]


def test_a_name_never_matches_an_unnamed_link_and_each_link_matches_once():
    pairs, left = heat.match([1, 2, 3], [3, 1, 1], lambda x: x)
    assert pairs == [(1, 1), (2, None), (3, 3)] and left == [1]
    pairs, _ = heat.match([_figure(1, position=0)], [_figure(2, name="x", position=0)], lambda f: f.tracked_url.name)
    assert pairs[0][1] is None


def test_variants_match_by_test_profile_then_by_their_links():
    def share(profile, signature, percent):
        return heat.VariantShare(SimpleNamespace(signature=signature), profile, 1, 0, 1, percent)

    mine = [share("Anna", "s1", 60), share(None, "s2", 40), share(None, "s9", 0)]
    theirs = [share("Anna", "s0", 50), share(None, "s2", 50)]
    comparison = heat.compare(_report([], mine), _report([], theirs))
    assert [c.delta_points for c in comparison.variants] == [10, -10, None]
    assert comparison.gone_variants == []


def test_a_window_counts_whole_hours_from_the_first_message():
    at_nine = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.timezone.utc)
    hour = heat._hour(at_nine)
    assert heat.window_end_hour(at_nine, "1h") == hour + 1  # the 09:00 bucket alone
    assert heat.window_end_hour(at_nine + dt.timedelta(minutes=20), "1h") == hour + 2  # up to 11:00
    assert heat.window_end_hour(at_nine, "7d") == hour + 168


def test_cumulative_shares_and_the_time_to_half_and_most_of_the_clicks():
    start = dt.datetime(2026, 3, 2, 9, 30, tzinfo=dt.timezone.utc)
    stream = [(start.replace(minute=0), 4), (start.replace(minute=0) + dt.timedelta(hours=2), 4),
              (start.replace(minute=0) + dt.timedelta(hours=26), 2)]
    curve = heat.cumulative_shares(stream, start)
    assert curve == [(1, 40.0), (3, 80.0), (27, 100.0)]
    assert heat.time_to_share(curve, 50) == 3 and heat.time_to_share(curve, 90) == 27
    assert heat.time_to_share([], 50) is None


# -- JSON and pages -------------------------------------------------------------------------------


def test_the_json_compares_two_executions_link_by_link(client, sessions):
    seeded = seed(sessions)
    report = client.get(f"/hotclicks/api/deliveries/spring-news/hot-clicks?compare={seeded.first}").get_json()
    assert report["execution"]["id"] == seeded.latest
    assert report["compare"]["id"] == seeded.first and report["compare"]["total_clicks"] == 4
    by_id = {link["id"]: link for link in report["links"]}

    def link(key):
        return by_id[seeded.urls[(seeded.latest, key)]]

    assert (link("https://shop.example/sale#1")["compare_percent"], link("https://shop.example/sale#1")["delta_points"]) == (25.0, 5.0)
    assert link("https://blog.example/spring#1")["delta_points"] == -55.0
    assert link("https://shop.example/women#1")["delta_points"] == 25.0
    assert link("https://shop.example/sale#2")["delta_points"] == 10.0
    men = link("https://shop.example/men#1")  # the men's variant is new in the latest execution
    assert (men["compare_percent"], men["delta_points"]) == (None, None)
    assert report["new_links"] == [men["id"]] and report["gone_links"] == []
    anna = next(v for v in report["variants"] if v["test_profile"] == "Anna (woman, 30)")
    assert (anna["compare_clicks_percent"], anna["delta_points"]) == (100.0, -50.0)
    plain = client.get("/hotclicks/api/deliveries/spring-news/hot-clicks").get_json()
    assert plain["compare"] is None and "delta_points" not in plain["links"][0]
    assert client.get("/hotclicks/api/deliveries/spring-news/hot-clicks?compare=999999").status_code == 404


@pytest.mark.parametrize("folded", [False, True])
def test_the_json_counts_the_clicks_within_a_window_from_the_hourly_buckets(client, sessions, folded):
    seed(sessions)
    if folded:
        with sessions.begin() as session:
            rollup.roll_up(session, settle=0)
    url = "/hotclicks/api/deliveries/spring-news/hot-clicks?within="
    expected = {"1h": 0, "6h": 18, "24h": 18, "7d": 20}  # the second sale link's 2 clicks came after 24 h
    for within, total in expected.items():
        report = client.get(url + within).get_json()
        assert (report["within"], report["total_clicks"], report["measure"]) == (within, total, "clicks")
    report = client.get(url + "6h").get_json()
    shares = {link["url"]: link["percent"] for link in report["links"] if link["part"] == "html" and link["clicks"]}
    assert shares["https://shop.example/sale"] == pytest.approx(33.33)  # 6 of 18, the second one has none
    assert report["window_end"] == (T0 + dt.timedelta(days=7, hours=6)).isoformat()
    machines = client.get(url + "6h&machine=1").get_json()
    assert machines["total_clicks"] == 22  # the scanner's 4 clicks only when asked
    assert client.get(url + "2h").get_json()["within"] is None  # not a window: all time


def test_the_page_calls_out_the_top_links_compares_and_switches_to_counts(client, sessions):
    seeded = seed(sessions)
    page = BeautifulSoup(client.get(
        f"/hotclicks/deliveries/spring-news/hot-clicks?compare={seeded.first}").data, "html.parser")
    top = [" ".join(li.get_text(" ", strip=True).split()) for li in page.select("#hc-top li")]
    assert len(top) == 3 and top[0].startswith("30% Shop the spring sale") and "▲5 points" in top[0]
    assert "Compared with execution #%d" % seeded.first in " ".join(page.find(id="hc-comparing").get_text().split())
    assert "shop.example/men" in page.find(id="hc-changes").get_text()
    frame = client.get(f"/hotclicks/deliveries/spring-news/hot-clicks/frame?compare={seeded.first}").data.decode()
    badges = BeautifulSoup(frame, "html.parser").select(".hc-badge")
    labels = [b.contents[0].strip() for b in badges]
    assert labels == ["30% \u25b25", "25% \u25b225", "20% \u25bc55", "not tracked", "10% \u25b210"]
    counts = BeautifulSoup(client.get("/hotclicks/deliveries/spring-news/hot-clicks/frame?show=counts").data,
                           "html.parser")
    assert [b.contents[0].strip() for b in counts.select(".hc-badge")] == ["6", "5", "4", "not tracked", "2"]


def test_the_delivery_page_shows_the_cumulative_share_and_the_time_to_half_and_most(client, sessions):
    seeded = seed(sessions)
    data = client.get(f"/hotclicks/api/deliveries/spring-news?execution={seeded.latest}").get_json()
    # 18 of 20 clicks in the hour starting 2 h after sending, the last 2 at 24 h
    assert data["cumulative"] == [{"hours": 3, "percent": 90.0}, {"hours": 25, "percent": 100.0}]
    assert (data["hours_to_50"], data["hours_to_90"]) == (3, 3)
    page = BeautifulSoup(client.get(f"/hotclicks/deliveries/spring-news?execution={seeded.latest}").data, "html.parser")
    assert page.select_one("#hc-curve svg polyline") is not None
    assert "Half the clicks came within 3 h" in " ".join(page.find(id="hc-time-to").get_text().split())
