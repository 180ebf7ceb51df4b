"""Faults around the relay: the upstream down then back, answering 4xx then 250, the database
locked (SQLite) or restarted (PostgreSQL, a private cluster of this script's own), and the relay
killed with SIGKILL at random moments. After each, every message answered 250 must have reached
the upstream (a duplicate is allowed only in the spool's documented window: a crash between the
upstream's 250 and the removal of the spool file; duplicates are counted by recipient).

    python stress/relay_faults.py [--messages 3000] [--kills 10] [--down-seconds 120]
                                  [--pg-seconds 90] [--only upstream-down,upstream-4xx,sqlite-locked,postgres-restart,sigkill]

Everything runs on 127.0.0.1: the relay as ``python -m smtp_relay`` processes, an aiosmtpd sink
in this process, SQLite in a temporary directory. The PostgreSQL campaign initdb's a cluster of
its own under a temporary directory on a free port (never the machine's shared server) and is
skipped, saying why, when the PostgreSQL binaries are absent. Prints one ``RESULT`` line per
campaign and exits non-zero if any message answered 250 was lost.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import smtplib
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hotclicks import db  # noqa: E402
from tests.conftest import SECRET_KEY, Upstream, free_port  # noqa: E402
from tests.helpers import BASE_URL, newsletter  # noqa: E402

PG_BIN = Path(os.environ.get("HOTCLICKS_PG_BIN", "/usr/lib/postgresql/15/bin"))


# -- the pieces ---------------------------------------------------------------------------------


def sink_on(port: int) -> Upstream:
    """An aiosmtpd sink listening on ``port`` (to come back on the address the relay uses)."""
    sink = Upstream()
    sink.port = port
    sink.start()
    return sink


def migrated_sqlite(directory: Path) -> str:
    url = f"sqlite:///{directory / 'hotclicks.sqlite3'}"
    engine = db.create_db_engine(url)
    db.upgrade(engine)
    engine.dispose()
    return url


class RelayProcess:
    """``python -m smtp_relay`` on a free port, restartable on the same port and spool."""

    def __init__(self, workdir: Path, database_url: str, upstream_port: int, *extra: str) -> None:
        self.workdir = workdir
        self.database_url = database_url
        self.upstream_port = upstream_port
        self.port = free_port()
        self.spool = workdir / "spool"
        self.extra = extra
        self.process: subprocess.Popen | None = None
        self.starts = 0

    @property
    def listen(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def start(self, timeout: float = 60) -> None:
        log = open(self.workdir / f"relay-{self.starts}.log", "wb")
        self.starts += 1
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "smtp_relay",
                "--listen", f"127.0.0.1:{self.port}",
                "--upstream", f"127.0.0.1:{self.upstream_port}",
                "--database-url", self.database_url,
                "--base-url", BASE_URL,
                "--secret-key", SECRET_KEY,
                "--spool-dir", str(self.spool),
                "--upstream-timeout", "10",
                "--hostname", "relay.test",
                *self.extra,
            ],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if not k.startswith("HOTCLICKS_")},
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the relay exited with {self.process.returncode}; see {log.name}")
            try:
                socket.create_connection(self.listen, timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"the relay did not listen within {timeout} s")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM (a graceful stop), SIGKILL after 60 s."""
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()

    def retry(self) -> None:
        """Ask the relay to retry its deferred copies now (``hotclicks-relay retry``)."""
        (self.spool / "retry-now").touch()

    def spooled(self) -> int:
        return len(list((self.spool / "queue").glob("*.msg")))


@dataclass
class Tally:
    """What the senders were told, by recipient (one recipient per message)."""

    accepted: list[str] = field(default_factory=list)
    refused: Counter = field(default_factory=Counter)  #: "451 ..." -> count
    no_answer: int = 0
    attempts: Counter = field(default_factory=Counter)  #: recipient -> times sent
    lock: threading.Lock = field(default_factory=threading.Lock)


