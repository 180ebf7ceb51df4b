"""SMTP abuse against a running relay, all on 127.0.0.1: clients that connect and send nothing or
stop in the middle of a command or of DATA are dropped after the client timeout and free their
slots; connections beyond the limits are answered 421; a message over the size limit gets 552;
a client outside the allowed networks cannot relay. Meanwhile a well-behaved client is served.

The abusers connect from 127.0.0.2 (any 127/8 address is this machine), so that the per-client
limit they hit is theirs, not the well-behaved client's on 127.0.0.1.
"""

from __future__ import annotations

import datetime as dt
import smtplib
import socket
import time
from contextlib import ExitStack
from dataclasses import replace

import pytest
from sqlalchemy import func, select

from hotclicks.db.models import Message
from smtp_relay import RelayController
from smtp_relay.handler import REPLY_RELAY_DENIED, REPLY_TOO_MANY_CONNECTIONS, REPLY_TOO_MANY_FROM_CLIENT

from .helpers import newsletter, running_relay

ABUSER = "127.0.0.2"
#: How long a test waits for the relay to drop a client (the timeouts under test are 1-2 s).
PATIENCE = 30



def connect(relay: RelayController, source: str = ABUSER) -> tuple[socket.socket, bytes]:
    """A raw connection from ``source`` and the first line the relay said."""
    sock = socket.create_connection(relay.config.listen, timeout=PATIENCE, source_address=(source, 0))
    return sock, read_line(sock)


def read_line(sock: socket.socket) -> bytes:
    line = b""
    while not line.endswith(b"\r\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        line += chunk
    return line


def dropped(sock: socket.socket) -> bool:
    """Whether the relay closes the connection (within PATIENCE), whatever it says first."""
    try:
        while sock.recv(4096):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def send_one(relay: RelayController, recipient: str = "ann@example.org") -> None:
    with smtplib.SMTP(*relay.config.listen, timeout=PATIENCE) as client:
        client.sendmail("news@shop.example", [recipient], newsletter())


@pytest.fixture
def abuse_config(relay_config):
    return replace(relay_config, client_timeout=dt.timedelta(seconds=2), max_connections_per_client=3)


def test_silent_and_stalled_clients_are_dropped_and_free_their_slots_while_others_are_served(
    engine, abuse_config, upstream, sessions
):
    with running_relay(abuse_config) as relay, ExitStack() as stack:
        silent, greeting = connect(relay)
        stack.callback(silent.close)
        assert greeting.startswith(b"220")
        mid_command, _ = connect(relay)
        stack.callback(mid_command.close)
        mid_command.sendall(b"EHLO abuser\r\n")
        assert read_line(mid_command).startswith(b"250")
        mid_command.sendall(b"MAIL FROM:<a@b")  # and nothing more, no CRLF
        mid_data, _ = connect(relay)
        stack.callback(mid_data.close)
        for command in (b"HELO abuser", b"MAIL FROM:<a@b.example>", b"RCPT TO:<ann@example.org>", b"DATA"):
            mid_data.sendall(command + b"\r\n")
            assert read_line(mid_data)[:3] in (b"250", b"354")
        mid_data.sendall(newsletter()[:500])  # half a message, then silence

        # Their address holds all its slots: one more is refused...
        fourth, refusal = connect(relay)
        fourth.close()
        assert refusal.decode().strip() == REPLY_TOO_MANY_FROM_CLIENT
        # ...but a well-behaved client is served while they hang on.
        send_one(relay)
        relay.wait_idle()
        assert [m.rcpt_tos for m in upstream.messages] == [["ann@example.org"]]

        assert all(dropped(sock) for sock in (silent, mid_command, mid_data))
        # Their slots are free again, and the half message left nothing behind.
        again = [connect(relay) for _ in range(3)]
        for sock, greeting in again:
            stack.callback(sock.close)
            assert greeting.startswith(b"220")
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Message)) == 1
    assert len(upstream.messages) == 1


