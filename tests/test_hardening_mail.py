"""Hostile mail through a running relay: mutated corpus messages and pathological MIME.

Every message goes over real SMTP on 127.0.0.1 to the relay, which forwards to the test sink.
Whatever comes in, the relay must answer within a bound, and every message it answers 250 must
reach the upstream as :func:`check_forwarded` defines: the same MIME tree, untouched parts byte
for byte, rewritten parts differing only in their links; a message it cannot parse goes on
unchanged with a ``forwarded-unchanged`` incident. ``stress/hostile_mail.py`` runs the same
checks over thousands of messages; this is the quick version.
"""

from __future__ import annotations

import codecs
import copy
import email
import functools
import email.message
import email.policy
import random
import re
import smtplib
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from hotclicks.errors import MimeError
from hotclicks.executions import HEADERS, MarkError, read_marks
from hotclicks.mime import edit_headers, parse_message, read_headers
from hotclicks.db.models import RelayIncident
from hotclicks.rewrite import PIXEL_TEMPLATE, TRAP_TEMPLATE
from smtp_relay.handler import RelaySMTP
from smtp_relay.incidents import INCIDENT_UNPARSED

from .conftest import CORPUS, require_corpus
# At import, not inside a test: importing a module of @given tests while a @given test runs
# fails Hypothesis' nested-@given health check (seen when this file runs alone).
from .test_mime_corpus import wrap_base64, wrap_qp

#: Longest a relay may take to answer one message before the campaign calls it a hang.
HANG_BOUND = 120.0
#: Fields the relay removes from a tracked message (and adds back, for List-Unsubscribe); it
#: removes any other X-HotClicks-* field too (see own_fields).
RELAY_FIELDS = tuple(name.lower() for name in HEADERS) + ("list-unsubscribe", "list-unsubscribe-post", "dkim-signature")
_URL = re.compile(r"(?:https?://|www\.)[^\s\"'<>]+", re.I)
_PIXEL = re.compile(
    "(?:" + re.escape(TRAP_TEMPLATE).replace(r"\{\}", r'[^"]*') + ")?"
    + re.escape(PIXEL_TEMPLATE).replace(r"\{\}", r'[^"]*')
)
_LINE_BREAKS = re.compile(rb"\r\n|\n|\r")
_LINE_END = re.compile(r"\r*\n")
#: An href attribute's value, which the relay replaces whole (quoted or not, spaces and all; an
#: unquoted one runs to the next space or ">", quotes included, as HTML reads it).
_HREF = re.compile(r"""(\bhref\s*=\s*)(?:"[^"]*"|'[^']*'|[^\s>]+)""", re.I)
_BOUNDARY = re.compile(rb'boundary\s*=\s*"?([^";\r\n]+)"?', re.I)


# -- what a forwarded message must be ----------------------------------------------------------


def smtp_bytes(data: bytes) -> bytes:
    """``data`` as the upstream gets it: ended by CRLF (as SMTP's DATA ends a message), then
    every bare CR or LF made a CRLF, as the relay's SMTP client (aiosmtplib) sends it."""
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return _LINE_BREAKS.sub(b"\r\n", data)


def parse(data: bytes) -> email.message.Message:
    return email.message_from_bytes(data, policy=email.policy.compat32)


def mime_tree(message: email.message.Message) -> object:
    """Content types in their nesting: a leaf's type, or (type, children) for a container."""
    if message.is_multipart():
        children = message.get_payload()
        return (message.get_content_type(), tuple(mime_tree(child) for child in children))
    return message.get_content_type()


def leaves(message: email.message.Message, inside_message: bool = False) -> list[tuple[email.message.Message, bool]]:
    """Every leaf with whether the relay may rewrite it (text/html or text/plain, not an
    attachment, not inside a message/* part), in document order."""
    if message.is_multipart():
        inside = inside_message or message.get_content_maintype() == "message"
        return [leaf for child in message.get_payload() for leaf in leaves(child, inside)]
    rewritable = (
        not inside_message
        and message.get_content_type() in ("text/html", "text/plain")
        and message.get_content_disposition() != "attachment"
    )
    return [(message, rewritable)]