def send_one(listen: tuple[str, int], recipient: str, tally: Tally, timeout: float = 60, data: bytes | None = None) -> bool:
    """One message to ``recipient``; True if answered 250. Refusals and silences are tallied."""
    with tally.lock:
        tally.attempts[recipient] += 1
    try:
        with smtplib.SMTP(*listen, timeout=timeout) as client:
            client.sendmail("news@shop.example", [recipient], data or newsletter())
    except smtplib.SMTPResponseException as exc:
        with tally.lock:
            tally.refused[f"{exc.smtp_code}"] += 1
        return False
    except (OSError, smtplib.SMTPException):
        with tally.lock:
            tally.no_answer += 1
        return False
    with tally.lock:
        tally.accepted.append(recipient)
    return True


def send_until_accepted(listen, recipient: str, tally: Tally, stop: threading.Event | None = None, pause: float = 0.2) -> None:
    """A well-behaved client: resend after a 4xx or no answer, until 250 (or ``stop``)."""
    while not send_one(listen, recipient, tally):
        if stop is not None and stop.is_set():
            return
        time.sleep(pause)


def wait_delivered(sink: Upstream, recipients: list[str], relay: RelayProcess | None = None, timeout: float = 300) -> bool:
    wanted = set(recipients)
    deadline = time.monotonic() + timeout
    nudged = 0.0
    while time.monotonic() < deadline:
        got = {m.rcpt_tos[0] for m in list(sink.messages)}
        if wanted <= got:
            return True
        if relay is not None and time.monotonic() - nudged > 2:
            relay.retry()
            nudged = time.monotonic()
        time.sleep(0.1)
    return False


def count(name: str, tally: Tally, sink: Upstream, seconds: float, note: str = "") -> bool:
    """Print the campaign's RESULT line; True when nothing answered 250 was lost."""
    delivered = Counter(m.rcpt_tos[0] for m in list(sink.messages))
    accepted = set(tally.accepted)
    lost = sorted(accepted - set(delivered))
    duplicates = sum(n - 1 for r, n in delivered.items() if n > 1)
    unexpected = sorted(set(delivered) - accepted)
    refused = ",".join(f"{code}x{n}" for code, n in sorted(tally.refused.items())) or "0"
    print(
        f"RESULT {name} accepted={len(accepted)} delivered={len(set(delivered) & accepted)} lost={len(lost)} "
        f"duplicates={duplicates} delivered_unanswered={len(unexpected)} refused={refused} "
        f"no_answer={tally.no_answer} seconds={seconds:.0f}{' ' + note if note else ''}",
        flush=True,
    )
    if lost:
        print(f"  lost: {lost[:10]}", flush=True)
    return not lost


def message_for(recipient: str) -> bytes:
    """The test newsletter with a Message-ID of its own (duplicates are counted by it)."""
    return newsletter().replace(b"<spring-1@shop.example>", f"<{recipient}>".encode())


def send_many(listen, recipients: list[str], tally: Tally, clients: int, stop: threading.Event | None = None, resend: bool = True) -> None:
    def one(recipient: str) -> None:
        if resend:
            while not send_one(listen, recipient, tally, data=message_for(recipient)):
                if stop is not None and stop.is_set():
                    return
                time.sleep(0.2)
        else:
            send_one(listen, recipient, tally, data=message_for(recipient))

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, recipients))


def send_for(listen, prefix: str, seconds: float, tally: Tally, clients: int) -> None:
    """Clients sending new messages one after the other (each resent until 250) for ``seconds``."""
    deadline = time.monotonic() + seconds
    numbers = iter(range(10**9))
    lock = threading.Lock()

    def client() -> None:
        while time.monotonic() < deadline:
            with lock:
                recipient = f"{prefix}{next(numbers)}@example.org"
            while not send_one(listen, recipient, tally, data=message_for(recipient)):
                time.sleep(0.2)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


# -- the campaigns ------------------------------------------------------------------------------


