"""Where the roll-up runs in a Flask app: a thread of each process, ``flask hotclicks roll-up``,
never a report GET (the reports read the aggregates plus the live tail: the same figures)."""

from __future__ import annotations

import datetime as dt
import re
import threading
import time

from flask import Flask
from sqlalchemy import event, func, select, update

from flask_hotclicks import HotClicks, get_state
from hotclicks.db import rollup, stats
from hotclicks.db.models import Click, Execution, LinkStats, Message, Open, RollupState, utcnow

from .conftest import SECRET_KEY
from .helpers import BASE_URL
from .test_reports import seed

#: A report's JSON, CSV and pages: what a user reads, before and after a roll-up.
REPORTS = [
    "/hotclicks/",
    "/hotclicks/api/deliveries",
    "/hotclicks/deliveries.csv",
    "/hotclicks/deliveries/spring-news",
    "/hotclicks/api/deliveries/spring-news",
    "/hotclicks/deliveries/spring-news/executions.csv",
    "/hotclicks/deliveries/spring-news/urls.csv",
    "/hotclicks/deliveries/spring-news/urls.csv?machine=1",
    "/hotclicks/deliveries/spring-news/hot-clicks",
    "/hotclicks/api/deliveries/spring-news/hot-clicks",
    "/hotclicks/api/deliveries/spring-news/hot-clicks?measure=unique",
    "/hotclicks/api/deliveries/spring-news/hot-clicks?machine=1",
    "/hotclicks/api/deliveries/spring-news/hot-clicks?device=unknown",
    "/hotclicks/deliveries/spring-news/hot-clicks?device=unknown&machine=1",
    "/hotclicks/deliveries/spring-news/hot-clicks.csv",
    "/hotclicks/api/recipients",
]


def _reports(client) -> dict[str, str]:
    answers = {}
    for path in REPORTS:
        response = client.get(path)
        assert response.status_code == 200, (path, response.data[:300])
        answers[path] = response.get_data(as_text=True)
    return answers


def _state_rows(sessions) -> list[tuple]:
    with sessions() as session:
        return [
            (s.name, s.watermark, s.pending_upto, s.pending_at, s.updated_at)
            for s in session.scalars(select(RollupState).order_by(RollupState.name))
        ]


def _settle(sessions) -> None:
    """Age the noted rows past the settle delay, as a minute of waiting would."""
    with sessions.begin() as session:
        session.execute(update(RollupState).values(pending_at=utcnow() - dt.timedelta(seconds=rollup.SETTLE_SECONDS + 1)))


def _tops(sessions) -> dict[str, int]:
    """The largest id of each source: the watermarks once everything is folded."""
    with sessions() as session:
        return {name: session.scalar(select(func.max(model.id))) for name, model in
                (("message", Message), ("click", Click), ("open", Open))}


def _watermarks(sessions) -> dict[str, int]:
    return {name: watermark for name, watermark, *_ in _state_rows(sessions)}


def test_a_reports_figures_are_the_same_before_and_after_a_roll_up(client, sessions):
    seed(sessions)
    live = _reports(client)  # nothing folded: every figure comes from the tail
    with sessions.begin() as session:
        folded = rollup.roll_up(session, settle=0)
    assert folded == _tops(sessions)
    assert _reports(client) == live


def test_a_report_get_writes_nothing_even_with_settled_clicks_to_fold(app, client, sessions):
    seed(sessions)
    with sessions.begin() as session:  # noted a while ago: a roll-up now would fold everything
        rollup.roll_up(session, now=utcnow() - dt.timedelta(minutes=5))
    with sessions() as session:
        assert rollup.needs_roll_up(session)
    before = _state_rows(sessions)
    writes: list[str] = []

    def watch(conn, cursor, statement, parameters, context, executemany) -> None:
        if re.match(r"\s*(INSERT|UPDATE|DELETE)\b", statement, re.I):
            writes.append(statement)

    engine = get_state(app).engine
    event.listen(engine, "before_cursor_execute", watch)
    try:
        _reports(client)
    finally:
        event.remove(engine, "before_cursor_execute", watch)
    assert writes == []
    assert _state_rows(sessions) == before
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(LinkStats)) == 0


