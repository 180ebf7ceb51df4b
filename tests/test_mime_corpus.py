"""Real mail from ../shared/corpus through the splicer: parsed, left alone, and rewritten.

Each ``*.eml`` is read as is; each ``*.html`` template is wrapped into a quoted-printable and a
base64 message. A rewrite replaces every http(s) URL by a long tracked URL (as long as a signed
token makes them), so lines grow, quoted-printable lines wrap and 8bit lines may pass 998.
"""

from __future__ import annotations

import base64
import difflib
import email.quoprimime
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from hotclicks.errors import MimeError
from hotclicks.mime import TextPart, edit_headers, edit_message, parse_message, split_header
from tests.test_mime import Edits, Transform, check_rewrite, rewritable, rewrite, stdlib

pytestmark = pytest.mark.corpus

from .conftest import CORPUS, require_corpus  # noqa: E402

require_corpus()

EMLS = sorted(CORPUS.glob("*.eml"))
HTMLS = sorted(CORPUS.glob("*.html"))

#: Corpus messages the splicer refuses (MimeError), with the reason it must give. None today:
#: every message of the corpus is parsed, including the invalid "8bits" transfer encoding and
#: the x-mac-cyrillic charset Python does not know.
REFUSED: dict[str, str] = {}
PARSED = [path for path in EMLS if path.name not in REFUSED]

#: A tracked URL as long as a real one with its signed token.
TRACKED = "https://track.example/c/" + "AbC0_dEf1-" * 10
URL = re.compile(r"https?://[^\s\"'<>]+")


def track_all(part: TextPart) -> Edits:
    """Each URL replaced, one edit each, as the rewriter does it."""
    return [(m.start(), m.end(), TRACKED) for m in URL.finditer(part.text)]


def track_all_at_once(part: TextPart) -> str:
    """Each URL replaced, in one edit of the whole text: edit_message finds the changes."""
    return URL.sub(TRACKED, part.text)


TRACKINGS = pytest.mark.parametrize("track", [track_all, track_all_at_once], ids=["edits", "whole"])


def ids(paths: list[Path]) -> list[str]:
    return [path.stem for path in paths]


def test_the_corpus_has_messages_and_templates() -> None:
    assert EMLS and HTMLS


@pytest.mark.parametrize("path", EMLS, ids=ids(EMLS))
def test_parse_message(path: Path) -> None:
    raw = path.read_bytes()
    try:
        parts = parse_message(raw).parts
    except MimeError as exc:
        assert path.name in REFUSED, f"{path.name} refused: {exc}"
        assert REFUSED[path.name] in str(exc)
        return
    assert path.name not in REFUSED
    assert [p.subtype for p in parts] == [
        p.get_content_subtype() for p in rewritable(stdlib(raw))
    ]


@pytest.mark.parametrize("path", PARSED, ids=ids(PARSED))
def test_identity_transform_gives_the_same_bytes(path: Path) -> None:
    raw = path.read_bytes()
    assert rewrite(raw, lambda part: part.text) == raw
    assert edit_message(parse_message(raw), {}) == raw


@TRACKINGS
@pytest.mark.parametrize("path", PARSED, ids=ids(PARSED))
def test_tracking_every_url(path: Path, track: Transform) -> None:
    raw = path.read_bytes()
    out = rewrite(raw, track)
    check_rewrite(raw, out, track)
    # The top-level header block is untouched, but for a single part switched to
    # quoted-printable (its 8bit lines grew past 998 octets).
    cte = ["content-transfer-encoding"]
    assert split_header(edit_headers(out, remove=cte))[0] == split_header(
        edit_headers(raw, remove=cte)
    )[0]


def wrap_qp(html: bytes) -> bytes:
    """A single-part CRLF message, encoded by the stdlib's quoted-printable encoder."""
    body = email.quoprimime.body_encode(html.decode("latin-1"), eol="\r\n").encode("latin-1")
    return (
        b"From: sender@example.com\r\n"
        b"Subject: template\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: text/html; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n"
        b"\r\n" + body
    )


def wrap_base64(html: bytes) -> bytes:
    """A bare-LF multipart/mixed: the template in base64 beside a binary attachment."""
    return (
        b"From: sender@example.com\n"
        b"MIME-Version: 1.0\n"
        b'Content-Type: multipart/mixed; boundary="b-1"\n'
        b"\n"
        b"--b-1\n"
        b"Content-Type: text/html; charset=utf-8\n"
        b"Content-Transfer-Encoding: base64\n"
        b"\n" + base64.encodebytes(html) + b"--b-1\n"
        b'Content-Type: application/octet-stream; name="blob.bin"\n'
        b"Content-Transfer-Encoding: base64\n"
        b"\n" + base64.encodebytes(bytes(range(256)) + b"http://a.example/") + b"--b-1--\n"
    )


@TRACKINGS
@pytest.mark.parametrize("wrap", [wrap_qp, wrap_base64], ids=["qp", "base64"])
@pytest.mark.parametrize("path", HTMLS, ids=ids(HTMLS))
def test_templates_wrapped_in_a_message(
    path: Path, wrap: Callable[[bytes], bytes], track: Transform
) -> None:
    raw = wrap(path.read_bytes())
    [part] = parse_message(raw).parts
    assert part.subtype == "html"
    assert rewrite(raw, lambda p: p.text) == raw
    out = rewrite(raw, track)
    check_rewrite(raw, out, track)
    body = split_header(out)[1]
    if wrap is wrap_qp:
        lines = body.split(b"\r\n")
        assert max(map(len, lines)) <= 76
        assert b"\n" not in body.replace(b"\r\n", b"")
        # Fidelity: only the encoded lines that hold a URL are written again.
        old_lines = split_header(raw)[1].split(b"\r\n")
        changed = sum(
            i2 - i1
            for tag, i1, i2, _, _ in difflib.SequenceMatcher(
                None, old_lines, lines, autojunk=False
            ).get_opcodes()
            if tag != "equal"
        )
        urls = URL.findall(part.text)
        assert changed <= sum(len(url) // 60 + 2 for url in urls)
    else:
        encoded = body.split(b"--b-1")[1].split(b"\n\n", 1)[1].rstrip(b"\n").split(b"\n")
        assert {len(line) for line in encoded[:-1]} == {76}
        assert 0 < len(encoded[-1]) <= 76