def test_a_slow_but_steady_client_is_not_cut_by_the_timeout(engine, abuse_config, upstream):
    """The timeout counts from the last byte received, not from the DATA command."""
    with running_relay(abuse_config) as relay:
        sock, _ = connect(relay, "127.0.0.1")
        with sock:
            for command in (b"HELO steady", b"MAIL FROM:<a@b.example>", b"RCPT TO:<ann@example.org>", b"DATA"):
                sock.sendall(command + b"\r\n")
                assert read_line(sock)[:3] in (b"250", b"354")
            body = newsletter()
            step = len(body) // 6 + 1
            for start in range(0, len(body), step):  # about 3 s in all, with the timeout at 2 s
                sock.sendall(body[start:start + step])
                time.sleep(0.5)
            sock.sendall(b"\r\n.\r\n")
            assert read_line(sock).startswith(b"250")
        relay.wait_idle()
    assert len(upstream.messages) == 1


def test_connections_beyond_the_total_limit_are_answered_421_until_one_leaves(engine, relay_config, upstream):
    config = replace(relay_config, max_connections=3, max_connections_per_client=100)
    with running_relay(config) as relay, ExitStack() as stack:
        held = [connect(relay)[0] for _ in range(3)]
        for sock in held:
            stack.callback(sock.close)
        extra, refusal = connect(relay, "127.0.0.1")
        extra.close()
        assert refusal.decode().strip() == REPLY_TOO_MANY_CONNECTIONS
        held[0].sendall(b"QUIT\r\n")
        assert dropped(held[0])
        for _ in range(PATIENCE * 20):  # the relay notices the closed connection asynchronously
            if len(relay.handler.connections) < 3:
                break
            time.sleep(0.05)
        send_one(relay)
        relay.wait_idle()
    assert len(upstream.messages) == 1


def test_too_much_data_gets_552_and_the_relay_keeps_serving(engine, relay_config, upstream, sessions):
    config = replace(relay_config, max_message_size=100_000)
    with running_relay(config) as relay:
        with smtplib.SMTP(*config.listen, timeout=PATIENCE) as client:
            client.ehlo()
            assert client.esmtp_features["size"] == "100000"
            huge = newsletter() + b"x" * 76 + (b"\r\n" + b"y" * 76) * 4000  # about 300 KB
            # Not declared (no SIZE=): the relay reads on, keeps nothing, and answers 552.
            client.mail("news@shop.example")
            client.rcpt("ann@example.org")
            assert client.data(huge)[0] == 552
            # Declared too big up front: refused before any byte of it is sent.
            code, _ = client.docmd("MAIL", "FROM:<news@shop.example> SIZE=500000")
            assert code == 552
            client.rset()
            # The same connection and another client still get their mail through.
            client.sendmail("news@shop.example", ["bob@example.org"], newsletter())
        send_one(relay, "carl@example.org")
        relay.wait_idle()
    assert sorted(m.rcpt_tos[0] for m in upstream.messages) == ["bob@example.org", "carl@example.org"]
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Message)) == 2


def test_a_client_outside_the_allowed_networks_cannot_relay(engine, relay_config, upstream):
    config = replace(relay_config, allow_networks=("127.0.0.1/32",))
    with running_relay(config) as relay:
        sock, greeting = connect(relay, ABUSER)
        with sock:
            assert greeting.startswith(b"220")
            for command in (b"HELO outsider", b"MAIL FROM:<spam@evil.example>"):
                sock.sendall(command + b"\r\n")
                reply = read_line(sock)
            assert reply.decode().strip() == REPLY_RELAY_DENIED
            sock.sendall(b"RCPT TO:<victim@example.org>\r\n")
            assert read_line(sock).startswith(b"503")  # no transaction: nothing to relay
        send_one(relay)  # from 127.0.0.1, allowed
        relay.wait_idle()
    assert [m.rcpt_tos for m in upstream.messages] == [["ann@example.org"]]
