"""Find the text parts of a raw MIME message and splice rewritten text back, byte for byte.

The relay may change link targets and nothing else. Re-serializing through :mod:`email`
(``as_bytes()``) rewrites headers, boundaries and encodings, and costs milliseconds per message,
so this module works on the raw bytes instead:

* multipart bodies are split on their boundary delimiters (RFC 2046) with ``bytes.find``;
* only the header fields that matter (Content-Type, Content-Transfer-Encoding,
  Content-Disposition) of each part are read, through :class:`email.message.Message` for its
  parameter parsing;
* only rewritable parts (``text/html`` and ``text/plain``, not attachments, not inside a
  ``message/*`` part) are decoded;
* a changed part is re-encoded with its own charset and transfer encoding, and only its body
  bytes are replaced: every other byte of the message is copied from the input.

Quoted-printable parts keep every encoded line whose decoded text did not change: only the
physical lines that span a change are encoded again (soft line breaks, at most 76 characters).
They are decoded as the stdlib decodes them (:func:`binascii.a2b_qp`), which reads "=" and
spaces before a line break as they stand where RFC 2045 sees a soft line break: the lines
holding no change are copied, so a reader of either kind reads them as before.
Base64 parts are encoded again whole, with the original line length and line ending. A 7bit or
8bit part whose new text would have a line over 998 octets (a long tracked URL), or a 7bit part
that gains 8-bit bytes, is switched to quoted-printable and its Content-Transfer-Encoding field
(in that part's header block only) says so.

Anything that cannot be parsed safely raises :class:`~hotclicks.errors.MimeError` with a reason;
the relay then forwards the message unchanged. A rewritable part that cannot be decoded (bad
base64, bytes invalid in a charset that cannot carry them through) makes the whole message
fail: tracking half of a message's alternatives would be worse than tracking none, and the
reason gets logged. Every rewritable part is decoded by :func:`parse_message`, before any edit
is asked for, so a message that fails does so before the caller has registered any link.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import difflib
import email.message
import email.policy
import re
from bisect import bisect_left, bisect_right
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from itertools import accumulate

from hotclicks.errors import MimeError
from hotclicks.splice import splice

__all__ = [
    "MAX_DEPTH",
    "ParsedMessage",
    "TextPart",
    "edit_headers",
    "edit_message",
    "parse_message",
    "read_headers",
    "split_header",
]

#: Deepest multipart nesting accepted; deeper is either an attack or a broken mailer.
MAX_DEPTH = 50
#: RFC 5321 line limit, without the line ending.
_MAX_LINE = 998
#: RFC 2045 limit of a quoted-printable line, including a soft line break's ``=``.
_QP_WIDTH = 76
#: Base64 line length when the original does not show one (a single short line).
_B64_WIDTH = 76

#: What follows ``--boundary`` on a delimiter line: ``--`` if it closes, padding, line break.
_DELIMITER_TAIL = re.compile(rb"(--)?[ \t]*(?:\r?\n|\Z)")
#: A line of a header block that is neither a field, a continuation nor the blank line.
_NOT_A_HEADER_LINE = re.compile(rb"^(?![\x21-\x39\x3b-\x7e]+[ \t]*:|[ \t]|From |\r?$)", re.M)
#: The three fields this module reads, with their continuation lines.
_CONTENT_FIELD = re.compile(
    rb"^(content-(?:type|transfer-encoding|disposition))[ \t]*:([^\n]*(?:\n[ \t][^\n]*)*)",
    re.I | re.M,
)
#: Words for locating changes: runs of URL-ish bytes, and runs of what ends a URL.
_WORDS = re.compile(rb"[^\s\"'<>]+|[\s\"'<>]+")
#: A byte that ends a word of ``_WORDS``.
_SEPARATOR = re.compile(rb"[\s\"'<>]")
#: Bytes after a changed word that must be equal on both sides to take up the walk again.
_RESYNC = 16
#: Bytes a quoted-printable line may carry literally (RFC 2045 6.7): tab, space, 33-60, 62-126.
_QP_UNSAFE = re.compile(rb"[^\t !-<>-~]")
_B64_ALPHABET = re.compile(rb"[A-Za-z0-9+/]*={0,2}")
_WHITESPACE = b" \t\r\n"

#: Transfer encodings and the misspellings seen in real mail that mean the same.
_CTE_NAMES = {
    "7bit": "7bit",
    "8bit": "8bit",
    "binary": "binary",
    "quoted-printable": "quoted-printable",
    "base64": "base64",
    "7bits": "7bit",
    "8bits": "8bit",
    "7-bit": "7bit",
    "8-bit": "8bit",
}
#: Python codecs that are not charsets a mail body can be written in.
_NOT_CHARSETS = frozenset({"undefined", "unicode-escape", "raw-unicode-escape", "idna", "punycode"})


@dataclass(frozen=True, slots=True)
class TextPart:
    """A rewritable text part, decoded, as the rewriter sees it."""

    #: 0-based, document order among rewritable text parts.
    index: int
    #: ``'html'`` or ``'plain'``.
    subtype: str
    #: The declared charset lower-cased, or ``''`` when undeclared.
    charset: str
    #: The decoded content, with the line endings the part had.
    text: str


@dataclass(slots=True)
class _Leaf:
    """Where a rewritable part sits in the raw message and how its body is encoded."""

    where: str
    header_start: int
    header_end: int  # just after the blank line ending the header block
    body_start: int
    body_end: int
    subtype: str
    charset: str
    cte: str


@dataclass(slots=True)
class _Decoded:
    leaf: _Leaf
    data: bytes  # body after the transfer decoding
    text: str
    codec: str
    errors: str


@dataclass(frozen=True)
class ParsedMessage:
    """A message read once: its rewritable parts, decoded, to rewrite as many times as needed
    (the relay makes one copy per recipient)."""

    raw: bytes
    #: Every rewritable part, decoded, in document order.
    parts: tuple[TextPart, ...]
    _decoded: tuple[_Decoded, ...]
    _eol: bytes


# --------------------------------------------------------------------------------------------
# Public API


def split_header(raw: bytes) -> tuple[bytes, bytes]:
    """Split a message into its header block (with the blank line ending it) and its body."""
    raw = _as_bytes(raw)
    end = _header_end(raw, 0, len(raw), "the message")
    if end < 0:
        raise MimeError("the message has no blank line between its headers and its body")
    return raw[:end], raw[end:]


def read_headers(raw: bytes) -> email.message.Message:
    """The top-level header fields, parsed with ``email.policy.default`` (RFC 2047 decoded).

    Only the header block is parsed, so this is cheap whatever the size of the body.
    """
    header, _ = split_header(raw)
    return BytesHeaderParser(policy=email.policy.default).parsebytes(header)


def parse_message(raw: bytes) -> ParsedMessage:
    """The message's structure and rewritable parts, decoded.

    Raises :class:`MimeError` when the message cannot be parsed or a rewritable part cannot be
    decoded.
    """
    raw = _as_bytes(raw)
    leaves, eol = _scan(raw)
    decoded = tuple(_decode(raw, leaf) for leaf in leaves)
    parts = tuple(TextPart(i, d.leaf.subtype, d.leaf.charset, d.text) for i, d in enumerate(decoded))
    return ParsedMessage(raw, parts, decoded, eol)


def edit_message(parsed: ParsedMessage, edits: Mapping[int, Sequence[tuple[int, int, str]]]) -> bytes:
    """The message with, in each part ``i`` of ``edits``, ``text[start:end]`` replaced by the
    new text of each ``(start, end, new text)`` (in order, not overlapping).

    The rewriter says where the text changes, so the whole old and new texts are never compared:
    only each edited span with its new text, to find the bytes that differ in it. A message no
    edit changes is returned as the very same bytes. Raises :class:`MimeError` when a new text
    cannot be encoded in the part's charset; never returns a half-edited message.
    """
    bodies: dict[int, tuple[bytes, list[tuple[int, int, int, int]] | None]] = {}
    for index, part_edits in edits.items():
        if not part_edits:
            continue
        dec = parsed._decoded[index]
        bodies[index] = _edited_data(dec, part_edits)
    return _splice_parts(parsed, bodies)


def _splice_parts(
    parsed: ParsedMessage, bodies: Mapping[int, tuple[bytes, list[tuple[int, int, int, int]] | None]]
) -> bytes:
    """The message with the parts of ``bodies`` holding their new data, each encoded as before.

    ``bodies`` maps a part to (its new data, before the transfer encoding; where it differs
    from the old data, when known).
    """
    raw = parsed.raw
    edits: list[tuple[int, int, bytes]] = []
    for index in sorted(bodies):
        new_data, changes = bodies[index]
        dec = parsed._decoded[index]
        if new_data == dec.data:
            continue
        leaf = dec.leaf
        body = raw[leaf.body_start : leaf.body_end]
        eol = _eol_of(body, _eol_of(raw[leaf.header_start : leaf.header_end], parsed._eol))
        new_body, switched = _encode_body(leaf, body, dec.data, new_data, eol, changes)
        if switched:
            header = raw[leaf.header_start : leaf.header_end]
            edits.append((leaf.header_start, leaf.header_end, _set_cte_qp(header, eol)))
        edits.append((leaf.body_start, leaf.body_end, new_body))
    return splice(raw, edits)


def edit_headers(
    raw: bytes, *, remove: Collection[str] = (), add: Sequence[tuple[str, str]] = ()
) -> bytes:
    """Remove top-level fields by name and append new ones, leaving every other byte as it was.

    Removal is case-insensitive and takes a field's continuation lines with it. Added fields go
    at the end of the header block, before the blank line, with the message's line ending, and
    are folded at spaces when longer than 78 characters. Names and values must be printable
    ASCII without line breaks (``ValueError`` otherwise: a line break would inject a header).
    """
    raw = _as_bytes(raw)
    header, body = split_header(raw)
    eol = _eol_of(header, b"\r\n")
    drop = {name.strip().lower() for name in remove}
    kept = [data for name, data in _header_fields(header) if name is None or name not in drop]
    added = [_fold_field(name, value, eol) for name, value in add]
    blank = b"\r\n" if header.endswith(b"\r\n") else b"\n"
    return b"".join(kept) + b"".join(added) + blank + body


# --------------------------------------------------------------------------------------------
# Structure


def _as_bytes(raw: bytes) -> bytes:
    if isinstance(raw, bytes):
        return raw
    if isinstance(raw, (bytearray, memoryview)):
        return bytes(raw)
    raise TypeError(f"a message is bytes, not {type(raw).__name__}")


def _eol_of(data: bytes, default: bytes) -> bytes:
    """The line ending of the first line of ``data``: CRLF or a bare LF."""
    i = data.find(b"\n")
    if i < 0:
        return default
    return b"\r\n" if i > 0 and data[i - 1] == 13 else b"\n"


def _header_end(raw: bytes, start: int, end: int, where: str) -> int:
    """The offset just after the blank line that ends the header block at ``start``, or -1.

    ``start`` is always at the start of a line. Raises when a line of the header block is
    neither a field nor a continuation: the blank line found is then not the real separator.
    """
    if raw.startswith(b"\n", start, end) or raw.startswith(b"\r\n", start, end):
        blank = start  # no header fields at all
    else:
        # The first blank line, CRLF or bare LF: each search stops where the other found one
        # (an unbounded search for the LF kind would read the whole body of a CRLF message).
        crlf = raw.find(b"\n\r\n", start, end)
        lf = raw.find(b"\n\n", start, crlf + 2 if crlf >= 0 else end)
        if lf < 0 and crlf < 0:
            return -1
        blank = (lf if lf >= 0 else crlf) + 1
    bad = _NOT_A_HEADER_LINE.search(raw, start, blank)
    if bad is not None:
        line = raw[bad.start() : raw.find(b"\n", bad.start(), blank)][:40]
        raise MimeError(f"{where}: header block has a line that is not a header field: {line!r}")
    return raw.find(b"\n", blank, end) + 1


def _content_fields(block: bytes, default_type: str) -> email.message.Message:
    """A Message holding only the Content-* fields the structure depends on (first of each)."""
    msg = email.message.Message()
    msg.set_default_type(default_type)
    seen: set[bytes] = set()
    for m in _CONTENT_FIELD.finditer(block):
        name = m.group(1).lower()
        if name in seen:
            continue
        seen.add(name)
        value = m.group(2).replace(b"\r", b"").replace(b"\n", b"")
        msg[name.decode("ascii")] = value.decode("ascii", "surrogateescape").strip()
    return msg


def _scan(raw: bytes) -> tuple[list[_Leaf], bytes]:
    """The rewritable parts of the message, and the message's line ending."""
    header_end = _header_end(raw, 0, len(raw), "the message")
    if header_end < 0:
        raise MimeError("the message has no blank line between its headers and its body")
    leaves: list[_Leaf] = []
    _walk(raw, 0, header_end, len(raw), "text/plain", 0, "the message", leaves)
    return leaves, _eol_of(raw[:header_end], b"\r\n")


