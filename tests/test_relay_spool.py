"""The relay never loses an accepted message: spool, retries, give-up, 451s, and kill -9.

250 means "fsync'd in the spool", so each test waits for the relay to be idle before looking at
what the upstream received.
"""

from __future__ import annotations

import datetime as dt
import errno
import signal
import smtplib
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from hotclicks import db
from hotclicks.db.models import Message, MessageStatus, RelayIncident
from smtp_relay.cli import main
from smtp_relay.handler import REPLY_DATABASE_UNAVAILABLE, REPLY_SPOOL_FULL
from smtp_relay.spool import iter_entries

from .conftest import SECRET_KEY, Upstream, free_port
from .helpers import accepts, cli_relay, newsletter



def send(listen, message: bytes, recipients=("ann@example.org",), subject: str | None = None) -> None:
    if subject is not None:
        message = message.replace(b"Subject: Spring news", f"Subject: {subject}".encode())
    with smtplib.SMTP(*listen, timeout=30) as client:
        client.sendmail("news@shop.example", list(recipients), message)


def statuses(sessions) -> list[tuple[MessageStatus, str | None]]:
    with sessions() as session:
        return [(m.status, m.status_reply) for m in session.scalars(select(Message).order_by(Message.id))]


def spooled(relay) -> list[Path]:
    return sorted((Path(relay.config.spool_dir) / "queue").glob("*.msg"))


def test_a_250_means_the_copy_is_in_the_spool_with_the_bytes_to_forward(relay, upstream, sessions):
    upstream.stop()
    send(relay.config.listen, newsletter())
    relay.wait_idle()
    (path,) = spooled(relay)
    header, data = path.read_bytes().split(b"\n", 1)
    assert b'"recipients":["ann@example.org"]' in header
    assert b"/t/c/" in data and b"X-HotClicks" not in data
    assert statuses(sessions)[0][0] is MessageStatus.DEFERRED


def test_an_upstream_4xx_defers_and_a_retry_delivers_once_it_accepts(relay, upstream, sessions):
    upstream.sink.reply = "451 4.3.0 try later"
    send(relay.config.listen, newsletter(), ["ann@example.org", "bob@example.org"])
    relay.wait_idle()
    assert upstream.messages == []
    assert statuses(sessions) == [(MessageStatus.DEFERRED, "451 4.3.0 try later")] * 2

    upstream.sink.reply = None
    assert relay.retry_now() == 2
    relay.wait_idle()
    assert sorted(m.rcpt_tos[0] for m in upstream.messages) == ["ann@example.org", "bob@example.org"]
    assert [s for s, _ in statuses(sessions)] == [MessageStatus.SENT] * 2
    assert spooled(relay) == []


def test_an_upstream_5xx_fails_that_recipient_with_the_reply(relay, upstream, sessions):
    upstream.sink.reply = "550 5.1.1 no such user"
    send(relay.config.listen, newsletter())
    relay.wait_idle()
    assert statuses(sessions) == [(MessageStatus.FAILED, "550 5.1.1 no such user")]
    assert spooled(relay) == []


def test_a_copy_still_deferred_after_the_maximum_age_is_failed_with_the_last_reply(relay, upstream, sessions):
    upstream.stop()
    send(relay.config.listen, newsletter())
    relay.wait_idle()
    deliverer = relay.handler.deliverer
    later = dt.datetime.now(dt.timezone.utc) + relay.config.max_queue_age + dt.timedelta(minutes=1)
    deliverer.clock = lambda: later  # five days later, without sleeping
    relay.retry_now()
    relay.wait_idle()
    ((status, reply),) = statuses(sessions)
    assert status is MessageStatus.FAILED
    assert reply.startswith("given up after 2 attempts") and "unreachable" in reply
    # The copy is gone; its bounce to the sender, from <>, waits for the upstream.
    (bounce,) = iter_entries(Path(relay.config.spool_dir) / "queue")
    assert (bounce.mail_from, bounce.recipients, bounce.message_id) == ("", ["news@shop.example"], None)
    with sessions() as session:
        (incident,) = session.scalars(select(RelayIncident).where(RelayIncident.kind == "given-up")).all()
        assert incident.recipients == "ann@example.org"


def test_a_full_spool_disk_answers_451_and_keeps_no_row(relay, upstream, sessions, monkeypatch):
    def full(entries):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(relay.handler.spool, "store", full)
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(relay.config.listen, newsletter())
    assert f"{refused.value.smtp_code} {refused.value.smtp_error.decode()}" == REPLY_SPOOL_FULL
    relay.wait_idle()
    assert statuses(sessions) == []
    assert upstream.messages == []


def test_an_unreachable_database_answers_451(relay, upstream, monkeypatch):
    unreachable = db.create_db_engine(f"postgresql://nobody@127.0.0.1:{free_port()}/none", connect_args={"connect_timeout": 2})
    monkeypatch.setattr(relay.handler.processor.recorder, "sessions", db.session_factory(unreachable))
    try:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            send(relay.config.listen, newsletter())
        assert f"{refused.value.smtp_code} {refused.value.smtp_error.decode()}" == REPLY_DATABASE_UNAVAILABLE
        assert upstream.messages == []
    finally:
        unreachable.dispose()


