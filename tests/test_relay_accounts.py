"""SMTP AUTH from the database's relay accounts (``hotclicks-relay accounts``), and failed AUTH
attempts rate-limited and logged per client address."""

from __future__ import annotations

import base64
import datetime as dt
import io
import logging
import smtplib
import sys
from dataclasses import replace

import pytest
from sqlalchemy import select

from hotclicks.errors import ConfigurationError
from hotclicks.db.models import RelayAccount
from smtp_relay import auth as auth_module
from smtp_relay.auth import AuthThrottle, check_password, client_key
from smtp_relay.cli import main
from smtp_relay.handler import REPLY_AUTH_THROTTLED

from . import test_relay_security
from .helpers import newsletter, running_relay
from .test_relay_security import client_context

certificate = test_relay_security.certificate  # the self-signed certificate fixture, shared

PASSWORD = "correct horse battery staple"


def accounts(capsys, monkeypatch, database_url: str, *argv: str, stdin: str = "") -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main(["accounts", *argv, "--database-url", database_url])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def account(engine, database_url, capsys, monkeypatch) -> str:
    code, out, _ = accounts(capsys, monkeypatch, database_url, "add", "app", stdin=PASSWORD + "\n")
    assert code == 0 and "account 'app' added" in out
    return "app"



@pytest.fixture
def auth_config(relay_config, certificate):
    cert, key = certificate
    return replace(relay_config, tls_cert_file=cert, tls_key_file=key, auth_database=True,
                   auth_failure_delay=dt.timedelta(0), allow_networks=("10.0.0.0/8",))


def starttls_client(relay, cert: str) -> smtplib.SMTP:
    client = smtplib.SMTP(*relay.config.listen, timeout=30)
    client.starttls(context=client_context(cert))
    client.ehlo()
    return client


def auth(client: smtplib.SMTP, mechanism: str, login: str, password: str) -> tuple[int, bytes]:
    """One AUTH exchange with the mechanism chosen (smtplib.login picks its own)."""
    if mechanism == "PLAIN":
        blob = base64.b64encode(f"\0{login}\0{password}".encode()).decode()
        return client.docmd("AUTH", f"PLAIN {blob}")
    code, _ = client.docmd("AUTH", "LOGIN")
    assert code == 334
    code, _ = client.docmd(base64.b64encode(login.encode()).decode())
    assert code == 334
    return client.docmd(base64.b64encode(password.encode()).decode())


def test_accounts_add_list_disable_and_the_password_never_in_argv(engine, database_url, sessions, capsys, monkeypatch, account):
    with sessions() as session:
        (stored,) = session.scalars(select(RelayAccount)).all()
        assert stored.login == "app" and PASSWORD not in stored.password_hash
        assert check_password(PASSWORD, stored.password_hash)
    code, _, err = accounts(capsys, monkeypatch, database_url, "add", "app", stdin="other\n")
    assert code == 2 and "exists already" in err and "--replace" in err
    code, _, err = accounts(capsys, monkeypatch, database_url, "add", "nobody", stdin="")
    assert code == 2 and "empty password" in err
    with pytest.raises(SystemExit):  # no way to give the password as an argument
        main(["accounts", "add", "app", PASSWORD, "--database-url", database_url])
    capsys.readouterr()
    code, out, _ = accounts(capsys, monkeypatch, database_url, "list")
    assert code == 0 and "app" in out and "enabled" in out and "1 accounts" in out
    code, out, _ = accounts(capsys, monkeypatch, database_url, "disable", "app")
    assert code == 0 and "disabled" in out
    code, out, _ = accounts(capsys, monkeypatch, database_url, "list")
    assert "app" in out and "disabled" in out
    code, _, err = accounts(capsys, monkeypatch, database_url, "disable", "ghost")
    assert code == 2 and "no account 'ghost'" in err
    code, out, _ = accounts(capsys, monkeypatch, database_url, "add", "app", "--replace", stdin="new one\n")
    assert code == 0 and "updated" in out
    with sessions() as session:
        stored = session.scalars(select(RelayAccount)).one()
        assert stored.disabled_at is None and check_password("new one", stored.password_hash)


