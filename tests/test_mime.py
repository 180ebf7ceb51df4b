"""The MIME splicer: only link targets change, every other byte of the message stays as it was."""

from __future__ import annotations

import base64
import binascii
import codecs
import email
import email.message
import email.policy
import email.quoprimime
import re
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hotclicks.errors import MimeError
from hotclicks.mime import (
    TextPart,
    edit_headers,
    edit_message,
    parse_message,
    read_headers,
    split_header,
)

URL = "http://a.example/page"
TRACKED = "https://track.example/x/123"


#: Edits of one part's text, as the rewriter gives them: (start, end, new text), in order.
Edits = list[tuple[int, int, str]]
#: What a test changes in each part: its edits, a whole new text, or None (nothing).
Transform = Callable[[TextPart], "Edits | str | None"]


def replacing(text: str, old: str, new: str) -> Edits:
    """The edits that replace each ``old`` of ``text`` by ``new``."""
    return [(m.start(), m.end(), new) for m in re.finditer(re.escape(old), text)]


def track(part: TextPart) -> Edits:
    """The edits of most tests: each URL becomes one tracked URL."""
    return replacing(part.text, URL, TRACKED)


def applied(text: str, answer: Edits | str | None) -> str:
    """The new text a transform's answer stands for."""
    if answer is None or isinstance(answer, str):
        return text if answer is None else answer
    pieces, pos = [], 0
    for start, end, new in answer:
        pieces += (text[pos:start], new)
        pos = end
    return "".join(pieces) + text[pos:]


def rewrite(raw: bytes, transform: Transform) -> bytes:
    """The relay's path: the message parsed once, then edited; a whole new text is one edit of
    the whole text (edit_message finds what differs in it)."""
    parsed = parse_message(raw)
    edits: dict[int, Edits] = {}
    for part in parsed.parts:
        answer = transform(part)
        if isinstance(answer, str):
            answer = [(0, len(part.text), answer)]
        if answer:
            edits[part.index] = answer
    return edit_message(parsed, edits)


def crlf(raw: bytes) -> bytes:
    return raw.replace(b"\n", b"\r\n")


# --------------------------------------------------------------------------------------------
# Independent checks through the stdlib parser


def stdlib(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)


def tree(msg: email.message.Message) -> list[str]:
    return [part.get_content_type() for part in msg.walk()]


def rewritable(msg: email.message.Message) -> list[email.message.Message]:
    """The parts the module must offer, found by the documented rules with the stdlib."""
    if msg.get_content_maintype() == "message":
        return []
    if msg.is_multipart():
        children = msg.get_payload()
        assert isinstance(children, list)
        return [
            leaf
            for part in children
            if isinstance(part, email.message.Message)
            for leaf in rewritable(part)
        ]
    if msg.get_content_type() in ("text/html", "text/plain"):
        if msg.get_content_disposition() != "attachment":
            return [msg]
    return []


def payload(part: email.message.Message) -> bytes:
    data = part.get_payload(decode=True)
    assert isinstance(data, bytes)
    return data


def leaves(msg: email.message.Message) -> list[email.message.Message]:
    return [part for part in msg.walk() if not part.is_multipart()]


def codec_for(charset: str, data: bytes) -> tuple[str, str]:
    """The documented decoding rule, written again here from the docstring, not imported."""
    if not charset:
        try:
            data.decode("utf-8")
            return "utf-8", "strict"
        except UnicodeDecodeError:
            return "latin-1", "strict"
    try:
        info = codecs.lookup(charset)
    except LookupError:
        return "ascii", "surrogateescape"
    if not info._is_text_encoding:
        return "ascii", "surrogateescape"
    try:
        data.decode(info.name)
        return info.name, "strict"
    except UnicodeDecodeError:
        return info.name, "surrogateescape"


def check_rewrite(raw: bytes, out: bytes, transform: Transform) -> None:
    """``out`` parses to the same tree, rewritten parts decode to the new text, others as before."""
    before, after = stdlib(raw), stdlib(out)
    assert tree(after) == tree(before)
    old_parts, new_parts = rewritable(before), rewritable(after)
    ours = parse_message(raw).parts
    assert len(ours) == len(old_parts) == len(new_parts)
    for ours_part, old, new in zip(ours, old_parts, new_parts):
        old_data = payload(old)
        codec, errors = codec_for(ours_part.charset, old_data)
        assert ours_part.text == old_data.decode(codec, errors)
        expected = applied(ours_part.text, transform(ours_part))
        assert payload(new) == expected.encode(codec, errors)
        assert payload(new).decode(codec, errors) == expected
    rewritten = {id(p) for p in new_parts}
    kept_before = [p for p in leaves(before) if id(p) not in {id(q) for q in old_parts}]
    kept_after = [p for p in leaves(after) if id(p) not in rewritten]
    assert [payload(p) for p in kept_after] == [payload(p) for p in kept_before]


# --------------------------------------------------------------------------------------------
# Headers


