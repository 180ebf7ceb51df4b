"""SMTP AUTH for clients: credentials from a file of ``user:hash`` lines or from the database's
relay accounts, passwords hashed, failed attempts throttled per client.

A hash is ``scrypt$<n>$<r>$<p>$<salt>$<digest>`` (base64), as ``hotclicks-relay hash-password``
prints it and ``hotclicks-relay accounts add`` stores it. aiosmtpd offers AUTH only once the
connection is encrypted (STARTTLS or implicit TLS).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import logging
import os
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

from aiosmtpd.smtp import AuthResult, LoginPassword
from sqlalchemy.orm import Session, sessionmaker

from hotclicks.db import admin
from hotclicks.errors import ConfigurationError

log = logging.getLogger("smtp_relay.auth")

_N, _R, _P = 2**14, 8, 1


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    salt = salt or os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${_N}${_R}${_P}${b64(salt).decode()}${b64(digest).decode()}"


def check_password(password: str, hashed: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = hashed.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(
            password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=len(expected)
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


def load_credentials(path: str) -> dict[str, str]:
    """``user -> hash`` from the file; fails at start with what is wrong in it."""
    try:
        with open(path, encoding="utf-8") as file:
            lines = file.read().splitlines()
    except OSError as exc:
        raise ConfigurationError(f"cannot read --auth-file {path!r}: {exc}") from None
    credentials = {}
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if not sep or not hashed.startswith("scrypt$"):
            raise ConfigurationError(
                f"--auth-file {path!r} line {number}: expected user:scrypt$... "
                "(make the hash with 'hotclicks-relay hash-password'); plain passwords are refused"
            )
        credentials[user] = hashed
    if not credentials:
        raise ConfigurationError(f"--auth-file {path!r} has no credentials")
    return credentials


#: Checked when a login is unknown, so that an unknown login costs what a wrong password does
#: (the time of an answer does not tell which logins exist).
_UNKNOWN_LOGIN_HASH = hash_password("", salt=b"hotclicks-nobody")


class Authenticator:
    """Checks PLAIN and LOGIN credentials against the hashes ``lookup`` gives (None: no such login).

    Blocking (scrypt, maybe a database query): the relay's SMTP class runs :meth:`check` in a
    thread. Calling the object is aiosmtpd's authenticator interface, for embedding it elsewhere.
    """

    def __init__(self, lookup: Callable[[str], str | None]) -> None:
        self.lookup = lookup

    def check(self, login: str, password: str) -> bool:
        hashed = self.lookup(login)
        if hashed is None:
            check_password(password, _UNKNOWN_LOGIN_HASH)
            return False
        return check_password(password, hashed)

    def __call__(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        if mechanism not in ("PLAIN", "LOGIN") or not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login, password = (auth_data.login.decode("utf-8", "replace"), auth_data.password.decode("utf-8", "replace"))
        if self.check(login, password):
            return AuthResult(success=True, auth_data=login)
        return AuthResult(success=False, handled=False)


class FileAuthenticator(Authenticator):
    """Credentials from a file of ``user:hash`` lines, read once at start."""

    def __init__(self, path: str) -> None:
        self.credentials = load_credentials(path)
        super().__init__(self.credentials.get)


class DatabaseAuthenticator(Authenticator):
    """Credentials from the ``hotclicks_relay_account`` table, read at each attempt, so that
    ``hotclicks-relay accounts add/disable`` take effect on a running relay."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions
        super().__init__(self._lookup)

    def _lookup(self, login: str) -> str | None:
        with self.sessions() as session:
            return admin.relay_password_hash(session, login)


def client_key(host: str) -> str:
    """Whom failed attempts are counted against: the address, or its /64 for IPv6 (one machine
    usually holds a whole /64 and could hop between its addresses)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if address.version == 6 and not address.ipv4_mapped:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address.ipv4_mapped or address) if address.version == 6 else str(address)


class AuthThrottle:
    """At most ``max_failures`` failed (or still running) AUTH attempts per client in ``window``
    seconds; more are refused until the oldest one leaves the window.

    Pure: the time is passed in. Attempts count from their start, so parallel connections of one
    client cannot all try before the first failure is known. Remembers at most ``max_clients``
    clients (the longest quiet ones are forgotten first), so a flood of addresses cannot exhaust memory.
    """

    def __init__(self, max_failures: int, window: float, max_clients: int = 100_000) -> None:
        self.max_failures = max_failures
        self.window = window
        self.max_clients = max_clients
        self._attempts: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, client: str, now: float) -> float:
        """Seconds before ``client`` may try again; 0 if it may now."""
        attempts = self._attempts.get(client)
        if attempts is None or len(attempts) < self.max_failures:
            return 0.0
        return max(0.0, attempts[0] + self.window - now)

    def attempt(self, client: str, now: float) -> bool:
        """Count an attempt that starts now; False (and nothing counted) if ``client`` must wait."""
        if self.retry_after(client, now) > 0:
            return False
        attempts = self._attempts.pop(client, None) or deque(maxlen=self.max_failures)
        while attempts and attempts[0] + self.window <= now:
            attempts.popleft()
        attempts.append(now)
        self._attempts[client] = attempts  # last: the most recently active
        while len(self._attempts) > self.max_clients:
            self._attempts.popitem(last=False)
        return True

    def succeeded(self, client: str, started: float) -> None:
        """Take back an attempt that succeeded: only failures count."""
        attempts = self._attempts.get(client)
        if attempts is not None and started in attempts:
            attempts.remove(started)
            if not attempts:
                del self._attempts[client]

    def failures(self, client: str) -> int:
        return len(self._attempts.get(client, ()))
