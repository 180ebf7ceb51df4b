"""Test material shared by several test modules: a newsletter and ways to read what was forwarded."""

from __future__ import annotations

import email
import email.policy
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from smtp_relay import RelayController
from smtp_relay.config import RelayConfig

REPO = Path(__file__).resolve().parent.parent

#: Where the tests' Flask app serves the tracking routes, as the relay is told.
BASE_URL = "http://hotclicks.test/t"

#: The targets of the newsletter's tracked HTML links, in document order (entities decoded).
NEWSLETTER_LINKS = [
    "https://shop.example/sale?utm_source=news&utm_medium=email",
    "https://blog.example/spring",
    "https://shop.example/account",
]
#: The same hrefs as written in the HTML.
NEWSLETTER_HREFS = [
    "https://shop.example/sale?utm_source=news&amp;utm_medium=email",
    "https://blog.example/spring",
    "https://shop.example/account",
]
#: The tracked link of the text part.
TEXT_LINK = "https://shop.example/spring"

_TRACKED = re.compile(re.escape(BASE_URL) + r"/c/[A-Za-z0-9_-]+")


@contextmanager
def running_relay(config: RelayConfig) -> Iterator[RelayController]:
    """A relay started with ``config``, stopped and its database connections closed afterwards."""
    relay = RelayController(config)
    relay.start()
    try:
        yield relay
    finally:
        relay.stop()
        relay.handler.database.dispose()


def newsletter(delivery: str = "spring-news", extra_headers: str = "") -> bytes:
    """A multipart/alternative newsletter as a sender writes it, with CRLF line endings."""
    text = f"""From: Shop <news@shop.example>
To: subscribers@shop.example
Subject: Spring news
Message-ID: <spring-1@shop.example>
MIME-Version: 1.0
X-HotClicks-Delivery: {delivery}
{extra_headers}Content-Type: multipart/alternative; boundary="==b1=="

This is a multi-part message in MIME format.

--==b1==
Content-Type: text/plain; charset="utf-8"
Content-Transfer-Encoding: 7bit

Spring is here. Shop now: {TEXT_LINK}.
Write to help@shop.example if you need us.

--==b1==
Content-Type: text/html; charset="utf-8"
Content-Transfer-Encoding: 7bit

<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Spring</title></head>
<body   style="margin:0">
<!-- hero: <a href="https://not.a.link/in/a/comment">x</a> -->
<p><a class="btn" href="{NEWSLETTER_HREFS[0]}" >Shop the spring sale</a></p>
<p>Read <A HREF='{NEWSLETTER_HREFS[1]}'>our story</A>.</p>
<p><a href="mailto:help@shop.example">Write to us</a> &middot; <a href="{NEWSLETTER_HREFS[2]}"><img src="https://shop.example/me.png" alt="Your account"></a></p>
</body></html>

--==b1==--
"""
    return text.replace("\n", "\r\n").encode()


#: The hidden trap link the relay adds to each HTML part (``hotclicks.rewrite.TRAP_TEMPLATE``).
_TRAP = re.compile(r'<a href="(' + re.escape(BASE_URL) + r'/c/[A-Za-z0-9_-]+)" style="display:none!important;mso-hide:all;')


def tracked_hrefs(data: bytes, part: str | None = None) -> list[str]:
    """The tracked links a person can see in a forwarded message, in order: of one part
    ("html"/"plain") or all (the hidden trap link left out: :func:`trap_hrefs`)."""
    if part is None:
        text = data.decode("utf-8", "replace")
        return [href for href in _TRACKED.findall(text) if href not in set(trap_hrefs(data))]
    message = email.message_from_bytes(data, policy=email.policy.default)
    body = message.get_body(preferencelist=(part,))
    assert body is not None, f"no text/{part} part"
    return _TRACKED.findall(_TRAP.sub("", body.get_content()))


def trap_hrefs(data: bytes) -> list[str]:
    """The hidden trap links of a forwarded message's HTML parts."""
    message = email.message_from_bytes(data, policy=email.policy.default)
    found = []
    for part in message.walk():
        if part.get_content_type() == "text/html":
            found += _TRAP.findall(part.get_content())
    return found


def play_the_demo(shop, relay, upstream, *, subscribers: int, seed: int) -> list:
    """The demo's steps on the test servers: the example app (``shop``) sends its three deliveries
    through ``relay`` to ``upstream``, then simulated recipients open and click over real HTTP.

    Returns what each simulated request got (``example_app.simulate.Outcome``).
    """
    import dataclasses

    from example_app import simulate
    from example_app.demo import seed_and_send

    sent = seed_and_send(shop, count=subscribers, seed=seed)
    relay.wait_idle(60)
    assert len(upstream.messages) == sent, "the relay did not deliver every message it accepted"
    # Links in the mail point at the public base URL; the tests reach the same routes locally.
    live_base = shop.config["LIVE_URL"] + "/t"
    requests = [
        dataclasses.replace(r, url=r.url.replace(BASE_URL, live_base))
        for r in simulate.plan([m.data for m in upstream.messages], BASE_URL, seed=seed)
    ]
    return simulate.run(requests)


def cli_relay(
    port: int,
    upstream: tuple[str, int],
    database_url: str,
    spool_dir: Path,
    secret_key: str,
    output: IO[bytes],
    *flags: str,
) -> subprocess.Popen:
    """``python -m smtp_relay`` on 127.0.0.1:``port`` as an operator runs it, its output to
    ``output``; ``flags`` are added. No HOTCLICKS_* variable of the test run reaches it."""
    return subprocess.Popen(
        [
            sys.executable, "-m", "smtp_relay",
            "--listen", f"127.0.0.1:{port}",
            "--upstream", f"{upstream[0]}:{upstream[1]}",
            "--database-url", database_url,
            "--base-url", BASE_URL,
            "--secret-key", secret_key,
            "--spool-dir", str(spool_dir),
            "--hostname", "relay.test",
            *flags,
        ],
        cwd=REPO,
        stdout=output,
        stderr=subprocess.STDOUT,
        env={k: v for k, v in os.environ.items() if not k.startswith("HOTCLICKS_")},
    )


def accepts(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port``."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (not gone, not a zombie), from /proc (Linux)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
