"""A click storm: thousands of clicks in seconds on the links of one send, many on the same links,
against gunicorn workers, optionally killed with SIGKILL at random moments; then the count.

The moment every tracker fails is right after a send, when a whole list opens the mail at once.
This script records one execution sent to ``--recipients`` recipients (with the store functions,
as the relay would; with ``--via-relay``, through a real relay to an upstream sink), serves a
minimal app with the extension under gunicorn (``--workers`` sync workers on 127.0.0.1, the
write-ahead journal on unless ``--no-journal``; ``--preload`` for forked workers), and fires
``--clicks`` click requests from ``--concurrency`` connections (processes of threads of
``http.client``), the links drawn with a skew so a few are hot. Every request is accounted for by its message and
link. With ``--kill-every S`` a thread SIGKILLs a random worker every S seconds on average
(gunicorn's master starts another, which replays the dead one's journal).

After the storm the workers are stopped (SIGTERM: they commit what they hold), orphaned journal
files are replayed, and for every (message, link) the clicks recorded are compared with the
redirects received (acknowledged) and the requests sent:

- lost: acknowledged but not recorded (the goal is 0, killed workers or not);
- duplicated: recorded more often than requested (the goal is 0);
- recorded without an acknowledgement: a worker killed after journaling, before answering.

    python -m pip install -r stress/requirements.txt
    python stress/click_storm.py                              # SQLite, no kills
    python stress/click_storm.py --kill-every 2               # SQLite, workers killed
    python stress/click_storm.py --via-relay                  # the send through a real relay
    python stress/click_storm.py --database-url postgresql://postgres@127.0.0.1:5432/test [--kill-every 1]

Prints the storm's figures and ends with one line
``RESULT click-storm db=... sent=... acknowledged=... recorded=... lost=... duplicated=... p50_ms=... p99_ms=...``;
exits 1 when a click was lost or duplicated, or (without kills) on any error answer or failed
connection. On PostgreSQL it works in a schema of its own, dropped at the end.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import http.client
import multiprocessing
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SECRET_KEY = "stress-secret-key-0123456789abcdef"
BASE_URL = "http://127.0.0.1/t"
TARGET = "https://shop.example/storm"
AGENT = "Mozilla/5.0 (X11; Linux x86_64; storm) Firefox/128.0"


# -- the app gunicorn serves (built in each worker) ----------------------------------------------


def storm_app() -> Any:
    """A minimal host app: HotClicks and nothing else, configured from the environment."""
    from flask import Flask

    from flask_hotclicks import HotClicks

    app = Flask("click_storm")
    app.config.update(
        HOTCLICKS_DATABASE_URL=os.environ["STORM_DATABASE_URL"],
        HOTCLICKS_SECRET_KEY=SECRET_KEY,
        HOTCLICKS_BASE_URL=BASE_URL,
        HOTCLICKS_JOURNAL_DIR=os.environ.get("STORM_JOURNAL_DIR") or None,
        HOTCLICKS_JOURNAL_FSYNC=bool(os.environ.get("STORM_JOURNAL_FSYNC")),
    )
    HotClicks(app)
    return app


# -- the send --------------------------------------------------------------------------------------


@dataclass
class Send:
    """One execution sent to every recipient: the click path of each (message, link)."""

    paths: dict[tuple[int, int], str]  #: (message id, tracked URL id) -> /t/c/<token>
    links: list[int]


def seed(database_url: str, recipients: int, links: int) -> Send:
    from hotclicks import db
    from hotclicks import links as tracking_links
    from hotclicks.executions import Marks
    from hotclicks.db.models import Message, MessageStatus, Recipient, utcnow
    from hotclicks.db.sending import ensure_tracked_urls, resolve_execution
    from hotclicks.links import LinkSpec
    from hotclicks.tokens import TokenSigner

    engine = db.create_db_engine(database_url)
    db.upgrade(engine)
    sessions = db.session_factory(engine)
    # Delivered a minute ago: the storm is right after the send, past the scanners' few seconds.
    sent_at = utcnow() - dt.timedelta(minutes=1)
    with sessions.begin() as session:
        execution = resolve_execution(session, Marks(delivery=f"storm-{uuid.uuid4().hex[:6]}"), sent_at)
        specs = [LinkSpec("html", f"{TARGET}?l={i}", f"{TARGET}?l={i}", None, f"link {i}", i) for i in range(links)]
        tracked = [t.id for t in ensure_tracked_urls(session, execution, specs).values()]
        people = [Recipient(address=f"r{i}@storm.example", created_at=sent_at) for i in range(recipients)]
        session.add_all(people)
        session.flush()
        messages = [Message(execution_id=execution.id, recipient_id=p.id, status=MessageStatus.SENT,
                            created_at=sent_at, sent_at=sent_at) for p in people]
        session.add_all(messages)
        session.flush()
        ids = [m.id for m in messages]
    engine.dispose()
    signer = TokenSigner(SECRET_KEY)
    paths = {
        (m, u): "/t/c/" + tracking_links.click_url(signer, BASE_URL, m, u).rsplit("/", 1)[1]
        for m in ids for u in tracked
    }
    return Send(paths, tracked)


#: Recipients per SMTP transaction when sending through the relay (it splits them per recipient).
RCPT_PER_MESSAGE = 100


def send_through_relay(database_url: str, workdir: Path, recipients: int, links: int) -> Send:
    """The send as it happens: one newsletter with ``links`` links to ``recipients`` recipients
    through a real relay (in this process) to an upstream sink; the click paths are read back
    from the mail the sink received."""
    import re
    import smtplib

    from aiosmtpd.controller import Controller
    from sqlalchemy import select

    from hotclicks import db
    from hotclicks.bots import TRAP_LINK_NAME
    from hotclicks.db.models import TrackedUrl
    from hotclicks.tokens import TokenKind, TokenSigner
    from smtp_relay import RelayConfig, RelayController

    engine = db.create_db_engine(database_url)
    db.upgrade(engine)
    received: list[bytes] = []

    class Sink:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            received.append(envelope.original_content)
            return "250 2.0.0 OK"

    sink = Controller(Sink(), hostname="127.0.0.1", port=free_port(), decode_data=False)
    sink.start()
    relay = RelayController(RelayConfig(
        listen=("127.0.0.1", free_port()), upstream=("127.0.0.1", sink.port), database_url=database_url,
        base_url=BASE_URL, secret_key=SECRET_KEY, hostname="relay.storm", spool_dir=str(workdir / "spool"),
    ))
    relay.start()
    delivery = f"storm-{uuid.uuid4().hex[:6]}"
    html = "".join(f'<p><a href="{TARGET}?l={i}">Link {i}</a></p>' for i in range(links))
    message = (
        f"From: news@shop.example\r\nTo: subscribers@shop.example\r\nSubject: Storm\r\n"
        f"X-HotClicks-Delivery: {delivery}\r\nMIME-Version: 1.0\r\n"
        f'Content-Type: text/html; charset="utf-8"\r\n\r\n<html><body>{html}</body></html>\r\n'
    ).encode()
    try:
        addresses = [f"r{i}@storm.example" for i in range(recipients)]
        with smtplib.SMTP(*relay.config.listen, timeout=60) as client:
            for start in range(0, recipients, RCPT_PER_MESSAGE):
                client.sendmail("news@shop.example", addresses[start:start + RCPT_PER_MESSAGE], message)
        relay.wait_idle(timeout=max(60.0, recipients / 5))
    finally:
        relay.stop()
        relay.handler.database.dispose()
        sink.stop()
    with engine.connect() as connection:
        traps = set(connection.scalars(select(TrackedUrl.id).where(TrackedUrl.name == TRAP_LINK_NAME)))
    engine.dispose()
    signer = TokenSigner(SECRET_KEY)
    paths: dict[tuple[int, int], str] = {}
    for data in received:
        for token in re.findall(re.escape(BASE_URL) + r"/c/([A-Za-z0-9_-]+)", data.decode("utf-8", "replace")):
            signed = signer.unsign(token, TokenKind.CLICK)
            assert signed.tracked_url_id is not None
            if signed.tracked_url_id not in traps:
                paths[(signed.message_id, signed.tracked_url_id)] = f"/t/c/{token}"
    if len({m for m, _ in paths}) != recipients:
        raise SystemExit(f"the relay forwarded {len(received)} messages for {recipients} recipients")
    return Send(paths, sorted({u for _, u in paths}))


def storm_plan(sent: Send, clicks: int, seed: int) -> list[tuple[int, int]]:
    """``clicks`` (message, link) pairs: people at random, links skewed (the first is hottest), so
    many requests hit the same links and some people click twice."""
    rng = random.Random(seed)
    messages = sorted({m for m, _ in sent.paths})
    weights = [1 / (rank + 1) for rank in range(len(sent.links))]
    return [(rng.choice(messages), rng.choices(sent.links, weights)[0]) for _ in range(clicks)]


def recorded_clicks(database_url: str) -> collections.Counter[tuple[int, int]]:
    from sqlalchemy import func, select

    from hotclicks import db
    from hotclicks.db.models import Click

    engine = db.create_db_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                select(Click.message_id, Click.tracked_url_id, func.count()).group_by(
                    Click.message_id, Click.tracked_url_id)
            ).all()
        return collections.Counter({(m, u): n for m, u, n in rows})
    finally:
        engine.dispose()


# -- gunicorn --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Gunicorn:
    """``--workers`` sync workers on a free port of 127.0.0.1, serving :func:`storm_app`."""

    def __init__(self, env: dict[str, str], workers: int, preload: bool = False) -> None:
        self.port = free_port()
        self.workers = workers
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--workers", str(workers), "--worker-class", "sync",
             "--bind", f"127.0.0.1:{self.port}", "--backlog", "2048", "--log-level", "warning",
             "--graceful-timeout", "30", "--timeout", "60", *(["--preload"] if preload else []),
             "--chdir", str(HERE), "click_storm:storm_app()"],
            env={**os.environ, **env, "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE)])},
        )
        deadline = time.monotonic() + 60
        while len(self.worker_pids()) < workers or not self._answers():
            if self.process.poll() is not None:
                raise SystemExit(f"gunicorn exited with {self.process.returncode}")
            if time.monotonic() > deadline:
                self.stop()
                raise SystemExit("gunicorn did not start")
            time.sleep(0.2)

    def _answers(self) -> bool:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            connection.request("HEAD", "/t/c/probe")
            connection.getresponse().read()
            connection.close()
            return True
        except (OSError, http.client.HTTPException):
            return False

    def worker_pids(self) -> list[int]:
        try:
            children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text()
        except OSError:
            return []
        return [int(pid) for pid in children.split()]

    def stop(self) -> int:
        """SIGTERM (workers commit their journal and exit), then the master's exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(90)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode


