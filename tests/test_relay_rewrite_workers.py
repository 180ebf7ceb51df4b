"""Rewriting in worker processes (``--rewrite-workers``): the same copies as in the relay process,
and never a worker left behind: not after SIGTERM, not after ``kill -9`` of the relay, and a
worker that dies is replaced without losing the transaction it was rendering."""

from __future__ import annotations

import os
import signal
import smtplib
import subprocess
import time
from pathlib import Path

import pytest

from hotclicks.errors import MimeError
from smtp_relay.decide import LinkOptions, scan_message
from smtp_relay.render import CopyMaker, CopyRenderer, Draft

from .conftest import SECRET_KEY, free_port
from .helpers import BASE_URL, accepts, alive, cli_relay, newsletter, tracked_hrefs

PATIENCE = 60

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads child processes from /proc (Linux)")

MAKER = CopyMaker(SECRET_KEY, (), BASE_URL, True, LinkOptions(tracked_prefixes=(BASE_URL + "/",)))


def descendants(pid: int) -> set[int]:
    """Every living process below ``pid``, from /proc."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        for children in Path(f"/proc/{parent}/task").glob("*/children"):
            try:
                for child in children.read_text().split():
                    if int(child) not in found:
                        found.add(int(child))
                        todo.append(int(child))
            except OSError:  # the task ended meanwhile
                pass
    return found


def wait_until(condition, timeout: float = PATIENCE) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def targets_of(message: bytes) -> dict[tuple[str, str], tuple[int, str]]:
    _, scanned = scan_message(message, MAKER.options)
    return {(s.name, link.key): (100 + i, link.url) for s in scanned for i, link in enumerate(s.links)}


def draft_of(message: bytes) -> Draft:
    parsed, scanned = scan_message(message, MAKER.options)
    return Draft(message, parsed, scanned)


def test_a_worker_renders_the_very_bytes_the_relay_process_renders():
    message = newsletter()
    draft, targets = draft_of(message), targets_of(message)
    here = CopyRenderer(MAKER, workers=0).render(draft, [7, 8], targets)
    pool = CopyRenderer(MAKER, workers=1)
    try:
        there = pool.render(draft, [7, 8], targets)
    finally:
        pool.stop()
    assert there == here
    assert here[0] != here[1]  # each recipient its own tokens
    assert len(tracked_hrefs(here[0][0])) >= 2


def test_a_part_that_cannot_be_encoded_comes_back_as_its_reason():
    message = (
        b"From: news@shop.example\r\nX-HotClicks-Delivery: latin\r\n"
        b"Content-Type: text/plain; charset=iso-8859-1\r\n\r\nSee https://shop.example/a\r\n"
    )
    # A tracked URL with a character that ISO-8859-1 does not have cannot be written in the part.
    unwritable = CopyMaker(SECRET_KEY, (), "https://t.example.com/\u4e2d", True, MAKER.options)
    renderer = CopyRenderer(unwritable, workers=1)
    try:
        ((data, error),) = renderer.render(draft_of(message), [7], targets_of(message))
    finally:
        renderer.stop()
    assert isinstance(error, MimeError) and "cannot encode" in str(error)
    assert data == message  # its links as they were


def test_a_dead_worker_is_replaced_and_its_transaction_rendered_anyway():
    message = newsletter()
    draft, targets = draft_of(message), targets_of(message)
    renderer = CopyRenderer(MAKER, workers=1)
    try:
        renderer.start()
        first = renderer._get_pool().submit(os.getpid).result()
        os.kill(first, signal.SIGKILL)
        assert wait_until(lambda: not alive(first), 10)
        expected = CopyRenderer(MAKER, workers=0).render(draft, [9], targets)
        assert renderer.render(draft, [9], targets) == expected
        assert renderer.render(draft, [9], targets) == expected  # with a new worker
        assert first not in _pool_pids(renderer)
    finally:
        renderer.stop()


def test_workers_that_cannot_start_leave_the_rewriting_to_the_relay_process(monkeypatch, caplog):
    message = newsletter()
    renderer = CopyRenderer(MAKER, workers=1)

    def no_processes(*args, **kwargs):
        raise OSError("function not implemented: no /dev/shm here")

    monkeypatch.setattr("smtp_relay.render.ProcessPoolExecutor", no_processes)
    renderer.start()
    assert renderer.workers == 0
    assert "rewrite workers could not start" in caplog.text
    expected = CopyRenderer(MAKER, workers=0).render(draft_of(message), [5], targets_of(message))
    assert renderer.render(draft_of(message), [5], targets_of(message)) == expected


def _pool_pids(renderer: CopyRenderer) -> set[int]:
    pool = renderer._pool
    return set(pool._processes) if pool is not None else set()  # type: ignore[attr-defined]


def _start_relay(database_url: str, upstream, tmp_path: Path, port: int) -> subprocess.Popen:
    with open(tmp_path / "relay.log", "wb") as log:
        return cli_relay(
            port, (upstream.hostname, upstream.port), database_url, tmp_path / "spool", SECRET_KEY, log,
            "--rewrite-workers", "1",
        )


def _send(port: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=PATIENCE) as client:
        client.sendmail("news@shop.example", ["ann@example.org"], newsletter())


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_no_worker_outlives_the_relay(engine, database_url, upstream, tmp_path, how):
    port = free_port()
    relay = _start_relay(database_url, upstream, tmp_path, port)
    try:
        assert wait_until(lambda: accepts(port)), (tmp_path / "relay.log").read_text()
        _send(port)
        assert wait_until(lambda: len(upstream.messages) == 1)
        (received,) = upstream.messages
        assert len(tracked_hrefs(received.data)) >= 2  # rewritten (by the worker)
        workers = descendants(relay.pid)
        assert workers, "the relay started no worker process"
        relay.send_signal(getattr(signal, how))
        assert relay.wait(PATIENCE) == (0 if how == "SIGTERM" else -signal.SIGKILL)
        # A worker notices within a second or two that its relay is gone.
        assert wait_until(lambda: not any(alive(pid) for pid in workers), 15), [
            pid for pid in workers if alive(pid)
        ]
    finally:
        if relay.poll() is None:
            relay.kill()
            relay.wait()
