"""Which execution each relayed message lands in, per delivery type, with time injected; and two
relays seeing the first message of a new execution at once create it once."""

from __future__ import annotations

import datetime as dt
import smtplib
import threading

from sqlalchemy import func, select

from hotclicks import db
from hotclicks.db.models import Execution, Message, TrackedUrl
from hotclicks.tokens import TokenSigner
from smtp_relay.processing import MessageProcessor

from .conftest import SECRET_KEY
from .helpers import newsletter

T0 = dt.datetime(2025, 3, 31, 22, 0, tzinfo=dt.timezone.utc)


class Clock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def relay_at(relay, now: dt.datetime) -> Clock:
    clock = Clock(now)
    relay.handler.processor.recorder.clock = clock
    return clock


def send(relay, headers: str, to: str = "ann@example.org", delivery: str = "d") -> None:
    with smtplib.SMTP(*relay.config.listen, timeout=30) as client:
        client.sendmail("news@shop.example", [to], newsletter(delivery, headers))
    relay.wait_idle()


def executions(sessions) -> list[tuple[int, int]]:
    """(execution id, its message count) for every message, in order."""
    with sessions() as session:
        return [(m.execution_id, m.id) for m in session.scalars(select(Message).order_by(Message.id))]


def execution_ids(sessions) -> list[int]:
    return [e for e, _ in executions(sessions)]


def test_one_off_one_execution_per_content_version(relay, upstream, sessions):
    relay_at(relay, T0)
    send(relay, "X-HotClicks-Version: 1\n")
    send(relay, "X-HotClicks-Version: 1\n", "bob@example.org")
    send(relay, "X-HotClicks-Version: 2\n")
    a, b, c = execution_ids(sessions)
    assert a == b != c


def test_recurring_one_execution_per_run_and_a_new_one_when_the_content_changes(relay, upstream, sessions):
    relay_at(relay, T0)
    recurring = "X-HotClicks-Type: recurring\nX-HotClicks-Run: {run}\nX-HotClicks-Version: {v}\n"
    send(relay, recurring.format(run="2025-03-31", v="1"))
    send(relay, recurring.format(run="2025-03-31", v="1"), "bob@example.org")
    send(relay, recurring.format(run="2025-03-31", v="2"))  # content updated within the run
    send(relay, recurring.format(run="2025-04-01", v="2"))  # next run
    a, b, c, d = execution_ids(sessions)
    assert a == b and len({a, c, d}) == 3


def test_recurring_without_a_run_header_a_quiet_gap_starts_a_new_run(relay, upstream, sessions):
    clock = relay_at(relay, T0)
    recurring = "X-HotClicks-Type: recurring\n"
    send(relay, recurring)
    clock.now += dt.timedelta(minutes=50)
    send(relay, recurring)  # within the quiet gap (1 hour) of the last message: same run
    clock.now += dt.timedelta(minutes=50)
    send(relay, recurring)  # still within an hour of the previous one
    clock.now += relay.config.quiet_gap + dt.timedelta(seconds=1)
    send(relay, recurring)  # an hour of silence: a new run
    a, b, c, d = execution_ids(sessions)
    assert a == b == c != d


def test_last_message_at_follows_the_messages_to_the_second_without_a_write_for_each(relay, upstream, sessions):
    """The quiet gap is measured from an execution's last message: that time is kept to the second
    (a newsletter at 100 messages a second updates the execution's row once a second)."""

    def last_message_at() -> dt.datetime:
        with sessions() as session:
            (execution,) = session.scalars(select(Execution)).all()
            return execution.last_message_at

    clock = relay_at(relay, T0)
    send(relay, "X-HotClicks-Type: recurring\n")
    clock.now = T0 + dt.timedelta(milliseconds=600)
    send(relay, "X-HotClicks-Type: recurring\n", "bob@example.org")
    assert last_message_at() == T0
    clock.now = T0 + dt.timedelta(seconds=1, milliseconds=200)
    send(relay, "X-HotClicks-Type: recurring\n", "cid@example.org")
    assert last_message_at() == T0 + dt.timedelta(seconds=1, milliseconds=200)
    # A gap measured from a time at most a second stale: a new run once it is over.
    clock.now = T0 + dt.timedelta(hours=1, seconds=2)
    send(relay, "X-HotClicks-Type: recurring\n", "dan@example.org")
    a, b, c, d = execution_ids(sessions)
    assert a == b == c != d


