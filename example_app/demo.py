"""``make demo``: the whole chain on one machine, then a hot clicks report full of data.

Starts an upstream SMTP sink, the relay (``python -m smtp_relay``, as an operator runs it) and the
example app; sends the three deliveries to a few hundred generated subscribers through the relay
with Flask-Mailman; then plays the recipients over real HTTP through the app's tracking routes.
It prints the report's address and the login, and runs until Ctrl-C (``--no-wait``: exits after
the simulation). Each run starts from an empty database, so running it twice works.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from contextlib import ExitStack, contextmanager
from pathlib import Path

from flask import Flask
from sqlalchemy import func, select
from werkzeug.serving import make_server

from hotclicks import db
from hotclicks.db.models import Click, Delivery, Execution, Message, Open, TestProfile

from . import create_app, simulate
from .mailings import (
    NEWSLETTER,
    digest_messages,
    newsletter_messages,
    order_messages,
    send,
)
from .models import Base, Subscriber
from .sink import SinkServer

FIRST_NAMES = ["Alice", "Bruno", "Chloé", "David", "Emma", "Farid", "Gabrielle", "Hugo", "Inès",
               "Jules", "Karima", "Louis", "Manon", "Nathan", "Océane", "Paul", "Rose", "Sami"]
#: The test profiles of the seed: a woman, a man, someone over 25, and no attributes at all.
TEST_PROFILES = [
    ("A woman under 25", "profile.woman@maison-verte.example", {"gender": "female", "birth_date": "2004-05-02"}),
    ("A man under 25", "profile.man@maison-verte.example", {"gender": "male", "birth_date": "2005-09-14"}),
    ("Someone over 25", "profile.over25@maison-verte.example", {"birth_date": "1980-03-21"}),
    ("No attributes", "profile.none@maison-verte.example", {}),
]


def _say(text: str) -> None:
    print(text, flush=True)


def _progress(label: str) -> Callable[[int, int], None]:
    interactive = sys.stdout.isatty()
    step = 1

    def show(done: int, total: int) -> None:
        nonlocal step
        if interactive:
            print(f"\r  {label}: {done}/{total}", end="" if done < total else "\n", flush=True)
        elif done == total or done >= step * max(total // 4, 1):
            step += 1
            _say(f"  {label}: {done}/{total}")

    return show


def _port(preferred: int) -> int:
    """``preferred`` when it is free on 127.0.0.1, else any free port."""
    for candidate in (preferred, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise RuntimeError("no free port on 127.0.0.1")


def _wait_for_port(port: int, process: subprocess.Popen[bytes] | None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the relay stopped at start (exit code {process.returncode})")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


def reset_database(url: str) -> None:
    """An empty, migrated database: the demo starts afresh every run."""
    engine = db.create_db_engine(url)
    try:
        Base.metadata.drop_all(engine)
        if db.current_revision(engine) is not None:
            db.downgrade(engine)
        db.upgrade(engine)
    finally:
        engine.dispose()


def generate_subscribers(count: int, rng: random.Random, today: dt.date) -> list[Subscriber]:
    subscribers = []
    for number in range(1, count + 1):
        gender = rng.choices(["female", "male", None], weights=[46, 40, 14])[0]
        birth_date = None
        if rng.random() > 0.2:
            birth_date = today - dt.timedelta(days=rng.randint(18 * 365, 70 * 365))
        name = rng.choice(FIRST_NAMES)
        subscribers.append(
            Subscriber(
                email=f"{name.lower().replace('é', 'e').replace('è', 'e')}.{number}@example.org",
                first_name=name,
                gender=gender,
                birth_date=birth_date,
                wants_digest=rng.random() < 0.4,
            )
        )
    return subscribers


def seed_and_send(
    app: Flask, count: int, seed: int, progress: Callable[[str], Callable[[int, int], None]] | None = None
) -> int:
    """Create ``count`` subscribers and the test profiles, then send the three deliveries.

    The newsletter goes to everyone (test profiles included, so the relay keeps their copies);
    the digest runs three weeks to its readers, its template changed each week (a story added, then
    moved to the top, another gone: the hot clicks page compares the runs link by link); order
    confirmations go to a sixth of the subscribers, the template republished half way.
    Returns how many messages the relay accepted.
    """
    rng = random.Random(seed)
    today = dt.date.today()
    sessions = app.extensions["hotclicks"].sessions
    with app.app_context():
        with sessions.begin() as session:
            subscribers = generate_subscribers(count, rng, today)
            session.add_all(subscribers)
            for name, address, attributes in TEST_PROFILES:
                session.add(TestProfile(name=name, address=address, attributes=attributes))
        profiles_as_subscribers = [
            Subscriber(
                email=address,
                first_name=name,
                gender=attributes.get("gender"),
                birth_date=dt.date.fromisoformat(attributes["birth_date"]) if "birth_date" in attributes else None,
            )
            for name, address, attributes in TEST_PROFILES
        ]
        digest_readers = [s for s in subscribers if s.wants_digest]
        buyers = rng.sample(subscribers, k=max(2, len(subscribers) // 6))
        half = len(buyers) // 2
        iso = today.isocalendar()
        runs = [f"{iso.year}-W{max(iso.week - n, 1):02d}" for n in (2, 1, 0)]
        batches: list[tuple[str, Callable[[], list[Any]]]] = [
            (f"{NEWSLETTER} newsletter", lambda: newsletter_messages(profiles_as_subscribers + subscribers)),
            *[
                (f"weekly digest {run}", lambda run=run, edition=edition: digest_messages(digest_readers, run, edition))
                for run, edition in zip(runs, (1, 2, 3))
            ],
            ("order confirmations", lambda: order_messages([(s, f"MV-{1000 + i}") for i, s in enumerate(buyers[:half])], 1)),
            ("order confirmations, template republished",
             lambda: order_messages([(s, f"MV-{2000 + i}") for i, s in enumerate(buyers[half:])], 2)),
        ]
        sent = 0
        for label, build in batches:
            messages = build()
            show = progress(label) if progress else None
            for start in range(0, len(messages), 50):
                sent += send(messages[start : start + 50])
                if show:
                    show(min(start + 50, len(messages)), len(messages))
    return sent


@contextmanager
def running_relay(args: argparse.Namespace, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    command = [sys.executable, "-m", "smtp_relay", "--log-level", "WARNING"]
    process = subprocess.Popen(command, env=env)
    try:
        _wait_for_port(args.relay_port, process)
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextmanager
def serving(app: object, port: int) -> Iterator[None]:
    server = make_server("127.0.0.1", port, app, threaded=True)  # type: ignore[arg-type]
    thread = threading.Thread(target=server.serve_forever, name="example-app", daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        thread.join(timeout=10)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--postgres", metavar="URL", help="run on this PostgreSQL database instead of SQLite")
    parser.add_argument("--subscribers", type=int, default=300, help="default: %(default)s")
    parser.add_argument("--data-dir", default="demo-data", help="where the demo keeps its files (default: %(default)s)")
    parser.add_argument("--app-port", type=int, default=5050)
    parser.add_argument("--relay-port", type=int, default=2525)
    parser.add_argument("--sink-port", type=int, default=2526)
    parser.add_argument("--seed", type=int, default=7, help="seed of the simulated recipients")
    parser.add_argument("--no-wait", action="store_true", help="exit after the simulation")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.subscribers < 1:
        parser.error("--subscribers must be at least 1")
    data_dir = Path(args.data_dir).resolve()
    for folder in ("outbox", "spool"):
        shutil.rmtree(data_dir / folder, ignore_errors=True)
    data_dir.mkdir(parents=True, exist_ok=True)
    sqlite_file = data_dir / "hotclicks.sqlite3"
    for leftover in data_dir.glob("hotclicks.sqlite3*"):
        leftover.unlink()
    database_url = args.postgres or f"sqlite:///{sqlite_file}"
    args.app_port, args.relay_port, args.sink_port = (
        _port(args.app_port), _port(args.relay_port), _port(args.sink_port),
    )
    app_url = f"http://127.0.0.1:{args.app_port}"
    base_url = f"{app_url}/t"
    secret_key = secrets.token_urlsafe(32)

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per simulated request
    _say(f"HotClicks demo on {'PostgreSQL' if args.postgres else 'SQLite'} ({data_dir})")
    reset_database(database_url)
    env = {
        **os.environ,
        "HOTCLICKS_LISTEN": f"127.0.0.1:{args.relay_port}",
        "HOTCLICKS_UPSTREAM": f"127.0.0.1:{args.sink_port}",
        "HOTCLICKS_DATABASE_URL": database_url,
        "HOTCLICKS_BASE_URL": base_url,
        "HOTCLICKS_SECRET_KEY": secret_key,
        "HOTCLICKS_SPOOL_DIR": str(data_dir / "spool"),
    }
    app = create_app(
        {
            "HOTCLICKS_DATABASE_URL": database_url,
            "HOTCLICKS_SECRET_KEY": secret_key,
            "HOTCLICKS_BASE_URL": base_url,
            "MAIL_PORT": args.relay_port,
            "EXAMPLE_OUTBOX": str(data_dir / "outbox"),
            # The demo's recipients click seconds after the send, which the "too soon after
            # delivery" bot rule rightly takes for a scanner: off here, on in real life.
            "HOTCLICKS_BOT_DELIVERY_SECONDS": 0,
            # And they all click from this machine, as one scanner in front of many mailboxes would.
            "HOTCLICKS_BOT_FLEET_SHARE": 0,
        }
    )
    with ExitStack() as stack:
        sink = SinkServer(data_dir / "outbox", port=args.sink_port)
        sink.start()
        stack.callback(sink.stop)
        _say(f"- upstream SMTP sink on 127.0.0.1:{args.sink_port}")
        stack.enter_context(running_relay(args, env))
        _say(f"- relay on 127.0.0.1:{args.relay_port}, forwarding to the sink")
        stack.enter_context(serving(app, args.app_port))
        _say(f"- example app on {app_url}")

        _say(f"Sending to {args.subscribers} subscribers and {len(TEST_PROFILES)} test profiles through the relay:")
        sent = seed_and_send(app, args.subscribers, args.seed, _progress)
        deadline = time.monotonic() + 300
        while sink.received < sent and time.monotonic() < deadline:
            time.sleep(0.2)
        _say(f"The upstream sink received {sink.received} of {sent} messages.")
        if sink.received < sent:
            _say("demo: some messages did not reach the sink in time; see the relay's log above")
            return 1

        requests = simulate.plan(simulate.read_outbox(data_dir / "outbox"), base_url, seed=args.seed)
        _say(f"Simulating recipients: {len(requests)} requests through the tracking routes")
        outcomes = simulate.summary(simulate.run(requests, _progress("requests")))
        errors = {k: v for k, v in outcomes.items() if k.split()[-1].startswith("5")}
        with app.extensions["hotclicks"].sessions() as session:
            clicks = session.scalar(select(func.count(Click.id))) or 0
            machine = session.scalar(select(func.count(Click.id)).where(Click.is_machine.is_(True))) or 0
            opens = session.scalar(select(func.count(Open.id))) or 0
            messages = session.scalar(select(func.count(Message.id))) or 0
            executions = session.execute(
                select(Delivery.code, func.count(Execution.id)).join(Execution).group_by(Delivery.code)
            ).all()
        _say(f"Recorded: {messages} messages, {clicks} clicks ({machine} by machines), {opens} opens.")
        _say("Executions: " + ", ".join(f"{code} {count}" for code, count in sorted(executions)))
        if errors:
            _say(f"demo: the tracking routes answered errors: {errors}")
            return 1
        _say("")
        _say(f"Hot clicks report: {app_url}/hotclicks/deliveries/{NEWSLETTER}/hot-clicks")
        _say(f"Log in as: {app.config['EXAMPLE_USER']} / {app.config['EXAMPLE_PASSWORD']}")
        _say(f"What the sink received: {app_url}/outbox")
        if args.no_wait:
            return 0
        _say("Press Ctrl-C to stop.")
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            _say("Stopping.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
