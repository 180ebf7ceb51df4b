"""Bot rules benchmark: labelled traffic of people and machines through the real relay and routes.

A newsletter with 8 visible links (the first two clearly more attractive) goes through the
HotClicks relay (in this process, on a free port of 127.0.0.1) to ``--recipients`` recipients, and
an aiosmtpd sink keeps each forwarded copy. The behaviour model of ``example_app.traffic`` then
says what every mailbox does with its copy: people opening and clicking (quick readers, double
taps, several links, Gmail's image proxy, Safe Links' check before a person's click), Apple Mail
Privacy Protection's opens, and gateways' link scanners. Each event goes, in time order, to the
real click and open routes of a Flask app with ``HotClicks`` (its default bot rules), through the
Flask test client, with its headers and client address, the links parsed from the forwarded
copies. The routes' clock is set to the event's simulated time (delivery plus offset).

Then the database says which events were flagged (a HEAD is never recorded: it counts as
flagged), and ``hot_clicks_report`` gives the figures the hot clicks page shows. Prints a table
per behaviour, the targets beside the figures, and one line::

    RESULT bots precision=.. recall=.. people_flagged=.. report_error=.. share_error_pp=..
           opens_people_flagged=.. opens_machine_caught=..

precision and recall are of machine *clicks* (flagged ones that are machines' / machines' that
are flagged); people_flagged is the share of people's clicks flagged; report_error is the sum over
links of |clicks counted - people's clicks| over all people's clicks; share_error_pp the largest
difference, over links, between the share the report shows and people's share, in points.

    python bench/bots.py [--seed 1] [--recipients 400] [--database-url postgresql://...]
    bench/run bots
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import email
import email.policy
import re
import smtplib
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from unittest import mock
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiosmtpd.controller import Controller  # noqa: E402
from flask import Flask  # noqa: E402
from sqlalchemy import select  # noqa: E402

import flask_hotclicks.tracking  # noqa: E402
from example_app import traffic  # noqa: E402
from flask_hotclicks import HotClicks  # noqa: E402
from hotclicks import db  # noqa: E402
from hotclicks.db.models import Click, Delivery, Message, Open, Recipient, TrackedUrl  # noqa: E402
from hotclicks.links import TRAP_LINK_NAME  # noqa: E402
from hotclicks.db.stats import delivery_executions, hot_clicks_report  # noqa: E402
from smtp_relay import RelayConfig, RelayController  # noqa: E402

BASE_URL = "http://t.bench.example/t"
SECRET_KEY = "bench-secret-key-0123456789abcdef"
#: The newsletter's visible links, in the order of the HTML (the model's weights follow it).
LINKS = [
    "https://shop.example/spring-sale",
    "https://shop.example/new-arrivals",
    "https://shop.example/women",
    "https://shop.example/men",
    "https://shop.example/kids",
    "https://blog.example/spring-story",
    "https://shop.example/stores",
    "https://shop.example/help",
]
#: Targets: (name, limit, whether the figure must be at most the limit).
TARGETS = {
    "report_error": (0.03, True),
    "share_error_pp": (1.0, True),
    "precision": (0.97, False),
    "recall": (0.95, False),
    "opens_people_flagged": (0.02, True),
}
_CLICK = re.compile(re.escape(BASE_URL) + r"/c/[A-Za-z0-9_.-]+")
_OPEN = re.compile(re.escape(BASE_URL) + r"/o/[A-Za-z0-9_.-]+")
#: The hidden trap link's href (the relay writes it as ``hotclicks.rewrite.TRAP_TEMPLATE``).
_TRAP = re.compile(r'<a href="(' + re.escape(BASE_URL) + r'/c/[A-Za-z0-9_.-]+)" style="display:none')


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def newsletter(delivery: str) -> bytes:
    """An HTML newsletter with the LINKS, the first two as the big buttons."""
    from email.message import EmailMessage

    items = "\n".join(
        f'<p><a href="{url}" style="{"font-size:24px;font-weight:bold" if i < 2 else ""}">Link {i}</a></p>'
        for i, url in enumerate(LINKS)
    )
    message = EmailMessage()
    message["From"] = "Shop <news@shop.example>"
    message["To"] = "subscribers@shop.example"
    message["Subject"] = "Spring news"
    message["Message-ID"] = f"<{delivery}@shop.example>"
    message["X-HotClicks-Delivery"] = delivery
    message.set_content(f"<!DOCTYPE html><html><body><h1>Spring</h1>\n{items}\n</body></html>\n", subtype="html")
    return message.as_bytes(policy=email.policy.SMTP)


class Sink:
    def __init__(self) -> None:
        self.copies: dict[str, bytes] = {}

    async def handle_DATA(self, server, session, envelope):
        for rcpt in envelope.rcpt_tos:
            self.copies[rcpt] = envelope.original_content
        return "250 2.0.0 OK"


def send_through_relay(database_url: str, workdir: Path, addresses: list[str], delivery: str) -> dict[str, bytes]:
    """The newsletter through the real relay to ``addresses``; each recipient's forwarded copy."""
    sink = Sink()
    upstream = Controller(sink, hostname="127.0.0.1", port=free_port(), decode_data=False)
    upstream.start()
    config = RelayConfig(
        listen=("127.0.0.1", free_port()),
        upstream=("127.0.0.1", upstream.port),
        database_url=database_url,
        base_url=BASE_URL,
        secret_key=SECRET_KEY,
        hostname="relay.bench",
        spool_dir=str(workdir / "spool"),
    )
    relay = RelayController(config)
    relay.start()
    try:
        data = newsletter(delivery)
        with smtplib.SMTP("127.0.0.1", config.listen[1], timeout=120) as client:
            for i in range(0, len(addresses), 500):
                client.sendmail("news@shop.example", addresses[i : i + 500], data)
        relay.wait_idle(120)
        deadline = time.monotonic() + 60
        while len(sink.copies) < len(addresses) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        relay.stop()
        upstream.stop()
    if len(sink.copies) < len(addresses):
        raise SystemExit(f"the sink got {len(sink.copies)} of {len(addresses)} copies")
    return sink.copies


