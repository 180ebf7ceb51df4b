"""Relay benchmark: messages/s through the HotClicks relay against a pass-through relay.

Both relays run as their own process on 127.0.0.1 and forward to the same aiosmtpd sink (a process
of its own). The HotClicks relay does its whole job: resolves the execution and records one row
per recipient in the database (SQLite in a temporary directory, or ``--database-url``), rewrites
every link of a 60 KB newsletter (built as a Python sender builds it: see :func:`newsletter`),
fsyncs each copy into its spool before answering 250, then forwards from the spool over its 8
upstream connections. The pass-through relay (aiosmtpd +
aiosmtplib, 8 upstream connections kept open and reused, as the relay does) forwards each message
unchanged before answering 250. Every server names itself, so none pays ``socket.getfqdn()`` per
connection.

Throughput is measured end to end: from the first message sent to the last one received by the
sink, with 1 and 8 concurrent senders (each sender one smtplib connection, sending in a loop).
Rounds alternate direct, pass-through and relay runs, after a warm-up of each relay; the median is
reported.

    python bench/relay.py [--messages 300] [--rounds 5] [--database-url postgresql://...] [--dkim-key-file KEY]
    bench/run relay    # the same, with the defaults

Prints one line per concurrency, like
``RESULT relay senders=8 passthrough_mps=... relay_mps=... ratio=... paired_ratio=...
relay_cpu_ms=... passthrough_cpu_ms=... cpu_ratio=...`` (medians of ``--rounds``; ``paired_ratio``
is the median of each round's relay/pass-through ratio, steadier on a busy machine; the lines
before it give every round and the load average), and ``RESULT relay-direct senders=...
direct_mps=...`` for sending straight to the sink. ``*_cpu_ms`` is the CPU time (user and system)
per message of every process of that relay (with ``--processes``, its supervisor and relay
processes; the rewrite workers), from ``/proc``. With ``--stages``, the relay also keeps its CPU
time per stage (:mod:`smtp_relay.timings`) and a ``stages`` line gives it per message.

    python bench/relay.py --processes 2 --stages     # two relay processes, and where their CPU goes
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE_URL = "https://t.example.com/t"
SECRET_KEY = "bench-secret-key-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def newsletter(size: int = 60_000) -> bytes:
    """A newsletter of about ``size`` bytes as a Python sender writes it: 50-odd links, 30 distinct.

    Built with the standard library's ``EmailMessage`` (``set_content`` of a short text part with
    10 links, ``add_alternative`` of a templated HTML part with a link per product plus navigation
    and footer links), which, like Flask-Mailman, never sends a line over RFC 5322's 998 octets:
    HTML with lines over 78 characters and a few non-ASCII characters goes quoted-printable, the
    text part 7bit.
    """
    from email.message import EmailMessage
    from email.policy import SMTP

    def product(i: int) -> str:
        return (
            "        <tr>\n"
            '          <td class="product" style="padding:16px 24px;font-family:Helvetica,Arial,sans-serif;'
            'font-size:15px;line-height:22px;color:#333333;">\n'
            f'            <a href="https://shop.example/product/{i % 30}?utm_source=newsletter&amp;utm_medium=email'
            f'&amp;utm_campaign=spring" style="color:#0066cc;text-decoration:none;font-weight:bold;">'
            f"Product {i} \u2013 spring collection</a>\n"
            f'            <p style="margin:8px 0 0 0;">Now {19 + i % 40},99 \u20ac with free delivery on orders over '
            "50 \u20ac. Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor "
            "incididunt ut labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation "
            "ullamco laboris nisi ut aliquip ex ea commodo consequat.</p>\n"
            '            <p style="margin:8px 0 0 0;color:#666666;font-size:13px;">Duis aute irure dolor in '
            "reprehenderit in voluptate velit esse cillum dolore eu fugiat nulla pariatur. Excepteur sint "
            "occaecat cupidatat non proident, sunt in culpa qui officia deserunt mollit anim id est laborum.</p>\n"
            "          </td>\n"
            "        </tr>\n"
        )

    head = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n  <meta charset="utf-8">\n'
        '  <meta name="viewport" content="width=device-width, initial-scale=1">\n  <title>Spring news</title>\n'
        '</head>\n<body style="margin:0;padding:0;background-color:#f4f4f4;">\n'
        '  <table role="presentation" width="100%" cellpadding="0" cellspacing="0" border="0">\n'
    ) + "".join(
        f'    <tr><td style="padding:4px 24px;"><a href="https://shop.example/{name}?utm_source=newsletter'
        f'&amp;utm_medium=email" style="color:#333333;">{name.title()}</a></td></tr>\n'
        for name in ("women", "men", "kids", "home", "sale")
    )
    foot = (
        '    <tr><td style="padding:24px;font-size:12px;color:#999999;">You receive this because you '
        'subscribed at shop.example. <a href="https://shop.example/preferences" style="color:#999999;">'
        'Preferences</a> \u00b7 <a href="https://shop.example/privacy" style="color:#999999;">Privacy</a>'
        "</td></tr>\n  </table>\n</body>\n</html>\n"
    )
    text = (
        "Spring news from the shop\n\n"
        + "".join(f"Product {i}: https://shop.example/product/{i}\n" for i in range(10))
        + "\nPreferences: https://shop.example/preferences\n"
    )
    products: list[str] = []
    while True:
        message = EmailMessage()
        message["From"] = "Shop <news@shop.example>"
        message["To"] = "subscribers@shop.example"
        message["Subject"] = "Spring news"
        message["Message-ID"] = "<bench@shop.example>"
        message["X-HotClicks-Delivery"] = "bench-news"
        message.set_content(text)
        message.add_alternative(head + "".join(products) + foot, subtype="html")
        data = message.as_bytes(policy=SMTP)
        if len(data) >= size:
            return data
        products.append(product(len(products)))


# -- the sink and the pass-through relay (each in a process of its own) ----------------------------


def _sink(port: int, count, ready) -> None:
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import SMTP

    class Sink:
        async def handle_DATA(self, server, session, envelope):
            with count.get_lock():
                count.value += 1
            return "250 2.0.0 OK"

    class LongLines(SMTP):
        line_length_limit = 256 * 1024

    class Server(Controller):
        def factory(self):
            return LongLines(self.handler, **self.SMTP_kwargs)

    # A fixed server name: without one aiosmtpd calls socket.getfqdn() for every connection, on
    # its event loop (about 3 ms here), which would tax whichever side opens more connections.
    server = Server(Sink(), hostname="127.0.0.1", port=port, data_size_limit=None, server_hostname="sink.bench")
    server.start()
    ready.set()
    threading.Event().wait()


def serve_passthrough(port: int, upstream: int, connections: int = 8) -> None:
    """aiosmtpd receiving, aiosmtplib forwarding each message unchanged before answering 250.

    Like the HotClicks relay, it keeps ``connections`` upstream connections open and reuses them
    (opening one per message would cost a connection setup and an EHLO per message and make the
    reference needlessly slow), and it names itself (no ``getfqdn()`` per connection).
    """
    import aiosmtplib
    from aiosmtpd.smtp import SMTP

    class Proxy:
        def __init__(self) -> None:
            self.pool: asyncio.Queue[aiosmtplib.SMTP | None] = asyncio.Queue()
            for _ in range(connections):
                self.pool.put_nowait(None)

        async def handle_DATA(self, server, session, envelope):
            client = await self.pool.get()
            try:
                if client is None or not client.is_connected:
                    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=upstream, start_tls=False, local_hostname="passthrough.bench")
                    await client.connect()
                await client.sendmail(envelope.mail_from, envelope.rcpt_tos, envelope.original_content)
            except (aiosmtplib.SMTPException, OSError):
                if client is not None:
                    client.close()
                client = None
                return "451 4.4.1 upstream unavailable"
            finally:
                self.pool.put_nowait(client)
            return "250 2.0.0 OK"

    class LongLines(SMTP):
        line_length_limit = 256 * 1024

    async def main() -> None:
        loop = asyncio.get_running_loop()
        proxy = Proxy()
        server = await loop.create_server(
            lambda: LongLines(proxy, decode_data=False, data_size_limit=None, hostname="passthrough.bench", loop=loop),
            "127.0.0.1",
            port,
        )
        print("listening", flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# -- measuring ---------------------------------------------------------------------------------------


def wait_port(port: int, process: subprocess.Popen | None = None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise SystemExit(f"server on port {port} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on port {port} after {timeout} s")


def blast(port: int, senders: int, messages: int, data: bytes, count, timeout: float = 300) -> float:
    """Send ``messages`` in all over ``senders`` connections; messages/s until the sink has them all."""
    start_count = count.value
    per_sender = [messages // senders + (1 if i < messages % senders else 0) for i in range(senders)]
    errors: list[BaseException] = []

    def sender(n: int, index: int) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
                for k in range(n):
                    client.sendmail("news@shop.example", [f"s{index}-{k}@example.org"], data)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=sender, args=(n, i)) for i, n in enumerate(per_sender)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    if errors:
        raise SystemExit(f"sending failed: {errors[0]!r}")
    deadline = time.monotonic() + timeout
    while count.value - start_count < messages:
        if time.monotonic() > deadline:
            raise SystemExit(f"the sink got {count.value - start_count} of {messages} messages")
        time.sleep(0.002)
    return messages / (time.perf_counter() - started)


_TICK = os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    found = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [int(child) for child in children.read_text().split()]
        except OSError:  # the thread ended meanwhile
            pass
    return found


def tree_cpu(pid: int) -> float:
    """CPU seconds (user and system) used so far by ``pid`` and every living process below it."""
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        total += (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime
        todo += _children(current)
    return total


def stage_times(path: Path) -> str:
    """The relay's CPU per message and stage (ms), summed over its processes' lines."""
    seconds: dict[str, float] = {}
    transactions = 0
    for line in path.read_text().splitlines() if path.exists() else []:
        values = json.loads(line)
        transactions += values["transactions"]
        for stage, value in values["seconds"].items():
            seconds[stage] = seconds.get(stage, 0.0) + value
    if not transactions:
        return "no stage times"
    order = ("loop", "decide", "record", "render", "spool")
    return " ".join(f"{stage}_ms={seconds.get(stage, 0.0) * 1000 / transactions:.2f}" for stage in order)


def start_relay(
    kind: str, sink_port: int, workdir: Path, database_url: str, relay_args: list[str] | None = None,
    stages: Path | None = None,
) -> tuple[subprocess.Popen, int]:
    port = free_port()
    if kind == "passthrough":
        command = [sys.executable, __file__, "--serve-passthrough", str(port), str(sink_port)]
    else:
        spool = workdir / f"spool-{port}"
        command = [
            sys.executable, "-m", "smtp_relay", "--listen", f"127.0.0.1:{port}",
            "--upstream", f"127.0.0.1:{sink_port}", "--database-url", database_url,
            "--base-url", BASE_URL, "--secret-key", SECRET_KEY, "--spool-dir", str(spool),
            "--log-level", "WARNING", "--hostname", "relay.bench", *(relay_args or []),
        ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOTCLICKS_")}
    if stages is not None and kind == "relay":
        env["HOTCLICKS_STAGE_TIMES"] = str(stages)
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    wait_port(port, process)
    return process, port


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _fresh_schema(url: str):
    """A URL of ``url``'s server pointing at a new, empty schema; and how to drop it."""
    import uuid

    from sqlalchemy import create_engine, make_url, text

    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise SystemExit("--database-url must be a postgresql:// URL")
    schema = f"hc_bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(parsed.set(drivername="postgresql+psycopg"))
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))

    def drop() -> None:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()

    scoped = parsed.update_query_dict({"options": f"-csearch_path={schema}"})
    return scoped.render_as_string(hide_password=False), drop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=300, help="messages per measurement (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating runs per concurrency (default: %(default)s)")
    parser.add_argument("--senders", default="1,8", help="concurrencies (default: %(default)s)")
    parser.add_argument(
        "--database-url",
        help="a PostgreSQL server to record into (a schema of its own, dropped afterwards); "
        "default: SQLite in a temporary directory",
    )
    parser.add_argument(
        "--rewrite-workers",
        help="the relay's --rewrite-workers (default: the relay's own default, auto)",
    )
    parser.add_argument(
        "--processes",
        help="the relay's --processes (default: the relay's own default, auto)",
    )
    parser.add_argument(
        "--stages", action="store_true",
        help="have the relay keep its CPU time per stage and print it per message",
    )
    parser.add_argument(
        "--dkim-key-file",
        help="a PEM private key: the relay DKIM-signs every copy with it (selector bench, domain shop.example)",
    )
    parser.add_argument("--serve-passthrough", nargs=2, type=int, metavar=("PORT", "UPSTREAM"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_passthrough:
        serve_passthrough(*args.serve_passthrough)
        return

    sys.path.insert(0, str(ROOT))
    from hotclicks import db

    data = newsletter()
    workdir = Path(tempfile.mkdtemp(prefix="hotclicks-bench-relay-"))
    sink_port = free_port()
    count = multiprocessing.Value("q", 0)
    ready = multiprocessing.Event()
    sink = multiprocessing.Process(target=_sink, args=(sink_port, count, ready), daemon=True)
    sink.start()
    processes: list[subprocess.Popen] = []
    drop_schema = None
    try:
        ready.wait(30)
        database_url = f"sqlite:///{workdir / 'hotclicks.sqlite3'}"
        if args.database_url:
            database_url, drop_schema = _fresh_schema(args.database_url)
        engine = db.create_db_engine(database_url)
        db.upgrade(engine)
        engine.dispose()
        backend = engine.url.get_backend_name()
        print(
            f"message size {len(data)} bytes; {args.messages} messages per run; {args.rounds} rounds; "
            f"{os.cpu_count()} CPUs; database {backend}"
        )
        for senders in [int(s) for s in args.senders.split(",")]:
            results: dict[str, list[float]] = {"direct": [], "passthrough": [], "relay": []}
            cpu: dict[str, list[float]] = {"passthrough": [], "relay": []}
            relays = {}
            stages = workdir / f"stages-{senders}.jsonl" if args.stages else None
            for kind in ("passthrough", "relay"):
                relay_args = ["--rewrite-workers", args.rewrite_workers] if args.rewrite_workers else []
                if args.processes:
                    relay_args += ["--processes", args.processes]
                if args.dkim_key_file:
                    relay_args += ["--dkim-key-file", args.dkim_key_file, "--dkim-selector", "bench", "--dkim-domain", "shop.example"]
                process, port = start_relay(kind, sink_port, workdir, database_url, relay_args, stages)
                processes.append(process)
                relays[kind] = (port, process.pid)
                blast(port, senders, min(50, args.messages), data, count)  # warm up
            for _ in range(args.rounds):
                results["direct"].append(blast(sink_port, senders, args.messages, data, count))
                for kind, (port, pid) in relays.items():
                    before = tree_cpu(pid)
                    results[kind].append(blast(port, senders, args.messages, data, count))
                    cpu[kind].append((tree_cpu(pid) - before) * 1000 / args.messages)
            for process in processes:
                stop(process)
            processes.clear()
            direct, passthrough, relay = (statistics.median(results[k]) for k in ("direct", "passthrough", "relay"))
            # Each round runs the pass-through and the relay back to back: the ratio within a round
            # is less at the mercy of other load on the machine than the ratio of the medians.
            paired = [r / p for r, p in zip(results["relay"], results["passthrough"])]
            print(
                f"rounds senders={senders}: "
                + "; ".join(
                    f"direct {d:.0f} passthrough {p:.0f} relay {r:.0f}"
                    for d, p, r in zip(results["direct"], results["passthrough"], results["relay"])
                )
                + f"; load average {os.getloadavg()[0]:.1f}"
            )
            if stages is not None:
                print(f"stages senders={senders} (CPU per message, warm-up included): {stage_times(stages)}")
            relay_cpu, passthrough_cpu = statistics.median(cpu["relay"]), statistics.median(cpu["passthrough"])
            print(f"RESULT relay-direct senders={senders} direct_mps={direct:.1f}")
            print(
                f"RESULT relay senders={senders} passthrough_mps={passthrough:.1f} relay_mps={relay:.1f} "
                f"ratio={relay / passthrough:.2f} paired_ratio={statistics.median(paired):.2f} "
                f"passthrough_vs_direct={passthrough / direct:.2f} relay_cpu_ms={relay_cpu:.2f} "
                f"passthrough_cpu_ms={passthrough_cpu:.2f} cpu_ratio={relay_cpu / passthrough_cpu:.2f}",
                flush=True,
            )
    finally:
        for process in processes:
            stop(process)
        sink.terminate()
        sink.join(10)
        shutil.rmtree(workdir, ignore_errors=True)
        if drop_schema is not None:
            drop_schema()


if __name__ == "__main__":
    main()
