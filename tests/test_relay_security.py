"""No open relay: loopback by default, elsewhere AUTH over TLS or an allow-list; AUTH never in
plaintext; the upstream's certificate is checked by default."""

from __future__ import annotations

import datetime as dt
import ipaddress
import smtplib
import ssl
from dataclasses import replace

import pytest
from aiosmtpd.controller import Controller
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import select

from hotclicks.errors import ConfigurationError
from hotclicks.db.models import Message, MessageStatus
from smtp_relay import RelayController
from smtp_relay.auth import hash_password
from smtp_relay.cli import main
from smtp_relay.handler import REPLY_RELAY_DENIED

from .conftest import SinkHandler, free_port
from .helpers import newsletter


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1: (cert path, key path)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relay.test")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory = tmp_path_factory.mktemp("tls")
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return str(cert_path), str(key_path)


@pytest.fixture
def auth_file(tmp_path):
    path = tmp_path / "users"
    path.write_text(f"# relay users\napp:{hash_password('s3cret')}\n")
    return str(path)


def client_context(cert_path: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=cert_path)


def test_listening_beyond_loopback_without_auth_or_allow_list_refuses_to_start(relay_config, capsys):
    with pytest.raises(ConfigurationError, match="open relay"):
        replace(relay_config, listen=("0.0.0.0", 2525))
    code = main([
        "--listen", "0.0.0.0:2525", "--database-url", relay_config.database_url,
        "--base-url", relay_config.base_url, "--secret-key", "k", "--spool-dir", relay_config.spool_dir,
    ])
    assert code == 2
    assert "refusing to listen on 0.0.0.0" in capsys.readouterr().err
    # Either safeguard makes it acceptable.
    replace(relay_config, listen=("0.0.0.0", 2525), allow_networks=("10.0.0.0/8",))


def test_auth_needs_tls(relay_config, auth_file):
    with pytest.raises(ConfigurationError, match="STARTTLS or implicit TLS"):
        replace(relay_config, auth_file=auth_file)


def test_auth_is_offered_only_after_starttls_and_checks_hashed_passwords(engine, relay_config, upstream, certificate, auth_file):
    cert, key = certificate
    relay = RelayController(
        replace(relay_config, tls_cert_file=cert, tls_key_file=key, auth_file=auth_file, allow_networks=("10.0.0.0/8",))
    )
    relay.start()
    try:
        with smtplib.SMTP(*relay.config.listen, timeout=30) as client:
            client.ehlo()
            assert client.has_extn("starttls")
            assert not client.has_extn("auth")  # never in plaintext
            # Not authenticated, not from an allowed network: no relaying.
            code, text = client.mail("app@shop.example")
            assert f"{code} {text.decode()}" == REPLY_RELAY_DENIED
            client.starttls(context=client_context(cert))
            client.ehlo()
            assert set(client.esmtp_features["auth"].split()) == {"LOGIN", "PLAIN"}
            with pytest.raises(smtplib.SMTPAuthenticationError):
                client.login("app", "wrong")
            client.login("app", "s3cret")
            client.sendmail("app@shop.example", ["ann@example.org"], newsletter())
        relay.wait_idle()
        assert [m.rcpt_tos for m in upstream.messages] == [["ann@example.org"]]
    finally:
        relay.stop()
        relay.handler.database.dispose()


def test_an_allowed_network_sends_without_auth(engine, relay_config, upstream):
    relay = RelayController(replace(relay_config, allow_networks=("127.0.0.0/8",)))
    relay.start()
    try:
        with smtplib.SMTP(*relay.config.listen, timeout=30) as client:
            client.sendmail("app@shop.example", ["ann@example.org"], newsletter())
        relay.wait_idle()
        assert len(upstream.messages) == 1
    finally:
        relay.stop()
        relay.handler.database.dispose()


def test_a_plain_password_in_the_auth_file_fails_at_start(relay_config, certificate, tmp_path):
    path = tmp_path / "users"
    path.write_text("app:s3cret\n")
    cert, key = certificate
    with pytest.raises(ConfigurationError, match="plain passwords are refused"):
        RelayController(replace(relay_config, tls_cert_file=cert, tls_key_file=key, auth_file=str(path)))


@pytest.fixture
def tls_upstream(certificate):
    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    sink = SinkHandler()
    server = Controller(sink, hostname="127.0.0.1", port=free_port(), tls_context=context, require_starttls=True)
    server.start()
    yield server, sink
    server.stop()


def test_the_upstream_certificate_is_checked_by_default(engine, relay_config, tls_upstream, certificate, sessions):
    server, sink = tls_upstream
    config = replace(relay_config, upstream=("127.0.0.1", server.port), upstream_security="starttls")
    relay = RelayController(config)
    relay.start()
    try:
        with smtplib.SMTP(*config.listen, timeout=30) as client:
            client.sendmail("app@shop.example", ["ann@example.org"], newsletter())
        relay.wait_idle()
        assert sink.messages == []
        with sessions() as session:
            (message,) = session.scalars(select(Message)).all()
            assert message.status is MessageStatus.DEFERRED
            assert "CERTIFICATE_VERIFY_FAILED" in message.status_reply
    finally:
        relay.stop()
        relay.handler.database.dispose()

    trusted = replace(config, upstream_ca_file=certificate[0], listen=("127.0.0.1", free_port()))
    relay = RelayController(trusted)
    relay.start()  # resumes the spool: the deferred copy goes out now that the CA is known
    try:
        relay.retry_now()
        relay.wait_idle()
        assert [m.rcpt_tos for m in sink.messages] == [["ann@example.org"]]
    finally:
        relay.stop()
        relay.handler.database.dispose()