def _walk(
    raw: bytes,
    header_start: int,
    header_end: int,
    end: int,
    default_type: str,
    depth: int,
    where: str,
    leaves: list[_Leaf],
) -> None:
    if depth > MAX_DEPTH:
        raise MimeError(f"{where}: multipart nesting deeper than {MAX_DEPTH} levels")
    fields = _content_fields(raw[header_start:header_end], default_type)
    ctype = fields.get_content_type()
    maintype, _, subtype = ctype.partition("/")
    if maintype == "multipart":
        boundary = fields.get_boundary()
        if not boundary:
            raise MimeError(f"{where}: {ctype} has no boundary parameter")
        parts = _split_multipart(raw, header_end, end, boundary, f"{where} ({ctype})")
        child_default = "message/rfc822" if subtype == "digest" else "text/plain"
        prefix = "part " if depth == 0 else f"{where}."
        for number, (start, stop) in enumerate(parts, 1):
            child = f"{prefix}{number}"
            child_header_end = _header_end(raw, start, stop, child)
            if child_header_end < 0:
                # No blank line: a part of header fields only (an empty body, nothing to
                # rewrite) is left as it is; anything else is not a part we can read.
                if _NOT_A_HEADER_LINE.search(raw, start, stop) is not None:
                    raise MimeError(f"{child}: no blank line between its headers and its body")
                continue
            _walk(raw, start, child_header_end, stop, child_default, depth + 1, child, leaves)
        return
    if maintype == "message":
        return  # a forwarded or bounced message is someone else's: never touch it
    if ctype not in ("text/html", "text/plain"):
        return
    if fields.get_content_disposition() == "attachment":
        return
    cte_field = str(fields.get("content-transfer-encoding", "")).strip()
    token = re.match(r"[^\s;(]*", cte_field)
    cte_name = token.group(0).strip("\"'").lower() if token else ""
    cte = _CTE_NAMES.get(cte_name or "7bit")
    if cte is None:
        raise MimeError(f"{where} ({ctype}): unknown Content-Transfer-Encoding {cte_field!r}")
    charset = fields.get_content_charset() or ""
    leaves.append(
        _Leaf(where, header_start, header_end, header_end, end, subtype, charset, cte)
    )