def text_of(part: email.message.Message) -> str:
    """A rewritable part's decoded text, with the links, the trap link and the open pixel folded away."""
    # The transfer encoding's first token, as the relay reads "base64; x=1" (email would not).
    cte = str(part.get("content-transfer-encoding", "")).split(";")[0].strip()
    if cte != str(part.get("content-transfer-encoding", "")):
        part = copy.copy(part)
        part.replace_header("Content-Transfer-Encoding", cte)
    data = part.get_payload(decode=True) or b""
    try:
        codec = codecs.lookup(part.get_content_charset() or "utf-8").name
        text = data.decode(codec, "replace")
    except (LookupError, TypeError, ValueError):  # ValueError: a NUL in the charset name
        text = data.decode("latin-1")
    text = _HREF.sub(r"\1URL", _PIXEL.sub("", _LINE_END.sub("\n", text)))
    return _URL.sub("URL", text).rstrip("\n\u0a0d")  # CR LF read as UTF-16 is U+0A0D


def own_fields(message: email.message.Message, rewritable_leaf: bool) -> list[tuple[str, str]]:
    """The top-level fields the relay must leave alone, raw, in order."""
    ignored = RELAY_FIELDS + (("content-transfer-encoding",) if rewritable_leaf else ())
    return [(k, v) for k, v in message.items() if k.lower() not in ignored and not k.lower().startswith("x-hotclicks-")]


def check_forwarded(received: bytes, forwarded: bytes) -> bool:
    """Assert that ``forwarded`` is ``received`` as the relay may pass it on; True if it was
    passed on unchanged (its body byte for byte).

    Same, with both parsed by :mod:`email` (compat32) after SMTP's CRLF normalization: the
    top-level fields but the relay's own (X-HotClicks-*, List-Unsubscribe*, DKIM-Signature);
    the MIME tree (content types, nesting, number of parts); every leaf the relay may not rewrite,
    raw payload byte for byte; every leaf it may rewrite, decoded text once each link (an href
    value, an http(s) or www. URL) is folded to one token, the trap link and open pixel removed and CRs before an LF ignored:
    in a bare-LF message the relay writes a rewritten quoted-printable line's "=0A" (or "=0D=0A")
    as a hard line break, which SMTP carries as CRLF (so "\n" may come back "\r\n", and
    "\r\n" as "\r\r\n"); only whitespace, and only in mail that was not valid on the wire.
    Line breaks at the end of a part are ignored too: a pixel appended to an HTML part without
    ``</body>`` comes after its last line break, and SMTP ends the message with another.
    Content-Transfer-Encoding may change on a rewritable leaf (to quoted-printable, when a
    rewritten line would pass 998 octets), at the top level too when the message is that leaf.
    """
    before, after = parse(smtp_bytes(received)), parse(forwarded)
    old_leaves, new_leaves = leaves(before), leaves(after)
    single = old_leaves == [(before, True)]
    assert own_fields(after, single) == own_fields(before, single)
    assert mime_tree(after) == mime_tree(before)
    assert len(old_leaves) == len(new_leaves)
    for (old, rewritable), (new, _) in zip(old_leaves, new_leaves):
        if rewritable:
            assert text_of(new) == text_of(old)
        else:
            assert new.get_payload() == old.get_payload()
    return _body(smtp_bytes(received)) == _body(forwarded)


def _body(data: bytes) -> bytes:
    at = data.find(b"\r\n\r\n")
    return data[at:] if at >= 0 else b""


def relay_can_parse(received: bytes) -> bool | None:
    """Whether the relay can parse a message to track it; None when it does not try (no
    X-HotClicks-Delivery, or DKIM-signed and kept as it is)."""
    try:
        headers = read_headers(received)
        if read_marks(headers) is None or headers.get("DKIM-Signature") is not None:
            return None
        parse_message(edit_headers(received, remove=RELAY_FIELDS))
    except (MimeError, MarkError):
        return False
    return True