def test_split_header_keeps_the_blank_line_with_the_headers() -> None:
    assert split_header(b"A: 1\nB: 2\n\nbody\n") == (b"A: 1\nB: 2\n\n", b"body\n")
    assert split_header(b"A: 1\r\n b\r\n\r\n\r\nbody") == (b"A: 1\r\n b\r\n\r\n", b"\r\nbody")
    assert split_header(b"A: 1\r\n\r\n") == (b"A: 1\r\n\r\n", b"")


def test_split_header_without_a_blank_line_is_an_error() -> None:
    with pytest.raises(MimeError, match="no blank line"):
        split_header(b"Subject: no body\r\nFrom: a@example.com\r\n")


def test_a_line_that_is_no_header_field_is_an_error() -> None:
    with pytest.raises(MimeError, match="not a header field"):
        parse_message(b"Subject: hi\nthis is body text\n\nmore\n")


def test_read_headers_parses_the_top_level_block_only() -> None:
    raw = crlf(
        b"Subject: =?utf-8?q?Caf=C3=A9?=\n"
        b"X-HotClicks-Execution: 42\n"
        b"Content-Type: multipart/mixed; boundary=b\n"
        b"\n"
        b"--b\n"
        b"X-HotClicks-Execution: 7\n"
        b"\n"
        b"body\n"
        b"--b--\n"
    )
    headers = read_headers(raw)
    assert headers["Subject"] == "Café"
    assert headers.get_all("X-HotClicks-Execution") == ["42"]
    assert headers.get_content_type() == "multipart/mixed"


def test_edit_headers_removes_folded_fields_and_appends_new_ones() -> None:
    raw = crlf(
        b"From: a@example.com\n"
        b"X-HotClicks-Variant: a\n"
        b"DKIM-Signature: v=1; a=rsa-sha256;\n"
        b"\td=example.com; s=sel;\n"
        b"  b=abc\n"
        b"Subject: hi\n"
        b"x-hotclicks-variant: again\n"
        b"\n"
        b"X-HotClicks-Variant: in the body stays\n"
    )
    long_value = "; ".join(f"item{i}=value{i}" for i in range(12))
    out = edit_headers(
        raw,
        remove=["x-hotclicks-variant", "DKIM-SIGNATURE"],
        add=[("X-Tracked", "yes"), ("X-Long", long_value)],
    )
    assert out == crlf(
        b"From: a@example.com\n"
        b"Subject: hi\n"
        b"X-Tracked: yes\n"
        b"X-Long: item0=value0; item1=value1; item2=value2; item3=value3; item4=value4;\n"
        b" item5=value5; item6=value6; item7=value7; item8=value8; item9=value9;\n"
        b" item10=value10; item11=value11\n"
        b"\n"
        b"X-HotClicks-Variant: in the body stays\n"
    )
    assert str(stdlib(out)["X-Long"]) == long_value


def test_edit_headers_keeps_a_bare_lf_message_bare_lf_and_touches_nothing_else() -> None:
    raw = b"Subject: hi\nTo: b@example.com\n\nbody\r\nwith odd endings\n"
    assert edit_headers(raw) == raw
    assert edit_headers(raw, remove=["to"], add=[("X-A", "1")]) == (
        b"Subject: hi\nX-A: 1\n\nbody\r\nwith odd endings\n"
    )


@pytest.mark.parametrize(
    ("name", "value"), [("X-A", "one\r\nBcc: evil@example.com"), ("X A", "v"), ("X-A", "caf\xe9")]
)
def test_edit_headers_refuses_fields_that_would_break_the_header(name: str, value: str) -> None:
    with pytest.raises(ValueError):
        edit_headers(b"Subject: hi\n\nbody\n", add=[(name, value)])


# --------------------------------------------------------------------------------------------
# Single-part messages and transfer encodings


QP_HTML = crlf(
    b"From: a@example.com\n"
    b"Subject: hi\n"
    b"Content-Type: text/html; charset=utf-8\n"
    b"Content-Transfer-Encoding: quoted-printable\n"
    b"\n"
    b'<p>Caf=C3=A9 <a href=3D"http://a.example/page">link</a></p>\n'
    b"<p>unchanged line</p>\n"
)


def test_the_parts_of_a_single_part_quoted_printable_html() -> None:
    assert parse_message(QP_HTML).parts == (
        TextPart(
            0,
            "html",
            "utf-8",
            '<p>Café <a href="http://a.example/page">link</a></p>\r\n<p>unchanged line</p>\r\n',
        ),
    )


def test_rewrite_single_part_quoted_printable_html() -> None:
    out = rewrite(QP_HTML, track)
    assert out == QP_HTML.replace(b"http://a.example/page", b"https://track.example/x/123")
    check_rewrite(QP_HTML, out, track)


def test_no_edit_or_edits_that_change_nothing_give_back_the_very_same_bytes() -> None:
    parsed = parse_message(QP_HTML)
    [part] = parsed.parts
    assert edit_message(parsed, {}) is QP_HTML
    assert edit_message(parsed, {0: []}) is QP_HTML
    assert edit_message(parsed, {0: [(0, len(part.text), part.text)]}) is QP_HTML
    assert edit_message(parsed, {0: [(3, 7, part.text[3:7]), (9, 9, "")]}) is QP_HTML


