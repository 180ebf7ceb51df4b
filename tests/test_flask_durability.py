"""Clicks through a real HTTP server on 127.0.0.1: 200 at once, each recorded exactly once, with
every click committed before its redirect, or journaled and replayed after a crash."""

from __future__ import annotations

import collections
import http.client
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import func, select
from werkzeug.serving import make_server

from flask_hotclicks import HotClicks, get_state
from hotclicks.db.journal import SUFFIX, EventJournal, replay_orphans
from hotclicks.db.models import Click, utcnow
from hotclicks.db.events import ClickEvent

from .conftest import SECRET_KEY
from .flask_seed import TARGETS, Sent, send
from .helpers import BASE_URL

CLICKS = 200


def make_app(database_url: str, **config) -> Flask:
    app = Flask("durable")
    app.config.update(
        HOTCLICKS_DATABASE_URL=database_url, HOTCLICKS_SECRET_KEY=SECRET_KEY, HOTCLICKS_BASE_URL=BASE_URL,
        HOTCLICKS_BOT_DELIVERY_SECONDS=0, HOTCLICKS_BOT_BURST_SECONDS=0, **config,
    )
    HotClicks(app)
    return app


class Server:
    """A Flask app behind werkzeug's threaded server on a free port of 127.0.0.1."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.port = self.server.server_port
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def get(self, path: str) -> tuple[int, str | None]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request("GET", path, headers={"User-Agent": "Mozilla/5.0 (X11) Firefox/128.0"})
            response = connection.getresponse()
            response.read()
            return response.status, response.getheader("Location")
        finally:
            connection.close()

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(10)
        self.server.server_close()
        get_state(self.app).dispose()


@pytest.fixture
def messages(sessions) -> list[Sent]:
    return [send(sessions, f"r{i}@example.org") for i in range(CLICKS // len(TARGETS) + 1)]


def click_all(servers: list[Server], messages: list[Sent]) -> None:
    """CLICKS clicks at once, spread over the servers, each to its own personalized target."""
    jobs = []
    for n in range(CLICKS):
        sent = messages[n // len(TARGETS)]
        index = n % len(TARGETS)
        target = f"{TARGETS[index]}?n={n}"
        jobs.append((servers[n % len(servers)], sent.click(index, personal=target), target))
    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(lambda job: (job[0].get(job[1]), job[2]), jobs))
    for (status, location), target in answers:
        assert (status, location) == (302, target)


def assert_each_recorded_once(sessions, messages: list[Sent]) -> None:
    with sessions() as session:
        rows = session.execute(select(Click.message_id, Click.tracked_url_id)).all()
    counts = collections.Counter(rows)
    expected = {
        (messages[n // len(TARGETS)].message_id, messages[n // len(TARGETS)].tracked_url_ids[n % len(TARGETS)])
        for n in range(CLICKS)
    }
    assert len(rows) == CLICKS
    assert set(counts) == expected and set(counts.values()) == {1}


def test_200_concurrent_clicks_on_two_workers_are_each_committed_before_the_redirect(
    engine, database_url, sessions, messages
):
    # Two apps, two engines: two workers writing to one database at once.
    servers = [Server(make_app(database_url)), Server(make_app(database_url))]
    try:
        click_all(servers, messages)
        assert_each_recorded_once(sessions, messages)  # before any server stops: committed already
    finally:
        for server in servers:
            server.stop()


@pytest.mark.parametrize("fsync", [False, True], ids=["written", "fdatasync"])
def test_200_concurrent_clicks_through_the_journal(engine, database_url, sessions, messages, tmp_path, fsync):
    servers = [
        Server(make_app(database_url, HOTCLICKS_JOURNAL_DIR=str(tmp_path / "journal"), HOTCLICKS_JOURNAL_FSYNC=fsync))
        for _ in range(2)
    ]
    try:
        click_all(servers, messages)
        for server in servers:
            assert get_state(server.app).journal.flush()
        assert_each_recorded_once(sessions, messages)
    finally:
        for server in servers:
            server.stop()
    assert list((tmp_path / "journal").glob("*" + SUFFIX)) == []  # all committed, files gone


_CRASHING_WORKER = """
import datetime as dt, os, sys
from hotclicks import db
from hotclicks.db.journal import EventJournal
from hotclicks.db.events import ClickEvent
url, directory, message_id, url_id = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
journal = EventJournal(directory, db.session_factory(db.create_db_engine(url)), interval=3600)
start = dt.datetime.now(dt.timezone.utc)
for n in range(50):
    journal.append(ClickEvent(message_id, url_id, start + dt.timedelta(microseconds=n), "agent", None))
