"""The demo's send-and-click steps, in-process on a temporary database, and the figures they give.

The shop sends its three deliveries through a real relay to a sink; simulated recipients click
over real HTTP; the report's percentages are checked against what the clicks themselves saw
(the redirect each one got), not against our own tables.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter

import pytest
from sqlalchemy import select
from werkzeug.serving import make_server

pytest.importorskip("flask_mailman", reason="the example app needs flask-mailman (pip install -e '.[example]')")

from example_app import create_app, simulate  # noqa: E402
from example_app.demo import TEST_PROFILES, seed_and_send  # noqa: E402
from hotclicks.models import Delivery, Execution  # noqa: E402

from .conftest import SECRET_KEY  # noqa: E402
from .helpers import BASE_URL  # noqa: E402


@pytest.fixture
def shop(relay, upstream, database_url):
    app = create_app(
        {
            "TESTING": True,
            "HOTCLICKS_DATABASE_URL": database_url,
            "HOTCLICKS_SECRET_KEY": SECRET_KEY,
            "HOTCLICKS_BASE_URL": BASE_URL,
            "MAIL_PORT": relay.config.listen[1],
            "HOTCLICKS_BOT_DELIVERY_SECONDS": 0,
        }
    )
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    app.config["LIVE_URL"] = f"http://127.0.0.1:{server.server_port}"
    yield app
    server.shutdown()
    thread.join(timeout=10)
    app.extensions["hotclicks"].engine.dispose()


def _delivered(upstream, count: int, timeout: float = 60) -> list[bytes]:
    deadline = time.monotonic() + timeout
    while len(upstream.messages) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(upstream.messages) == count, "the relay did not deliver every message it accepted"
    return [m.data for m in upstream.messages]


def test_the_demo_produces_the_executions_and_percentages_its_clicks_imply(shop, upstream, sessions):
    sent = seed_and_send(shop, count=60, seed=3)
    messages = _delivered(upstream, sent)
    # Links in the mail point at the public base URL; the test reaches the same routes locally.
    live_base = shop.config["LIVE_URL"] + "/t"
    requests = [
        dataclasses.replace(r, url=r.url.replace(BASE_URL, live_base))
        for r in simulate.plan(messages, BASE_URL, seed=3)
    ]
    outcomes = simulate.run(requests)
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
    assert len(executions["weekly-digest"]) == 3  # three runs, the last with the updated template
    assert len({e.version for e in executions["weekly-digest"]}) == 2
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
    from hotclicks.models import TestProfile

    with sessions() as session:
        names = set(session.scalars(select(TestProfile.name)))
    assert names == {name for name, _, _ in TEST_PROFILES}