def test_a_parsed_message_is_edited_as_many_times_as_needed() -> None:
    """The relay parses once and makes one copy per recipient."""
    parsed = parse_message(QP_HTML)
    first = edit_message(parsed, {0: track(parsed.parts[0])})
    assert edit_message(parsed, {0: track(parsed.parts[0])}) == first
    assert edit_message(parsed, {}) is QP_HTML


def test_text_part_is_immutable() -> None:
    part = parse_message(QP_HTML).parts[0]
    with pytest.raises(AttributeError):
        part.text = "x"  # type: ignore[misc]


def qp_message(body: bytes) -> bytes:
    return (
        b"Content-Type: text/html; charset=us-ascii\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n"
        b"\r\n" + body
    )


def test_quoted_printable_keeps_the_encoded_lines_around_a_change() -> None:
    before = (
        b"<p>" + b"a" * 72 + b"=\r\n"
        b'<a href=3D"http://a.example/page">x</a>=\r\n'
        + b"b" * 40
        + b"</p>\r\n"
        b"<p>tail</p>\r\n"
    )
    after = (
        b"<p>" + b"a" * 72 + b"=\r\n"
        b'<a href=3D"https://track.example/x/123">x</a>=\r\n'
        + b"b" * 40
        + b"</p>\r\n"
        b"<p>tail</p>\r\n"
    )
    out = rewrite(qp_message(before), track)
    assert out == qp_message(after)
    check_rewrite(qp_message(before), out, track)


@pytest.mark.parametrize("whole", [False, True], ids=["edits", "whole-text"])
def test_quoted_printable_keeps_the_unchanged_lines_of_a_long_part_that_gains_a_line(
    whole: bool,
) -> None:
    """Every URL of a long part rewritten and a line added near its end (as an open pixel is):
    only the lines holding a change are encoded again, however far apart (the filler is wrapped
    shorter than an encoder would wrap it, so a filler line encoded again would show), be they
    edited one by one or in one edit of the whole text."""
    rows = [b"<p>filler %03d " % i + b"f" * 40 + b"=\r\n" + b"g" * 50 + b"</p>\r\n" for i in range(300)]
    for i in range(0, 300, 5):
        rows[i] = b'<p>item %d <a href=3D"http://a.example/page">x</a></p>\r\n' % i
    before = b"".join(rows) + b"</body>\r\n"

    def track_and_add(part: TextPart) -> Edits | str:
        at = part.text.index("</body>")
        edits = [*track(part), (at, at, '<img src="https://track.example/o/1">\r\n')]
        return applied(part.text, edits) if whole else edits

    out = rewrite(qp_message(before), track_and_add)
    check_rewrite(qp_message(before), out, track_and_add)
    old_lines = before.split(b"\r\n")
    new_lines = split_header(out)[1].split(b"\r\n")
    assert [line for line in new_lines if b"filler" in line or b"ggg" in line] == [
        line for line in old_lines if b"filler" in line or b"ggg" in line
    ]
    assert len(set(new_lines) - set(old_lines)) <= 60 + 2  # the 60 URL lines, the pixel's


def test_quoted_printable_keeps_the_odd_lines_a_wide_edit_does_not_change() -> None:
    """An edit wider than its change (here the whole text) re-encodes only the lines holding
    the change: the lone "= " line and the trailing spaces after it stay as they were, where
    encoding them again would give "=3D=20" and "=20" (found by the property test below)."""
    before = b'<a href=3D"http://a.example/page">x</a>=\r\n= \r\nend \r\n= '
    after = b'<a href=3D"https://track.example/x/123">x</a>=\r\n= \r\nend \r\n= '
    parsed = parse_message(qp_message(before))
    [part] = parsed.parts
    assert part.text == '<a href="http://a.example/page">x</a>= \r\nend \r\n= '
    new = part.text.replace(URL, TRACKED)
    out = edit_message(parsed, {0: [(0, len(part.text), new)]})
    assert out == qp_message(after)
    assert payload(stdlib(out)).decode() == new


def test_quoted_printable_url_across_a_soft_break() -> None:
    before = b'<p>head</p>\r\n<a href=3D"http://a.exa=\r\nmple/page">x</a>\r\n<p>tail</p>'
    after = b'<p>head</p>\r\n<a href=3D"https://track.example/x/123">x</a>\r\n<p>tail</p>'
    assert rewrite(qp_message(before), track) == qp_message(after)


def test_quoted_printable_wraps_a_line_that_grows_past_76() -> None:
    before = b"<p>" + b"c" * 50 + b' <a href=3D"http://a.example/page">go</a></p>\r\n'
    after = (
        b"<p>" + b"c" * 50 + b' <a href=3D"https://tr=\r\n'
        b'ack.example/x/123">go</a></p>\r\n'
    )
    out = rewrite(qp_message(before), track)
    assert out == qp_message(after)
    assert max(len(line) for line in out.split(b"\r\n")) <= 76


