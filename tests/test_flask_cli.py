"""``flask hotclicks ...`` through ``app.test_cli_runner()``."""

from __future__ import annotations

import datetime as dt
import json

from sqlalchemy import select, update

from hotclicks import db
from hotclicks.db.models import Click, Open, TrackedUrl

from .flask_seed import TARGETS, send

BROWSER = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"}


def test_db_upgrade_and_current(app):
    runner = app.test_cli_runner()
    result = runner.invoke(args=["hotclicks", "db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert db.head_revision() in result.output
    result = runner.invoke(args=["hotclicks", "db", "current"])
    assert result.output.strip() == db.head_revision()


def test_profiles_add_list_edit_delete(app):
    runner = app.test_cli_runner()
    result = runner.invoke(args=["hotclicks", "profiles", "add", "Young woman", "Test.W@shop.example",
                                 "--attr", "gender=f", "--attr", "age=25"])
    assert result.exit_code == 0, result.output
    listed = json.loads(runner.invoke(args=["hotclicks", "profiles", "list", "--json"]).output)
    assert [(p["name"], p["address"], p["attributes"]) for p in listed] == [
        ("Young woman", "test.w@shop.example", {"gender": "f", "age": 25})
    ]
    table = runner.invoke(args=["hotclicks", "profiles", "list"]).output
    assert "Young woman" in table and "test.w@shop.example" in table

    duplicate = runner.invoke(args=["hotclicks", "profiles", "add", "Other", "test.w@shop.example"])
    assert duplicate.exit_code == 1 and "already has this address" in duplicate.output

    result = runner.invoke(args=["hotclicks", "profiles", "edit", "Young woman", "--name", "Woman 25",
                                 "--attr", "city=Lyon", "--remove", "age"])
    assert result.exit_code == 0, result.output
    listed = json.loads(runner.invoke(args=["hotclicks", "profiles", "list", "--json"]).output)
    assert listed[0]["name"] == "Woman 25" and listed[0]["attributes"] == {"gender": "f", "city": "Lyon"}

    assert runner.invoke(args=["hotclicks", "profiles", "delete", "Woman 25"]).exit_code == 0
    assert json.loads(runner.invoke(args=["hotclicks", "profiles", "list", "--json"]).output) == []
    missing = runner.invoke(args=["hotclicks", "profiles", "delete", "Woman 25"])
    assert missing.exit_code == 1 and "no test profile" in missing.output


def test_stats_prints_a_table(app, client, sessions):
    sent = send(sessions)
    send(sessions, "bob@example.org")
    client.get(sent.open(), headers=BROWSER)
    client.get(sent.click(0), headers=BROWSER)
    client.get(sent.click(1), headers={"User-Agent": "Mimecast-LinkScanner/2.0"})
    result = app.test_cli_runner().invoke(args=["hotclicks", "stats", "spring-news"])
    assert result.exit_code == 0, result.output
    header, rule, line = result.output.splitlines()
    assert header.split() == ["execution", "started", "sent", "delivered", "failed", "opens", "clicks",
                              "unique", "reactivity", "opt-outs", "bot", "clicks"]
    assert line.split()[3:] == ["2", "2", "0", "1", "1", "1", "100.0%", "0", "1"]
    unknown = app.test_cli_runner().invoke(args=["hotclicks", "stats", "nope"])
    assert unknown.exit_code == 1 and "no delivery 'nope'" in unknown.output


def test_purge_removes_old_events_and_old_links_keep_working(app, client, sessions):
    sent = send(sessions)
    client.get(sent.click(0), headers=BROWSER)
    client.get(sent.open(), headers=BROWSER)
    client.get(sent.click(1), headers=BROWSER)
    long_ago = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)
    with sessions.begin() as session:
        first = session.scalars(select(Click.id).order_by(Click.id)).first()
        session.execute(update(Click).where(Click.id == first).values(clicked_at=long_ago))
        session.execute(update(Open).values(opened_at=long_ago))
        session.execute(update(TrackedUrl).values(created_at=long_ago))

    result = app.test_cli_runner().invoke(args=["hotclicks", "purge", "--older-than", "400d", "--yes"])
    assert result.exit_code == 0, result.output
    assert "1 clicks, 1 opens" in result.output
    with sessions() as session:
        assert len(session.scalars(select(Click)).all()) == 1
        assert len(session.scalars(select(TrackedUrl)).all()) == 4
    app.extensions["hotclicks"].target_cache.clear()
    assert client.get(sent.click(0), headers=BROWSER).headers["Location"] == TARGETS[0]

    bad = app.test_cli_runner().invoke(args=["hotclicks", "purge", "--older-than", "soon", "--yes"])
    assert bad.exit_code == 2 and "not an age" in bad.output


def test_sign_url_prints_a_link_that_redirects(app, client, sessions):
    sent = send(sessions)
    runner = app.test_cli_runner()
    result = runner.invoke(args=["hotclicks", "sign-url", "--message", str(sent.message_id),
                                 "--tracked-url", str(sent.tracked_url_ids[2])])
    assert result.exit_code == 0, result.output
    url = result.output.strip()
    assert url.startswith("http://hotclicks.test/t/c/")
    assert client.get(url.removeprefix("http://hotclicks.test"), headers=BROWSER).headers["Location"] == TARGETS[2]
    decoded = runner.invoke(args=["hotclicks", "sign-url", "--decode", url.rsplit("/", 1)[1]])
    assert f"message={sent.message_id} tracked_url={sent.tracked_url_ids[2]}" in decoded.output
    forged = runner.invoke(args=["hotclicks", "sign-url", "--decode", "AAAAAAAAAAAAAAAAAAAAAA"])
    assert forged.exit_code == 1 and "bad signature" in forged.output
    assert runner.invoke(args=["hotclicks", "sign-url"]).exit_code == 2
