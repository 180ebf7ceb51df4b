"""Hostile clicks: whatever reaches the tracking routes, never a 5xx, never a redirect the relay did
not issue, and a bad signature costs no database query.

Random, truncated, bit-flipped, re-encoded and replayed tokens, tokens of a rotated-out key,
oversized paths, query strings and headers, odd methods and non-UTF-8 bytes in the request line.
Hypothesis drives the tokens; every property is bounded by ``max_examples``: 150 in the suite,
``HOTCLICKS_HOSTILE_EXAMPLES`` for the full campaign (e.g. 3000). Run on SQLite and, with
``HOTCLICKS_TEST_DATABASE_URL``, on PostgreSQL (where an overlong value is refused, not truncated).
"""

from __future__ import annotations

import base64
import os
import socket
import string
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import pytest
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import event, func, select
from werkzeug.serving import make_server

from flask_hotclicks import HotClicks, get_state
from hotclicks.db.models import Click, TrackedUrl
from hotclicks.tokens import MAX_TOKEN_LENGTH, Token, TokenKind, TokenSigner

from .conftest import SECRET_KEY
from .flask_seed import TARGETS, Sent, send
from .helpers import BASE_URL

BROWSER = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"}
NOT_VALID = b"This link is not valid"
TOKEN_ALPHABET = string.ascii_letters + string.digits + "-_"
#: Bounded: each example is one request through the test client.
HOSTILE = settings(
    max_examples=int(os.environ.get("HOTCLICKS_HOSTILE_EXAMPLES", "150")), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
ODD_METHODS = ["PUT", "DELETE", "OPTIONS", "TRACE", "PATCH", "PROPFIND", "CONNECT"]


@dataclass
class Target:
    """The app under attack, one message sent, and what the database was asked."""

    app: Flask
    sent: Sent
    queries: list[str] = field(default_factory=list)

    @property
    def client(self):
        return self.app.test_client()

    def token(self, index: int = 0) -> str:
        return self.sent.click(index).rsplit("/", 1)[1]

    def issued_targets(self) -> set[str]:
        """Every target the relay issued: the only places a redirect may go."""
        with get_state(self.app).sessions() as session:
            return set(session.scalars(select(TrackedUrl.url)))

    def clicks(self) -> int:
        with get_state(self.app).sessions() as session:
            return int(session.scalar(select(func.count(Click.id))) or 0)

    def get(self, path: str, **kwargs):
        """GET ``path`` and return the response with the queries it caused."""
        self.queries.clear()
        if "?" not in path:  # as a server passes it: no URL parsing (which drops tabs and newlines)
            kwargs["environ_overrides"] = {"PATH_INFO": path.encode("utf-8", "surrogatepass").decode("latin-1")}
        response = self.client.get(path, headers=kwargs.pop("headers", BROWSER), **kwargs)
        return response, list(self.queries)


@pytest.fixture
def target(app: Flask, sessions) -> Iterator[Target]:
    found = Target(app, send(sessions))
    engine = get_state(app).engine

    def count(conn, cursor, statement, parameters, context, executemany) -> None:
        found.queries.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    yield found
    event.remove(engine, "before_cursor_execute", count)


def assert_refused(response, queries: list[str]) -> None:
    assert response.status_code == 404, response.status_code
    assert "Location" not in response.headers
    assert NOT_VALID in response.data
    assert queries == [], "a token whose signature fails must cost no database query"


def assert_safe(response, allowed: set[str]) -> None:
    assert response.status_code < 500, response.status_code
    if 300 <= response.status_code < 400:
        assert response.headers["Location"] in allowed


def _raw(token: str) -> bytearray:
    return bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))


def _text(raw: bytes) -> str:
    return base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()


@HOSTILE
@given(st.text(TOKEN_ALPHABET, min_size=1, max_size=400))
def test_random_tokens_get_the_not_valid_page_without_a_query(target, value):
    assert_refused(*target.get(f"/t/c/{value}"))


@HOSTILE
@given(st.text(min_size=0, max_size=200))
def test_any_text_as_a_token_gets_the_not_valid_page_without_a_query(target, value):
    assert_refused(*target.get("/t/c/" + value))