def test_quoted_printable_escapes_trailing_space_and_equals_and_new_non_ascii() -> None:
    raw = (
        b"Content-Type: text/plain; charset=utf-8\n"
        b"Content-Transfer-Encoding: quoted-printable\n"
        b"\n"
        b"see http://a.example/page\n"
        b"end"
    )
    out = rewrite(raw, lambda p: p.text.replace(URL, "https://t.example/?a=1 é "))
    assert out.endswith(b"\n\nsee https://t.example/?a=3D1 =C3=A9=20\nend")
    assert stdlib(out).get_content() == "see https://t.example/?a=1 é \nend"


def test_base64_keeps_line_length_and_line_ending() -> None:
    html = ('<p>Ünïcödé</p>\n<a href="http://a.example/page">x</a>\n' * 6).encode()
    body = base64.encodebytes(html)  # 76 characters a line, LF
    raw = (
        b"Content-Type: text/html; charset=utf-8\n"
        b"Content-Transfer-Encoding: base64\n"
        b"\n" + body
    )
    out = rewrite(raw, track)
    new_html = html.replace(URL.encode(), TRACKED.encode())
    assert out == raw[: raw.index(b"\n\n") + 2] + base64.encodebytes(new_html)
    check_rewrite(raw, out, track)


def test_base64_with_crlf_and_64_character_lines() -> None:
    html = ('<a href="http://a.example/page">x</a> ' * 10).encode()
    encoded = base64.b64encode(html)
    lines = [encoded[i : i + 64] for i in range(0, len(encoded), 64)]
    raw = crlf(b"Content-Type: text/html\nContent-Transfer-Encoding: base64\n\n") + b"\r\n".join(
        lines
    )
    out = rewrite(raw, track)
    new_lines = split_header(out)[1].split(b"\r\n")
    assert {len(line) for line in new_lines[:-1]} == {64}
    assert 0 < len(new_lines[-1]) <= 64
    assert b"\n" not in split_header(out)[1].replace(b"\r\n", b"")
    check_rewrite(raw, out, track)


def test_8bit_utf8_is_rewritten_in_place() -> None:
    raw = (
        "Content-Type: text/plain; charset=UTF-8\n"
        "Content-Transfer-Encoding: 8bit\n"
        "\n"
        "Grüße, visit http://a.example/page — merci\n"
    ).encode()
    assert parse_message(raw).parts[0].charset == "utf-8"
    out = rewrite(raw, track)
    assert out == raw.replace(b"http://a.example/page", b"https://track.example/x/123")
    check_rewrite(raw, out, track)


def test_undeclared_charset_with_latin1_bytes_round_trips_as_latin1() -> None:
    raw = b"Subject: old mailer\n\ncaf\xe9 http://a.example/page\n"
    [part] = parse_message(raw).parts
    assert part == TextPart(0, "plain", "", "café http://a.example/page\n")
    out = rewrite(raw, track)
    assert out == b"Subject: old mailer\n\ncaf\xe9 https://track.example/x/123\n"


def test_undeclared_charset_with_valid_utf8_is_utf8() -> None:
    raw = "Content-Type: text/html\n\n<b>café</b> http://a.example/page\n".encode()
    assert parse_message(raw).parts[0].text == "<b>café</b> http://a.example/page\n"
    out = rewrite(raw, lambda p: p.text.replace(URL, "https://t.example/€"))
    assert out == "Content-Type: text/html\n\n<b>café</b> https://t.example/€\n".encode()


def test_unknown_charset_carries_its_bytes_through_unchanged() -> None:
    raw = (
        b'Content-Type: text/html; charset="x-unknown-thing"\n'
        b"Content-Transfer-Encoding: 8bit\n"
        b"\n"
        b'\x8a\xff\xe9 <a href="http://a.example/page">\xd0\xb0</a>\n'
    )
    [part] = parse_message(raw).parts
    assert part.charset == "x-unknown-thing"
    assert part.text == '\udc8a\udcff\udce9 <a href="http://a.example/page">\udcd0\udcb0</a>\n'
    out = rewrite(raw, track)
    assert out == raw.replace(b"http://a.example/page", b"https://track.example/x/123")
    check_rewrite(raw, out, track)


def test_us_ascii_with_8bit_bytes_is_carried_as_surrogates() -> None:
    raw = b"Content-Type: text/plain; charset=us-ascii\n\nna\xefve http://a.example/page\n"
    assert parse_message(raw).parts[0].text == "na\udcefve http://a.example/page\n"
    out = rewrite(raw, track)
    assert out == raw.replace(b"http://a.example/page", b"https://track.example/x/123")


def test_no_content_type_at_all_is_text_plain() -> None:
    raw = b"Subject: hi\r\n\r\nhttp://a.example/page\r\n"
    assert parse_message(raw).parts == (TextPart(0, "plain", "", "http://a.example/page\r\n"),)
    assert rewrite(raw, track) == b"Subject: hi\r\n\r\nhttps://track.example/x/123\r\n"


