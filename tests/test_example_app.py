"""The demo's send-and-click steps, in-process on a temporary database, and the figures they give.

The shop sends its three deliveries through a real relay to a sink; simulated recipients click
over real HTTP; the report's percentages are checked against what the clicks themselves saw
(the redirect each one got), not against our own tables.
"""

from __future__ import annotations

from collections import Counter

import pytest
from sqlalchemy import select

pytest.importorskip("flask_mailman", reason="the example app needs flask-mailman (pip install -e '.[example]')")

from example_app import simulate  # noqa: E402
from example_app.demo import TEST_PROFILES, seed_and_send  # noqa: E402
from hotclicks.db.models import Delivery, Execution  # noqa: E402

from .helpers import play_the_demo  # noqa: E402


def test_the_demo_produces_the_executions_and_percentages_its_clicks_imply(shop, relay, upstream, sessions):
    outcomes = play_the_demo(shop, relay, upstream, subscribers=60, seed=3)
    statuses = simulate.summary(outcomes)
    assert not [k for k in statuses if k.split()[1].startswith("5")], statuses
    human_clicks = [o for o in outcomes if o.request.kind == "click"]
    assert human_clicks and all(o.status == 302 for o in human_clicks)

    with sessions() as session:
        executions = {
            code: session.scalars(
                select(Execution).join(Delivery).where(Delivery.code == code).order_by(Execution.id)
            ).all()
            for code in ("spring-news", "weekly-digest", "order-confirmation")
        }
    assert len(executions["spring-news"]) == 1
    assert len(executions["weekly-digest"]) == 3  # three runs, the template changed each week
    assert len({e.version for e in executions["weekly-digest"]}) == 3
    orders = executions["order-confirmation"]
    assert len(orders) == 2 and orders[0].period == orders[1].period  # republished in the month
    assert orders[0].version != orders[1].version

    # Which original URL each human click of the newsletter reached, as the browser saw it.
    client = shop.test_client()
    with client.session_transaction() as flask_session:
        flask_session["user"] = shop.config["EXAMPLE_USER"]
    report = client.get("/hotclicks/api/deliveries/spring-news/hot-clicks").get_json()
    newsletter_urls = {link["url"] for link in report["links"]}
    reached = Counter(o.location for o in human_clicks if o.location in newsletter_urls)
    total = sum(reached.values())
    assert report["total_clicks"] == total > 0
    by_url = Counter()
    for link in report["links"]:
        by_url[link["url"]] += link["clicks"]
    assert by_url == reached | Counter({url: 0 for url in newsletter_urls})
    for link in report["links"]:
        assert link["percent"] == pytest.approx(100 * link["clicks"] / total, abs=0.01)

    # The digest's last run compared with the one before: its links matched by name, moved or not.
    second, third = executions["weekly-digest"][1:]
    compared = client.get(
        f"/hotclicks/api/deliveries/weekly-digest/hot-clicks?execution={third.id}&compare={second.id}"
    ).get_json()
    assert compared["compare"]["id"] == second.id
    by_name = {link["name"]: link for link in compared["links"]}
    assert {"playlist", "repotting", "linen", "journal"} <= {n for n, l in by_name.items() if "delta_points" in l and l["compare_percent"] is not None}
    assert by_name["summer-fabrics"]["compare_percent"] is None  # new this week
    assert [link["name"] for link in compared["gone_links"]] == ["weavers"]


def test_the_reports_are_behind_the_example_apps_login(shop):
    client = shop.test_client()
    shop.testing = False  # the extension opens reports in testing mode; the app's login must hold
    response = client.get("/hotclicks/api/deliveries/spring-news/hot-clicks")
    assert response.status_code == 302 and "/login" in response.headers["Location"]
    assert client.post("/login", data={"user": "demo", "password": "wrong"}).status_code == 401
    assert client.post("/login", data={"user": "demo", "password": "hotclicks"}).status_code == 302
    assert client.get("/hotclicks/api/deliveries/spring-news/hot-clicks").status_code == 404


def test_test_profiles_of_the_seed_are_registered(shop, sessions):
    seed_and_send(shop, count=4, seed=1)
    from hotclicks.db.models import TestProfile

    with sessions() as session:
        names = set(session.scalars(select(TestProfile.name)))
    assert names == {name for name, _, _ in TEST_PROFILES}