def test_a_report_reads_one_snapshot_while_a_roll_up_commits(app, sessions):
    """The watermark a report read and the aggregates it reads next agree, whenever the
    roll-up thread of this or another process commits."""
    seed(sessions)

    def figures(session) -> tuple[int, ...]:
        latest = session.scalars(select(Execution).where(Execution.key == "v2")).one()
        f = stats.execution_figures(session, [latest])[latest.id]
        return (f.sent, f.opens, f.openers, f.clicks, f.clickers, f.machine_clicks)

    with get_state(app).reading() as session:
        before = figures(session)  # the watermarks (none folded yet) are read here
        with sessions.begin() as other:
            assert rollup.roll_up(other, settle=0)["click"] > 0
        assert figures(session) == before
    with get_state(app).reading() as session:
        assert figures(session) == before


def test_flask_hotclicks_roll_up_folds_what_has_settled(app, client, sessions):
    seed(sessions)
    live = _reports(client)
    runner = app.test_cli_runner()
    noted = runner.invoke(args=["hotclicks", "roll-up"])
    assert noted.exit_code == 0, noted.output
    assert noted.output.startswith("folded 0 messages, 0 clicks, 0 opens")  # too young: noted only
    _settle(sessions)
    result = runner.invoke(args=["hotclicks", "roll-up"])
    assert result.exit_code == 0, result.output
    tops = _tops(sessions)
    assert result.output.startswith(f"folded {tops['message']} messages, {tops['click']} clicks, {tops['open']} opens")
    assert _watermarks(sessions) == tops
    assert _reports(client) == live


def test_flask_hotclicks_roll_up_rebuild_starts_the_aggregates_again(app, client, sessions):
    seed(sessions)
    live = _reports(client)
    with sessions.begin() as session:
        rollup.roll_up(session, settle=0)
        session.execute(update(LinkStats).values(clicks=LinkStats.clicks + 100))  # drifted aggregates
    assert _reports(client) != live
    runner = app.test_cli_runner()
    result = runner.invoke(args=["hotclicks", "roll-up", "--rebuild"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("aggregates cleared; folded 0 messages, 0 clicks, 0 opens")
    assert _reports(client) == live  # all in the tail until the rows settle again
    _settle(sessions)
    assert f"{_tops(sessions)['click']} clicks" in runner.invoke(args=["hotclicks", "roll-up"]).output
    assert _reports(client) == live


def _rollup_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "hotclicks-rollup"]


def test_no_roll_up_thread_runs_with_an_interval_of_zero(client, sessions):
    seed(sessions)
    _reports(client)
    assert _rollup_threads() == []


def test_the_roll_up_thread_folds_within_a_few_intervals_and_stops_with_the_app(engine, database_url, sessions):
    seed(sessions)
    with sessions.begin() as session:  # noted long enough ago to be folded at the first round
        rollup.roll_up(session, now=utcnow() - dt.timedelta(minutes=5))
    app = Flask("rolling_app")
    app.config.update(TESTING=True, HOTCLICKS_DATABASE_URL=database_url, HOTCLICKS_SECRET_KEY=SECRET_KEY,
                      HOTCLICKS_BASE_URL=BASE_URL, HOTCLICKS_ROLLUP_INTERVAL=0.05)
    HotClicks(app)
    state = get_state(app)
    try:
        assert _rollup_threads() == []  # started by the first request, not before
        live = _reports(app.test_client())
        assert len(_rollup_threads()) == 1
        tops, deadline = _tops(sessions), time.monotonic() + 10
        while _watermarks(sessions) != tops and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _watermarks(sessions) == tops
        assert _reports(app.test_client()) == live
        assert len(_rollup_threads()) == 1  # one per app and process, whatever the requests
    finally:
        state.dispose()
    assert _rollup_threads() == []