def test_misspelled_8bits_transfer_encoding_is_read_as_8bit() -> None:
    raw = b"Content-Type: text/html; charset=iso-8859-1\nContent-Transfer-Encoding: 8bits\n\n\xe9 x\n"
    assert parse_message(raw).parts[0].text == "é x\n"


def test_a_long_7bit_line_switches_the_part_to_quoted_printable() -> None:
    line = "<p>" + "w" * 950 + f' <a href="{URL}">x</a></p>'
    assert len(line) < 998
    raw = crlf(
        b"Content-Type: multipart/alternative; boundary=b\n"
        b"\n"
        b"--b\n"
        b"Content-Type: text/html; charset=us-ascii\n"
        b"Content-Transfer-Encoding: 7bit\n"
        b"Content-ID: <keep@example>\n"
        b"\n" + line.encode() + b"\n"
        b"--b--\n"
    )
    long_url = "https://track.example/" + "t" * 60
    out = rewrite(raw, lambda p: p.text.replace(URL, long_url))
    header = out[out.index(b"--b\r\n") + 5 : out.index(b"\r\n\r\n", out.index(b"--b\r\n")) + 4]
    assert header == crlf(
        b"Content-Type: text/html; charset=us-ascii\n"
        b"Content-Transfer-Encoding: quoted-printable\n"
        b"Content-ID: <keep@example>\n"
        b"\n"
    )
    assert max(len(x) for x in out.split(b"\r\n")) <= 76
    check_rewrite(raw, out, lambda p: p.text.replace(URL, long_url))


def test_a_7bit_part_gaining_8bit_text_switches_to_quoted_printable() -> None:
    raw = b"Content-Type: text/plain; charset=utf-8\n\nhttp://a.example/page\n"
    out = rewrite(raw, lambda p: p.text.replace(URL, "https://t.example/ü"))
    assert out == (
        b"Content-Type: text/plain; charset=utf-8\n"
        b"Content-Transfer-Encoding: quoted-printable\n"
        b"\n"
        b"https://t.example/=C3=BC\n"
    )


def test_text_the_charset_cannot_encode_is_an_error() -> None:
    raw = b"Content-Type: text/plain; charset=iso-8859-1\n\nhttp://a.example/page\n"
    with pytest.raises(MimeError, match="cannot encode"):
        rewrite(raw, lambda p: p.text.replace(URL, "https://t.example/€"))


# --------------------------------------------------------------------------------------------
# Multipart structure


def alternative(eol: bytes) -> bytes:
    raw = (
        b"From: a@example.com\n"
        b"MIME-Version: 1.0\n"
        b'Content-Type: multipart/alternative; boundary="=_alt"\n'
        b"\n"
        b"This is a multi-part message in MIME format.\n"
        b"--=_alt\n"
        b"Content-Type: text/plain; charset=utf-8\n"
        b"\n"
        b"Hello, go to http://a.example/page now.\n"
        b"\n"
        b"--=_alt \t\n"
        b"Content-Type: text/html; charset=utf-8\n"
        b"Content-Transfer-Encoding: quoted-printable\n"
        b"\n"
        b'<p>Hello, <a href=3D"http://a.example/page">go</a> now.</p>\n'
        b"--=_alt--\n"
        b"epilogue http://a.example/page\n"
    )
    return raw if eol == b"\n" else crlf(raw)


@pytest.mark.parametrize("eol", [b"\n", b"\r\n"], ids=["LF", "CRLF"])
def test_multipart_alternative(eol: bytes) -> None:
    raw = alternative(eol)
    parts = parse_message(raw).parts
    assert [(p.index, p.subtype, p.charset) for p in parts] == [(0, "plain", "utf-8"), (1, "html", "utf-8")]
    assert parts[0].text == f"Hello, go to {URL} now.{eol.decode()}"  # the last line break belongs to the delimiter
    assert parts[1].text == f'<p>Hello, <a href="{URL}">go</a> now.</p>'
    out = rewrite(raw, track)
    cut = raw.index(b"epilogue")
    expected = raw[:cut].replace(URL.encode(), TRACKED.encode()) + raw[cut:]
    assert out == expected
    check_rewrite(raw, out, track)


def test_only_the_transformed_part_changes() -> None:
    raw = alternative(b"\r\n")
    out = rewrite(raw, lambda p: track(p) if p.subtype == "html" else None)
    assert out == raw.replace(b'3D"http://a.example/page"', b'3D"https://track.example/x/123"')


