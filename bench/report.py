"""Hot clicks report benchmark: JSON and page latency as an execution grows to millions of clicks.

One execution of one delivery (30 tracked links: 20 in the HTML, 10 in the text; two content
variants; ``--messages`` recipients) gets its clicks in bulk SQL (``generate_series`` on
PostgreSQL, a recursive CTE on SQLite), 5 % of them by machines, until it holds each of
``--sizes`` clicks. At each size the aggregates are brought up to date (the time that takes is
printed: ``fold_s``), then ``--tail`` more clicks are added and left unfolded, as a live system has
the clicks of its last minute, so the reports also count a live tail. The Flask app then answers
``--repeat`` times:

- ``json``: ``GET /hotclicks/api/deliveries/<code>/hot-clicks``;
- ``page``: the hot clicks page plus its email frame (the two requests a browser makes);
- ``compare``, ``within=24h``: the same with two executions compared (here the execution with
  itself: two reports) and with a time window (the hourly buckets);
- ``device=mobile``: the same filtered by a device family (the device aggregates);
- ``delivery``: the delivery page (URLs, click stream, cumulative curve, clicks by device family,
  top recipient domains).

Median milliseconds per request. Prints, per database, a line like
``RESULT report ours=<page ms at the largest size> ref=<page ms at the smallest> ratio=... ...``
(``report-pg`` for PostgreSQL). The target: under 100 ms at every size, ratio at most 1.5.

    python bench/report.py [--sizes 10000,1000000,5000000] [--no-pg | --no-sqlite] [--pg-url URL]
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flask import Flask  # noqa: E402
from sqlalchemy import Engine, create_engine, make_url, text  # noqa: E402

from flask_hotclicks import HotClicks  # noqa: E402
from hotclicks import db  # noqa: E402
from hotclicks.links import LinkSpec, variant_signature  # noqa: E402
from hotclicks.db import rollup, sending  # noqa: E402
from hotclicks.db.models import Delivery, DeliveryType, Execution, Recipient  # noqa: E402

CODE = "bench-news"
HTML_LINKS = 20
TEXT_LINKS = 10
T0 = dt.datetime(2026, 1, 5, 8, 0, tzinfo=dt.timezone.utc)


def _html(variant: str) -> str:
    links = "\n".join(
        f'<p><a href="https://shop.example/{variant if i == 0 else "item"}/{i}">Item {i}</a></p>' for i in range(HTML_LINKS)
    )
    return f"<!DOCTYPE html><html><head><title>Bench</title></head><body><h1>Bench</h1>{links}</body></html>"


TEXT = "\n".join(f"Item {i}: https://shop.example/text/{i}" for i in range(TEXT_LINKS))


def _seed_base(engine: Engine, messages: int) -> tuple[int, int, int, int]:
    """The delivery, its execution, its links and variants, and ``messages`` recipients and messages.

    Returns (execution id, first tracked URL id, number of tracked URLs, first message id).
    """
    sessions = db.session_factory(engine)
    with sessions.begin() as session:
        delivery = Delivery(code=CODE, type=DeliveryType.ONE_OFF, created_at=T0)
        session.add(delivery)
        session.flush()
        execution = Execution(delivery_id=delivery.id, key="v1", version="v1", started_at=T0, last_message_at=T0)
        session.add(execution)
        session.flush()
        variants = []
        for name in ("women", "men"):
            html = _html(name)
            from hotclicks.rewrite import find_html_links, find_text_links

            specs = [LinkSpec("html", link.key, link.url, None, link.label, link.index) for link in find_html_links(html)]
            specs += [LinkSpec("text", link.key, link.url, None, "", link.index) for link in find_text_links(TEXT)]
            sending.ensure_tracked_urls(session, execution, specs)
            variants.append(sending.ensure_variant(session, execution, variant_signature(specs), html=html, text=TEXT))
        session.add(Recipient(address="seed@example.org", created_at=T0))
        session.flush()
        execution_id = execution.id
        variant_ids = [v.id for v in variants]
    with engine.begin() as connection:
        first_url, count = connection.execute(
            text("SELECT MIN(id), COUNT(*) FROM hotclicks_tracked_url WHERE execution_id = :e"), {"e": execution_id}
        ).one()
        pg = engine.dialect.name == "postgresql"
        series = (
            "generate_series(1, CAST(:n AS BIGINT)) AS s(g)"
            if pg
            else "(WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < :n) SELECT g FROM s) AS s"
        )
        created = "TIMESTAMPTZ '2026-01-05 08:00:00+00'" if pg else "'2026-01-05 08:00:00.000000'"
        connection.execute(
            text(f"INSERT INTO hotclicks_recipient (address, tracking_opt_out, created_at) "
                 f"SELECT 'r' || g || '@example.org', false, {created} FROM {series}"),
            {"n": messages},
        )
        first_recipient = connection.execute(text("SELECT MIN(id) FROM hotclicks_recipient WHERE address LIKE 'r%'")).scalar()
        connection.execute(
            text(
                "INSERT INTO hotclicks_message (execution_id, recipient_id, variant_id, status, created_at, sent_at) "
                f"SELECT :e, :r + g - 1, CASE WHEN g % 2 = 0 THEN :v0 ELSE :v1 END, 'sent', {created}, {created} "
                f"FROM {series}"
            ),
            {"n": messages, "e": execution_id, "r": first_recipient, "v0": variant_ids[0], "v1": variant_ids[1]},
        )
        first_message = connection.execute(
            text("SELECT MIN(id) FROM hotclicks_message WHERE execution_id = :e"), {"e": execution_id}
        ).scalar()
    return execution_id, first_url, count, first_message


def _add_clicks(engine: Engine, start: int, n: int, first_url: int, urls: int, first_message: int, messages: int) -> None:
    """Clicks ``start`` to ``start + n - 1``: uneven over the links, 5 % by machines, 10 per second,
    from phones, desktops and tablets in turn."""
    pg = engine.dialect.name == "postgresql"
    if pg:
        series = "generate_series(CAST(:lo AS BIGINT), CAST(:hi AS BIGINT)) AS s(g)"
        at = "TIMESTAMPTZ '2026-01-05 09:00:00+00' + g * INTERVAL '100 milliseconds'"
        machine = "(g % 20 = 0)"
    else:
        series = "(WITH RECURSIVE s(g) AS (SELECT :lo UNION ALL SELECT g + 1 FROM s WHERE g < :hi) SELECT g FROM s) AS s"
        at = "strftime('%Y-%m-%d %H:%M:%f', '2026-01-05 09:00:00', '+' || (g / 10) || ' seconds')"
        machine = "(g % 20 = 0)"
    device = "CASE g % 3 WHEN 0 THEN 'mobile' WHEN 1 THEN 'desktop' ELSE 'tablet' END"
    step = 1_000_000
    with engine.begin() as connection:
        lo = start
        while lo < start + n:
            hi = min(start + n - 1, lo + step - 1)
            connection.execute(
                text(
                    "INSERT INTO hotclicks_click (message_id, tracked_url_id, clicked_at, user_agent, ip, is_machine, device) "
                    f"SELECT :m + (g * 7919) % :messages, :u + ((g % 1000) * (g % 1000)) % :urls, {at}, "
                    f"'Mozilla/5.0', NULL, {machine}, {device} FROM {series}"
                ),
                {"lo": lo, "hi": hi, "m": first_message, "messages": messages, "u": first_url, "urls": urls},
            )
            lo = hi + 1


def _median_ms(call: Any, repeat: int) -> float:
    call()  # warm up (and let the report note what to fold next)
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def run(url: str, sizes: list[int], messages: int, tail: int, repeat: int, label: str) -> dict[int, dict[str, float]]:
    engine = db.create_db_engine(url)
    db.upgrade(engine)
    execution_id, first_url, urls, first_message = _seed_base(engine, messages)
    app = Flask("bench_report")
    app.config.update(TESTING=True, HOTCLICKS_DATABASE_URL=url, HOTCLICKS_SECRET_KEY="bench-secret-key-0123456789abcdef",
                      HOTCLICKS_BASE_URL="http://127.0.0.1/t",
                      HOTCLICKS_ROLLUP_INTERVAL=0)  # the measured tail stays as seeded
    HotClicks(app)
    client = app.test_client()
    results: dict[int, dict[str, float]] = {}
    have = 0
    for size in sizes:
        started = time.perf_counter()
        _add_clicks(engine, have + 1, size - have, first_url, urls, first_message, messages)
        seeded = time.perf_counter() - started
        started = time.perf_counter()
        with db.session_factory(engine).begin() as session:
            rollup.roll_up(session, settle=0)
        folded = time.perf_counter() - started
        _add_clicks(engine, size + 1, tail, first_url, urls, first_message, messages)  # the live tail
        have = size + tail
        if engine.dialect.name == "postgresql":
            with engine.connect() as connection:
                connection.execute(text("ANALYZE"))
                connection.commit()

        def json_call() -> None:
            response = client.get(f"/hotclicks/api/deliveries/{CODE}/hot-clicks")
            assert response.status_code == 200
            assert response.get_json()["total_clicks"] > 0

        def page_call() -> None:
            page = client.get(f"/hotclicks/deliveries/{CODE}/hot-clicks")
            frame = client.get(f"/hotclicks/deliveries/{CODE}/hot-clicks/frame")
            assert page.status_code == 200 and frame.status_code == 200 and b"hc-badge" in frame.data

        def view_call(query: str) -> Any:
            def call() -> None:  # a page and its frame, with ``query``
                page = client.get(f"/hotclicks/deliveries/{CODE}/hot-clicks?{query}")
                frame = client.get(f"/hotclicks/deliveries/{CODE}/hot-clicks/frame?{query}")
                assert page.status_code == 200 and frame.status_code == 200
            return call

        def delivery_call() -> None:  # the delivery page: URLs, click stream and cumulative curve
            assert client.get(f"/hotclicks/deliveries/{CODE}").status_code == 200

        results[size] = {"json": _median_ms(json_call, repeat), "page": _median_ms(page_call, repeat),
                         # one execution here: compared with itself, the cost of two reports
                         "compare": _median_ms(view_call(f"compare={execution_id}"), repeat),
                         "within": _median_ms(view_call("within=24h"), repeat),
                         "device": _median_ms(view_call("device=mobile"), repeat),
                         "delivery": _median_ms(delivery_call, repeat),
                         "seed_s": seeded, "fold_s": folded}
        print(f"{label} {size:>9} clicks: json {results[size]['json']:.1f} ms, page+frame {results[size]['page']:.1f} ms,"
              f" compare {results[size]['compare']:.1f} ms, within=24h {results[size]['within']:.1f} ms,"
              f" device=mobile {results[size]['device']:.1f} ms,"
              f" delivery (curve, devices, domains) {results[size]['delivery']:.1f} ms"
              f" (seeded in {seeded:.1f} s, folded in {folded:.1f} s)", flush=True)
    app.extensions["hotclicks"].engine.dispose()
    engine.dispose()
    return results


def _short(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 and n % 1_000_000 == 0 else f"{n // 1000}K" if n % 1000 == 0 else str(n)


def result_line(name: str, results: dict[int, dict[str, float]]) -> str:
    sizes = sorted(results)
    ours, ref = results[sizes[-1]]["page"], results[sizes[0]]["page"]
    parts = [f"RESULT {name} ours={ours:.1f} ref={ref:.1f} ratio={ours / ref:.2f}"]
    for size in sizes:
        parts.append(f"json_{_short(size)}={results[size]['json']:.1f} page_{_short(size)}={results[size]['page']:.1f}")
    parts.append(f"fold_{_short(sizes[-1])}_s={sum(r['fold_s'] for r in results.values()):.1f}")
    return " ".join(parts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,1000000,5000000", help="click counts, comma-separated, increasing")
    parser.add_argument("--messages", type=int, default=200_000, help="recipients of the execution")
    parser.add_argument("--tail", type=int, default=1000, help="clicks left unfolded at each size")
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--no-pg", action="store_true", help="SQLite only")
    parser.add_argument("--no-sqlite", action="store_true", help="PostgreSQL only")
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    if sizes != sorted(set(sizes)) or sizes[0] <= 0:
        parser.error("--sizes must be distinct positive numbers")

    if not args.no_sqlite:
        with tempfile.TemporaryDirectory() as directory:
            results = run(f"sqlite:///{directory}/bench.sqlite3", sizes, args.messages, args.tail, args.repeat, "sqlite")
        print(result_line("report", results), flush=True)

    if args.no_pg:
        return
    url = make_url(args.pg_url)
    schema = f"hc_bench_{uuid.uuid4().hex[:10]}"
    try:
        admin = create_engine(url.set(drivername="postgresql+psycopg"))
        with admin.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:  # no server: say so and stop there
        print(f"PostgreSQL at {args.pg_url} unavailable ({exc.__class__.__name__}); skipped", flush=True)
        return
    try:
        pg_url = url.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)
        results = run(pg_url, sizes, args.messages, args.tail, args.repeat, "postgresql")
        print(result_line("report-pg", results), flush=True)
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


if __name__ == "__main__":
    main()