def _split_multipart(
    raw: bytes, start: int, end: int, boundary: str, where: str
) -> list[tuple[int, int]]:
    """The (start, end) offsets of each body part between ``start`` and ``end``.

    A delimiter is ``--boundary`` at the start of a line, then ``--`` for the close delimiter,
    optional transport padding and a line break (or the end of the enclosing part). The line
    break before a delimiter belongs to the delimiter. Without a close delimiter the last part
    runs to the end of the enclosing part (less the message's final line break).
    """
    try:
        needle = b"--" + boundary.encode("ascii", "surrogateescape")
    except UnicodeEncodeError:
        raise MimeError(f"{where}: the boundary {boundary!r} is not ASCII") from None
    parts: list[tuple[int, int]] = []
    part_start = -1
    found = _find_delimiter(raw, needle, start, start, end)
    if found is None:
        raise MimeError(f"{where}: the boundary {boundary!r} never appears")
    while found is not None:
        delimiter_start, delimiter_end, close = found
        if part_start >= 0:
            cut = delimiter_start
            if cut - 2 >= part_start and raw[cut - 2 : cut] == b"\r\n":
                cut -= 2
            elif cut - 1 >= part_start and raw[cut - 1] == 10:
                cut -= 1
            parts.append((part_start, cut))
        if close:
            return parts  # what follows the close delimiter is the epilogue
        part_start = delimiter_end
        found = _find_delimiter(raw, needle, part_start, start, end)
    # No close delimiter. At the end of the message, the final line break is the one the
    # missing delimiter would have owned (as the stdlib parser reads it).
    cut = end
    if end == len(raw):
        if raw.endswith(b"\r\n") and end - 2 >= part_start:
            cut -= 2
        elif raw.endswith(b"\n") and end - 1 >= part_start:
            cut -= 1
    parts.append((part_start, cut))
    return parts