NESTED = crlf(
    b"From: a@example.com\n"
    b'Content-Type: multipart/mixed; boundary="outer"\n'
    b"\n"
    b"Preamble http://a.example/page\n"
    b"--outer\n"
    b'Content-Type: multipart/alternative; boundary="outer-alt"\n'
    b"\n"
    b"--outer-alt\n"
    b"Content-Type: text/plain; charset=us-ascii\n"
    b"\n"
    b"Visit http://a.example/page\n"
    b"--outer-alt\n"
    b"Content-Type: text/html; charset=utf-8\n"
    b"Content-Transfer-Encoding: quoted-printable\n"
    b"\n"
    b'<a href=3D"http://a.example/page">Visit</a>\n'
    b"--outer-alt--\n"
    b"\n"
    b"--outer\n"
    b"Content-Type: text/html; charset=utf-8\n"
    b'Content-Disposition: attachment; filename="page.html"\n'
    b"\n"
    b'<a href="http://a.example/page">kept</a>\n'
    b"--outer\n"
    b"Content-Type: text/calendar; charset=utf-8\n"
    b"\n"
    b"URL:http://a.example/page\n"
    b"--outer\n"
    b'Content-Type: application/pdf; name="doc.pdf"\n'
    b"Content-Transfer-Encoding: base64\n"
    b"\n"
    b"JVBERi0xLjQKaHR0cDovL2EuZXhhbXBsZS9wYWdl\n"
    b"--outer--\n"
    b"Epilogue http://a.example/page\n"
)


def test_nested_multipart_rewrites_the_alternative_and_leaves_attachments() -> None:
    assert [p.subtype for p in parse_message(NESTED).parts] == ["plain", "html"]
    out = rewrite(NESTED, track)
    start = NESTED.index(b"--outer-alt\r\n")
    end = NESTED.index(b"--outer-alt--")
    expected = (
        NESTED[:start]
        + NESTED[start:end].replace(URL.encode(), TRACKED.encode())
        + NESTED[end:]
    )
    assert out == expected
    check_rewrite(NESTED, out, track)


FORWARDED = (
    b"From: a@example.com\n"
    b"Content-Type: multipart/mixed; boundary=b1\n"
    b"\n"
    b"--b1\n"
    b"Content-Type: text/plain\n"
    b"\n"
    b"See the forwarded message: http://a.example/page\n"
    b"--b1\n"
    b"Content-Type: message/rfc822\n"
    b"\n"
    b"From: someone@example.org\n"
    b"Content-Type: multipart/alternative; boundary=b2\n"
    b"\n"
    b"--b2\n"
    b"Content-Type: text/html; charset=utf-8\n"
    b"\n"
    b'<a href="http://a.example/page">inner</a>\n'
    b"--b2--\n"
    b"--b1--\n"
)


def test_a_forwarded_message_is_never_touched() -> None:
    assert len(parse_message(FORWARDED).parts) == 1
    out = rewrite(FORWARDED, track)
    assert out == FORWARDED.replace(
        b"message: http://a.example/page", b"message: https://track.example/x/123"
    )
    check_rewrite(FORWARDED, out, track)


def test_digest_parts_default_to_message_rfc822() -> None:
    raw = (
        b"Content-Type: multipart/digest; boundary=d\n\n"
        b"--d\n\nFrom: x@example.com\n\nhttp://a.example/page\n"
        b"--d\nContent-Type: text/plain\n\nhttp://a.example/page\n"
        b"--d--\n"
    )
    assert [p.text for p in parse_message(raw).parts] == [f"{URL}"]


def test_a_part_without_headers_is_text_plain() -> None:
    raw = b"Content-Type: multipart/mixed; boundary=b\n\n--b\n\nhttp://a.example/page\n--b--\n"
    assert parse_message(raw).parts == (TextPart(0, "plain", "", URL),)


def test_missing_close_delimiter_runs_the_last_part_to_the_end() -> None:
    raw = alternative(b"\r\n")
    raw = raw[: raw.index(b"\r\n--=_alt--")] + b"\r\n"
    parts = parse_message(raw).parts
    assert parts[1].text == f'<p>Hello, <a href="{URL}">go</a> now.</p>'  # as the stdlib reads it
    out = rewrite(raw, track)
    assert out == raw.replace(URL.encode(), TRACKED.encode())
    check_rewrite(raw, out, track)


def test_delimiters_after_the_close_delimiter_are_epilogue() -> None:
    raw = (
        b"Content-Type: multipart/mixed; boundary=b\n\n"
        b"--b\nContent-Type: text/plain\n\none\n--b--\n--b\nContent-Type: text/plain\n\ntwo\n"
    )
    assert [p.text for p in parse_message(raw).parts] == ["one"]


def test_a_part_of_headers_only_is_left_alone() -> None:
    raw = b"Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/plain\n--b--\n"
    assert parse_message(raw).parts == ()
    assert rewrite(raw, track) is raw


def test_empty_parts_and_parts_with_empty_bodies() -> None:
    raw = (
        b"Content-Type: multipart/mixed; boundary=b\n\n"
        b"--b\n--b\nContent-Type: text/html\n\n\n--b--\n"
    )
    assert parse_message(raw).parts == (TextPart(0, "html", "", ""),)
    out = rewrite(raw, lambda p: "<p>new</p>")
    assert out == raw.replace(b"text/html\n\n\n", b"text/html\n\n<p>new</p>\n")


def test_inline_html_with_a_filename_is_rewritten() -> None:
    raw = (
        b"Content-Type: multipart/mixed; boundary=b\n\n"
        b'--b\nContent-Type: text/html; name="a.htm"\nContent-Disposition: inline; filename="a.htm"\n\n'
        b"http://a.example/page\n--b--\n"
    )
    assert len(parse_message(raw).parts) == 1


