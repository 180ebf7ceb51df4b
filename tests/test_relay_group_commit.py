"""Concurrent transactions share database commits and spool directory fsyncs, and none of them is
done (so none answered 250) before what holds its data is durable; one failing transaction does not
fail the others of its batch."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import event, select

from hotclicks import db
from hotclicks.db.models import Message, Recipient
from hotclicks.tokens import TokenSigner
from smtp_relay import recorder, spool as spool_module
from smtp_relay.processing import MessageProcessor
from smtp_relay.spool import Spool, SpoolEntry, new_id

from .conftest import SECRET_KEY
from .helpers import newsletter


def run_all(work, count: int) -> list[object]:
    results: list[object] = [None] * count

    def one(i: int) -> None:
        try:
            results[i] = work(i)
        except Exception as exc:  # reported by the caller
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


@pytest.fixture
def processor(relay_config, engine):
    return MessageProcessor(relay_config, db.session_factory(engine), TokenSigner(SECRET_KEY))


def test_transactions_waiting_for_a_commit_are_written_together_and_return_only_after_it(processor, engine, sessions, monkeypatch):
    commits: list[float] = []
    event.listen(engine, "commit", lambda connection: commits.append(time.monotonic()))
    batches: list[int] = []
    write = processor.recorder._write

    def slow_first_write(jobs):
        batches.append(len(jobs))
        if len(batches) == 1:  # hold the first commit until the others queue behind it
            deadline = time.monotonic() + 20
            while len(processor.recorder._waiting) < 5 and time.monotonic() < deadline:
                time.sleep(0.01)
        return write(jobs)

    monkeypatch.setattr(processor.recorder, "_write", slow_first_write)
    finished: list[float] = []

    def work(i: int):
        if i:
            time.sleep(0.2)  # let the first one lead
        prepared = processor.prepare("news@shop.example", [f"r{i}@example.org"], newsletter())
        finished.append(time.monotonic())
        return prepared

    results = run_all(work, 6)
    assert not [r for r in results if isinstance(r, Exception)], results
    assert batches == [1, 5]
    assert len(commits) == 2
    assert min(finished) > commits[0]  # nobody returned before the first commit
    assert sorted(finished)[1] > commits[1]  # the five of the batch after the second
    with sessions() as session:
        logged = {
            m.id: session.get(Recipient, m.recipient_id).address for m in session.scalars(select(Message))
        }
    for i, prepared in enumerate(results):
        (copy,) = prepared.copies
        assert logged[copy.message_id] == f"r{i}@example.org"
        assert copy.recipients == [f"r{i}@example.org"]


def test_a_failing_transaction_fails_alone_and_the_rest_of_its_batch_is_recorded(processor, sessions, monkeypatch):
    facts = recorder.recipient_facts

    def refuse_bad(connection, addresses, external_id=None):
        if "bad@example.org" in addresses:
            raise RuntimeError("cannot record bad@example.org")
        return facts(connection, addresses, external_id)

    monkeypatch.setattr(recorder, "recipient_facts", refuse_bad)
    write = processor.recorder._write
    batches: list[int] = []

    def slow_first_write(jobs):
        batches.append(len(jobs))
        if len(batches) == 1:
            deadline = time.monotonic() + 20
            while len(processor.recorder._waiting) < 3 and time.monotonic() < deadline:
                time.sleep(0.01)
        return write(jobs)

    monkeypatch.setattr(processor.recorder, "_write", slow_first_write)
    addresses = ["first@example.org", "ann@example.org", "bad@example.org", "bob@example.org"]

    def work(i: int):
        if i:
            time.sleep(0.2)
        return processor.prepare("news@shop.example", [addresses[i]], newsletter())

    results = run_all(work, 4)
    assert isinstance(results[2], RuntimeError)
    assert batches[:2] == [1, 3]  # the batch of three failed, then each was tried alone
    with sessions() as session:
        logged = sorted(session.get(Recipient, m.recipient_id).address for m in session.scalars(select(Message)))
    assert logged == ["ann@example.org", "bob@example.org", "first@example.org"]


def test_a_batch_interrupted_by_something_else_than_an_exception_leaves_no_one_waiting(processor, monkeypatch):
    def interrupted(jobs):
        raise KeyboardInterrupt

    monkeypatch.setattr(processor.recorder, "_write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        processor.prepare("news@shop.example", ["ann@example.org"], newsletter())
    assert not processor.recorder._leading and processor.recorder._waiting == []


def test_concurrent_spool_stores_share_directory_fsyncs_each_returning_after_one_covering_it(tmp_path, monkeypatch):
    spool = Spool(tmp_path / "spool")
    spool.open()
    fsyncs: list[tuple[float, set[str]]] = []  # (finished at, files present when it began)
    real = spool_module._fsync_dir

    def slow_fsync(path: Path) -> None:
        present = {p.name for p in path.iterdir()}
        time.sleep(0.05)
        real(path)
        fsyncs.append((time.monotonic(), present))

    monkeypatch.setattr(spool_module, "_fsync_dir", slow_fsync)

    def work(i: int):
        entry = SpoolEntry(id=new_id(), mail_from="a@example.org", recipients=[f"r{i}@example.org"], accepted_at="x", data=b"x")
        spool.store([entry])
        return entry.id + ".msg", time.monotonic()

    results = run_all(work, 12)
    spool.close()
    assert not [r for r in results if isinstance(r, Exception)], results
    assert len(fsyncs) < 12
    for name, returned in results:
        assert any(name in present and done <= returned for done, present in fsyncs), name


def test_a_failing_directory_fsync_fails_its_store_and_the_next_store_syncs_again(tmp_path, monkeypatch):
    spool = Spool(tmp_path / "spool")
    spool.open()
    calls = []

    def failing_once(path: Path) -> None:
        calls.append(path)
        if len(calls) == 1:
            raise OSError(5, "I/O error")

    monkeypatch.setattr(spool_module, "_fsync_dir", failing_once)
    first = SpoolEntry(id=new_id(), mail_from="a@example.org", recipients=["a@example.org"], accepted_at="x", data=b"x")
    with pytest.raises(OSError):
        spool.store([first])
    assert list(spool.entries()) == []  # taken back: that transaction is answered 451
    second = SpoolEntry(id=new_id(), mail_from="a@example.org", recipients=["b@example.org"], accepted_at="x", data=b"y")
    spool.store([second])
    assert len(calls) == 2
    assert [e.id for e in spool.entries()] == [second.id]
    spool.close()


def test_a_failed_transaction_keeps_no_rows_and_teaches_the_caches_nothing(processor, sessions, monkeypatch):
    """A batch that fails as a whole (the database is gone) leaves nothing behind."""
    def broken(connection, rows):
        raise RuntimeError("insert failed")

    monkeypatch.setattr(recorder, "insert_messages", broken)
    with pytest.raises(RuntimeError):
        processor.prepare("news@shop.example", ["ann@example.org"], newsletter())
    with sessions() as session:
        assert session.scalars(select(Message)).all() == []
        assert session.scalars(select(Recipient)).all() == []
    assert processor.recorder._known == {} and processor.recorder._deliveries == {}