def _find_delimiter(
    raw: bytes, needle: bytes, pos: int, start: int, end: int
) -> tuple[int, int, bool] | None:
    """(start, end, is the close delimiter) of the next delimiter line at or after ``pos``.

    ``bytes.find`` then a check of the line around the hit: much faster than a multiline
    regex over a body of base64 images. ``start`` (the body's start) begins a line.
    """
    while True:
        i = raw.find(needle, pos, end)
        if i < 0:
            return None
        if i == start or raw[i - 1] == 10:
            m = _DELIMITER_TAIL.match(raw, i + len(needle), end)
            if m is not None:
                return i, m.end(), m.group(1) is not None
        pos = i + 1


def _header_fields(header: bytes) -> list[tuple[str | None, bytes]]:
    """The fields of a header block (without its blank line) as (lower-case name, raw bytes)."""
    fields: list[tuple[str | None, bytes]] = []
    lines = _lines(header)
    if lines and lines[-1].strip(b"\r\n") == b"":
        lines.pop()  # the blank line ending the block
    for line in lines:
        if line[:1] in (b" ", b"\t") and fields:
            name, data = fields[-1]
            fields[-1] = (name, data + line)
        elif b":" in line:
            name = line.split(b":", 1)[0].strip().lower().decode("ascii", "surrogateescape")
            fields.append((name, line))
        else:
            fields.append((None, line))
    return fields


def _fold_field(name: str, value: str, eol: bytes) -> bytes:
    if not re.fullmatch(r"[\x21-\x39\x3b-\x7e]+", name):
        raise ValueError(f"not a header field name: {name!r}")
    if not re.fullmatch(r"[\t\x20-\x7e]*", value):
        raise ValueError(f"header field value must be printable ASCII on one line: {value!r}")
    line = f"{name}: {value}"
    if len(line) <= 78:
        return line.encode("ascii") + eol
    # Fold before spaces: unfolding (removing the line breaks) gives the value back exactly.
    lines: list[str] = []
    current = ""
    for i, word in enumerate(re.split(r"(?=[ \t])", line)):
        if i and current.strip() and len(current) + len(word) > 78:
            lines.append(current)
            current = word
        else:
            current += word
    lines.append(current)
    return eol.join(part.encode("ascii") for part in lines) + eol


def _set_cte_qp(header: bytes, eol: bytes) -> bytes:
    """The part's header block saying quoted-printable instead of its old transfer encoding."""
    new_field = b"Content-Transfer-Encoding: quoted-printable" + eol
    out: list[bytes] = []
    placed = False
    for name, data in _header_fields(header):
        if name == "content-transfer-encoding":
            if not placed:
                out.append(new_field)
                placed = True
            continue
        out.append(data)
    if not placed:
        out.append(new_field)
    blank = header[len(header) - 2 :] if header.endswith(b"\r\n") else b"\n"
    return b"".join(out) + blank


# --------------------------------------------------------------------------------------------
# Decoding and encoding one part


def _decode(raw: bytes, leaf: _Leaf) -> _Decoded:
    body = raw[leaf.body_start : leaf.body_end]
    what = f"{leaf.where} (text/{leaf.subtype})"
    if leaf.cte == "quoted-printable":
        data = binascii.a2b_qp(body)
    elif leaf.cte == "base64":
        data = _b64decode(body, what)
    else:
        data = body
    text, codec, errors = _charset_decode(data, leaf.charset, what)
    return _Decoded(leaf, data, text, codec, errors)