# --------------------------------------------------------------------------------------------
# Broken input


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"Subject: only headers\r\n", "no blank line"),
        (b"Content-Type: multipart/mixed\n\n--b\n\nx\n--b--\n", "no boundary parameter"),
        (b"Content-Type: multipart/mixed; boundary=zz\n\n--b\n\nx\n--b--\n", "boundary 'zz' never appears"),
        (
            b"Content-Type: text/html\nContent-Transfer-Encoding: base64\n\nPGh0bWw+$$$\n",
            "invalid base64",
        ),
        (
            b"Content-Type: text/html\nContent-Transfer-Encoding: base64\n\nPGh0b\n",
            "invalid base64",
        ),
        (b"Content-Type: text/html\nContent-Transfer-Encoding: x-uuencode\n\nbegin\n", "unknown Content-Transfer-Encoding"),
        (b"Content-Type: text/plain; charset=utf-16\nContent-Transfer-Encoding: 8bit\n\n\xff\xfeA", "not valid utf-16"),
        (
            b"Content-Type: multipart/mixed; boundary=b\n\n--b\n<html>no headers\n<p>x</p>\n--b--\n",
            "no blank line between its headers",
        ),
    ],
    ids=["no-blank-line", "no-boundary", "boundary-missing", "bad-base64", "short-base64", "cte", "charset", "part"],
)
def test_broken_messages_raise_mime_error_with_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(MimeError, match=re.escape(reason)):
        parse_message(raw)


def test_a_bad_base64_attachment_is_not_our_business() -> None:
    raw = (
        b"Content-Type: multipart/mixed; boundary=b\n\n"
        b"--b\nContent-Type: text/plain\n\nhttp://a.example/page\n"
        b"--b\nContent-Type: image/png\nContent-Transfer-Encoding: base64\n\n!!not base64!!\n"
        b"--b--\n"
    )
    assert rewrite(raw, track) == raw.replace(URL.encode(), TRACKED.encode())


def test_nesting_too_deep_is_an_error() -> None:
    depth = 60
    raw = b"".join(
        b"Content-Type: multipart/mixed; boundary=b%d\n\n--b%d\n" % (i, i) for i in range(depth)
    ) + b"Content-Type: text/plain\n\nx\n"
    with pytest.raises(MimeError, match="deeper than 50"):
        parse_message(raw)


def test_a_failing_part_fails_the_whole_message_when_parsed() -> None:
    """Before any edit is made, so before the relay has registered a link."""
    raw = (
        b"Content-Type: multipart/alternative; boundary=b\n\n"
        b"--b\nContent-Type: text/plain\n\nhttp://a.example/page\n"
        b"--b\nContent-Type: text/html\nContent-Transfer-Encoding: base64\n\n%%%%\n"
        b"--b--\n"
    )
    with pytest.raises(MimeError, match=r"part 2 \(text/html\): invalid base64"):
        parse_message(raw)


# --------------------------------------------------------------------------------------------
# Property: random multipart messages


WORDS = st.sampled_from(
    ["hello", "world", "=", "a=b", " ", "\t", ".", "From", "<a href=\"", "\">", "x" * 90, "--"]
)
URLS = st.from_regex(r"http://a\.example/[a-z0-9/]{0,30}", fullmatch=True)
NON_ASCII = st.sampled_from(["é", "€", "日本", "ß"])
BOUNDARY = "=_hc.b0undary_="


@st.composite
def text_lines(draw: st.DrawFn, ascii_only: bool) -> list[str]:
    pieces = st.one_of(WORDS, URLS) if ascii_only else st.one_of(WORDS, URLS, NON_ASCII)
    return draw(
        st.lists(st.lists(pieces, max_size=8).map("".join), min_size=1, max_size=6)
    )


@st.composite
def messages(draw: st.DrawFn) -> tuple[bytes, bytes, list[tuple[bool, bytes]]]:
    """(raw message, line ending, [(is a rewritable text part, the part's bytes)])."""
    eol = draw(st.sampled_from([b"\n", b"\r\n"]))
    parts: list[tuple[bool, bytes]] = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["text/plain", "text/html", "application/octet-stream"]))
        if kind.startswith("text/"):
            cte = draw(st.sampled_from(["7bit", "quoted-printable", "base64"]))
            lines = draw(text_lines(ascii_only=cte == "7bit"))
            data = eol.join(line.encode() for line in lines)
            if draw(st.booleans()):
                data += eol
            if cte == "7bit":
                body = data
            elif cte == "quoted-printable":
                body = email.quoprimime.body_encode(data.decode("latin-1"), eol=eol.decode()).encode(
                    "latin-1"
                )
            else:
                body = base64.encodebytes(data).replace(b"\n", eol)
            header = f"Content-Type: {kind}; charset=utf-8\nContent-Transfer-Encoding: {cte}\n\n"
        else:
            data = draw(st.binary(max_size=200))
            body = base64.encodebytes(data).replace(b"\n", eol)
            header = f"Content-Type: {kind}\nContent-Transfer-Encoding: base64\n\n"
        parts.append((kind.startswith("text/"), header.encode().replace(b"\n", eol) + body))
    head = f'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="{BOUNDARY}"\n\n'
    raw = head.encode().replace(b"\n", eol) + b"preamble http://a.example/" + eol
    for _, part in parts:
        raw += b"--" + BOUNDARY.encode() + eol + part + eol
    raw += b"--" + BOUNDARY.encode() + b"--" + eol + b"epilogue http://a.example/" + eol
    return raw, eol, parts


