"""The click storm, small: a few thousand clicks in seconds against gunicorn workers on 127.0.0.1,
some workers killed with SIGKILL; every acknowledged click recorded, none twice.

The full storm is ``python stress/click_storm.py`` (docs/reliability.md has its figures).
"""

from __future__ import annotations

import importlib.util
import os
import stat
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from hotclicks.db.journal import SUFFIX, EventJournal
from hotclicks.db.models import Click, utcnow
from hotclicks.db.events import ClickEvent

from .flask_seed import send
from .test_flask_durability import crash_a_worker

STRESS = Path(__file__).resolve().parent.parent / "stress" / "click_storm.py"


@pytest.fixture(scope="module")
def click_storm():
    pytest.importorskip("gunicorn", reason="the storm serves the app with gunicorn (pip install -r stress/requirements.txt)")
    sys.path.insert(0, str(STRESS.parent))
    try:
        spec = importlib.util.spec_from_file_location("click_storm", STRESS)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules["click_storm"] = module  # its dataclasses look themselves up there
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        yield module
    finally:
        sys.modules.pop("click_storm", None)
        sys.path.remove(str(STRESS.parent))


def test_a_storm_on_four_workers_answers_every_click_and_records_each_once(click_storm, engine, database_url, tmp_path):
    result = click_storm.storm(database_url, tmp_path, recipients=200, links=4, clicks=1200, workers=4,
                               concurrency=16, kill_every=0, journal=True, fsync=False, max_seconds=120)
    print(result.line())
    assert (result.failed, result.errors) == (0, 0)
    assert result.sent == result.acknowledged == result.recorded == 1200
    assert (result.lost, result.duplicated) == (0, 0)


def test_a_storm_right_after_a_send_through_the_relay(click_storm, engine, database_url, tmp_path):
    result = click_storm.storm(database_url, tmp_path, recipients=100, links=3, clicks=600, workers=2,
                               concurrency=8, kill_every=0, journal=True, fsync=False, max_seconds=120,
                               via_relay=True)
    print(result.line())
    assert (result.failed, result.errors, result.lost, result.duplicated) == (0, 0, 0, 0)
    assert result.sent == result.acknowledged == result.recorded == 600


@pytest.mark.parametrize(("journal", "clicks"), [(True, 2000), (False, 800)], ids=["journal", "commit-per-click"])
def test_workers_killed_during_a_storm_lose_no_acknowledged_click(
    click_storm, engine, database_url, tmp_path, journal, clicks
):
    # --preload: a killed worker is replaced by a fork at once, which must take over its journal.
    result = click_storm.storm(database_url, tmp_path, recipients=300, links=4, clicks=clicks, workers=2,
                               concurrency=16, kill_every=0.15, journal=journal, fsync=False,
                               max_seconds=120, preload=True)
    print(result.line())
    assert result.kills >= 1, "no worker was killed: the storm ended first"
    assert result.lost == 0, f"{result.lost} acknowledged clicks were not recorded"
    assert result.duplicated == 0
    assert result.recorded == result.acknowledged + result.unacknowledged_recorded
    # (A worker killed at the very end may leave its journal to the next start: replayed_after.
    # That live journals take over dead ones is tested below, without timing.)


def test_a_live_journal_takes_over_the_journal_of_a_dead_process(engine, database_url, sessions, tmp_path):
    """Under gunicorn --preload a new worker is a fork that runs no start-up code: the journals
    of the workers it replaces are replayed by a live one, without any restart."""
    sent = send(sessions)
    directory = tmp_path / "journal"
    crash_a_worker(database_url, directory, sent.message_id, sent.tracked_url_ids[0])
    journal = EventJournal(directory, sessions, interval=0.05)
    try:
        journal.append(ClickEvent(sent.message_id, sent.tracked_url_ids[1], utcnow(), "agent", None))
        assert journal.flush()
        deadline = time.monotonic() + 30
        while len(list(directory.glob("*" + SUFFIX))) > 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        with sessions() as session:
            assert session.scalar(select(func.count(Click.id))) == 51
    finally:
        journal.close()
    assert list(directory.glob("*" + SUFFIX)) == []


def test_with_fsync_a_new_journal_file_is_on_disk_by_name_before_a_click_is_answered(
    engine, sessions, tmp_path, monkeypatch
):
    """fdatasync keeps a file's content; after a power loss the file must also still be found."""
    sent = send(sessions)
    synced_directories = []
    fsync = os.fsync

    def spy(fd: int) -> None:
        synced_directories.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    journal = EventJournal(tmp_path, sessions, fsync=True, interval=3600)
    try:
        journal.append(ClickEvent(sent.message_id, sent.tracked_url_ids[0], utcnow(), "agent", None))
        assert synced_directories == [True]
    finally:
        journal.close()