def test_messages_within_a_second_land_in_the_execution_their_marks_name(relay, upstream, sessions):
    """The relay remembers the executions it resolved in the last second; the marks, the period
    and the version still decide, message by message."""
    month_end = dt.datetime(2025, 3, 31, 23, 59, 59, 500_000, tzinfo=dt.timezone.utc)
    clock = relay_at(relay, month_end)
    send(relay, "X-HotClicks-Version: 1\n")
    clock.now += dt.timedelta(milliseconds=100)
    send(relay, "X-HotClicks-Version: 2\n", "bob@example.org")
    clock.now += dt.timedelta(milliseconds=100)
    send(relay, "X-HotClicks-Version: 1\n", "cid@example.org")
    receipt = "X-HotClicks-Type: transactional\n"
    send(relay, receipt, "dan@example.org", delivery="r")
    clock.now += dt.timedelta(milliseconds=300)  # April now, less than a second later
    send(relay, receipt, "eve@example.org", delivery="r")
    clock.now += dt.timedelta(milliseconds=100)
    send(relay, receipt, "fay@example.org", delivery="r")
    v1, v2, v1_again, march, april, april_again = execution_ids(sessions)
    assert v1 == v1_again != v2
    assert march != april == april_again
    with sessions() as session:
        assert session.get(Execution, april).period == "2025-04"


def test_transactional_one_execution_per_month_and_a_new_one_on_republish(relay, upstream, sessions):
    clock = relay_at(relay, T0)  # 31 March, 22:00 UTC
    transactional = "X-HotClicks-Type: transactional\nX-HotClicks-Version: {v}\n"
    send(relay, transactional.format(v="tpl-1"))
    clock.now += dt.timedelta(hours=1)
    send(relay, transactional.format(v="tpl-1"))  # same month
    send(relay, transactional.format(v="tpl-2"))  # republished template
    clock.now += dt.timedelta(hours=2)  # 1 April, 01:00 UTC: next period
    send(relay, transactional.format(v="tpl-2"))
    a, b, c, d = execution_ids(sessions)
    assert a == b and len({a, c, d}) == 3
    with sessions() as session:
        periods = [session.get(Execution, e).period for e in (a, c, d)]
    assert periods == ["2025-03", "2025-03", "2025-04"]


def test_transactional_period_can_be_a_day(relay, upstream, sessions):
    object.__setattr__(relay.config, "transactional_period", "day")  # the processor reads it per message
    clock = relay_at(relay, T0)
    send(relay, "X-HotClicks-Type: transactional\n")
    clock.now += dt.timedelta(hours=1)
    send(relay, "X-HotClicks-Type: transactional\n")
    clock.now += dt.timedelta(hours=1)  # next UTC day
    send(relay, "X-HotClicks-Type: transactional\n")
    a, b, c = execution_ids(sessions)
    assert a == b != c


def test_concurrent_first_messages_of_an_execution_create_it_once(relay_config, engine, database_url, sessions):
    """Two relays (two engines, two connections) process the first message of each new execution
    at the same moment: one execution and one set of tracked URLs each time, never two."""
    engines = [db.create_db_engine(database_url) for _ in range(2)]
    processors = [
        MessageProcessor(relay_config, db.session_factory(e), TokenSigner(SECRET_KEY), clock=Clock(T0))
        for e in engines
    ]
    try:
        for round_ in range(8):
            barrier = threading.Barrier(2)
            results: list[object] = [None, None]

            def work(i: int) -> None:
                barrier.wait(timeout=10)
                try:
                    results[i] = processors[i].prepare(
                        "news@shop.example", [f"r{i}@example.org"], newsletter(f"race-{round_}")
                    )
                except Exception as exc:  # reported below
                    results[i] = exc

            threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=60)
            assert not any(isinstance(r, Exception) for r in results), results
            assert {c.execution_id for r in results for c in r.copies} and len(
                {c.execution_id for r in results for c in r.copies}
            ) == 1
        with sessions() as session:
            assert session.scalar(select(func.count()).select_from(Execution)) == 8
            per_execution = session.execute(
                select(TrackedUrl.execution_id, func.count()).group_by(TrackedUrl.execution_id)
            ).all()
            assert [count for _, count in per_execution] == [5] * 8  # 3 HTML links + 1 text link + the trap link
            assert session.scalar(select(func.count()).select_from(Message)) == 16
    finally:
        for e in engines:
            e.dispose()