class Killer(threading.Thread):
    """SIGKILLs a random worker every ``every`` seconds on average (exponential gaps)."""

    def __init__(self, server: Gunicorn, every: float, seed: int) -> None:
        super().__init__(daemon=True)
        self.server, self.every, self.rng = server, every, random.Random(seed)
        self.kills = 0
        self.done = threading.Event()

    def run(self) -> None:
        seen: set[int] = set()
        while not self.done.wait(self.rng.expovariate(1 / self.every)):
            # Only a worker seen at the previous tick: one that had time to boot and serve (killing
            # workers as they boot would only measure gunicorn's restarts).
            pids = self.server.worker_pids()
            candidates = sorted(seen & set(pids))
            seen = set(pids)
            if candidates:
                try:
                    os.kill(self.rng.choice(candidates), signal.SIGKILL)
                    self.kills += 1
                except ProcessLookupError:
                    pass


# -- the load generator ----------------------------------------------------------------------------


@dataclass
class Outcome:
    """What the clients saw."""

    requested: collections.Counter[tuple[int, int]] = field(default_factory=collections.Counter)
    acknowledged: collections.Counter[tuple[int, int]] = field(default_factory=collections.Counter)
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    failed: int = 0  #: no answer: connection refused, reset or timed out
    latencies: list[float] = field(default_factory=list)