def routes_of(copy: bytes) -> tuple[dict[str, str], str]:
    """The paths of a copy's tracked links (by LINKS' targets, and the hidden trap link as
    ``traffic.TRAP``) and of its open pixel."""
    html = email.message_from_bytes(copy, policy=email.policy.default).get_body(("html",)).get_content()
    traps = _TRAP.findall(html)
    clicks = [href for href in dict.fromkeys(_CLICK.findall(html)) if href not in traps]
    opens = _OPEN.findall(html)
    if len(clicks) != len(LINKS) or len(traps) != 1 or not opens:
        raise SystemExit(f"a forwarded copy has {len(clicks)} tracked links, {len(traps)} trap links and {len(opens)} pixels")
    paths = {link: urlsplit(href).path for link, href in zip(LINKS, clicks)}
    paths[traffic.TRAP] = urlsplit(traps[0]).path
    return paths, urlsplit(opens[0]).path


def _key(at: dt.datetime) -> int:
    """An instant in whole microseconds since the epoch, whatever the database gave back."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=dt.timezone.utc)
    return round(at.timestamp() * 1_000_000)


def run(database_url: str, workdir: Path, seed: int, count: int) -> dict[str, float]:
    engine = db.create_db_engine(database_url)
    db.upgrade(engine)
    sessions = db.session_factory(engine)
    delivery = f"bench-bots-{uuid.uuid4().hex[:8]}"
    # The model draws from the recipients' names, the same in every run; their addresses are
    # this run's own, so a database used before is no trouble.
    names = [f"r{i}@example.org" for i in range(count)]
    addresses = [f"r{i}-{delivery}@example.org" for i in range(count)]
    address_of = dict(zip(names, addresses))

    started = time.perf_counter()
    copies = send_through_relay(database_url, workdir, addresses, delivery)
    print(f"relay: {len(copies)} copies forwarded in {time.perf_counter() - started:.1f} s")

    with sessions() as session:
        rows = session.execute(
            select(Recipient.address, Message.id, Message.sent_at, Message.created_at)
            .join(Message, Message.recipient_id == Recipient.id)
            .where(Recipient.address.in_(addresses))
        ).all()
    messages = {address: (mid, sent_at or created_at) for address, mid, sent_at, created_at in rows}
    routes = {address: routes_of(copies[address]) for address in addresses}

    model = [dataclasses.replace(e, message=address_of[e.message]) for e in traffic.events(names, LINKS, seed, trap=True)]
    timeline = sorted(
        ((messages[e.message][1] + dt.timedelta(seconds=e.at), i, e) for i, e in enumerate(model)),
        key=lambda t: (t[0], t[1]),
    )
    app = Flask("bench-bots")
    app.config.update(HOTCLICKS_DATABASE_URL=database_url, HOTCLICKS_SECRET_KEY=SECRET_KEY, HOTCLICKS_BASE_URL=BASE_URL)
    HotClicks(app)
    client = app.test_client()
    now = [dt.datetime.now(dt.timezone.utc)]
    started = time.perf_counter()
    with mock.patch.object(flask_hotclicks.tracking, "utcnow", lambda: now[0]):
        for at, _, event in timeline:
            now[0] = at
            click_paths, open_path = routes[event.message]
            path = open_path if event.kind == "open" else click_paths[event.link]
            response = client.open(
                path, method=event.method, headers=dict(event.headers), environ_base={"REMOTE_ADDR": event.address}
            )
            if response.status_code not in (200, 204, 302):
                raise SystemExit(f"{event.kind} {path} answered {response.status_code}")
    print(f"routes: {len(timeline)} requests replayed in {time.perf_counter() - started:.1f} s")

    # What the database says of each event (an event not recorded, a HEAD, counts as flagged).
    ids = {mid: address for address, (mid, _) in messages.items()}
    with sessions() as session:
        clicks = {
            (ids.get(m), u, _key(at)): machine
            for m, u, at, machine in session.execute(
                select(Click.message_id, Click.tracked_url_id, Click.clicked_at, Click.is_machine)
                .where(Click.message_id.in_(list(ids)))
            )
        }
        opens = {
            (ids.get(m), _key(at)): machine
            for m, at, machine in session.execute(
                select(Open.message_id, Open.opened_at, Open.is_machine).where(Open.message_id.in_(list(ids)))
            )
        }
        execution = delivery_executions(session, session.scalars(select(Delivery).where(Delivery.code == delivery)).one())[0]
        report = hot_clicks_report(session, execution)
        urls = {f.tracked_url.url: f.tracked_url.id for f in report.links}
        urls[traffic.TRAP] = session.scalars(
            select(TrackedUrl.id).where(TrackedUrl.execution_id == execution.id, TrackedUrl.name == TRAP_LINK_NAME)
        ).one()
        counted = {f.tracked_url.url: f.shown_clicks for f in report.links}
        shown = {f.tracked_url.url: f.percent for f in report.links}
    app.extensions["hotclicks"].dispose()
    engine.dispose()

    table: dict[str, Counter[str]] = defaultdict(Counter)
    outcome = Counter()  # (kind, label, flagged)
    for at, _, event in timeline:
        if event.kind == "click":
            flagged = clicks.get((event.message, urls[event.link], _key(at)), True)
        else:
            flagged = opens.get((event.message, _key(at)), True)
        row = table[f"{event.kind}:{event.behaviour}"]
        row["events"] += 1
        row["flagged"] += int(flagged)
        row["expected"] += int(event.label == traffic.MACHINE)
        outcome[event.kind, event.label, flagged] += 1

    people = Counter(e.link for _, _, e in timeline if e.kind == "click" and e.label == traffic.PERSON)
    total = sum(people.values()) or 1
    true_pos = outcome["click", traffic.MACHINE, True]
    figures = {
        "precision": true_pos / max(true_pos + outcome["click", traffic.PERSON, True], 1),
        "recall": true_pos / max(true_pos + outcome["click", traffic.MACHINE, False], 1),
        "people_flagged": outcome["click", traffic.PERSON, True]
        / max(outcome["click", traffic.PERSON, True] + outcome["click", traffic.PERSON, False], 1),
        "report_error": sum(abs(counted.get(link, 0) - people[link]) for link in LINKS) / total,
        "share_error_pp": max(abs(shown.get(link, 0.0) - 100.0 * people[link] / total) for link in LINKS),
        "opens_people_flagged": outcome["open", traffic.PERSON, True]
        / max(outcome["open", traffic.PERSON, True] + outcome["open", traffic.PERSON, False], 1),
        "opens_machine_caught": outcome["open", traffic.MACHINE, True]
        / max(outcome["open", traffic.MACHINE, True] + outcome["open", traffic.MACHINE, False], 1),
    }

    print(f"\n{'behaviour':34} {'label':8} {'events':>7} {'flagged':>8} {'expected':>9}")
    for name in sorted(table, key=lambda n: (n.split(":")[0], traffic.BEHAVIOURS[n.split(":")[1]], n)):
        row = table[name]
        label = traffic.BEHAVIOURS[name.split(":")[1]]
        mark = "" if row["flagged"] == row["expected"] else "  <-"
        print(f"{name:34} {label:8} {row['events']:7d} {row['flagged']:8d} {row['expected']:9d}{mark}")
    print(f"\n{'link':40} {'people':>7} {'counted':>8} {'people %':>9} {'shown %':>8}")
    for link in LINKS:
        print(f"{link:40} {people[link]:7d} {counted.get(link, 0):8d} {100.0 * people[link] / total:9.1f} {shown.get(link, 0.0):8.1f}")
    print(f"\n{'figure':22} {'value':>8}  target")
    for name, value in figures.items():
        if name in TARGETS:
            limit, at_most = TARGETS[name]
            verdict = "PASS" if (value <= limit if at_most else value >= limit) else "FAIL"
            print(f"{name:22} {value:8.3f}  {'<=' if at_most else '>='} {limit:g}  {verdict}")
        else:
            print(f"{name:22} {value:8.3f}  (no target)")
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--recipients", type=int, default=400)
    parser.add_argument("--database-url", help="an empty or HotClicks database (default: SQLite in a temporary directory)")
    args = parser.parse_args(argv)
    if args.recipients < 1:
        parser.error("--recipients must be at least 1")
    with tempfile.TemporaryDirectory(prefix="hotclicks-bench-bots-") as tmp:
        workdir = Path(tmp)
        url = args.database_url or f"sqlite:///{workdir / 'bots.sqlite3'}"
        started = time.perf_counter()
        figures = run(url, workdir, args.seed, args.recipients)
        print(f"\nseed={args.seed} recipients={args.recipients} in {time.perf_counter() - started:.1f} s")
    print("RESULT bots " + " ".join(f"{name}={value:.3f}" for name, value in figures.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