print("acknowledged", flush=True)
os._exit(0)  # dies before committing anything
"""


def crash_a_worker(database_url: str, directory: Path, message_id: int, tracked_url_id: int) -> None:
    """A process that journals 50 clicks, acknowledges them and dies before committing any."""
    result = subprocess.run(
        [sys.executable, "-c", _CRASHING_WORKER, database_url, str(directory), str(message_id), str(tracked_url_id)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.stdout.strip() == "acknowledged", result.stderr


def test_journaled_clicks_of_a_dead_worker_are_replayed_at_start_exactly_once(
    engine, database_url, sessions, tmp_path
):
    sent = send(sessions)
    directory = tmp_path / "journal"
    crash_a_worker(database_url, directory, sent.message_id, sent.tracked_url_ids[0])
    with sessions() as session:
        assert session.scalar(select(func.count(Click.id))) == 0

    app = make_app(database_url, HOTCLICKS_JOURNAL_DIR=str(directory))  # a new worker starts
    get_state(app).dispose()
    with sessions() as session:
        assert session.scalar(select(func.count(Click.id))) == 50
    assert replay_orphans(directory, get_state(app).sessions) == 0


def test_replay_skips_events_committed_just_before_a_crash(engine, sessions, tmp_path):
    sent = send(sessions)
    journal = EventJournal(tmp_path, sessions, interval=3600)
    at = utcnow()
    for n in range(10):
        journal.append(ClickEvent(sent.message_id, sent.tracked_url_ids[n % 3], at, "agent", None))
    # A live worker's journal is never replayed by another.
    assert replay_orphans(tmp_path, sessions) == 0
    assert journal.flush()
    # Die after the commit, before the committed offset was kept: the file is replayed whole.
    (path,) = tmp_path.glob("*" + SUFFIX)
    Path(str(path) + ".done").unlink()
    journal._pid = -1  # stops its thread, which also replays orphans: wait until it has stopped
    journal._wake.set()
    journal._thread.join(timeout=30)
    assert not journal._thread.is_alive()
    os.close(journal._fd)  # releases the lock, as death would
    replay_orphans(tmp_path, sessions)
    with sessions() as session:
        assert session.scalar(select(func.count(Click.id))) == 10
    assert list(tmp_path.glob("*" + SUFFIX)) == []


@pytest.fixture
def sqlite_only(database_url: str) -> Iterator[None]:
    if not database_url.startswith("sqlite"):
        pytest.skip("SQLite settings")
    yield


def test_sqlite_is_in_wal_mode_with_a_busy_timeout(sqlite_only, app):
    with get_state(app).engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000


def test_an_event_the_database_refuses_is_set_aside_without_holding_back_the_others(engine, sessions, tmp_path):
    sent = send(sessions)
    journal = EventJournal(tmp_path, sessions, interval=3600)
    at = utcnow()
    journal.append(ClickEvent(sent.message_id, sent.tracked_url_ids[0], at, "agent", None))
    journal.append(ClickEvent(sent.message_id, 987_654, at, "agent", None))  # no such tracked URL
    journal.append(ClickEvent(sent.message_id, sent.tracked_url_ids[1], at, "agent", None))
    assert journal.flush()
    journal.close()
    with sessions() as session:
        assert sorted(session.scalars(select(Click.tracked_url_id))) == sorted(sent.tracked_url_ids[:2])
    (rejected,) = (tmp_path / "rejected.jsonl").read_text().splitlines()
    assert '"u":987654' in rejected