def _b64decode(body: bytes, what: str) -> bytes:
    compact = body.translate(None, _WHITESPACE)
    if not _B64_ALPHABET.fullmatch(compact) or len(compact) % 4 == 1:
        raise MimeError(f"{what}: invalid base64")
    compact += b"=" * (-len(compact) % 4)  # tolerate missing padding
    try:
        return binascii.a2b_base64(compact)
    except binascii.Error as exc:
        raise MimeError(f"{what}: invalid base64 ({exc})") from None


def _charset_decode(data: bytes, charset: str, what: str) -> tuple[str, str, str]:
    """(text, codec, errors): how the part was decoded is how its new text gets encoded."""
    if not charset:
        try:
            return data.decode("utf-8"), "utf-8", "strict"
        except UnicodeDecodeError:
            return data.decode("latin-1"), "latin-1", "strict"
    try:
        info = codecs.lookup(charset)
    except (LookupError, ValueError):  # ValueError: a charset name with a NUL in it
        info = None
    if info is None or not getattr(info, "_is_text_encoding", True) or info.name in _NOT_CHARSETS:
        # An unknown charset: ASCII carries every URL; other bytes ride along as surrogates.
        return data.decode("ascii", "surrogateescape"), "ascii", "surrogateescape"
    try:
        return data.decode(info.name), info.name, "strict"
    except UnicodeDecodeError as exc:
        reason = exc.reason
    # Bytes invalid in the declared charset (us-ascii holding 8-bit text is common): carry
    # them as surrogates when that gives the very same bytes back, else give up.
    try:
        text = data.decode(info.name, "surrogateescape")
        if text.encode(info.name, "surrogateescape") == data:
            return text, info.name, "surrogateescape"
    except (UnicodeError, LookupError):
        pass
    raise MimeError(f"{what}: not valid {charset} ({reason})")


def _encode_text(text: str, dec: _Decoded) -> bytes:
    what = f"{dec.leaf.where} (text/{dec.leaf.subtype})"
    try:
        data = text.encode(dec.codec, dec.errors)
    except UnicodeEncodeError as exc:
        bad = exc.object[exc.start : exc.end]
        raise MimeError(
            f"{what}: the new text has characters {bad!r} that {dec.leaf.charset or dec.codec} "
            "cannot encode"
        ) from None
    try:
        same = data.decode(dec.codec, dec.errors) == text
    except UnicodeDecodeError:
        same = False
    if not same:
        raise MimeError(f"{what}: the new text does not survive encoding in {dec.codec}")
    return data


#: Codecs whose text can be encoded piece by piece: the pieces' bytes, joined, are the bytes of
#: the whole (no byte-order mark, no shift state).
_PIECEWISE_CODECS = frozenset({"utf-8", "ascii", "latin-1"})


def _edited_data(
    dec: _Decoded, edits: Sequence[tuple[int, int, str]]
) -> tuple[bytes, list[tuple[int, int, int, int]] | None]:
    """(the part's data with ``edits`` applied to its text, where it changed in data offsets).

    Only the text between edits and the edited spans are encoded, piece by piece, when the codec
    allows it (and the pieces of the old text are checked to give back the old data); else the
    whole new text is encoded and the changes are left to be found.
    """
    text, codec, errors = dec.text, dec.codec, dec.errors
    if codec in _PIECEWISE_CODECS or codec.startswith(("iso8859-", "cp12")):
        old_pieces: list[bytes] = []
        new_pieces: list[bytes] = []
        changes: list[tuple[int, int, int, int]] = []
        o = n = pos = 0
        try:
            for start, end, value in edits:
                same = text[pos:start].encode(codec, errors)
                was = text[start:end].encode(codec, errors)
                now = _encode_text(value, dec)
                o += len(same)
                n += len(same)
                changes.append((o, o + len(was), n, n + len(now)))
                o += len(was)
                n += len(now)
                old_pieces += (same, was)
                new_pieces += (same, now)
                pos = end
        except UnicodeEncodeError:  # cannot be: the text was decoded with this codec
            pass
        else:
            rest = text[pos:].encode(codec, errors)
            if b"".join(old_pieces) + rest == dec.data:
                return b"".join(new_pieces) + rest, changes
    pieces: list[str] = []
    pos = 0
    for start, end, value in edits:
        pieces += (text[pos:start], value)
        pos = end
    pieces.append(text[pos:])
    return _encode_text("".join(pieces), dec), None


def _edit_changes(was: bytes, now: bytes) -> list[tuple[int, int, int, int]]:
    """Where ``now`` differs from ``was``, the old and new bytes of one edit, as :func:`_changes`.

    The edited span is trimmed of what both sides keep; what is left of a URL is one change,
    and only a span of several words (a whole text) is walked for the changes within it.
    """
    head = _common_prefix(was, now)
    tail = _common_suffix(was, now, min(len(was), len(now)) - head)
    o2, n2 = len(was) - tail, len(now) - tail
    if head == o2 and head == n2:
        return []
    if head == o2 or _SEPARATOR.search(was, head, o2) is None:
        return [(head, o2, head, n2)]
    return [(head + a, head + b, head + c, head + d) for a, b, c, d in _changes(was[head:o2], now[head:n2])]


