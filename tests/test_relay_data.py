"""The relay reads DATA in large pieces (smtp_relay.handler.read_data) with aiosmtpd's rules.

The reference below is RFC 5321 4.5.2 as aiosmtpd applies it, a line at a time: lines end with
CRLF, the message ends at the first line that is a lone dot, and a leading dot is removed from
every other line. The reader must give the same bytes however the stream is cut into packets,
leave what follows the terminator (a pipelined command) in the stream, and read a message over
the size limit to its end while keeping none of it.
"""

from __future__ import annotations

import asyncio
import smtplib
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtp_relay.handler import longest_line, read_data, unstuff


def reference(stream: bytes) -> tuple[bytes, bytes]:
    """(the message, what follows its terminating line), a line at a time."""
    lines, pos = [], 0
    while True:
        end = stream.index(b"\r\n", pos) + 2
        line = stream[pos:end]
        pos = end
        if line == b".\r\n":
            return b"".join(lines), stream[pos:]
        lines.append(line[1:] if line.startswith(b".") else line)


def stuffed(message: bytes) -> bytes:
    """``message`` (CRLF lines) as a client sends it after DATA: dot-stuffed and terminated."""
    lines = message.split(b"\r\n")
    body = b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines)
    if body and not body.endswith(b"\r\n"):
        body += b"\r\n"
    return body + b".\r\n"


def read(stream: bytes, cuts: list[int], *, size_limit: int | None = None, limit: int = 2**16):
    """read_data over ``stream`` fed in packets cut at ``cuts``; (result, bytes left unread)."""

    async def main():
        reader = asyncio.StreamReader(limit=limit)
        bounds = [0, *sorted(c for c in set(cuts) if 0 < c < len(stream)), len(stream)]

        async def feed():
            for a, b in zip(bounds, bounds[1:]):
                reader.feed_data(stream[a:b])
                await asyncio.sleep(0)
            reader.feed_eof()

        feeder = asyncio.ensure_future(feed())
        result = await read_data(reader, size_limit)
        await feeder
        return result, await reader.read()

    return asyncio.run(main())


LINES = st.lists(
    st.sampled_from([b"", b".", b"..", b"...x", b".x", b"x.", b"end.", b"\n.", b"a\rb", b"=\r", b"\r", b"text"]),
    max_size=12,
)


@settings(max_examples=300, deadline=None)
@given(lines=LINES, cuts=st.lists(st.integers(0, 200), max_size=8), limit=st.sampled_from([4, 7, 64, 2**16]))
def test_any_packet_boundaries_give_aiosmtpd_bytes(lines, cuts, limit):
    message = b"".join(line + b"\r\n" for line in lines)
    stream = stuffed(message) + b"QUIT\r\n"
    assert reference(stream) == (message, b"QUIT\r\n")
    content, left = read(stream, cuts, limit=limit)
    assert unstuff(content) == message
    assert left == b"QUIT\r\n"


def test_an_empty_message_ends_at_once():
    assert read(b".\r\nQUIT\r\n", []) == (b"", b"QUIT\r\n")


def test_lines_ending_with_a_dot_do_not_end_the_message():
    message = b"Subject: a.\r\n\r\nOne sentence.\r\n.leading dot\r\n..\r\nlast.\r\n"
    content, left = read(stuffed(message), [3, 17, 18, 30])
    assert unstuff(content) == message and left == b""


def test_a_dot_after_a_bare_line_feed_is_text():
    stream = b"a\n.\r\nb\r\n.\r\n"
    content, _ = read(stream, [2, 3])
    assert unstuff(content) == b"a\n.\r\nb\r\n"


def test_too_much_data_is_read_to_the_end_and_nothing_kept():
    message = b"x" * 100 + b"\r\n" + b"y" * 100 + b"\r\n"
    assert read(stuffed(message) + b"QUIT\r\n", [50, 150], size_limit=150, limit=16) == (None, b"QUIT\r\n")
    content, _ = read(stuffed(message), [], size_limit=len(message))
    assert content == message  # exactly at the limit is accepted


def test_longest_line_counts_the_line_break():
    assert longest_line(b"ab\r\nabcd\r\n") == 6
    assert longest_line(b"a\nbc\r\n") == 6  # a bare LF is not a line break in SMTP


def test_the_relay_forwards_dotted_lines_sent_in_odd_packets(relay, relay_config, upstream):
    """The bytes a client sends, cut so that a packet ends inside each "\\r\\n.", arrive whole."""
    message = (
        b"From: news@shop.example\r\nTo: a@example.org\r\nSubject: dots\r\n\r\n"
        b"First line.\r\n.hidden dot\r\n..two dots\r\n.\tdot tab\r\nLast line.\r\n"
    )
    data = stuffed(message)
    with socket.create_connection(relay_config.listen, timeout=10) as sock:
        replies = sock.makefile("rb")

        def command(line: bytes) -> bytes:
            sock.sendall(line)
            reply = replies.readline()
            while reply[3:4] == b"-":
                reply = replies.readline()
            return reply

        assert replies.readline().startswith(b"220")
        assert command(b"EHLO client.test\r\n").startswith(b"250")
        assert command(b"MAIL FROM:<news@shop.example>\r\n").startswith(b"250")
        assert command(b"RCPT TO:<a@example.org>\r\n").startswith(b"250")
        assert command(b"DATA\r\n").startswith(b"354")
        cuts = [i + 1 for i in range(len(data)) if data[i : i + 3] == b"\r\n."]
        pos = 0
        for cut in [*cuts, len(data)]:
            sock.sendall(data[pos:cut])
            pos = cut
        assert replies.readline().startswith(b"250")
        assert command(b"QUIT\r\n").startswith(b"221")
    relay.wait_idle()
    assert [m.data for m in upstream.messages] == [message]


def test_a_line_over_the_limit_gets_500_and_the_session_goes_on(relay, relay_config):
    with smtplib.SMTP(*relay_config.listen, timeout=10) as client:
        client.ehlo()
        client.mail("news@shop.example")
        client.rcpt("a@example.org")
        code, _ = client.data(b"Subject: long\r\n\r\n" + b"x" * (256 * 1024 + 10) + b"\r\n")
        assert code == 500
        assert client.noop()[0] == 250


@pytest.mark.parametrize("dots", [1, 2, 3])
def test_unstuff_removes_one_dot_at_each_line_start(dots):
    line = b"." * dots + b"x."
    assert unstuff(line + b"\r\n" + line + b"\r\n") == (line[1:] + b"\r\n") * 2