def replace_a(part: TextPart) -> str:
    return part.text.replace("http://a.example/", "https://track.example/x/")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages())
def test_random_multipart_messages(message: tuple[bytes, bytes, list[tuple[bool, bytes]]]) -> None:
    raw, eol, parts = message
    assert rewrite(raw, lambda p: None) is raw
    # MimeError would be allowed by the contract, but these messages are all well formed.
    out = rewrite(raw, replace_a)
    check_rewrite(raw, out, replace_a)
    delimiter = b"--" + BOUNDARY.encode()
    before, after = raw.split(delimiter), out.split(delimiter)
    assert len(after) == len(before) == len(parts) + 2
    assert after[0] == before[0] and after[-1] == before[-1]  # headers, preamble, epilogue
    for (is_text, _), old, new in zip(parts, before[1:-1], after[1:-1]):
        if not is_text:
            assert new == old
            continue
        old_header, _ = split_header(old[len(eol) :])
        new_header, _ = split_header(new[len(eol) :])
        assert new_header == old_header
        assert new.endswith(eol) and old.endswith(eol)
        if b"http://a.example/" not in binascii.a2b_qp(old) and b"-Encoding: 7bit" in old_header:
            assert new == old


QP_FRAGMENTS = st.sampled_from(
    [b"a", b"word ", b" ", b"\t", b"=3D", b"==", b"=0A", b"=0D", b"=E9", b"=\r\n", b"=\n",
     b"\r\n", b"\n", b"=\rX\n", b"=4", b"= \r\n", b"\r", b"http://a.example/page", b"\xe9"]
)
INSERTS = st.lists(
    st.sampled_from(["x", "\n", "\r\n", " ", "\t", "=", "é", "https://track.example/x/123"]),
    max_size=4,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(
    body=st.lists(QP_FRAGMENTS, max_size=40).map(b"".join),
    cut=st.tuples(st.floats(0, 1), st.integers(0, 6)),
    insert=INSERTS,
    eol=st.sampled_from([b"\n", b"\r\n"]),
    whole=st.booleans(),
)
# What it found: an edit of the whole text encoded the lines after the change again, and a
# lone "= " or a trailing space does not come out of the encoder as it went in.
@example(body=b"= \r\nword ", cut=(0.0, 1), insert="", eol=b"\n", whole=True)
@example(body=b"a\n= \n", cut=(0.0, 1), insert="", eol=b"\r\n", whole=True)
def test_quoted_printable_of_any_shape_decodes_to_the_new_text(
    body: bytes, cut: tuple[float, int], insert: str, eol: bytes, whole: bool
) -> None:
    """Odd QP (``==``, ``=\\rX``, escaped line breaks, lone ``=``, ``= `` before a line break)
    still rewrites exactly, and the encoded lines wholly before and after the change are copied,
    whether the edit is just the change or the whole text."""
    raw = (
        b"Content-Type: text/plain; charset=iso-8859-1" + eol
        + b"Content-Transfer-Encoding: quoted-printable" + eol + eol + body
    )
    parsed = parse_message(raw)
    [part] = parsed.parts
    old = part.text
    start = int(cut[0] * len(old))
    end = min(start + cut[1], len(old))
    new = old[:start] + insert + old[end:]
    out = edit_message(parsed, {0: [(0, len(old), new) if whole else (start, end, insert)]})
    if new == old:
        assert out is raw
        return
    header, out_body = split_header(out)
    assert header == split_header(raw)[0]
    assert payload(stdlib(out)) == new.encode("latin-1")
    lines = [line + b"\n" for line in body.split(b"\n")]
    lines[-1] = lines[-1][:-1]
    if not lines[-1]:
        lines.pop()
    ends = [len(binascii.a2b_qp(b"".join(lines[: k + 1]))) for k in range(len(lines))]
    if whole:  # the change is what differs
        prefix = 0
        while prefix < min(len(old), len(new)) and old[prefix] == new[prefix]:
            prefix += 1
        suffix = 0
        while suffix < min(len(old), len(new)) - prefix and old[-1 - suffix] == new[-1 - suffix]:
            suffix += 1
    else:  # the change is where the edit says (an insertion could be told apart no other way)
        prefix, suffix = start, len(old) - end
    kept_head = [line for line, end in zip(lines[:-1], ends) if end <= prefix]
    starts = [0, *ends[:-1]]
    kept_tail = [line for line, s in zip(lines, starts) if s > len(old) - suffix]
    assert out_body.startswith(b"".join(kept_head))
    assert out_body.endswith(b"".join(kept_tail))