def _client_process(port: int, jobs: list[tuple[int, int, str]], threads: int, stop_at: float, queue: Any) -> None:
    lock = threading.Lock()
    outcome = Outcome()
    cursor = iter(jobs)

    def loop() -> None:
        requested: collections.Counter[tuple[int, int]] = collections.Counter()
        acknowledged: collections.Counter[tuple[int, int]] = collections.Counter()
        statuses: collections.Counter[int] = collections.Counter()
        latencies: list[float] = []
        failed = 0
        connection: http.client.HTTPConnection | None = None
        while time.monotonic() < stop_at:
            with lock:
                job = next(cursor, None)
            if job is None:
                break
            message, link, path = job
            requested[(message, link)] += 1
            start = time.perf_counter()
            try:
                if connection is None:
                    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                connection.request("GET", path, headers={"User-Agent": AGENT})
                response = connection.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                failed += 1
                if connection is not None:
                    connection.close()
                connection = None
                continue
            latencies.append(time.perf_counter() - start)
            statuses[response.status] += 1
            if response.status == 302:
                acknowledged[(message, link)] += 1
            if response.will_close:  # gunicorn's sync workers close after each answer
                connection.close()
                connection = None
        if connection is not None:
            connection.close()
        with lock:
            outcome.requested.update(requested)
            outcome.acknowledged.update(acknowledged)
            outcome.statuses.update(statuses)
            outcome.latencies.extend(latencies)
            outcome.failed += failed

    workers = [threading.Thread(target=loop) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    queue.put(outcome)


def fire(port: int, sent: Send, plan: list[tuple[int, int]], concurrency: int, max_seconds: float) -> tuple[Outcome, float]:
    """Send the plan from ``concurrency`` connections (2 processes of threads); its outcome and
    how long it took."""
    processes = 2 if concurrency >= 2 else 1
    jobs = [(m, u, sent.paths[(m, u)]) for m, u in plan]
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    start = time.monotonic()
    stop_at = start + max_seconds
    procs = [context.Process(target=_client_process,
                             args=(port, jobs[n::processes], max(1, concurrency // processes), stop_at, queue))
             for n in range(processes)]
    for p in procs:
        p.start()
    total = Outcome()
    for _ in procs:
        part: Outcome = queue.get()
        total.requested.update(part.requested)
        total.acknowledged.update(part.acknowledged)
        total.statuses.update(part.statuses)
        total.latencies.extend(part.latencies)
        total.failed += part.failed
    for p in procs:
        p.join()
    return total, time.monotonic() - start


# -- one storm -------------------------------------------------------------------------------------


@dataclass
class Result:
    database: str
    sent: int
    acknowledged: int
    recorded: int
    lost: int
    duplicated: int
    unacknowledged_recorded: int
    failed: int
    errors: int  #: answers other than 302
    kills: int
    seconds: float
    p50_ms: float
    p99_ms: float
    replayed_after: int

    @property
    def ok(self) -> bool:
        clean = self.kills > 0 or (self.failed == 0 and self.errors == 0)
        return self.lost == 0 and self.duplicated == 0 and clean

    def line(self) -> str:
        return (f"RESULT click-storm db={self.database} sent={self.sent} acknowledged={self.acknowledged} "
                f"recorded={self.recorded} lost={self.lost} duplicated={self.duplicated} "
                f"recorded_unacknowledged={self.unacknowledged_recorded} failed_connections={self.failed} "
                f"error_answers={self.errors} workers_killed={self.kills} seconds={self.seconds:.1f} "
                f"rps={self.sent / self.seconds if self.seconds else 0:.0f} "
                f"p50_ms={self.p50_ms:.1f} p99_ms={self.p99_ms:.1f} replayed_after_stop={self.replayed_after}")


def storm(database_url: str, workdir: Path, *, recipients: int, links: int, clicks: int, workers: int,
          concurrency: int, kill_every: float, journal: bool, fsync: bool, max_seconds: float,
          preload: bool = False, via_relay: bool = False, seed_value: int = 1, log: Any = print) -> Result:
    from sqlalchemy import make_url

    from hotclicks import db
    from hotclicks.db.journal import replay_orphans

    if via_relay:
        began = time.monotonic()
        sent = send_through_relay(database_url, workdir, recipients, links)
        log(f"# sent through the relay to {recipients} recipients in {time.monotonic() - began:.1f} s")
    else:
        sent = seed(database_url, recipients, links)
    plan = storm_plan(sent, clicks, seed_value)
    before = recorded_clicks(database_url)
    journal_dir = workdir / f"journal-{uuid.uuid4().hex[:6]}"
    env = {"STORM_DATABASE_URL": database_url, "STORM_JOURNAL_DIR": str(journal_dir) if journal else ""}
    if fsync:
        env["STORM_JOURNAL_FSYNC"] = "1"
    server = Gunicorn(env, workers, preload)
    killer = Killer(server, kill_every, seed_value) if kill_every > 0 else None
    try:
        if killer:
            killer.start()
        outcome, seconds = fire(server.port, sent, plan, concurrency, max_seconds)
    finally:
        if killer:
            killer.done.set()
            killer.join()
        server.stop()
    replayed = 0
    if journal and journal_dir.exists():  # a worker killed last had no successor to replay it
        engine = db.create_db_engine(database_url)
        try:
            replayed = replay_orphans(journal_dir, db.session_factory(engine))
        finally:
            engine.dispose()
    after = recorded_clicks(database_url)
    recorded = after - before
    requested = outcome.requested
    lost = sum(max(0, n - recorded[k]) for k, n in outcome.acknowledged.items())
    duplicated = sum(max(0, n - requested[k]) for k, n in recorded.items())
    unacknowledged = sum(max(0, n - outcome.acknowledged[k]) for k, n in recorded.items())
    latencies = sorted(outcome.latencies) or [0.0]
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [latencies[0]] * 99
    errors = sum(n for status, n in outcome.statuses.items() if status != 302)
    if outcome.statuses and set(outcome.statuses) != {302}:
        log(f"# answers: {dict(outcome.statuses)}")
    return Result(
        database=make_url(database_url).get_backend_name(),
        sent=sum(requested.values()),
        acknowledged=sum(outcome.acknowledged.values()),
        recorded=sum(recorded.values()),
        lost=lost,
        duplicated=duplicated,
        unacknowledged_recorded=unacknowledged,
        failed=outcome.failed,
        errors=errors,
        kills=killer.kills if killer else 0,
        seconds=seconds,
        p50_ms=q[49] * 1000,
        p99_ms=q[98] * 1000,
        replayed_after=replayed,
    )


# -- PostgreSQL: a schema of our own ---------------------------------------------------------------


def postgres_schema(url: str) -> tuple[str, Any]:
    from sqlalchemy import create_engine, make_url, text

    schema = f"hc_storm_{uuid.uuid4().hex[:10]}"
    admin = create_engine(make_url(url).set(drivername="postgresql+psycopg"))
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    scoped = make_url(url).update_query_dict({"options": f"-csearch_path={schema}"})

    def drop() -> None:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()

    return scoped.render_as_string(hide_password=False), drop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="a postgresql:// URL (default: a fresh SQLite file)")
    parser.add_argument("--recipients", type=int, default=2000, help="recipients of the send (default 2000)")
    parser.add_argument("--links", type=int, default=5, help="links in the message (default 5)")
    parser.add_argument("--clicks", type=int, default=20000, help="click requests (default 20000)")
    parser.add_argument("--workers", type=int, default=4, help="gunicorn sync workers (default 4)")
    parser.add_argument("--concurrency", type=int, default=64, help="connections at once (default 64)")
    parser.add_argument("--kill-every", type=float, default=0.0,
                        help="SIGKILL a random worker every this many seconds on average (default: never)")
    parser.add_argument("--no-journal", action="store_true", help="commit each click before its redirect")
    parser.add_argument("--fsync", action="store_true", help="HOTCLICKS_JOURNAL_FSYNC")
    parser.add_argument("--max-seconds", type=float, default=300, help="stop sending after this (default 300)")
    parser.add_argument("--preload", action="store_true",
                        help="gunicorn --preload: workers are forks of the master (they restart at once)")
    parser.add_argument("--via-relay", action="store_true",
                        help="send the newsletter through a real relay (slower) instead of recording it directly")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="hotclicks-storm-") as tmp:
        workdir = Path(tmp)
        drop = None
        url = args.database_url or f"sqlite:///{workdir / 'storm.sqlite3'}"
        if url.startswith("postgresql"):
            url, drop = postgres_schema(url)
        try:
            mode = "commit per click" if args.no_journal else "journal" + ("+fdatasync" if args.fsync else "")
            print(f"# {args.clicks} clicks on {args.recipients} recipients x {args.links} links, "
                  f"{args.concurrency} connections, gunicorn {args.workers} sync workers"
                  f"{' (preload)' if args.preload else ''}, {mode}, "
                  f"kills every {args.kill_every or 'never'} s; {os.cpu_count()} CPUs", flush=True)
            result = storm(url, workdir, recipients=args.recipients, links=args.links, clicks=args.clicks,
                           workers=args.workers, concurrency=args.concurrency, kill_every=args.kill_every,
                           journal=not args.no_journal, fsync=args.fsync, max_seconds=args.max_seconds,
                           preload=args.preload, via_relay=args.via_relay, seed_value=args.seed)
        finally:
            if drop is not None:
                drop()
    print(result.line(), flush=True)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