def upstream_down(workdir: Path, args) -> bool:
    """The upstream refuses connections for ``--down-seconds`` while mail keeps coming, then
    comes back on the same port; the relay's own backoff (retry delay 10 s, at most 30 s here)
    must deliver everything without help."""
    url = migrated_sqlite(workdir)
    port = free_port()
    relay = RelayProcess(workdir, url, port, "--retry-delay", "10s", "--retry-max-delay", "30s")
    relay.start()
    tally = Tally()
    started = time.monotonic()
    count_down = max(1, args.messages // 10)
    recipients = [f"down{i}@example.org" for i in range(count_down)]
    pace = args.down_seconds / len(recipients)
    try:
        for recipient in recipients:  # spread over the outage
            send_one(relay.listen, recipient, tally, data=message_for(recipient))
            time.sleep(pace)
        spooled = relay.spooled()
        sink = sink_on(port)
        try:
            back = time.monotonic()
            ok = wait_delivered(sink, tally.accepted, None, timeout=args.down_seconds + 120)
            note = f"down_s={args.down_seconds} spooled_when_back={spooled} drain_s={time.monotonic() - back:.0f}"
            return count("upstream-down", tally, sink, time.monotonic() - started, note) and ok
        finally:
            sink.stop()
    finally:
        relay.stop()


def upstream_4xx(workdir: Path, args) -> bool:
    """The upstream answers 451 to every DATA for a while, then 250."""
    url = migrated_sqlite(workdir)
    sink = Upstream()
    sink.sink.reply = "451 4.3.0 try again later"
    sink.start()
    relay = RelayProcess(workdir, url, sink.port, "--retry-delay", "2s", "--retry-max-delay", "10s")
    relay.start()
    tally = Tally()
    started = time.monotonic()
    try:
        recipients = [f"t{i}@example.org" for i in range(max(1, args.messages // 5))]
        half = len(recipients) // 2
        send_many(relay.listen, recipients[:half], tally, 4)
        time.sleep(5)
        sink.sink.reply = None
        send_many(relay.listen, recipients[half:], tally, 4)
        ok = wait_delivered(sink, tally.accepted, None, timeout=180)
        return count("upstream-4xx-then-250", tally, sink, time.monotonic() - started) and ok
    finally:
        relay.stop()
        sink.stop()


def sqlite_locked(workdir: Path, args) -> bool:
    """Another connection holds SQLite's write lock (BEGIN EXCLUSIVE) for 8 s, then 8 s, then
    40 s (past the relay's 30 s busy timeout) and so on, while clients send: the relay waits or
    answers 451, and clients resend after a 451."""
    url = migrated_sqlite(workdir)
    sink = Upstream()
    sink.start()
    relay = RelayProcess(workdir, url, sink.port)
    relay.start()
    tally = Tally()
    stop = threading.Event()
    locks = 0

    def locker() -> None:
        nonlocal locks
        connection = sqlite3.connect(url.removeprefix("sqlite:///"), timeout=30, isolation_level=None)
        while not stop.is_set():
            connection.execute("BEGIN EXCLUSIVE")
            locks += 1
            stop.wait(40 if locks % 3 == 0 else 8)  # every third one outlasts the 30 s busy timeout
            connection.execute("COMMIT")
            stop.wait(2)
        connection.close()

    started = time.monotonic()
    thread = threading.Thread(target=locker)
    thread.start()
    try:
        recipients = [f"l{i}@example.org" for i in range(max(1, args.messages // 5))]
        send_many(relay.listen, recipients[: len(recipients) // 2], tally, 8)
        while locks < 3:  # the long lock
            time.sleep(0.5)
        send_many(relay.listen, recipients[len(recipients) // 2 :], tally, 8)
    finally:
        stop.set()
        thread.join()
    try:
        ok = wait_delivered(sink, tally.accepted, None, timeout=180)
        return count("sqlite-locked", tally, sink, time.monotonic() - started, f"exclusive_locks={locks}") and ok
    finally:
        relay.stop()
        sink.stop()


class PrivatePostgres:
    """A PostgreSQL cluster of this script's own, in a temporary directory, on a free port."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir / "pg"
        self.port = free_port()
        self.as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *command: str) -> None:
        subprocess.run([*self.as_postgres, *command], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

    def start(self) -> str:
        self.dir.mkdir()
        if self.as_postgres:
            shutil.chown(self.dir, "postgres")
            os.chmod(self.dir.parent, 0o755)
        data = str(self.dir / "data")
        self._run(str(PG_BIN / "initdb"), "-D", data, "-A", "trust", "-U", "postgres", "--no-sync")
        self._pg_ctl("start", "-w")
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _pg_ctl(self, *action: str) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.dir / "data"), "-o", options, "-l", str(self.dir / "log"), *action)

    def restart(self, mode: str) -> None:
        self._pg_ctl("restart", "-w", "-m", mode)

    def stop(self) -> None:
        try:
            self._pg_ctl("stop", "-m", "immediate")
        except subprocess.CalledProcessError:
            pass


def postgres_restart(workdir: Path, args) -> bool | None:
    """Clients send without pause for ``--pg-seconds`` while the relay's PostgreSQL restarts
    (fast or immediate shutdown, every 2 to 5 s): what was answered 250 arrives."""
    if not (PG_BIN / "initdb").exists():
        print(f"SKIP postgres-restart: no PostgreSQL binaries in {PG_BIN} (set HOTCLICKS_PG_BIN)", flush=True)
        return None
    pg = PrivatePostgres(workdir)
    url = pg.start()
    sink = Upstream()
    sink.start()
    relay = None
    try:
        engine = db.create_db_engine(url)
        db.upgrade(engine)
        engine.dispose()
        relay = RelayProcess(workdir, url, sink.port)
        relay.start()
        tally = Tally()
        stop = threading.Event()
        restarts = Counter()

        def restarter() -> None:
            rng = random.Random(args.seed)
            while not stop.wait(rng.uniform(2, 5)):
                mode = rng.choice(["fast", "immediate"])
                pg.restart(mode)
                restarts[mode] += 1

        started = time.monotonic()
        thread = threading.Thread(target=restarter)
        thread.start()
        try:
            send_for(relay.listen, "pg", args.pg_seconds, tally, 8)
        finally:
            stop.set()
            thread.join()
        ok = wait_delivered(sink, tally.accepted, relay, timeout=180)
        note = "restarts=" + ",".join(f"{m}x{n}" for m, n in sorted(restarts.items()))
        return count("postgres-restart", tally, sink, time.monotonic() - started, note) and ok
    finally:
        if relay is not None:
            relay.stop()
        sink.stop()
        pg.stop()


def sigkill(workdir: Path, args) -> bool:
    """The relay is killed with SIGKILL at random moments while clients send, and restarted at
    once; clients that got no answer or a 4xx resend. Duplicates (by Message-ID) are counted."""
    url = migrated_sqlite(workdir)
    sink = Upstream()
    sink.start()
    relay = RelayProcess(workdir, url, sink.port, "--retry-delay", "2s", "--retry-max-delay", "5s")
    relay.start()
    tally = Tally()
    stop = threading.Event()
    kills = 0

    def killer() -> None:
        nonlocal kills
        rng = random.Random(args.seed)
        while kills < args.kills and not stop.wait(rng.uniform(0.5, 4)):
            relay.kill()
            kills += 1
            relay.start()

    started = time.monotonic()
    thread = threading.Thread(target=killer)
    thread.start()
    try:
        send_many(relay.listen, [f"k{i}@example.org" for i in range(args.messages)], tally, 4)
    finally:
        stop.set()
        thread.join()
    try:
        ok = wait_delivered(sink, tally.accepted, relay, timeout=300)
        by_id = Counter(m.data.split(b"Message-ID: ", 1)[1].split(b"\r\n", 1)[0] for m in list(sink.messages))
        twice = [i.decode().strip("<>") for i, n in by_id.items() if n > 1]
        once = sum(tally.attempts[r] == 1 for r in twice)
        # sent once by its client: the spool's window (killed between the upstream's 250 and the
        # removal of the spool file); sent again: the client resent what it got no answer for
        note = f"kills={kills} duplicate_message_ids={len(twice)} (client sent once: {once}, resent: {len(twice) - once})"
        return count("sigkill", tally, sink, time.monotonic() - started, note) and ok
    finally:
        relay.stop()
        sink.stop()


CAMPAIGNS = {
    "upstream-down": upstream_down,
    "upstream-4xx": upstream_4xx,
    "sqlite-locked": sqlite_locked,
    "postgres-restart": postgres_restart,
    "sigkill": sigkill,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=3000, help="messages of the SIGKILL run (the others send a fraction)")
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--down-seconds", type=float, default=120)
    parser.add_argument("--pg-seconds", type=float, default=90, help="how long mail flows while PostgreSQL restarts")
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--only", default=",".join(CAMPAIGNS))
    args = parser.parse_args()
    failed = []
    for name in args.only.split(","):
        with tempfile.TemporaryDirectory(prefix=f"hc-{name}-") as workdir:
            if CAMPAIGNS[name](Path(workdir), args) is False:
                failed.append(name)
    if failed:
        print(f"FAILED: {', '.join(failed)}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
