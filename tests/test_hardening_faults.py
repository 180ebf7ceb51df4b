"""Faults around the relay, quick versions of ``stress/relay_faults.py``: after each, every
message answered 250 has reached the upstream.

The upstream goes away and comes back on the same port, answers 4xx then 250; SQLite is locked
by another connection; the relay process is killed with SIGKILL again and again while a few
hundred messages are sent. Clients behave as MTAs do: after a 4xx or no answer, they resend.
"""

from __future__ import annotations

import random
import re
import signal
import smtplib
import sqlite3
import threading
import time
from collections import Counter

import pytest
from sqlalchemy import func, select

from hotclicks import db
from hotclicks.errors import MimeError
from hotclicks.db.models import Message, MessageStatus, RelayIncident
from smtp_relay import RelayController
from smtp_relay.handler import REPLY_DATABASE_UNAVAILABLE, REPLY_LOCAL_ERROR

from .conftest import TEST_DATABASE_URL, Upstream
from .helpers import newsletter
from .test_relay_spool import relay_process  # noqa: F401 (a fixture)


def message_for(recipient: str) -> bytes:
    """The newsletter with a Message-ID of its own: duplicates are counted by it."""
    return newsletter().replace(b"<spring-1@shop.example>", f"<{recipient}>".encode())


def send(listen, recipient: str, timeout: float = 30) -> str:
    """One message; its answer as "250", "451 ..." or "no answer"."""
    try:
        with smtplib.SMTP(*listen, timeout=timeout) as client:
            client.sendmail("news@shop.example", [recipient], message_for(recipient))
    except smtplib.SMTPResponseException as exc:
        return f"{exc.smtp_code} {exc.smtp_error.decode()}"
    except (OSError, smtplib.SMTPException):
        return "no answer"
    return "250"


def wait_for(condition, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def delivered(upstream: Upstream) -> Counter:
    """Message-ID -> how many times the upstream received it."""
    return Counter(m.data.split(b"Message-ID: <", 1)[1].split(b">", 1)[0].decode() for m in list(upstream.messages))


def test_upstream_down_then_back_on_the_same_port_loses_nothing(relay, upstream, sessions):
    upstream.stop()
    accepted = [r for r in (f"down{i}@example.org" for i in range(20)) if send(relay.config.listen, r) == "250"]
    relay.wait_idle()
    assert len(accepted) == 20 and upstream.messages == []
    with sessions() as session:
        assert session.scalar(select(func.count()).where(Message.status == MessageStatus.DEFERRED)) == 20

    back = Upstream()
    back.port = upstream.port
    back.start()
    try:
        assert relay.retry_now() == 20
        relay.wait_idle()
        assert delivered(back) == Counter(accepted)
        with sessions() as session:
            assert set(session.scalars(select(Message.status))) == {MessageStatus.SENT}
    finally:
        back.stop()


def test_upstream_4xx_then_250_mid_stream_loses_nothing(relay, upstream):
    upstream.sink.reply = "451 4.3.0 try again later"
    accepted = []
    for i in range(30):
        if i == 15:
            relay.wait_idle()
            upstream.sink.reply = None
        recipient = f"t{i}@example.org"
        assert send(relay.config.listen, recipient) == "250"
        accepted.append(recipient)
    relay.wait_idle()
    assert relay.retry_now() == 15
    relay.wait_idle()
    assert delivered(upstream) == Counter(accepted)


@pytest.mark.skipif(bool(TEST_DATABASE_URL), reason="SQLite's write lock; the suite runs on PostgreSQL")
def test_sqlite_locked_answers_451_or_waits_and_never_loses_a_250(engine, relay_config, upstream, monkeypatch):
    monkeypatch.setattr(db, "SQLITE_BUSY_TIMEOUT", 1)  # wait 1 s for the lock, not 30
    relay = RelayController(relay_config)
    relay.start()
    try:
        lock = sqlite3.connect(
            relay_config.database_url.removeprefix("sqlite:///"), isolation_level=None, check_same_thread=False
        )
        lock.execute("BEGIN EXCLUSIVE")
        released = threading.Timer(4, lock.execute, ["COMMIT"])
        released.start()
        answers: dict[str, list[str]] = {}
        try:
            for i in range(12):  # about 4 s of 451s, then 250s
                recipient = f"l{i}@example.org"
                answers[recipient] = [send(relay_config.listen, recipient)]
        finally:
            released.join()
            lock.close()
        refused = [r for r, a in answers.items() if a[-1] != "250"]
        assert {answers[r][-1] for r in refused} <= {REPLY_DATABASE_UNAVAILABLE}
        assert refused, "the lock made no transaction wait past the busy timeout: nothing tested"
        for recipient in refused:  # as an MTA does after a 4xx
            answers[recipient].append(send(relay_config.listen, recipient))
        assert all(a[-1] == "250" for a in answers.values())
        relay.wait_idle()
        assert delivered(upstream) == Counter(list(answers))
        engine = relay.handler.database.engine
        with engine.connect() as connection:  # the refused ones left no row behind
            assert connection.scalar(select(func.count()).select_from(Message)) == len(answers)
    finally:
        relay.stop()
        relay.handler.database.dispose()


def test_sigkill_at_random_moments_loses_no_message_answered_250(relay_process):  # noqa: F811
    upstream = Upstream()
    upstream.port = relay_process.upstream_port
    upstream.start()
    rng = random.Random(8)
    process = relay_process()
    listen = ("127.0.0.1", relay_process.port)
    accepted: list[str] = []
    attempts: Counter = Counter()
    kills = 0
    stop = threading.Event()

    def client(numbers: range) -> None:
        for i in numbers:
            recipient = f"k{i}@example.org"
            while not stop.is_set():
                attempts[recipient] += 1
                if send(listen, recipient, timeout=10) == "250":
                    accepted.append(recipient)
                    break
                time.sleep(0.1)  # no answer or 4xx: resend

    try:
        clients = [threading.Thread(target=client, args=(range(n, 240, 3),)) for n in range(3)]
        for thread in clients:
            thread.start()
        while any(t.is_alive() for t in clients) and kills < 6:
            time.sleep(rng.uniform(0.3, 2.0))
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
            kills += 1
            process = relay_process()
        for thread in clients:
            thread.join(timeout=120)
        stop.set()
        assert len(accepted) == 240 and kills >= 2
        assert wait_for(lambda: set(accepted) <= set(delivered(upstream)), 90), "messages answered 250 were lost"
        got = delivered(upstream)
        # A copy is sent twice only if the relay died between the upstream's 250 and the removal
        # of its spool file, or if the client resent a message it got no answer for.
        duplicates = [r for r, n in got.items() if n > 1]
        in_window = [r for r in duplicates if attempts[r] == 1]
        print(
            f"kills={kills} accepted={len(accepted)} delivered={len(got)} duplicates={len(duplicates)} "
            f"(of which sent once by the client: {len(in_window)}) resent={sum(n > 1 for n in attempts.values())}"
        )
        assert set(got) == set(accepted)
    finally:
        stop.set()
        upstream.stop()


@pytest.mark.skipif(not TEST_DATABASE_URL, reason="PostgreSQL restarts: set HOTCLICKS_TEST_DATABASE_URL to run it")
def test_postgres_restarted_under_load_loses_no_message_answered_250(capsys):
    """The stress campaign for 10 s, on a PostgreSQL cluster of its own (never the suite's)."""
    import argparse
    import shutil
    import tempfile
    from pathlib import Path

    from stress.relay_faults import PG_BIN, postgres_restart

    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"no PostgreSQL binaries in {PG_BIN} (set HOTCLICKS_PG_BIN)")
    workdir = Path(tempfile.mkdtemp(prefix="hc-pg-"))  # not under pytest's tmp: the postgres user reads it
    try:
        assert postgres_restart(workdir, argparse.Namespace(pg_seconds=10, seed=3)) is True
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result = capsys.readouterr().out
    assert "lost=0" in result and re.search(r"restarts=(fast|immediate)x", result), result


