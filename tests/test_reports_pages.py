"""The report pages, their JSON twins and CSV exports, through the Flask test client."""

from __future__ import annotations

import csv
import io

import pytest
from bs4 import BeautifulSoup
from flask import Flask, redirect

from flask_hotclicks import HotClicks

from .conftest import SECRET_KEY
from .helpers import BASE_URL
from .test_reports import FIRST_PERCENT, LATEST_PERCENT, seed


def _soup(response) -> BeautifulSoup:
    assert response.status_code == 200, response.data[:500]
    return BeautifulSoup(response.data, "html.parser")


def _rows(soup: BeautifulSoup, table_id: str) -> list[list[str]]:
    table = soup.find("table", id=table_id)
    assert table is not None, table_id
    return [[c.get_text(" ", strip=True) for c in tr.find_all(["th", "td"])] for tr in table.tbody.find_all("tr")]


def test_the_hot_clicks_json_keeps_its_contract_and_tells_badges_variants_and_executions(client, sessions):
    seeded = seed(sessions)
    report = client.get("/hotclicks/api/deliveries/spring-news/hot-clicks").get_json()
    assert report["execution"]["id"] == seeded.latest
    assert report["total_clicks"] == 20
    assert set(report["links"][0]) >= {"id", "url", "label", "part", "position", "clicks", "unique_clickers", "percent"}
    by_id = {link["id"]: link for link in report["links"]}
    for key, percent in LATEST_PERCENT.items():
        assert by_id[seeded.urls[(seeded.latest, key)]]["percent"] == percent
    badges = report["content"]["badges"]["html"]
    assert [b["percent"] for b in badges] == [30.0, 25.0, 20.0, None, 10.0]
    assert [b["tracked"] for b in badges] == [True, True, True, False, True]
    assert [e["id"] for e in report["executions"]] == [seeded.latest, seeded.first]
    first = client.get(f"/hotclicks/api/deliveries/spring-news/hot-clicks?execution={seeded.first}").get_json()
    assert first["total_clicks"] == 4
    assert {b["key"]: b["percent"] for b in first["content"]["badges"]["html"] if b["percent"]} == FIRST_PERCENT


def test_the_hot_clicks_page_lists_executions_profiles_and_variants(client, sessions):
    seeded = seed(sessions)
    page = _soup(client.get("/hotclicks/deliveries/spring-news/hot-clicks"))
    assert f"#{seeded.latest}" in page.find(id="execution").get_text()
    links = [a.get_text() for a in page.select("#change-execution a.hc-execution")]
    assert links == [f"#{seeded.latest}", f"#{seeded.first}"]
    assert [a.get_text() for a in page.select("#load-profile a.hc-profile")] == ["Anna (woman, 30)", "Marc (man, 40)"]
    assert "across all variants" in page.find(id="hc-legend").get_text()
    assert "100% = 20" in " ".join(page.find(id="hc-legend").get_text().split())
    variants = _rows(page, "variants")
    assert ["test profile Anna (woman, 30)", "7", "53.85%", "10", "50.0%"] == variants[0][1:]
    frame = page.find("iframe", id="hc-content")
    # no allow-scripts (nothing of the email runs); its origin kept only so the page can fit its height
    assert frame["sandbox"] == ["allow-same-origin"]
    text = _soup(client.get("/hotclicks/deliveries/spring-news/hot-clicks?view=text"))
    assert [b["data-hc-percent"] for b in text.select("#hc-text .hc-badge")] == ["0", "0"]


def test_the_frame_and_the_pages_send_strict_content_security_policies(client, sessions):
    seeded = seed(sessions)
    page = client.get("/hotclicks/deliveries/spring-news/hot-clicks")
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    frame = client.get(f"/hotclicks/deliveries/spring-news/hot-clicks/frame?profile={seeded.marc}")
    policy = frame.headers["Content-Security-Policy"]
    assert policy.startswith("sandbox allow-same-origin;") and "allow-scripts" not in policy
    assert "script-src 'none'" in policy and "default-src 'none'" in policy
    assert b"<script" not in frame.data and b"onerror" not in frame.data
    assert b"shop.example/men" in frame.data