def _encode_body(
    leaf: _Leaf,
    body: bytes,
    old: bytes,
    new: bytes,
    eol: bytes,
    changes: list[tuple[int, int, int, int]] | None = None,
) -> tuple[bytes, bool]:
    """(new body bytes, whether the part switched to quoted-printable).

    ``changes``: where ``new`` differs from ``old``, as :func:`_changes` finds it, when known.
    """
    if leaf.cte == "base64":
        return _b64_like(body, new, eol), False
    if leaf.cte == "quoted-printable":
        out = _qp_rewrite(body, old, new, eol, changes)
        if binascii.a2b_qp(out) != new:  # never expected; checked because it is cheap
            out = _qp_encode(new, eol, final=True)
        return out, False
    too_long = leaf.cte != "binary" and any(
        len(line) > _MAX_LINE and len(line.rstrip(b"\r")) > _MAX_LINE for line in new.split(b"\n")
    )
    gained_8bit = leaf.cte == "7bit" and not new.isascii() and old.isascii()
    if too_long or gained_8bit:
        return _qp_encode(new, eol, final=True), True
    return new, False


def _b64_like(body: bytes, new: bytes, eol: bytes) -> bytes:
    """``new`` in base64 with the line length, line ending and surrounding space of ``body``."""
    core = body.strip(_WHITESPACE)
    lead = body[: len(body) - len(body.lstrip(_WHITESPACE))] if core else b""
    trail = body[len(body.rstrip(_WHITESPACE)) :] if core else body
    first, newline, _ = core.partition(b"\n")
    first = first.rstrip(b"\r \t")
    width = len(first) if (newline or len(first) > _B64_WIDTH) and first else _B64_WIDTH
    encoded = base64.b64encode(new)
    lines = [encoded[i : i + width] for i in range(0, len(encoded), width)]
    return lead + eol.join(lines) + trail


def _qp_escape(data: bytes) -> bytes:
    return _QP_UNSAFE.sub(lambda m: b"=%02X" % m[0][0], data)


def _qp_encode(data: bytes, eol: bytes, *, final: bool) -> bytes:
    """Quoted-printable for ``data``: ``eol`` in data becomes a hard line break.

    Lines are at most 76 characters. When not ``final`` (more encoded lines follow), data not
    ending with a hard break ends with a soft one, so what follows starts a line of its own.
    """
    out: list[bytes] = []
    segments = data.split(eol)
    last = len(segments) - 1
    for i, segment in enumerate(segments):
        hard = i < last
        if not hard and not segment:
            break
        esc = _qp_escape(segment)
        if (hard or final) and esc[-1:] in (b" ", b"\t"):
            esc = esc[:-1] + (b"=20" if esc[-1:] == b" " else b"=09")  # no trailing whitespace
        pos = 0
        while len(esc) - pos > _QP_WIDTH:
            cut = pos + _QP_WIDTH - 1
            if esc[cut - 1] == 61:  # '=' of an escape: do not split it
                cut -= 1
            elif esc[cut - 2] == 61:
                cut -= 2
            out.append(esc[pos:cut] + b"=" + eol)
            pos = cut
        rest = esc[pos:]
        if hard:
            out.append(rest + eol)
        elif final:
            out.append(rest)
        else:
            out.append(rest + b"=" + eol)
    return b"".join(out)


def _qp_rewrite(
    body: bytes, old: bytes, new: bytes, eol: bytes, changes: list[tuple[int, int, int, int]] | None = None
) -> bytes:
    """New quoted-printable body for ``new``, copying every encoded line that did not change.

    A QP escape never spans a line, so each physical line decodes on its own: the decoded
    offsets where lines start map each change of the text to the few encoded lines that hold
    it. Only those lines are encoded again; their neighbours are copied byte for byte.
    """
    lines = _lines(body)
    decoded = list(map(binascii.a2b_qp, lines))
    if not lines or b"".join(decoded) != old:
        return _qp_encode(new, eol, final=True)
    starts = [0, *accumulate(map(len, decoded))]
    changes = _changes(old, new) if changes is None else _narrowed(changes, old, new, starts)
    last = len(lines) - 1
    out: list[bytes] = []
    copied = 0  # first line not yet copied or replaced
    group: list[int] | None = None  # [first line, last line, new start, new end]
    for o1, o2, n1, n2 in changes:
        if o1 == o2 and group is not None:
            # An insertion between two lines goes with the line before: the line after stays.
            first = final = min(max(bisect_left(starts, o1) - 1, 0), last)
        else:
            first = min(bisect_right(starts, o1) - 1, last)
            final = first if o1 == o2 else min(bisect_right(starts, o2 - 1) - 1, last)
        if group is not None and first <= group[1]:
            group[1] = max(group[1], final)
            group[3] = n2 + starts[group[1] + 1] - o2
            continue
        if group is not None:
            copied = _qp_flush(lines, new, eol, group, copied, out)
        group = [first, final, n1 - (o1 - starts[first]), n2 + starts[final + 1] - o2]
    if group is not None:
        copied = _qp_flush(lines, new, eol, group, copied, out)
    out.append(b"".join(lines[copied:]))
    return b"".join(out)


