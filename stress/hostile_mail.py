"""Hostile mail, full version: thousands of mutated corpus messages and every pathological case
of ``tests/test_hardening_mail.py`` through a relay process, with the same checks.

    python stress/hostile_mail.py [--messages 3000] [--clients 4] [--seed 8] [--database-url URL]

The relay runs as ``python -m smtp_relay`` (a crash is a process that exits) on 127.0.0.1 and
forwards to an aiosmtpd sink in this process; SQLite in a temporary directory unless
``--database-url`` names an empty, migrated database. Each message goes to a recipient of its
own. Checks, as the test defines them (:func:`tests.test_hardening_mail.check_forwarded`): every
send answered within the hang bound; the relay process alive at the end; every message answered
250 delivered once, as the same MIME tree; a message the relay cannot parse forwarded unchanged
with a ``forwarded-unchanged`` incident. Prints the relay's answer time for each pathological
message, then ``RESULT hostile-mail ...``; exits non-zero on any failure. Needs ../shared/corpus
(or HOTCLICKS_CORPUS).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import select  # noqa: E402

from hotclicks import db  # noqa: E402
from hotclicks.db.models import RelayIncident  # noqa: E402
from smtp_relay.incidents import INCIDENT_UNPARSED  # noqa: E402
from stress.relay_faults import RelayProcess, migrated_sqlite, wait_delivered  # noqa: E402
from tests.conftest import CORPUS, Upstream  # noqa: E402
from tests.test_hardening_mail import (  # noqa: E402
    HANG_BOUND,
    MUTATIONS,
    Answer,
    check_forwarded,
    corpus_bases,
    mutate,
    pathological,
    relay_can_parse,
    send_raw,
    smtp_bytes,
    too_long_for_smtp,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--database-url", help="an empty database migrated to the newest revision")
    args = parser.parse_args()
    if not CORPUS.is_dir():
        print(f"SKIP hostile-mail: no corpus at {CORPUS} (set HOTCLICKS_CORPUS)")
        return 0
    bases = corpus_bases()
    rng = random.Random(args.seed)
    messages: dict[str, tuple[str, bytes]] = {}  # recipient -> (what it is, the bytes)
    for name, data in pathological().items():
        messages[f"{name}@example.org"] = (name, data)
    for i in range(args.messages):
        base_name, base = rng.choice(bases)
        steps = [(rng.randrange(len(MUTATIONS)), rng.randrange(2**32)) for _ in range(rng.randint(1, 4))]
        messages[f"m{i}@example.org"] = (f"{base_name} {steps}", mutate(base, steps, tracked=rng.random() < 0.9))

    with tempfile.TemporaryDirectory(prefix="hc-hostile-") as workdir:
        url = args.database_url or migrated_sqlite(Path(workdir))
        sink = Upstream()
        sink.start()
        relay = RelayProcess(Path(workdir), url, sink.port)
        relay.start()
        answers: dict[str, Answer] = {}
        failures: list[str] = []
        started = time.monotonic()
        try:
            print("pathological messages, the relay's answer time (SMTP DATA to 250) each:", flush=True)
            for recipient, (name, data) in messages.items():
                if not recipient.startswith("m"):
                    answers[recipient] = send_raw(relay.listen, recipient, data)
                    print(f"  {name:18} {len(data):>10,} bytes  {answers[recipient].code}  {answers[recipient].seconds:7.2f} s", flush=True)

            def one(recipient: str) -> None:
                try:
                    answers[recipient] = send_raw(relay.listen, recipient, messages[recipient][1])
                except OSError as exc:
                    answers[recipient] = Answer(0, f"no answer: {exc}", HANG_BOUND)

            with ThreadPoolExecutor(args.clients) as pool:
                list(pool.map(one, [r for r in messages if r.startswith("m")]))
            sent_seconds = time.monotonic() - started
            accepted = [r for r, a in answers.items() if a.code == 250]
            delivered_all = wait_delivered(sink, accepted, None, timeout=600)
            alive = relay.alive()
        finally:
            relay.stop()
            sink.stop()

        engine = db.create_db_engine(url)
        with engine.connect() as connection:
            incidents = Counter(
                connection.scalars(select(RelayIncident.recipients).where(RelayIncident.kind == INCIDENT_UNPARSED))
            )
        engine.dispose()

    by_recipient: dict[str, list[bytes]] = {}
    for received in sink.messages:
        by_recipient.setdefault(received.rcpt_tos[0], []).append(received.data)
    unchanged = rewritten = 0
    for recipient in accepted:
        name, data = messages[recipient]
        copies = by_recipient.get(recipient, [])
        try:
            assert len(copies) == 1, f"delivered {len(copies)} times"
            same = check_forwarded(data, copies[0])
            parsed = relay_can_parse(smtp_bytes(data))
            if parsed is False:
                assert same and incidents[recipient] == 1, "unparsable, yet changed or no incident"
            else:
                assert parsed or same, "untracked, yet changed"
                assert not incidents[recipient], "an incident for a message the relay can parse"
        except AssertionError as exc:
            failures.append(f"{recipient} ({name}): {str(exc).splitlines()[0] if str(exc) else 'mismatch'}")
            continue
        unchanged += same
        rewritten += not same
    codes = Counter(a.code for a in answers.values())
    slow = [a.seconds for a in answers.values()]
    too_long = 0  #: refused 500 for a line over the relay's SMTP limit, as they should be
    for recipient, answer in answers.items():
        if answer.code == 500 and "Line too long" in answer.text and too_long_for_smtp(messages[recipient][1]):
            too_long += 1
        elif answer.code != 250:
            failures.append(f"{recipient} ({messages[recipient][0]}): answered {answer.code} {answer.text}")
        if answer.seconds >= HANG_BOUND:
            failures.append(f"{recipient}: no answer within {HANG_BOUND} s")
    if not alive:
        failures.append("the relay process died")
    if not delivered_all:
        failures.append("not everything answered 250 reached the upstream within 600 s")
    for failure in failures[:30]:
        print("FAIL", failure, flush=True)
    print(
        f"RESULT hostile-mail sent={len(answers)} answered={dict(sorted(codes.items()))} "
        f"refused_line_too_long={too_long} delivered={sum(1 for r in accepted if by_recipient.get(r))} rewritten={rewritten} "
        f"unchanged={unchanged} unparsed_incidents={sum(incidents.values())} failures={len(failures)} "
        f"relay_alive={alive} answer_s_median={statistics.median(slow):.3f} answer_s_max={max(slow):.2f} "
        f"send_seconds={sent_seconds:.0f}",
        flush=True,
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