def test_auth_database_needs_tls_and_not_also_a_file(relay_config, tmp_path):
    with pytest.raises(ConfigurationError, match="--auth-database needs --tls-cert-file"):
        replace(relay_config, auth_database=True)
    with pytest.raises(ConfigurationError, match="one source"):
        replace(relay_config, auth_database=True, auth_file=str(tmp_path / "users"))
    # It is a safeguard that allows listening beyond loopback.
    replace(relay_config, listen=("0.0.0.0", 2525), auth_database=True, tls_cert_file="c", tls_key_file="k")


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_a_database_account_authenticates_over_starttls_a_wrong_or_disabled_one_does_not(
    mechanism, auth_config, account, upstream, certificate, database_url, capsys, monkeypatch
):
    cert, _ = certificate
    with running_relay(auth_config) as relay:
        with smtplib.SMTP(*relay.config.listen, timeout=30) as client:
            client.ehlo()
            assert not client.has_extn("auth")  # never before TLS
            client.starttls(context=client_context(cert))
            client.ehlo()
            assert set(client.esmtp_features["auth"].split()) == {"LOGIN", "PLAIN"}
            assert auth(client, mechanism, "app", "wrong")[0] == 535
            assert auth(client, mechanism, "nobody", PASSWORD)[0] == 535
            assert auth(client, mechanism, "app", PASSWORD)[0] == 235
            client.sendmail("app@shop.example", ["ann@example.org"], newsletter())
        relay.wait_idle()
        assert [m.rcpt_tos for m in upstream.messages] == [["ann@example.org"]]
        # Disabled while the relay runs: the next attempt is refused.
        assert accounts(capsys, monkeypatch, database_url, "disable", "app")[0] == 0
        with starttls_client(relay, cert) as client:
            assert auth(client, mechanism, "app", PASSWORD)[0] == 535
            assert client.mail("app@shop.example")[0] == 550  # not authenticated, not allowed


def test_auth_over_implicit_tls(auth_config, account, upstream, certificate):
    cert, _ = certificate
    with running_relay(replace(auth_config, implicit_tls=True)) as relay:
        with smtplib.SMTP_SSL(*relay.config.listen, timeout=30, context=client_context(cert)) as client:
            client.ehlo()
            assert set(client.esmtp_features["auth"].split()) == {"LOGIN", "PLAIN"}
            client.login("app", PASSWORD)
            client.sendmail("app@shop.example", ["ann@example.org"], newsletter())
        relay.wait_idle()
        assert len(upstream.messages) == 1


def test_failed_auth_is_limited_per_client_and_logged_without_the_password(
    auth_config, account, upstream, certificate, caplog
):
    cert, _ = certificate
    caplog.set_level(logging.INFO, logger="smtp_relay")
    caplog.set_level(logging.DEBUG, logger="mail.log")  # aiosmtpd's own log, every line it reads
    config = replace(auth_config, auth_max_failures=3)
    with running_relay(config) as relay:
        with starttls_client(relay, cert) as client:
            for attempt in range(3):
                assert auth(client, "PLAIN", "app", f"guess-{attempt}")[0] == 535
            code, text = client.docmd("AUTH", "PLAIN " + base64.b64encode(f"\0app\0{PASSWORD}".encode()).decode())
            assert f"{code} {text.decode()}" == REPLY_AUTH_THROTTLED  # even the right password, now
            with pytest.raises(smtplib.SMTPServerDisconnected):
                client.noop()
        # Another connection from the same address is still refused.
        with starttls_client(relay, cert) as client:
            assert client.docmd("AUTH", "LOGIN")[0] == 421
    failures = [r.getMessage() for r in caplog.records if r.getMessage().startswith("failed AUTH")]
    assert len(failures) == 3
    assert all("127.0.0.1" in line and "'app'" in line for line in failures)
    secrets = [f"guess-{i}" for i in range(3)] + [PASSWORD]
    encoded = [base64.b64encode(f"\0app\0{secret}".encode()).decode() for secret in secrets]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "AUTH" in logged and not any(secret in logged for secret in secrets + encoded)
    assert any("too many failed attempts" in r.getMessage() for r in caplog.records)


def test_the_throttle_counts_failures_in_a_sliding_window_per_client():
    throttle = AuthThrottle(max_failures=3, window=60)
    assert [throttle.attempt("192.0.2.1", t) for t in (0, 1, 2, 3)] == [True, True, True, False]
    assert throttle.retry_after("192.0.2.1", 3) == 57
    assert throttle.attempt("192.0.2.2", 3)  # another client is not affected
    assert throttle.attempt("192.0.2.1", 60.5)  # the first failure left the window
    assert not throttle.attempt("192.0.2.1", 60.6)
    throttle.succeeded("192.0.2.2", 3)  # a success is not a failure
    assert throttle.failures("192.0.2.2") == 0
    # One machine's IPv6 /64 is one client; IPv4-mapped addresses are their IPv4 address.
    assert client_key("2001:db8::1") == client_key("2001:db8::ffff") != client_key("2001:db8:0:1::1")
    assert client_key("::ffff:192.0.2.1") == "192.0.2.1"
    small = AuthThrottle(max_failures=1, window=60, max_clients=2)
    for n, host in enumerate(("a", "b", "c")):
        small.attempt(host, n)
    assert small.retry_after("a", 3) == 0 and small.retry_after("c", 3) > 0  # the quietest forgotten


def test_the_unknown_login_costs_a_password_check(monkeypatch):
    checked = []
    monkeypatch.setattr(auth_module, "check_password", lambda password, hashed: checked.append(hashed) or False)
    assert not auth_module.Authenticator({}.get).check("ghost", "pw")
    assert checked == [auth_module._UNKNOWN_LOGIN_HASH]
