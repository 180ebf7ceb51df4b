"""SMTP AUTH for clients: credentials from a file of ``user:hash`` lines, passwords hashed.

A hash is ``scrypt$<n>$<r>$<p>$<salt>$<digest>`` (base64), as ``hotclicks-relay hash-password``
prints it. aiosmtpd offers AUTH only once the connection is encrypted (STARTTLS or implicit TLS).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
from typing import Any

from aiosmtpd.smtp import AuthResult, LoginPassword

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


class FileAuthenticator:
    """aiosmtpd authenticator (PLAIN and LOGIN) checking a credentials file read at start."""

    def __init__(self, path: str) -> None:
        self.credentials = load_credentials(path)

    def __call__(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        if mechanism not in ("PLAIN", "LOGIN") or not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user = auth_data.login.decode("utf-8", "replace")
        hashed = self.credentials.get(user)
        if hashed is not None and check_password(auth_data.password.decode("utf-8", "replace"), hashed):
            return AuthResult(success=True, auth_data=user)
        log.warning("failed AUTH for %r from %s", user, session.peer)
        return AuthResult(success=False, handled=False)
