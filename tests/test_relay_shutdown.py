"""Graceful shutdown: SIGTERM to a running ``hotclicks-relay`` lets the transactions in flight
finish (a client in the middle of DATA completes it and is answered 250, and its message reaches
the upstream), refuses new connections, hangs up on idle clients with 421, and exits 0."""

from __future__ import annotations

import signal
import smtplib
import socket
import subprocess
import time
from pathlib import Path

from .conftest import SECRET_KEY, free_port
from .helpers import accepts, cli_relay, newsletter

#: Bound on each wait (the relay's own shutdown bound is 30 s).
PATIENCE = 60


def _wait(condition, what: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    process.kill()
    raise AssertionError(f"{what} within {PATIENCE} s: {log.read_text()}")


def test_sigterm_finishes_the_transaction_in_flight_refuses_new_connections_and_exits_0(
    engine, database_url, upstream, tmp_path
):
    port = free_port()
    log = tmp_path / "relay.log"
    with open(log, "wb") as output:
        process = cli_relay(
            port, (upstream.hostname, upstream.port), database_url, tmp_path / "spool", SECRET_KEY, output
        )
    try:
        _wait(lambda: accepts(port), "the relay did not listen", process, log)
        idle = socket.create_connection(("127.0.0.1", port), timeout=PATIENCE)
        assert idle.recv(1024).startswith(b"220")
        client = smtplib.SMTP("127.0.0.1", port, timeout=PATIENCE)
        client.ehlo()
        assert client.mail("news@shop.example")[0] == 250
        assert client.rcpt("ann@example.org")[0] == 250
        client.putcmd("data")
        assert client.getreply()[0] == 354
        body = newsletter()
        client.sock.sendall(body[: len(body) // 2])

        process.send_signal(signal.SIGTERM)
        _wait(lambda: not accepts(port), "the relay kept accepting connections", process, log)
        # The idle client is told and let go.
        said = b""
        while chunk := idle.recv(1024):
            said += chunk
        idle.close()
        assert said.startswith(b"421")

        client.sock.sendall(body[len(body) // 2:] + b"\r\n.\r\n")
        code, text = client.getreply()
        assert code == 250, text
        try:
            client.quit()
        except smtplib.SMTPServerDisconnected:
            pass  # the relay may hang up first, with a 421
        client.close()

        assert process.wait(timeout=PATIENCE) == 0, log.read_text()
        assert [m.rcpt_tos for m in upstream.messages] == [["ann@example.org"]]
        assert b"spring" in upstream.messages[0].data.lower()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