def too_long_for_smtp(data: bytes) -> bool:
    """Whether a line (CRLF to CRLF, as SMTP reads it) passes the relay's limit: refused, 500."""
    return max(map(len, data.split(b"\r\n"))) + 2 > RelaySMTP.line_length_limit


# -- sending ------------------------------------------------------------------------------------


@dataclass
class Answer:
    code: int
    text: str
    seconds: float


def send_raw(listen: tuple[str, int], recipient: str, data: bytes, timeout: float = HANG_BOUND) -> Answer:
    """Send ``data`` exactly as it is (bare CR/LF, NULs and all) in one transaction.

    smtplib's sendmail would dot-stuff after bare LFs too, which the server does not undo:
    stuffing is done here on CRLF lines only, as RFC 5321 reads them.
    """
    lines = data.split(b"\r\n")
    stuffed = b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines)
    if not stuffed.endswith(b"\r\n"):
        stuffed += b"\r\n"
    started = time.perf_counter()
    with smtplib.SMTP(*listen, timeout=timeout) as client:
        client.ehlo()
        code, reply = client.mail("news@shop.example", ["BODY=8BITMIME"])
        if code == 250:
            code, reply = client.rcpt(recipient)
        if code == 250:
            code, reply = client.docmd("DATA")
            if code == 354:
                client.send(stuffed + b".\r\n")
                code, reply = client.getreply()
    return Answer(code, reply.decode("utf-8", "replace"), time.perf_counter() - started)


# -- hostile messages ---------------------------------------------------------------------------


def mark(data: bytes) -> bytes:
    """``data`` with an X-HotClicks-Delivery field on top, so the relay tries to track it (as
    marketing mail: it also swaps List-Unsubscribe)."""
    return b"X-HotClicks-Delivery: hostile\r\n" + data


def corpus_bases() -> list[tuple[str, bytes]]:
    """Corpus messages to start from: each .eml without its DKIM signature (so the relay tracks
    it), and each template as a single-part quoted-printable and a multipart base64 message."""
    bases = []
    for path in sorted(CORPUS.glob("*.eml")):
        raw = path.read_bytes()
        try:
            raw = edit_headers(raw, remove=["DKIM-Signature"])
        except MimeError:
            pass
        bases.append((path.stem, raw))
    for path in sorted(CORPUS.glob("*.html")):
        html = path.read_bytes()
        bases.append((f"{path.stem}.qp", wrap_qp(html)))
        bases.append((f"{path.stem}.b64", wrap_base64(html)))
    return bases


def _boundaries(data: bytes) -> list[bytes]:
    return [b.strip() for b in _BOUNDARY.findall(data) if b.strip()]


def flip_bytes(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 20)):
        if out:
            out[rng.randrange(len(out))] = rng.randrange(256)
    return bytes(out)


def truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(len(data) + 1)]


def cut_span(data: bytes, rng: random.Random) -> bytes:
    at = rng.randrange(len(data) + 1)
    return data[:at] + data[at + rng.randint(1, 2000) :]


def break_boundary(data: bytes, rng: random.Random) -> bytes:
    """Drop, duplicate or corrupt a delimiter line, or drop the boundary parameter."""
    found = _boundaries(data)
    if not found:
        return data
    boundary = rng.choice(found)
    choice = rng.randrange(5)
    if choice == 0:
        return data.replace(b"--" + boundary + b"--", b"", 1)  # no close delimiter
    if choice == 1:
        line = b"--" + boundary + b"\r\n"
        at = data.find(line)
        return data if at < 0 else data[:at] + line + data[at:]  # duplicate delimiter
    if choice == 2:
        return data.replace(b"--" + boundary, b"--" + boundary[:-1] + b"X", rng.randint(1, 3))
    if choice == 3:
        return re.sub(rb'boundary\s*=\s*"?' + re.escape(boundary) + rb'"?', b"x-nothing=1", data, count=1)
    return data.replace(b"--" + boundary, b"--" + b"other", 1)  # a boundary that is never declared