@HOSTILE
@given(st.data())
def test_bit_flipped_tokens_are_refused_without_a_query(target, data):
    raw = _raw(target.token(data.draw(st.integers(0, len(TARGETS) - 1))))
    for bit in data.draw(st.sets(st.integers(0, len(raw) * 8 - 1), min_size=1, max_size=4)):
        raw[bit // 8] ^= 1 << (bit % 8)
    assert_refused(*target.get(f"/t/c/{_text(raw)}"))


@HOSTILE
@given(st.data())
def test_truncated_and_extended_tokens_are_refused_without_a_query(target, data):
    token = target.token(data.draw(st.integers(0, len(TARGETS) - 1)))
    cut = data.draw(st.integers(0, len(token) - 1))
    tail = data.draw(st.text(TOKEN_ALPHABET, max_size=20))
    mutated = token[:cut] + tail if data.draw(st.booleans()) else token + tail
    if mutated == token or not mutated:
        return
    assert_refused(*target.get(f"/t/c/{mutated}"))


@HOSTILE
@given(st.data())
def test_another_spelling_of_a_valid_token_is_refused(target, data):
    """base64 is lenient (junk characters skipped, unused bits ignored, ``+/`` for ``-_``,
    padding): only the exact token the relay wrote is a link."""
    token = target.token(0)
    how = data.draw(st.sampled_from(["junk", "last-bits", "std-alphabet", "padding"]))
    if how == "junk":
        at = data.draw(st.integers(0, len(token)))
        respelled = token[:at] + data.draw(st.sampled_from(list("!.~*$="))) + token[at:]
    elif how == "last-bits":
        # The last character of a token whose length is not a multiple of 4 carries unused bits.
        if len(token) % 4 == 0:
            token += "AA"  # not our token then; still must be refused
        index = TOKEN_ALPHABET.index(token[-1]) if token[-1] in TOKEN_ALPHABET else 0
        respelled = token[:-1] + TOKEN_ALPHABET[(index + data.draw(st.integers(1, 3))) % 64]
    elif how == "std-alphabet":
        respelled = token.replace("-", "+").replace("_", "%2F")
        if respelled == token:
            respelled = token + "+"
    else:
        respelled = token + "=" * data.draw(st.integers(1, 3))
    if respelled == token:
        return
    assert_refused(*target.get(f"/t/c/{respelled}"))


def test_the_exact_token_still_works_and_replays_redirect_to_the_same_target(target):
    """A replayed link is a person clicking twice: the same redirect, each click recorded."""
    for index, url in enumerate(TARGETS):
        for _ in range(3):
            response, _ = target.get(f"/t/c/{target.token(index)}")
            assert (response.status_code, response.headers["Location"]) == (302, url)
    assert target.clicks() == 3 * len(TARGETS)


def test_a_rotated_out_key_gets_the_not_valid_page_without_a_query(target):
    old = TokenSigner("the-key-we-rotated-out-0123456789")
    for kind, path in ((TokenKind.CLICK, "c"), (TokenKind.OPEN, "o"), (TokenKind.UNSUBSCRIBE, "u"),
                       (TokenKind.UNSUBSCRIBE, "n")):
        ids = target.sent.tracked_url_ids[0] if kind is TokenKind.CLICK else None
        value = old.sign(Token(kind, target.sent.message_id, ids))
        response, queries = target.get(f"/t/{path}/{value}")
        assert queries == [], path
        assert response.status_code == (200 if path == "o" else 404), path  # the pixel is always a GIF
        assert "Location" not in response.headers
    # Forged with a key of its own, to a place of the attacker's choosing.
    forged = old.sign(Token(TokenKind.CLICK, target.sent.message_id, target.sent.tracked_url_ids[0],
                            "https://evil.example/phish"))
    assert_refused(*target.get(f"/t/c/{forged}"))
    assert target.clicks() == 0


def test_bad_tokens_on_every_route_cost_no_query(target):
    for path in ("/t/c/", "/t/o/", "/t/u/", "/t/n/"):
        for value in ("x", "A" * 30, target.token(0)[:-1], "%FF%FE", "A" * (MAX_TOKEN_LENGTH + 1)):
            response, queries = target.get(path + value)
            assert response.status_code < 500
            assert queries == [], (path, value)


@pytest.mark.parametrize("size", [MAX_TOKEN_LENGTH, MAX_TOKEN_LENGTH + 1, 200_000])
def test_oversized_paths_are_refused_without_a_query(target, size):
    assert_refused(*target.get("/t/c/" + "A" * size))


def test_oversized_query_strings_and_headers_do_not_break_a_good_click(target):
    allowed = target.issued_targets()
    response, _ = target.get(
        f"/t/c/{target.token(1)}?" + "x=" + "y" * 100_000 + "&z=%FF%00",
        headers={"User-Agent": "Mozilla/5.0 \x00\x7f" + "A" * 20_000, "Referer": "r" * 50_000},
    )
    assert_safe(response, allowed)
    assert (response.status_code, response.headers["Location"]) == (302, TARGETS[1])
    assert target.clicks() == 1  # recorded, its user agent cut to what the column holds
    with get_state(target.app).sessions() as session:
        (agent,) = session.scalars(select(Click.user_agent))
    assert agent.startswith("Mozilla/5.0 ") and "AAA" in agent and "\x00" not in agent


@pytest.mark.parametrize("method", ODD_METHODS)
@pytest.mark.parametrize("route", ["c", "o", "u", "n"])
def test_odd_methods_are_refused_and_record_nothing(target, method, route):
    kind = {"c": TokenKind.CLICK, "o": TokenKind.OPEN}.get(route, TokenKind.UNSUBSCRIBE)
    value = TokenSigner(SECRET_KEY).sign(
        Token(kind, target.sent.message_id, target.sent.tracked_url_ids[0] if route == "c" else None)
    )
    response = target.client.open(f"/t/{route}/{value}", method=method, headers=BROWSER)
    assert response.status_code in (200, 405) if method == "OPTIONS" else response.status_code == 405
    assert "Location" not in response.headers
    assert target.clicks() == 0


@HOSTILE
@given(st.binary(min_size=1, max_size=64))
def test_non_utf8_bytes_in_the_path_are_refused_without_a_query(target, data):
    """WSGI passes the path as latin-1 decoded bytes; whatever they are, a 404 and no query."""
    target.queries.clear()
    path = "/t/c/" + data.decode("latin-1")
    response = target.client.get(path, headers=BROWSER, environ_overrides={"PATH_INFO": path})
    assert_refused(response, target.queries)
    assert target.clicks() == 0


# -- the same, over a real socket --------------------------------------------------------------


def _raw_request(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def test_raw_hostile_requests_over_http_never_get_a_5xx_or_a_foreign_redirect(engine, database_url, sessions):
    app = Flask("hostile")
    app.config.update(HOTCLICKS_DATABASE_URL=database_url, HOTCLICKS_SECRET_KEY=SECRET_KEY,
                      HOTCLICKS_BASE_URL=BASE_URL)
    HotClicks(app)
    sent = send(sessions)
    good = sent.click(0).encode()
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        requests = [
            b"GET /t/c/\xff\xfe\x00abc HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"GET /t/c/%ff%fe%00 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"GET /t/c/" + b"\xc3\x28" * 50 + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"TRACE " + good + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"GET " + good + b"?" + b"q=\xff" * 2000 + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"GET " + good + b" HTTP/1.1\r\nHost: x\r\nUser-Agent: \xff\xfe" + b"B" * 5000
            + b"\r\nConnection: close\r\n\r\n",
            b"GET //evil.example/%2e%2e" + good + b" HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
            b"GET /t/c/../../etc/passwd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"GET /t/c/" + b"A" * 60_000 + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        ]
        for request in requests:
            answer = _raw_request(server.server_port, request)
            status_line = answer.split(b"\r\n", 1)[0]
            assert status_line.startswith(b"HTTP/1."), (request[:60], answer[:200])
            status = int(status_line.split()[1])
            assert status < 500, (request[:60], status_line)
            for line in answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
                if line.lower().startswith(b"location:"):
                    assert line.split(b":", 1)[1].strip().decode() == TARGETS[0], (request[:60], line)
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()
        get_state(app).dispose()


def test_a_target_with_control_characters_cannot_split_the_redirect(target, sessions):
    """The relay strips them from links, but a tracked URL written by other means might keep them:
    the redirect goes where a browser would take that URL, and never answers a 500."""
    from hotclicks import links
    from hotclicks.db.models import Execution
    from hotclicks.db.sending import ensure_tracked_urls
    from hotclicks.links import LinkSpec

    hostile = "  https://shop.example/a\r\nSet-Cookie: stolen=1\r\n\tb c\x01\x7f "
    with sessions.begin() as session:
        execution = session.scalars(select(Execution)).one()
        (tracked,) = ensure_tracked_urls(session, execution, [LinkSpec("html", "raw", hostile, None, "", 99)]).values()
        url_id = tracked.id
    path = urlsplit(links.click_url(TokenSigner(SECRET_KEY), BASE_URL, target.sent.message_id, url_id)).path
    response, _ = target.get(path)
    assert response.status_code == 302
    assert response.headers["Location"] == "https://shop.example/aSet-Cookie:%20stolen=1b%20c%01%7F"
    assert "Set-Cookie" not in response.headers