def test_8bitmime_smtputf8_size_and_recipient_limits_answer_as_an_mta_does(engine, relay_config, upstream):
    from dataclasses import replace

    from smtp_relay import RelayController

    config = replace(relay_config, max_message_size=200_000, max_recipients=2)
    relay = RelayController(config)
    relay.start()
    try:
        with smtplib.SMTP(*config.listen, timeout=30) as client:
            client.ehlo()
            assert client.has_extn("8bitmime") and client.has_extn("smtputf8")
            assert client.has_extn("size")
            with pytest.raises(smtplib.SMTPSenderRefused) as too_big:
                client.sendmail("a@example.org", ["b@example.org"], b"Subject: x\r\n\r\n" + b"x" * 300_000)
            assert too_big.value.smtp_code == 552
        with smtplib.SMTP(*config.listen, timeout=30) as client:
            client.ehlo()
            client.mail("a@example.org")
            assert client.rcpt("b@example.org")[0] == 250
            assert client.rcpt("c@example.org")[0] == 250
            assert client.rcpt("d@example.org")[0] == 452
        body = "Subject: café\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nDéjà vu\r\n".encode()
        with smtplib.SMTP(*config.listen, timeout=30) as client:
            client.sendmail("zoë@example.org", ["jürgen@example.org"], body, mail_options=["SMTPUTF8", "BODY=8BITMIME"])
        relay.wait_idle()
        (received,) = upstream.messages
        assert received.mail_from == "zoë@example.org" and received.data == body
    finally:
        relay.stop()
        relay.handler.database.dispose()


# -- kill -9 ---------------------------------------------------------------------------------------


def _wait_listening(port: int, process: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the relay exited with {process.returncode}: {log.read_text()}")
        if accepts(port):
            return
        time.sleep(0.05)
    raise AssertionError(f"the relay did not listen within {timeout} s: {log.read_text()}")


@pytest.fixture
def relay_process(tmp_path, engine, database_url):
    """Start ``python -m smtp_relay`` as a real process; every process is killed in teardown."""
    processes: list[subprocess.Popen] = []
    port = free_port()
    upstream_port = free_port()
    spool = tmp_path / "spool"

    def start() -> subprocess.Popen:
        log = tmp_path / f"relay-{len(processes)}.log"
        with open(log, "wb") as output:
            process = _popen(output)
        processes.append(process)
        _wait_listening(port, process, log)
        return process

    def _popen(output) -> subprocess.Popen:
        return cli_relay(
            port, ("127.0.0.1", upstream_port), database_url, spool, SECRET_KEY, output, "--upstream-timeout", "5"
        )

    start.port, start.upstream_port, start.spool = port, upstream_port, spool  # type: ignore[attr-defined]
    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def test_a_relay_killed_with_sigkill_delivers_every_accepted_message_after_restart(
    relay_process, sessions, capsys
):
    first = relay_process()
    listen = ("127.0.0.1", relay_process.port)
    # The upstream is down: every accepted message waits in the spool, some being retried.
    subjects = [f"message {i}" for i in range(6)]
    for i, subject in enumerate(subjects):
        send(listen, newsletter(), [f"r{i}@example.org"], subject=subject)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)

    assert main(["queue", "--spool-dir", str(relay_process.spool)]) == 0
    assert "6 copies in the spool" in capsys.readouterr().out

    upstream = Upstream()
    upstream.port = relay_process.upstream_port  # the address the relay forwards to
    upstream.start()
    try:
        relay_process()
        assert main(["retry", "--spool-dir", str(relay_process.spool)]) == 0
        deadline = time.monotonic() + 30
        while len(upstream.messages) < len(subjects) and time.monotonic() < deadline:
            time.sleep(0.05)
        got = sorted(
            (m.rcpt_tos[0], m.data.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0].decode())
            for m in upstream.messages
        )
        assert got == [(f"r{i}@example.org", s) for i, s in enumerate(subjects)]
        deadline = time.monotonic() + 30
        while {s for s, _ in statuses(sessions)} != {MessageStatus.SENT} and time.monotonic() < deadline:
            time.sleep(0.05)
        assert {s for s, _ in statuses(sessions)} == {MessageStatus.SENT}
    finally:
        upstream.stop()


def test_kill_9_while_messages_flow_loses_none_that_was_answered_250(relay_process, sessions):
    upstream = Upstream()
    upstream.port = relay_process.upstream_port
    upstream.start()
    try:
        first = relay_process()
        listen = ("127.0.0.1", relay_process.port)
        accepted = []
        for i in range(40):
            if i == 12:
                first.send_signal(signal.SIGKILL)  # mid-stream: copies spooled, some not yet forwarded
                first.wait(timeout=10)
                break
            send(listen, newsletter(), [f"r{i}@example.org"], subject=f"message {i}")
            accepted.append(f"r{i}@example.org")
        relay_process()
        deadline = time.monotonic() + 30
        while not set(accepted) <= {m.rcpt_tos[0] for m in upstream.messages} and time.monotonic() < deadline:
            time.sleep(0.05)
        assert set(accepted) <= {m.rcpt_tos[0] for m in upstream.messages}
    finally:
        upstream.stop()