CHARSETS = [b"utf-8", b"us-ascii", b"x-unknown-42", b"utf-16", b"utf-7", b"idna", b"rot13", b"base64", b"unicode-escape", b"iso-2022-jp", b"", b'"', b"utf-8\x00"]


def wrong_charset(data: bytes, rng: random.Random) -> bytes:
    replaced = re.sub(rb"charset\s*=\s*\"?[^\";\s]*\"?", lambda m: b"charset=" + rng.choice(CHARSETS), data, flags=re.I)
    if replaced == data:
        replaced = re.sub(rb"(content-type:\s*text/\w+)", rb"\1; charset=" + rng.choice(CHARSETS), data, count=1, flags=re.I)
    return replaced


ENCODINGS = [b"base64", b"quoted-printable", b"8bit", b"7bit", b"binary", b"x-uuencode", b"bogus", b"base64; x=1", b"QUOTED-PRINTABLE", b"8bits", b"", b"(comment) base64"]


def wrong_encoding(data: bytes, rng: random.Random) -> bytes:
    replaced = re.sub(
        rb"(content-transfer-encoding:)[^\r\n]*", lambda m: m.group(1) + b" " + rng.choice(ENCODINGS), data, flags=re.I
    )
    if replaced == data:
        replaced = re.sub(rb"(content-type:\s*text/)", b"Content-Transfer-Encoding: " + rng.choice(ENCODINGS) + rb"\r\n\1", data, count=1, flags=re.I)
    return replaced


def break_encoded(data: bytes, rng: random.Random) -> bytes:
    """Bad base64 or quoted-printable: stray characters, lone '=', bad escapes, cut padding."""
    junk = rng.choice([b"!!", b"=", b"=ZZ", b"=\r\n=", b"====", b"@#$", b"\xff", b"=4"])
    lines = data.split(b"\r\n")
    candidates = [i for i, line in enumerate(lines) if re.fullmatch(rb"[A-Za-z0-9+/=]{16,}|.*=[0-9A-F]{2}.*", line)]
    if not candidates:
        return data
    i = rng.choice(candidates)
    at = rng.randrange(len(lines[i]) + 1)
    lines[i] = lines[i][:at] + junk + lines[i][at:]
    return b"\r\n".join(lines)


def insert_bytes(data: bytes, rng: random.Random) -> bytes:
    """NULs, bare CRs and LFs, 8-bit and control bytes somewhere."""
    junk = rng.choice([b"\x00", b"\x00" * 100, b"\r", b"\n", b"\r\r\n", b"\xff\xfe", b"\x1b[31m", b"\n.\n", b"\r\n.\r\n", b"\r\n\r\n"])
    at = rng.randrange(len(data) + 1)
    return data[:at] + junk + data[at:]


def bare_line_breaks(data: bytes, rng: random.Random) -> bytes:
    return data.replace(b"\r\n", rng.choice([b"\n", b"\r", b"\n\r"]))


def overlong_line(data: bytes, rng: random.Random) -> bytes:
    line = (b"<a href=\"https://long.example/" + b"x" * rng.randint(1000, 60_000) + b"\">x</a> ") * rng.randint(1, 3)
    at = data.rfind(b"\r\n", 0, rng.randrange(len(data) + 1))
    at = 0 if at < 0 else at + 2
    return data[:at] + line + b"\r\n" + data[at:]


def eight_bit_headers(data: bytes, rng: random.Random) -> bytes:
    fields = rng.choice(
        [b"Subject: caf\xe9 \xff\xfe \x00 news\r\n", b"From: J\xc3\xbcrgen <j@ex\xe4mple.org>\r\n", b"X-Junk: \x80\x81\x82\r\n", b"\xff\xfe: value\r\n"]
    )
    return fields + data


