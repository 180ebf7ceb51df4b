"""Click redirect benchmark: our click route against a bare Flask route answering the same 302.

Both run under the same gunicorn configuration (2 sync workers on 127.0.0.1) and the same load
generator: ``wrk`` when it is installed (``apt-get install wrk``), else a Python load generator
(processes of threads with keep-alive ``http.client`` connections); the output says which. On
SQLite, and on PostgreSQL when ``--pg-url`` (default: the local test server) answers.

Every click is durable when its redirect is answered: the click route runs with the write-ahead
journal (``HOTCLICKS_JOURNAL_DIR``), so each click is in the journal file before the 302, and
committed in batches by a thread of the worker (with ``--fsync``, also on disk before the 302,
which survives a power loss too; without, the click survives the worker's crash, as a commit does
in SQLite's WAL mode with ``synchronous=NORMAL``). After each run the workers are stopped
(gracefully: they commit what they hold) and the bench checks that the database has at least as
many clicks as the load generator got redirects.

    python -m pip install -r bench/requirements.txt
    python bench/click_redirect.py [--duration 10] [--connections 32] [--rounds 3] [--no-pg] [--fsync]

Prints, per database, one line like
``RESULT click-redirect bare_rps=... click_rps=... ratio=... bare_p50_ms=... ...``
(``click-redirect-pg`` for PostgreSQL). Ratios are the median of ``--rounds`` alternating runs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import multiprocessing
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

SECRET_KEY = "bench-secret-key-0123456789abcdef"
TARGET = "https://shop.example/spring-sale?utm_source=news"
BASE_URL = "http://127.0.0.1/t"
#: Messages seeded, and the links of their execution. Each message's link is clicked once per pass
#: over the paths: people click a link of a message, not all of them within a second (that is the
#: burst rule, a scanner's signature, which would then run on every click).
MESSAGES = 6000
LINKS = 3


# -- the two WSGI apps, built by gunicorn in each worker ---------------------------------------


def bare_app() -> Any:
    """A Flask route that answers the same 302 with no work at all."""
    from flask import Flask, redirect

    app = Flask("bare")

    @app.route("/t/c/<token>")
    def click(token: str) -> Any:
        return redirect(TARGET, code=302)

    return app


def click_app() -> Any:
    """A Flask app with HotClicks, configured from the environment the bench sets."""
    from flask import Flask

    from flask_hotclicks import HotClicks

    app = Flask("clicks")
    app.config.update(
        HOTCLICKS_DATABASE_URL=os.environ["BENCH_DATABASE_URL"],
        HOTCLICKS_SECRET_KEY=SECRET_KEY,
        HOTCLICKS_BASE_URL=BASE_URL,
        HOTCLICKS_JOURNAL_DIR=os.environ.get("BENCH_JOURNAL_DIR") or None,
    )
    if os.environ.get("BENCH_JOURNAL_FSYNC"):
        app.config["HOTCLICKS_JOURNAL_FSYNC"] = True
    if os.environ.get("BENCH_JOURNAL_INTERVAL"):
        app.config["HOTCLICKS_JOURNAL_INTERVAL"] = float(os.environ["BENCH_JOURNAL_INTERVAL"])
    HotClicks(app)
    return app


# -- setting up ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def seed(database_url: str) -> list[str]:
    """Migrate, record MESSAGES messages with LINKS links each; the click paths to request."""
    from hotclicks import db, links
    from hotclicks.executions import Marks
    from hotclicks.db.models import Message, MessageStatus, Recipient, utcnow
    from hotclicks.db.sending import ensure_tracked_urls, resolve_execution
    from hotclicks.links import LinkSpec
    from hotclicks.tokens import TokenSigner

    engine = db.create_db_engine(database_url)
    db.upgrade(engine)
    sessions = db.session_factory(engine)
    sent_at = utcnow() - dt.timedelta(hours=1)
    with sessions.begin() as session:
        execution = resolve_execution(session, Marks(delivery="bench-news"), sent_at)
        specs = [LinkSpec("html", f"{TARGET}&l={i}", f"{TARGET}&l={i}", None, "", i) for i in range(LINKS)]
        tracked = [t.id for t in ensure_tracked_urls(session, execution, specs).values()]
        recipients = [Recipient(address=f"r{i}@bench.example", created_at=sent_at) for i in range(MESSAGES)]
        session.add_all(recipients)
        session.flush()
        messages = [
            Message(execution_id=execution.id, recipient_id=r.id, status=MessageStatus.SENT,
                    created_at=sent_at, sent_at=sent_at)
            for r in recipients
        ]
        session.add_all(messages)
        session.flush()
        ids = [m.id for m in messages]
    engine.dispose()
    signer = TokenSigner(SECRET_KEY)
    paths = [
        "/t/c/" + links.click_url(signer, BASE_URL, m, tracked[n % LINKS]).rsplit("/", 1)[1]
        for n, m in enumerate(ids)
    ]
    random.Random(1).shuffle(paths)
    return paths


def count_clicks(database_url: str) -> int:
    from sqlalchemy import func, select

    from hotclicks import db
    from hotclicks.db.models import Click

    engine = db.create_db_engine(database_url)
    try:
        with engine.connect() as connection:
            return int(connection.execute(select(func.count(Click.id))).scalar_one())
    finally:
        engine.dispose()


class Gunicorn:
    """gunicorn with the bench's one configuration: 2 sync workers on a free port of 127.0.0.1."""

    def __init__(self, app: str, env: dict[str, str], workers: int = 2, threads: int = 0) -> None:
        self.port = free_port()
        here = Path(__file__).resolve().parent
        worker_class = ["--worker-class", "gthread", "--threads", str(threads)] if threads else ["--worker-class", "sync"]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--workers", str(workers), *worker_class,
             "--bind", f"127.0.0.1:{self.port}", "--backlog", "2048", "--log-level", "warning",
             "--graceful-timeout", "30", "--chdir", str(here), f"click_redirect:{app}()"],
            env={**os.environ, **env, "PYTHONPATH": os.pathsep.join([str(here.parent), str(here)])},
        )
        # The master listens before its workers have imported the app: wait until requests are
        # answered, so no measured run includes a worker's start.
        deadline = time.monotonic() + 60
        answered = 0
        while time.monotonic() < deadline and answered < 2 * workers:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                connection.request("HEAD", "/t/c/probe")
                connection.getresponse().read()
                connection.close()
                answered += 1
            except (OSError, http.client.HTTPException):
                if self.process.poll() is not None:
                    raise SystemExit(f"gunicorn for {app} exited with {self.process.returncode}")
                time.sleep(0.2)
        if answered < 2 * workers:
            self.stop()
            raise SystemExit(f"gunicorn for {app} did not start")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # graceful: workers commit their journal
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