def _narrowed(
    changes: list[tuple[int, int, int, int]], old: bytes, new: bytes, starts: list[int]
) -> list[tuple[int, int, int, int]]:
    """The edited spans ``changes``, cut down to the bytes that differ where that spares a line.

    An edit may span more than its changes (a whole text replaced, the "http" of a URL kept),
    and a line encoded again without need may come out different (a trailing space, "= "
    before the line break). A span within one line is kept (that line is encoded again either
    way) unless it changes nothing; a span across lines is cut down when that may spare one.
    """
    out: list[tuple[int, int, int, int]] = []
    for o1, o2, n1, n2 in changes:
        if o2 - o1 == n2 - n1 and old[o1:o2] == new[n1:n2]:
            continue  # changes nothing
        if (
            o1 < o2
            and starts[bisect_right(starts, o1)] < o2  # a line starts within the span
            and _may_spare_a_line(old, new, starts, o1, o2, n1, n2)
        ):
            out += [(o1 + a, o1 + b, n1 + c, n1 + d) for a, b, c, d in _edit_changes(old[o1:o2], new[n1:n2])]
        else:
            out.append((o1, o2, n1, n2))
    return out


def _may_spare_a_line(
    old: bytes, new: bytes, starts: list[int], o1: int, o2: int, n1: int, n2: int
) -> bool:
    """Whether cutting down a span across lines may leave a line out of it: when it holds
    several words, or its first or last line is the same on both sides. A URL that changes
    from its first line to its last, the usual edit, costs two slice comparisons."""
    if _SEPARATOR.search(old, o1, o2) is not None:
        return True
    first_end = starts[bisect_right(starts, o1)]
    if old[o1:first_end] == new[n1 : n1 + first_end - o1]:
        return True
    last_start = starts[bisect_right(starts, o2 - 1) - 1]
    return old[last_start:o2] == new[max(n2 - (o2 - last_start), 0) : n2]


def _qp_flush(
    lines: list[bytes], new: bytes, eol: bytes, group: list[int], copied: int, out: list[bytes]
) -> int:
    """Copy the lines before ``group``, encode its new text; return the next line to copy."""
    first, final, start, end = group
    out.append(b"".join(lines[copied:first]))
    out.append(_qp_encode(new[start:end], eol, final=final == len(lines) - 1))
    return final + 1


def _changes(old: bytes, new: bytes) -> list[tuple[int, int, int, int]]:
    """Where ``new`` differs from ``old``: (old start, old end, new start, new end), in order.

    A rewrite replaces words (a URL is one word: it ends at whitespace, a quote or an angle
    bracket) and leaves the rest alone, so both are walked together: past the common bytes,
    a difference runs to the end of its word when what follows the word is the same on both
    sides again. That costs a few comparisons per change, not a pass over every line. From a
    difference that does not resynchronise so (an insertion of several words, like an open
    pixel), the rest is compared line by line (:func:`_changes_by_lines`).
    """
    changes: list[tuple[int, int, int, int]] = []
    o = n = 0
    while True:
        same = _same_from(old, o, new, n)
        o += same
        n += same
        if o == len(old) and n == len(new):
            return changes
        if o < len(old) and n < len(new):
            o_end = _WORDS.match(old, o).end()  # type: ignore[union-attr]
            n_end = _WORDS.match(new, n).end()  # type: ignore[union-attr]
            if old[o_end : o_end + _RESYNC] == new[n_end : n_end + _RESYNC]:
                suffix = _common_suffix(old[o:o_end], new[n:n_end], min(o_end - o, n_end - n))
                changes.append((o, o_end - suffix, n, n_end - suffix))
                o, n = o_end, n_end
                continue
        changes.extend(
            (o + o1, o + o2, n + n1, n + n2) for o1, o2, n1, n2 in _changes_by_lines(old[o:], new[n:])
        )
        return changes


def _same_from(a: bytes, i: int, b: bytes, j: int) -> int:
    """Length of the common prefix of ``a[i:]`` and ``b[j:]``: growing slices compared (in C),
    then a bisection of the one that differs, so the cost follows the distance to the change."""
    limit = min(len(a) - i, len(b) - j)
    done = 0
    step = 256
    while done < limit:
        size = min(step, limit - done)
        if a[i + done : i + done + size] == b[j + done : j + done + size]:
            done += size
            step *= 2
            continue
        lo, hi = 0, size - 1  # common bytes within this chunk
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if a[i + done : i + done + mid] == b[j + done : j + done + mid]:
                lo = mid
            else:
                hi = mid - 1
        return done + lo
    return limit