def huge_headers(data: bytes, rng: random.Random) -> bytes:
    """Some 200 KB of header fields, or one 10,000-byte field line."""
    if rng.random() < 0.5:
        fields = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"y" * 90) for i in range(2000))
    else:
        fields = b"X-Long: " + b"z" * 10_000 + b"\r\n"
    return fields + data


def nest(data: bytes, rng: random.Random) -> bytes:
    """The message's body wrapped in many multipart/mixed levels."""
    return nested_html(rng.randint(10, 120), body=data)


MUTATIONS: list[Callable[[bytes, random.Random], bytes]] = [
    flip_bytes, truncate, cut_span, break_boundary, wrong_charset, wrong_encoding, break_encoded,
    insert_bytes, bare_line_breaks, overlong_line, eight_bit_headers, huge_headers, nest,
]


def mutate(base: bytes, steps: list[tuple[int, int]], *, tracked: bool = True) -> bytes:
    """``base`` after each (mutation index, seed) step, marked for tracking when ``tracked``."""
    data = base
    for index, seed in steps:
        data = MUTATIONS[index % len(MUTATIONS)](data, random.Random(seed))
    return mark(data) if tracked else data


def nested_html(depth: int, body: bytes | None = None) -> bytes:
    """A message whose HTML part (or ``body``, a whole message) sits ``depth`` multiparts deep."""
    inner = body or (
        b"Content-Type: text/html; charset=utf-8\r\n\r\n"
        b'<p><a href="https://deep.example/bottom">the bottom</a></p>\r\n'
    )
    for level in range(depth):
        boundary = b"level-%d" % level
        inner = (
            b'Content-Type: multipart/mixed; boundary="' + boundary + b'"\r\n\r\n'
            b"--" + boundary + b"\r\n" + inner + b"\r\n--" + boundary + b"--\r\n"
        )
    return b"From: deep@example.org\r\nSubject: deep\r\nMIME-Version: 1.0\r\n" + inner


