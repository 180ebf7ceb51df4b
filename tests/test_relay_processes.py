"""``--processes N``: one listening port, N relay processes behind it, each with its own spool.

A real ``python -m smtp_relay`` supervisor: mail sent over several connections is all delivered,
one row per recipient; a relay process killed with ``kill -9`` is replaced and its successor
delivers what was waiting in its spool; SIGTERM stops them all and the supervisor exits 0."""

from __future__ import annotations

import os
import re
import signal
import smtplib
import subprocess
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from hotclicks.db.models import Message, MessageStatus, Recipient
from smtp_relay.cli import main

from .conftest import SECRET_KEY, Upstream, free_port
from .helpers import accepts, alive, cli_relay, newsletter

#: Bound on each wait.
PATIENCE = 60


def wait_until(condition, what: str, log: Path, timeout: float = PATIENCE) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} within {timeout} s: {log.read_text()}")


def relay_pids(log: Path) -> dict[int, int]:
    """The living relay process of each number, from the supervisor's log."""
    pids = {}
    for n, pid in re.findall(r"relay process (\d+) started \(pid (\d+)\)", log.read_text()):
        pids[int(n)] = int(pid)
    return pids


def send_from(connections: int, per_connection: int, port: int, recipients: int = 2) -> list[str]:
    """Send over ``connections`` concurrent connections; every recipient (all answered 250)."""
    sent: list[str] = []
    errors: list[BaseException] = []

    def client(c: int) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=PATIENCE) as smtp:
                for m in range(per_connection):
                    to = [f"c{c}-m{m}-r{r}@example.org" for r in range(recipients)]
                    smtp.sendmail("news@shop.example", to, newsletter())
                    sent.extend(to)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(PATIENCE)
    assert not errors, errors
    return sent


def rows(sessions) -> list[tuple[str, MessageStatus]]:
    with sessions() as session:
        return [tuple(row) for row in session.execute(select(Recipient.address, Message.status).join(Message.recipient))]


@pytest.fixture
def supervisor(tmp_path, engine, database_url):
    """Start ``python -m smtp_relay --processes 2``; killed in teardown if still running."""
    started: list[subprocess.Popen] = []
    port = free_port()

    def start(upstream_port: int, *flags: str) -> subprocess.Popen:
        log = tmp_path / "relay.log"
        with open(log, "wb") as output:
            process = cli_relay(
                port, ("127.0.0.1", upstream_port), database_url, tmp_path / "spool", SECRET_KEY, output,
                "--processes", "2", "--rewrite-workers", "0", *flags,
            )
        started.append(process)
        wait_until(lambda: "hotclicks-relay listening on" in log.read_text() or process.poll() is not None, "the relay did not listen", log)
        assert process.poll() is None, log.read_text()
        return process

    start.port, start.log, start.spool = port, tmp_path / "relay.log", tmp_path / "spool"  # type: ignore[attr-defined]
    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=PATIENCE)


def test_two_processes_accept_on_one_port_and_sigterm_stops_them_all(supervisor, upstream, sessions):
    process = supervisor(upstream.port)
    log = supervisor.log
    assert f"hotclicks-relay listening on 127.0.0.1:{supervisor.port} (2 processes)" in log.read_text()
    relays = relay_pids(log)
    assert sorted(relays) == [0, 1] and all(alive(pid) for pid in relays.values())

    sent = send_from(connections=6, per_connection=3, port=supervisor.port)
    wait_until(lambda: len(upstream.messages) == len(sent), "not every copy was delivered", log)
    assert sorted(r for m in upstream.messages for r in m.rcpt_tos) == sorted(sent)
    wait_until(lambda: {s for _, s in rows(sessions)} == {MessageStatus.SENT}, "not every row was sent", log)
    assert sorted(r for r, _ in rows(sessions)) == sorted(sent)  # one row per recipient

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=PATIENCE) == 0, log.read_text()
    assert not accepts(supervisor.port)
    assert not any(alive(pid) for pid in relays.values())


def test_a_relay_process_killed_with_sigkill_is_replaced_and_its_spool_delivered(supervisor, sessions):
    upstream_port = free_port()  # nothing there yet: accepted mail waits in the spools
    process = supervisor(upstream_port, "--upstream-timeout", "5")
    log, spool = supervisor.log, supervisor.spool
    sent = send_from(connections=6, per_connection=2, port=supervisor.port, recipients=1)
    waiting = {n: list((spool / str(n) / "queue").glob("*.msg")) for n in (0, 1)}
    assert sum(len(files) for files in waiting.values()) == len(sent)
    victim = max(waiting, key=lambda n: len(waiting[n]))
    old = relay_pids(log)[victim]

    os.kill(old, signal.SIGKILL)
    wait_until(lambda: relay_pids(log)[victim] != old, "no relay replaced the killed one", log)
    assert "died (signal 9)" in log.read_text()
    successor = relay_pids(log)[victim]
    wait_until(lambda: alive(successor) and accepts(supervisor.port), "the successor did not start", log)

    upstream = Upstream()
    upstream.port = upstream_port
    upstream.start()
    try:
        assert main(["retry", "--spool-dir", str(spool)]) == 0  # no waiting for the retry delay
        wait_until(lambda: len(upstream.messages) >= len(sent), "the spools were not delivered", log)
        assert sorted(r for m in upstream.messages for r in m.rcpt_tos) == sorted(sent)
        wait_until(lambda: {s for _, s in rows(sessions)} == {MessageStatus.SENT}, "not every row was sent", log)
        assert not list((spool / str(victim) / "queue").glob("*.msg"))
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=PATIENCE) == 0, log.read_text()
        upstream.stop()


def test_a_single_relays_spool_is_handed_to_the_processes(supervisor, upstream):
    """Mail a single relay left in ``--spool-dir`` goes out once the processes start."""
    top = supervisor.spool / "queue"
    top.mkdir(parents=True)
    (top / "20260101T000000000000-aaaaaaaaaa.msg").write_bytes(
        b'{"id":"20260101T000000000000-aaaaaaaaaa","mail_from":"news@shop.example",'
        b'"recipients":["left@example.org"],"accepted_at":"2026-01-01T00:00:00+00:00"}\n'
        + newsletter()
    )
    process = supervisor(upstream.port)
    wait_until(lambda: len(upstream.messages) == 1, "the single relay's copy was not delivered", supervisor.log)
    assert upstream.messages[0].rcpt_tos == ["left@example.org"]
    assert not list(top.glob("*.msg"))
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=PATIENCE) == 0