def test_a_relay_bug_on_one_message_answers_451_not_500(relay, upstream, monkeypatch):
    """A 500 would make the sender bounce the message; a 451 keeps it with the sender."""
    def bug(*args):
        raise RuntimeError("a bug this message runs into")

    with monkeypatch.context() as patched:
        patched.setattr(relay.handler.processor, "prepare", bug)
        assert send(relay.config.listen, "bug@example.org") == REPLY_LOCAL_ERROR
    assert send(relay.config.listen, "bug@example.org") == "250"  # the sender's retry
    relay.wait_idle()
    assert delivered(upstream) == Counter(["bug@example.org"])


def test_a_bug_after_the_rows_are_written_answers_451_and_leaves_no_row(relay, upstream, sessions, monkeypatch):
    """The sender keeps a message answered 451 and sends it again: its first rows must not stay
    behind as "queued" copies that never go anywhere."""
    def bug(*args):
        raise RuntimeError("a bug met while rewriting a copy")

    with monkeypatch.context() as patched:
        patched.setattr(relay.handler.processor.renderer, "render", bug)
        assert send(relay.config.listen, "late-bug@example.org") == REPLY_LOCAL_ERROR
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Message)) == 0
    assert send(relay.config.listen, "late-bug@example.org") == "250"
    relay.wait_idle()
    assert delivered(upstream) == Counter(["late-bug@example.org"])
    with sessions() as session:
        assert session.scalars(select(Message.status)).all() == [MessageStatus.SENT]


def test_a_copy_that_cannot_be_rewritten_goes_untracked_with_an_incident(relay, upstream, sessions, monkeypatch):
    def unreadable(draft, message_ids, targets):
        return [(draft.data, MimeError("a part this copy cannot decode")) for _ in message_ids]

    monkeypatch.setattr(relay.handler.processor.renderer, "render", unreadable)
    assert send(relay.config.listen, "plain@example.org") == "250"
    relay.wait_idle()
    assert delivered(upstream) == Counter(["plain@example.org"])
    assert b"https://blog.example/spring" in upstream.messages[0].data  # its links as they were
    with sessions() as session:
        (message_id,) = session.scalars(select(Message.id)).all()
        (incident,) = session.scalars(select(RelayIncident)).all()
        assert (incident.kind, incident.message_id, incident.recipients) == (
            "forwarded-unchanged", message_id, "plain@example.org"
        )
        assert "a part this copy cannot decode" in incident.reason