def test_deliveries_delivery_and_recipient_pages_with_csv_and_json(client, sessions):
    seeded = seed(sessions)
    deliveries = _rows(_soup(client.get("/hotclicks/")), "deliveries")
    # type, executions, ..., sent 26, delivered 24, failed 2, opens 6, clicks 24, clickers 7
    assert deliveries[0][:3] == ["spring-news · hot clicks", "one-off", "2"]
    assert deliveries[0][4:] == ["26", "24", "2", "6", "24", "7", "29.17%", "116.67%", "1"]
    listed = client.get("/hotclicks/api/deliveries").get_json()["deliveries"]
    assert listed[0]["clicks"] == 24
    table = list(csv.DictReader(io.StringIO(client.get("/hotclicks/deliveries.csv").get_data(as_text=True))))
    assert table[0]["delivery"] == "spring-news" and table[0]["unique_clickers"] == "7"

    delivery = _soup(client.get("/hotclicks/deliveries/spring-news"))
    executions = _rows(delivery, "executions")
    assert [r[0] for r in executions] == [f"#{seeded.latest}", f"#{seeded.first}"]
    assert executions[0][4:] == ["13", "12", "1", "6", "20", "5", "41.67%", "83.33%", "1"]
    urls = _rows(delivery, "urls")
    assert ["html", "Shop the spring sale", "https://shop.example/sale", "6", "2", "30.0%"] in urls
    assert delivery.find("svg") is not None
    assert len(_rows(delivery, "messages")) == 13
    searched = _rows(_soup(client.get("/hotclicks/deliveries/spring-news?q=r11")), "messages")
    assert [r[:2] for r in searched] == [["r11@example.org", "failed"]]
    assert len(_rows(_soup(client.get("/hotclicks/deliveries/spring-news?status=failed")), "messages")) == 1
    data = client.get("/hotclicks/api/deliveries/spring-news").get_json()
    assert data["executions"][0]["reactivity"] == 83.33
    assert sum(p["clicks"] for p in data["click_stream"]) == 20
    urls_csv = list(csv.DictReader(io.StringIO(client.get("/hotclicks/deliveries/spring-news/urls.csv").get_data(as_text=True))))
    assert {r["url"] for r in urls_csv} >= {"https://shop.example/women", "https://shop.example/men"}
    messages_csv = client.get("/hotclicks/deliveries/spring-news/messages.csv").get_data(as_text=True)
    assert messages_csv.count("\n") == 14
    assert client.get("/hotclicks/deliveries/spring-news/executions.csv").status_code == 200

    found = _soup(client.get("/hotclicks/recipients?q=r0@"))
    link = found.select_one("#recipients a")
    assert link.get_text() == "r0@example.org"
    tab = _soup(client.get(link["href"]))
    clicks = _rows(tab, "clicks")
    assert len(clicks) == 3 + 1 + 1  # the sale three times and the women's link, in the latest; the sale in the first
    assert any("spring-news" in r[2] and f"#{seeded.first}" == r[3] for r in clicks)
    assert "https://shop.example/women" in " ".join(" ".join(r) for r in clicks)
    rid = int(link["href"].rsplit("/", 1)[1])
    assert len(client.get(f"/hotclicks/api/recipients/{rid}").get_json()["opens"]) == 1
    assert client.get(f"/hotclicks/recipients/{rid}/clicks.csv").get_data(as_text=True).count("\n") == 6
    opted = _soup(client.get("/hotclicks/recipients?q=r3@"))
    tab3 = _soup(client.get(opted.select_one("#recipients a")["href"]))
    assert len(_rows(tab3, "opt-outs")) == 1


def _app(database_url: str, **config) -> Flask:
    app = Flask("access_app")
    app.config.update(HOTCLICKS_DATABASE_URL=database_url, HOTCLICKS_SECRET_KEY=SECRET_KEY,
                      HOTCLICKS_BASE_URL=BASE_URL, **config)
    return app


@pytest.mark.parametrize("path", ["/hotclicks/", "/hotclicks/api/deliveries", "/hotclicks/deliveries.csv",
                                  "/hotclicks/deliveries/spring-news/hot-clicks/frame"])
def test_reports_are_closed_unless_the_host_app_opens_them(engine, database_url, sessions, path):
    seed(sessions)
    closed = _app(database_url)
    HotClicks(closed)
    assert closed.test_client().get(path).status_code == 403

    opened = _app(database_url)
    hotclicks = HotClicks(opened)
    allowed = {"yes": False}
    hotclicks.report_access(lambda: allowed["yes"])
    assert opened.test_client().get(path).status_code == 403
    allowed["yes"] = True
    assert opened.test_client().get(path).status_code == 200

    login = _app(database_url)
    HotClicks(login).report_access(lambda: redirect("/login"))
    response = login.test_client().get(path)
    assert response.status_code == 302 and response.headers["Location"].endswith("/login")
    for app in (closed, opened, login):
        app.extensions["hotclicks"].engine.dispose()


def test_hotclicks_reports_open_says_who_sees_the_reports_when_no_check_is_registered(
    engine, database_url, sessions
):
    seed(sessions)
    path = "/hotclicks/api/deliveries"
    expected = [
        ({"TESTING": True}, 200),  # default "debug": open in debug and testing mode
        ({}, 403),  # default "debug", in production: closed
        ({"HOTCLICKS_REPORTS_OPEN": True}, 200),  # protected by the app another way
        ({"HOTCLICKS_REPORTS_OPEN": False, "TESTING": True}, 403),  # closed even when testing
    ]
    for config, status in expected:
        app = _app(database_url, **config)
        HotClicks(app)
        assert app.test_client().get(path).status_code == status, config
        app.extensions["hotclicks"].engine.dispose()
    checked = _app(database_url, HOTCLICKS_REPORTS_OPEN=True)
    HotClicks(checked).report_access(lambda: False)  # a registered check always decides
    assert checked.test_client().get(path).status_code == 403
    checked.extensions["hotclicks"].engine.dispose()


def test_a_preview_renderer_supplies_the_content_and_its_untracked_links_say_so(app, client, sessions):
    seed(sessions)
    seen = []

    @app.extensions["hotclicks"].extension.preview_renderer
    def render(code, profile):
        seen.append((code, profile.name if profile else None))
        return {"html": '<p><a href="https://shop.example/sale">Sale</a> <a href="https://new.example/">New</a></p>',
                "text": "See https://shop.example/spring"}

    report = client.get("/hotclicks/api/deliveries/spring-news/hot-clicks").get_json()
    assert report["content"]["source"] == "preview"
    assert [(b["percent"], b["tracked"]) for b in report["content"]["badges"]["html"]] == [(30.0, True), (None, False)]
    assert seen == [("spring-news", None)]
    frame = client.get("/hotclicks/deliveries/spring-news/hot-clicks/frame").get_data(as_text=True)
    assert "not tracked" in frame and "30%" in frame