def big_html(size: int = 10 * 1024 * 1024) -> bytes:
    """A message with an HTML part of ``size`` bytes, a link every few hundred bytes."""
    row = b'<tr><td><a href="https://big.example/item?id=%07d">Item %07d</a> lorem ipsum dolor sit amet</td></tr>\r\n'
    rows = b"".join(row % (i % 5000, i) for i in range(size // len(row % (0, 0)) + 1))[:size]
    return (
        b"From: big@example.org\r\nSubject: big\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        b"<html><body><table>\r\n" + rows + b"\r\n</table></body></html>\r\n"
    )


def pathological() -> dict[str, bytes]:
    """The named worst cases, each marked for tracking."""
    simple = (
        b"From: a@example.org\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/alternative; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSee https://a.example/x\r\n"
        b'--b\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<a href="https://a.example/x">x</a>\r\n'
        b"--b--\r\n"
    )
    rng = random.Random(8)
    return {
        "headers-200kb": mark(b"".join(b"X-Filler-%d: %s\r\n" % (i, b"y" * 90) for i in range(2000)) + simple),
        "header-line-10000": mark(b"X-Long: " + b"z" * 10_000 + b"\r\n" + simple),
        "nesting-100": mark(nested_html(100)),
        "nesting-50": mark(nested_html(50)),
        "html-10mb": mark(big_html()),
        "nul-bytes": mark(simple.replace(b"See", b"S\x00e\x00e")),
        "bare-lf": mark(simple.replace(b"\r\n", b"\n")),
        "bare-cr": mark(simple.replace(b"\r\n", b"\r")),
        "line-200kb": mark(simple.replace(b"See ", b"See " + b"w" * 200_000 + b" ")),
        "8bit-headers": mark(b"Subject: \xff\xfe\x00 caf\xe9\r\n" + simple),
        "8bit-message-id": mark(b"Message-ID: <caf\xe9\xff@example.org>\r\n" + simple),
        "8bit-link": mark(simple.replace(b"charset=utf-8", b"charset=x-klingon").replace(b"a.example/x", b"a.example/\xe9\xff")),
        "unknown-charset": mark(simple.replace(b"charset=utf-8", b"charset=x-klingon")),
        "bogus-encoding": mark(simple.replace(b"charset=utf-8\r\n", b"charset=utf-8\r\nContent-Transfer-Encoding: x-bogus\r\n")),
        "broken-base64": mark(simple.replace(b"charset=utf-8\r\n\r\nSee https://a.example/x", b"charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\nU2VlIGh0dHBzOi8vYS5leGFtcGxl!!L3g")),
        "broken-qp": mark(simple.replace(b"charset=utf-8\r\n\r\nSee", b"charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n=ZZSee=")),
        "no-close-boundary": mark(simple.replace(b"--b--\r\n", b"")),
        "boundary-missing": mark(simple.replace(b'; boundary="b"', b"")),
        "duplicate-boundary": mark(simple.replace(b"--b\r\n", b"--b\r\n--b\r\n", 1)),
        "truncated": mark(simple[: len(simple) // 2]),
        "flipped": mark(flip_bytes(simple, rng)),
    }


# -- the campaign ------------------------------------------------------------------------------


@dataclass
class Outcome:
    name: str
    answer: Answer
    unchanged: bool | None = None  #: None when not answered 250


def run_one(relay, upstream, sessions, name: str, data: bytes, recipient: str) -> Outcome:
    """Send one message, wait for its delivery, and check what the upstream received."""
    answer = send_raw(relay.config.listen, recipient, data)
    assert answer.seconds < HANG_BOUND
    if too_long_for_smtp(data):
        assert answer.code == 500 and "Line too long" in answer.text
        return Outcome(name, answer)
    assert answer.code == 250, f"{name}: answered {answer.code} {answer.text}"
    relay.wait_idle(HANG_BOUND)
    (forwarded,) = [m for m in upstream.messages if m.rcpt_tos == [recipient]]
    unchanged = check_forwarded(data, forwarded.data)
    parsed = relay_can_parse(smtp_bytes(data))  # the relay parses what it will send
    with sessions() as session:
        incidents = session.scalars(
            select(RelayIncident).where(RelayIncident.kind == INCIDENT_UNPARSED, RelayIncident.recipients == recipient)
        ).all()
    if parsed is False:
        assert unchanged and len(incidents) == 1, f"{name}: unparsable, yet changed or no incident"
    else:
        assert parsed or unchanged, f"{name}: untracked, yet changed"
        assert not incidents, f"{name}: incident for a message the relay can parse: {incidents[0].reason}"
    return Outcome(name, answer, unchanged)


@functools.cache
def bases() -> list[tuple[str, bytes]]:
    """The corpus bases, read once (a function, not a fixture: hypothesis prints its arguments)."""
    require_corpus()
    return corpus_bases()


@pytest.mark.parametrize("name", list(pathological()))
def test_pathological_message_reaches_the_upstream_intact(name, relay, upstream, sessions):
    run_one(relay, upstream, sessions, name, pathological()[name], f"{name}@example.org")


@pytest.mark.corpus
def test_unmutated_corpus_is_rewritten_and_still_the_same_tree(relay, upstream, sessions):
    rewritten = 0
    for number, (name, base) in enumerate(bases()):
        outcome = run_one(relay, upstream, sessions, name, mark(base), f"base{number}@example.org")
        rewritten += not outcome.unchanged
    assert rewritten >= len(bases()) // 2  # the check above is not vacuous: most carry links


_counter = iter(range(10**9))


@pytest.mark.corpus
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    which=st.integers(0, 10_000),
    steps=st.lists(st.tuples(st.integers(0, len(MUTATIONS) - 1), st.integers(0, 2**32)), min_size=1, max_size=4),
)
def test_mutated_corpus_never_breaks_the_relay(which, steps, relay, upstream, sessions):
    name, base = bases()[which % len(bases())]
    run_one(relay, upstream, sessions, name, mutate(base, steps), f"h{next(_counter)}@example.org")
