"""SMTP abuse against a running relay, while a well-behaved client keeps sending; then the count.

All at once, for ``--seconds``, on 127.0.0.1 (the abusers use other 127/8 addresses, so that
per-client limits apply to them and not to the well-behaved client on 127.0.0.1):

- idle clients (127.0.0.2) open connections and send nothing, reconnecting when dropped: beyond
  ``--per-client`` they are answered 421, after ``--client-timeout`` they are dropped;
- stalled clients (127.0.0.3, allowed to send) stop in the middle of DATA: dropped, nothing of theirs delivered;
- brute force (127.0.0.4 to 127.0.0.7) tries passwords over STARTTLS: at most
  ``--auth-max-failures`` checked per address, then 421, never a success;
- oversize (127.0.0.8, allowed to send) sends messages three times ``--max-size``, undeclared and declared: 552;
- outsiders (127.0.0.9) try to relay without AUTH: 550, nothing relayed;
- the well-behaved client (127.0.0.1, an allowed network) sends newsletters one after the other,
  and a legitimate account (127.0.0.10) authenticates and sends.

The relay runs in this process (``RelayController``) with SQLite in a temporary directory and a
self-signed certificate (``cryptography``, from the test extras), forwarding to an aiosmtpd sink.

    python -m pip install -e '.[test]'
    python stress/smtp_abuse.py [--seconds 30]

Ends with one line ``RESULT smtp-abuse good_sent=... good_accepted=... delivered=... lost=...
idle_refused=... idle_dropped=... stalled_dropped=... brute_checked=... brute_refused=...
brute_succeeded=... oversize_552=... outsider_relayed=... p99_ms=...``; exits 1 when a well-behaved
message was refused or lost, or an abuser got anything through.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import ipaddress
import smtplib
import socket
import ssl
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from aiosmtpd.controller import Controller  # noqa: E402

from hotclicks import db  # noqa: E402
from hotclicks.db import admin  # noqa: E402
from smtp_relay import RelayController  # noqa: E402
from smtp_relay.auth import hash_password  # noqa: E402
from smtp_relay.config import RelayConfig  # noqa: E402

PASSWORD = "the right one"
NEWSLETTER = (
    "From: Shop <news@shop.example>\r\nSubject: Spring news\r\nX-HotClicks-Delivery: abuse-news\r\n"
    "MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
    "<p><a href=\"https://shop.example/sale\">Sale</a> <a href=\"https://blog.example/\">Blog</a></p>\r\n"
).encode()


class Sink:
    def __init__(self) -> None:
        self.recipients: list[str] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope) -> str:
        with self.lock:
            self.recipients.extend(envelope.rcpt_tos)
        return "250 OK"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def certificate(directory: Path) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relay.stress")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return str(cert_path), str(key_path)


class Campaign:
    def __init__(self, args: argparse.Namespace, relay: RelayController, cert: str) -> None:
        self.args, self.relay = args, relay
        self.listen = relay.config.listen
        self.tls = ssl.create_default_context(cafile=cert)
        self.stop = threading.Event()
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.good_recipients: list[str] = []

    def count(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.counts[name] += n

    def connect(self, source: str, timeout: float = 60) -> tuple[socket.socket, bytes]:
        sock = socket.create_connection(self.listen, timeout=timeout, source_address=(source, 0))
        return sock, sock.recv(1024)

    def smtp(self, source: str) -> smtplib.SMTP:
        return smtplib.SMTP(*self.listen, timeout=60, source_address=(source, 0))

    # -- abusers -------------------------------------------------------------------------------

    def idle(self) -> None:
        """Hold as many silent connections as the relay lets in; count refusals and drops."""
        held: list[socket.socket] = []
        while not self.stop.is_set():
            try:
                sock, greeting = self.connect("127.0.0.2")
            except OSError:
                self.count("idle_connect_failed")
                time.sleep(0.1)
                continue
            if greeting.startswith(b"421"):
                self.count("idle_refused")
                sock.close()
                time.sleep(0.2)
            else:
                self.count("idle_opened")
                sock.settimeout(0)
                held.append(sock)
            for sock in list(held):
                try:
                    if sock.recv(1024) == b"":
                        raise ConnectionResetError
                except BlockingIOError:
                    continue
                except OSError:
                    pass
                self.count("idle_dropped")
                held.remove(sock)
                sock.close()
        for sock in held:
            sock.close()

    def stalled(self) -> None:
        """Start a transaction, send half the message, fall silent; wait to be dropped."""
        while not self.stop.is_set():
            sock, _ = self.connect("127.0.0.3", timeout=self.args.client_timeout * 5 + 30)
            with sock:
                for command in (b"HELO stalled", b"MAIL FROM:<x@stalled.example>", b"RCPT TO:<stalled@victim.example>", b"DATA"):
                    sock.sendall(command + b"\r\n")
                    sock.recv(1024)
                sock.sendall(NEWSLETTER[: len(NEWSLETTER) // 2])
                try:
                    while sock.recv(1024):
                        pass
                    self.count("stalled_dropped")
                except OSError:
                    self.count("stalled_dropped")

    def brute(self, source: str) -> None:
        attempt = 0
        while not self.stop.is_set():
            try:
                client = self.smtp(source)
                client.starttls(context=self.tls)
                client.ehlo()
            except (OSError, smtplib.SMTPException):
                self.count("brute_connect_failed")
                time.sleep(0.2)
                continue
            try:
                while not self.stop.is_set():
                    attempt += 1
                    blob = base64.b64encode(f"\0app\0guess-{attempt}".encode()).decode()
                    code, _ = client.docmd("AUTH", f"PLAIN {blob}")
                    self.count("brute_attempts")
                    if code == 235:
                        self.count("brute_succeeded")
                    elif code == 535:
                        self.count("brute_checked")
                    elif code == 421:
                        self.count("brute_refused")
                        time.sleep(0.2)
                        break
            except (OSError, smtplib.SMTPException):
                pass
            finally:
                client.close()

    def oversize(self) -> None:
        limit = self.args.max_size
        huge = NEWSLETTER + (b"x" * 998 + b"\r\n") * (3 * limit // 1000)
        while not self.stop.is_set():
            with self.smtp("127.0.0.8") as client:
                client.ehlo()
                client.mail("big@shop.example")
                client.rcpt("big@victim.example")
                self.count("oversize_552" if client.data(huge)[0] == 552 else "oversize_accepted")
                code, _ = client.docmd("MAIL", f"FROM:<big@shop.example> SIZE={3 * limit}")
                self.count("oversize_552" if code == 552 else "oversize_accepted")

    def outsider(self) -> None:
        while not self.stop.is_set():
            with self.smtp("127.0.0.9") as client:
                code, _ = client.mail("spam@outsider.example")
                if code == 250 and client.rcpt("victim@outsider.example")[0] == 250:
                    self.count("outsider_relayed")
                else:
                    self.count("outsider_refused")
            time.sleep(0.05)

    # -- the well-behaved --------------------------------------------------------------------------

    def good(self) -> None:
        n = 0
        while not self.stop.is_set():
            recipient = f"r{n}@example.org"
            n += 1
            started = time.perf_counter()
            self.count("good_sent")
            try:
                with self.smtp("127.0.0.1") as client:
                    client.sendmail("news@shop.example", [recipient], NEWSLETTER)
                self.count("good_accepted")
                with self.lock:
                    self.good_recipients.append(recipient)
                    self.latencies.append(time.perf_counter() - started)
            except (OSError, smtplib.SMTPException) as exc:
                print(f"well-behaved message refused: {exc!r}", flush=True)
                self.count("good_refused")

    def authenticated(self) -> None:
        n = 0
        while not self.stop.is_set():
            recipient = f"auth{n}@example.org"
            n += 1
            self.count("good_sent")
            try:
                with self.smtp("127.0.0.10") as client:
                    client.starttls(context=self.tls)
                    client.login("app", PASSWORD)
                    client.sendmail("app@shop.example", [recipient], NEWSLETTER)
                self.count("good_accepted")
                with self.lock:
                    self.good_recipients.append(recipient)
            except (OSError, smtplib.SMTPException) as exc:
                print(f"authenticated message refused: {exc!r}", flush=True)
                self.count("good_refused")
            time.sleep(0.2)

    def _guarded(self, worker) -> None:
        try:
            worker()
        except Exception as exc:  # a campaign thread that dies is a failed campaign
            print(f"campaign thread failed: {exc!r}", flush=True)
            self.count("thread_failed")

    def run(self) -> None:
        workers = [self.idle, self.stalled, self.oversize, self.outsider, self.good, self.authenticated]
        workers += [lambda s=s: self.brute(s) for s in ("127.0.0.4", "127.0.0.5", "127.0.0.6", "127.0.0.7")]
        threads = [threading.Thread(target=self._guarded, args=(w,), daemon=True) for w in workers]
        for thread in threads:
            thread.start()
        time.sleep(self.args.seconds)
        self.stop.set()
        for thread in threads:
            thread.join(self.args.client_timeout * 5 + 60)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30, help="how long the abuse lasts (default 30)")
    parser.add_argument("--client-timeout", type=float, default=3, help="the relay's --client-timeout, seconds (default 3)")
    parser.add_argument("--per-client", type=int, default=20, help="the relay's --max-connections-per-client (default 20)")
    parser.add_argument("--auth-max-failures", type=int, default=5)
    parser.add_argument("--max-size", type=int, default=200_000, help="the relay's --max-message-size (default 200000)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="hotclicks-abuse-") as tmp:
        directory = Path(tmp)
        database_url = f"sqlite:///{directory / 'hotclicks.sqlite3'}"
        engine = db.create_db_engine(database_url)
        db.upgrade(engine)
        with db.session_factory(engine).begin() as session:
            admin.add_relay_account(session, "app", hash_password(PASSWORD))
        cert, key = certificate(directory)
        sink = Sink()
        upstream = Controller(sink, hostname="127.0.0.1", port=free_port())
        upstream.start()
        config = RelayConfig(
            listen=("127.0.0.1", free_port()), upstream=("127.0.0.1", upstream.port),
            database_url=database_url, base_url="https://t.example/t", secret_key="stress-" + "k" * 32,
            hostname="relay.stress", spool_dir=str(directory / "spool"),
            tls_cert_file=cert, tls_key_file=key, auth_database=True,
            # The well-behaved client, the idle, stalled and oversize ones may send; 127.0.0.4-7
            # (brute force), .9 (outsiders) and .10 (the account) must authenticate.
            allow_networks=("127.0.0.1/32", "127.0.0.2/31", "127.0.0.8/32"),
            auth_max_failures=args.auth_max_failures, client_timeout=dt.timedelta(seconds=args.client_timeout),
            max_connections_per_client=args.per_client, max_message_size=args.max_size,
        )
        relay = RelayController(config)
        relay.start()
        campaign = Campaign(args, relay, cert)
        try:
            campaign.run()
            relay.wait_idle(120)
        finally:
            relay.stop()
            relay.handler.database.dispose()
            upstream.stop()
            engine.dispose()

    counts = campaign.counts
    delivered = set(sink.recipients)
    wanted = set(campaign.good_recipients)
    lost = len(wanted - delivered)
    intruders = [r for r in sink.recipients if r.endswith(("victim.example", "outsider.example"))]
    brute_addresses = 4
    p99 = statistics.quantiles(campaign.latencies, n=100)[98] * 1000 if len(campaign.latencies) > 1 else 0.0
    print(f"well-behaved: {counts['good_sent']} sent, {counts['good_accepted']} accepted, "
          f"{len(wanted & delivered)} delivered, {counts['good_refused']} refused, {lost} lost")
    print(f"idle: {counts['idle_opened']} opened, {counts['idle_refused']} answered 421, {counts['idle_dropped']} dropped after the timeout")
    print(f"stalled in DATA: {counts['stalled_dropped']} dropped")
    print(f"brute force from {brute_addresses} addresses: {counts['brute_attempts']} attempts, {counts['brute_checked']} checked "
          f"(at most {args.auth_max_failures * brute_addresses} expected), {counts['brute_refused']} refused 421, "
          f"{counts['brute_succeeded']} succeeded")
    print(f"oversize: {counts['oversize_552']} answered 552, {counts['oversize_accepted']} accepted")
    print(f"outsiders: {counts['outsider_refused']} refused, {counts['outsider_relayed']} relayed")
    print(
        f"RESULT smtp-abuse seconds={args.seconds:g} good_sent={counts['good_sent']} good_accepted={counts['good_accepted']} "
        f"delivered={len(wanted & delivered)} lost={lost} idle_refused={counts['idle_refused']} "
        f"idle_dropped={counts['idle_dropped']} stalled_dropped={counts['stalled_dropped']} "
        f"brute_checked={counts['brute_checked']} brute_refused={counts['brute_refused']} "
        f"brute_succeeded={counts['brute_succeeded']} oversize_552={counts['oversize_552']} "
        f"outsider_relayed={counts['outsider_relayed']} p99_ms={p99:.0f}"
    )
    failed = (
        lost or counts["good_refused"] or counts["brute_succeeded"] or counts["oversize_accepted"]
        or counts["outsider_relayed"] or intruders or counts["thread_failed"]
        or counts["brute_checked"] > args.auth_max_failures * brute_addresses
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