# -- load generators ------------------------------------------------------------------------------

_WRK_SCRIPT = """
local paths = {}
for line in io.lines("%s") do paths[#paths + 1] = line end
local counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", paths[(counter %% #paths) + 1], {["User-Agent"] = "Mozilla/5.0 (bench) Firefox/128.0"})
end
"""


def _ms(value: str) -> float:
    number, unit = re.match(r"([\d.]+)(us|ms|s)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(port: int, paths_file: Path, duration: int, connections: int, workdir: Path) -> dict[str, float]:
    script = workdir / "paths.lua"
    script.write_text(_WRK_SCRIPT % paths_file)
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script),
         f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"50%\s+([\d.]+\w+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"99%\s+([\d.]+\w+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {"rps": rps, "p50": p50, "p99": p99, "requests": total,
            "bad": int(bad.group(1)) if bad else 0,
            "errors": sum(map(int, errors.groups())) if errors else 0}


def _py_worker(port: int, paths: list[str], stop_at: float, threads: int, queue: Any) -> None:
    latencies: list[float] = []
    bad = [0]
    lock = threading.Lock()

    def loop(offset: int) -> None:
        mine: list[float] = []
        errors = 0
        i = offset
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while time.monotonic() < stop_at:
            path = paths[i % len(paths)]
            i += threads
            start = time.perf_counter()
            try:
                connection.request("GET", path, headers={"User-Agent": "Mozilla/5.0 (bench) Firefox/128.0"})
                response = connection.getresponse()
                response.read()
                if response.status != 302:
                    errors += 1
                if response.getheader("Connection", "").lower() == "close":
                    connection.close()
            except (OSError, http.client.HTTPException):
                errors += 1
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                continue
            mine.append(time.perf_counter() - start)
        connection.close()
        with lock:
            latencies.extend(mine)
            bad[0] += errors

    workers = [threading.Thread(target=loop, args=(n,)) for n in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    queue.put((latencies, bad[0]))


def run_python(port: int, paths: list[str], duration: int, connections: int) -> dict[str, float]:
    processes = 2
    threads = max(1, connections // processes)
    queue: Any = multiprocessing.get_context("fork").Queue()
    start = time.monotonic()
    stop_at = start + duration
    procs = [
        multiprocessing.get_context("fork").Process(
            target=_py_worker, args=(port, paths[n::processes], stop_at, threads, queue)
        )
        for n in range(processes)
    ]
    for p in procs:
        p.start()
    latencies: list[float] = []
    bad = 0
    for _ in procs:
        lat, errors = queue.get()
        latencies.extend(lat)
        bad += errors
    for p in procs:
        p.join()
    elapsed = time.monotonic() - start
    latencies.sort()
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return {"rps": len(latencies) / elapsed, "p50": q[49] * 1000, "p99": q[98] * 1000,
            "requests": len(latencies), "bad": bad, "errors": 0}


# -- the comparison -----------------------------------------------------------------------------


def _workers_cpu(master: int) -> float:
    """CPU seconds used so far by the worker processes of gunicorn ``master`` (Linux /proc)."""
    try:
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        total = 0
        for pid in children:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def measure(app: str, env: dict[str, str], paths: list[str], paths_file: Path, args: argparse.Namespace,
            workdir: Path, loadgen: str) -> dict[str, float]:
    server = Gunicorn(app, env, threads=args.threads)
    try:
        if loadgen == "wrk":
            run_wrk(server.port, paths_file, 2, args.connections, workdir)  # warm up
            before = _workers_cpu(server.process.pid)
            result = run_wrk(server.port, paths_file, args.duration, args.connections, workdir)
        else:
            run_python(server.port, paths, 2, args.connections)
            before = _workers_cpu(server.process.pid)
            result = run_python(server.port, paths, args.duration, args.connections)
        # The workers' own CPU per request: a second view of the cost, much less sensitive to
        # other load on the machine than throughput (it leaves out the load generator, and the
        # database server's work and the commits that happen after the run).
        result["cpu_us"] = (_workers_cpu(server.process.pid) - before) / max(result["requests"], 1) * 1e6
        return result
    finally:
        server.stop()


def compare(name: str, database_url: str, args: argparse.Namespace, workdir: Path, loadgen: str) -> None:
    paths = seed(database_url)
    paths_file = workdir / "paths.txt"
    paths_file.write_text("\n".join(paths) + "\n")
    env = {"BENCH_DATABASE_URL": database_url, "BENCH_JOURNAL_DIR": str(workdir / f"journal-{name}")}
    if args.fsync:
        env["BENCH_JOURNAL_FSYNC"] = "1"
    bare_runs, click_runs = [], []
    answered = 0
    for _ in range(args.rounds):
        bare_runs.append(measure("bare_app", env, paths, paths_file, args, workdir, loadgen))
        before = count_clicks(database_url)
        run = measure("click_app", env, paths, paths_file, args, workdir, loadgen)
        recorded = count_clicks(database_url) - before
        # Every redirect the load generator got (warm-up included) has its click recorded.
        if recorded < run["requests"] or run["bad"]:
            raise SystemExit(f"{name}: {run['requests']} redirects answered but {recorded} clicks recorded"
                             f" ({run['bad']} bad answers)")
        answered += recorded
        click_runs.append(run)
    ratios = [c["rps"] / b["rps"] for b, c in zip(bare_runs, click_runs)]
    order = sorted(range(len(ratios)), key=lambda i: ratios[i])
    pick = order[len(order) // 2]
    bare, click = bare_runs[pick], click_runs[pick]
    print(
        f"RESULT {name} bare_rps={bare['rps']:.0f} click_rps={click['rps']:.0f} "
        f"ratio={ratios[pick]:.2f} bare_p50_ms={bare['p50']:.2f} bare_p99_ms={bare['p99']:.2f} "
        f"click_p50_ms={click['p50']:.2f} click_p99_ms={click['p99']:.2f} "
        f"ratios={','.join(f'{r:.2f}' for r in ratios)} "
        f"bare_cpu_us_per_req={statistics.median(b['cpu_us'] for b in bare_runs):.0f} "
        f"click_cpu_us_per_req={statistics.median(c['cpu_us'] for c in click_runs):.0f} "
        f"clicks_recorded={answered} "
        f"loadgen={loadgen} server=gunicorn-2-{f'gthread{args.threads}' if args.threads else 'sync'} durable={'journal+fdatasync' if args.fsync else 'journal'}",
        flush=True,
    )


def _postgres_schema(url: str) -> tuple[str, Any] | None:
    try:
        from sqlalchemy import create_engine, make_url, text
    except ImportError:
        return None
    parsed = make_url(url).set(drivername="postgresql+psycopg")
    schema = f"hc_bench_{uuid.uuid4().hex[:10]}"
    try:
        admin = create_engine(parsed)
        with admin.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:  # no server, no driver: the PostgreSQL run is skipped
        print(f"# PostgreSQL skipped: {exc.__class__.__name__}: {str(exc).splitlines()[0]}", flush=True)
        return None
    scoped = make_url(url).update_query_dict({"options": f"-csearch_path={schema}"})
    return scoped.render_as_string(hide_password=False), (admin, schema)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per run (default 10)")
    parser.add_argument("--connections", type=int, default=32, help="concurrent connections (default 32)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs per database (default 3)")
    parser.add_argument("--pg-url", default=os.environ.get("HOTCLICKS_BENCH_PG_URL",
                                                           "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--no-pg", action="store_true", help="SQLite only")
    parser.add_argument("--fsync", action="store_true",
                        help="fdatasync each click before its redirect (HOTCLICKS_JOURNAL_FSYNC)")
    parser.add_argument("--threads", type=int, default=0,
                        help="gthread workers with this many threads each, for both routes (default: sync workers)")
    parser.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto")
    args = parser.parse_args(argv)
    loadgen = args.loadgen
    if loadgen == "auto":
        loadgen = "wrk" if shutil.which("wrk") else "python"
    if loadgen == "wrk" and not shutil.which("wrk"):
        parser.error("wrk is not installed (apt-get install wrk), use --loadgen python")
    workers = f"gthread workers x {args.threads} threads" if args.threads else "sync workers"
    print(f"# load generator: {loadgen}; gunicorn 2 {workers}; {args.connections} connections, "
          f"{args.duration}s x {args.rounds} rounds; {os.cpu_count()} CPUs", flush=True)
    with tempfile.TemporaryDirectory(prefix="hotclicks-bench-") as tmp:
        workdir = Path(tmp)
        compare("click-redirect", f"sqlite:///{workdir / 'bench.sqlite3'}", args, workdir, loadgen)
        if not args.no_pg:
            found = _postgres_schema(args.pg_url)
            if found is not None:
                url, (admin, schema) = found
                try:
                    compare("click-redirect-pg", url, args, workdir, loadgen)
                finally:
                    from sqlalchemy import text

                    with admin.begin() as connection:
                        connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
                    admin.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