def _changes_by_lines(old: bytes, new: bytes) -> list[tuple[int, int, int, int]]:
    """Where ``new`` differs from ``old``, found line by line.

    The common head and tail are cut off first; of the rest, lines are compared, then the
    words of each differing run of lines (a URL is one word: it ends at whitespace, a quote or
    an angle bracket), then the bytes of each differing run of words. A rewrite of the URLs of
    a long HTML line thus yields one small change per URL, not one from the first to the last.
    """
    head = _common_prefix(old, new)
    tail = _common_suffix(old, new, min(len(old), len(new)) - head)
    old, new = old[head : len(old) - tail], new[head : len(new) - tail]
    changes = []
    for o1, o2, n1, n2 in _diff(_lines(old), _lines(new)):
        a, b = old[o1:o2], new[n1:n2]
        for a1, a2, b1, b2 in _diff(_WORDS.findall(a), _WORDS.findall(b)):
            x, y = a[a1:a2], b[b1:b2]
            prefix = _common_prefix(x, y)
            suffix = _common_suffix(x, y, min(len(x), len(y)) - prefix)
            o, n = head + o1, head + n1
            changes.append((o + a1 + prefix, o + a2 - suffix, n + b1 + prefix, n + b2 - suffix))
    return changes


def _diff(old: list[bytes], new: list[bytes]) -> list[tuple[int, int, int, int]]:
    """Byte ranges (old start, old end, new start, new end) of the differing runs of items."""
    n = min(len(old), len(new))
    head = 0
    while head < n and old[head] == new[head]:
        head += 1
    tail = 0
    while tail < n - head and old[-1 - tail] == new[-1 - tail]:
        tail += 1
    old_end = len(old) - tail
    new_end = len(new) - tail
    if old_end == new_end:  # same count: items pair up (the usual case of a URL rewrite)
        runs = [(i, i + 1, i, i + 1) for i in range(head, old_end) if old[i] != new[i]]
    else:
        runs = _align(old, new, head, old_end, head, new_end)
    if not runs:
        return []
    old_starts = [0, *accumulate(map(len, old))]
    new_starts = [0, *accumulate(map(len, new))]
    return [(old_starts[i1], old_starts[i2], new_starts[j1], new_starts[j2]) for i1, i2, j1, j2 in runs]


def _align(
    old: list[bytes], new: list[bytes], i: int, i_end: int, j: int, j_end: int
) -> list[tuple[int, int, int, int]]:
    """Index ranges (old start, old end, new start, new end) of the differing runs of items.

    A rewrite changes items in place and inserts a few (an open pixel): walking both lists and,
    at each difference, looking for the nearest pair of equal items finds that in linear time,
    where ``difflib`` takes milliseconds on a long part. Any alignment of equal items gives a
    correct splice; a stretch where nothing matches nearby goes to ``difflib`` to stay minimal.
    """
    runs: list[tuple[int, int, int, int]] = []
    while i < i_end and j < j_end:
        if old[i] == new[j]:
            i += 1
            j += 1
            continue
        sync = _next_equal(old, new, i, i_end, j, j_end)
        if sync is None:
            matcher = difflib.SequenceMatcher(None, old[i:i_end], new[j:j_end])
            runs.extend(
                (i1 + i, i2 + i, j1 + j, j2 + j)
                for tag, i1, i2, j1, j2 in matcher.get_opcodes()
                if tag != "equal"
            )
            return runs
        runs.append((i, sync[0], j, sync[1]))
        i, j = sync
    if i < i_end or j < j_end:
        runs.append((i, i_end, j, j_end))
    return runs


def _next_equal(
    old: list[bytes], new: list[bytes], i: int, i_end: int, j: int, j_end: int, reach: int = 48
) -> tuple[int, int] | None:
    """The equal pair (old index, new index) after a difference at (``i``, ``j``) that is nearest
    (fewest items skipped on both sides together), within ``reach``; None if there is none."""
    for distance in range(1, reach + 1):
        for skip_old in range(max(0, distance - (j_end - j - 1)), min(distance, i_end - i - 1) + 1):
            if old[i + skip_old] == new[j + distance - skip_old]:
                return i + skip_old, j + distance - skip_old
    return None


def _lines(data: bytes) -> list[bytes]:
    """Lines split after each LF (never at a lone CR), with their line endings."""
    pieces = data.split(b"\n")
    lines = [piece + b"\n" for piece in pieces[:-1]]
    if pieces[-1]:
        lines.append(pieces[-1])
    return lines


def _common_prefix(a: bytes, b: bytes) -> int:
    """Length of the common prefix: the two read as one big-endian number each, XORed, the
    first differing byte is where the highest set bit is (a few calls in C, no Python loop)."""
    size = min(len(a), len(b))
    differ = int.from_bytes(a[:size], "big") ^ int.from_bytes(b[:size], "big")
    return size - (differ.bit_length() + 7) // 8


def _common_suffix(a: bytes, b: bytes, limit: int) -> int:
    """Length of the common suffix, at most ``limit`` (as :func:`_common_prefix`, little-endian)."""
    if limit <= 0:
        return 0
    differ = int.from_bytes(a[len(a) - limit :], "little") ^ int.from_bytes(b[len(b) - limit :], "little")
    return limit - (differ.bit_length() + 7) // 8
