"""Signed, compact, URL-safe tokens for the tracking links.

A token is ``base64url(payload || tag)``: the payload is a kind byte and varint-encoded ids (and,
for a personalized link, the recipient's exact URL); the tag is the first 12 bytes (96 bits) of an
HMAC-SHA256 over the payload. A redirect only ever goes to a target named by a payload we signed,
so a forged, truncated or altered token cannot redirect anywhere (no open redirect). Keys rotate:
tokens are signed with the first key and accepted under any fallback key, so mail sent before a
rotation keeps working.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import ConfigurationError, InvalidToken

#: Bytes of HMAC-SHA256 kept as the tag: 96 bits.
TAG_SIZE = 12
#: Longest token accepted, in characters; anything longer is rejected before any work.
MAX_TOKEN_LENGTH = 8192
#: Shortest secret key accepted, in bytes.
MIN_KEY_SIZE = 16
_DERIVATION_LABEL = b"hotclicks/tracking-token/v1"
#: What :meth:`TokenSigner.sign` writes: base64url without padding.
_TOKEN_TEXT = re.compile(r"[A-Za-z0-9_-]+")


class TokenKind(enum.IntEnum):
    CLICK = 1
    OPEN = 2
    UNSUBSCRIBE = 3


@dataclass(frozen=True, slots=True)
class Token:
    """What a tracking link stands for.

    ``url`` is set only when this recipient's target differs from the tracked URL's own (a
    personalized link): the redirect then goes to it, since we signed it.
    """

    kind: TokenKind
    message_id: int
    tracked_url_id: int | None = None
    url: str | None = None


def _encode_varint(value: int) -> bytes:
    if value < 0:
        raise ValueError("ids are non-negative")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _decode_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while pos < len(data) and shift <= 63:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise InvalidToken("truncated id")


def _derive(key: str | bytes) -> bytes:
    raw = key.encode() if isinstance(key, str) else bytes(key)
    if len(raw) < MIN_KEY_SIZE:
        raise ConfigurationError(
            f"the secret key must be at least {MIN_KEY_SIZE} bytes long; "
            "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    # A key of its own for tokens, so the host app's SECRET_KEY is never used directly.
    return hmac.new(raw, _DERIVATION_LABEL, hashlib.sha256).digest()


class TokenSigner:
    """Signs tokens with the first key and verifies them under every key given."""

    def __init__(self, secret_key: str | bytes, fallback_keys: Sequence[str | bytes] = ()) -> None:
        if not secret_key:
            raise ConfigurationError(
                "no secret key for tracking tokens: set HOTCLICKS_SECRET_KEY (the relay and "
                "the Flask app must share it)"
            )
        keys = [_derive(secret_key), *(_derive(k) for k in fallback_keys)]
        # One keyed HMAC per key, copied for each tag: the key schedule is done once, not per
        # link (the relay signs one token per link of every copy it sends).
        self._macs = [hmac.new(key, digestmod=hashlib.sha256) for key in keys]

    @staticmethod
    def _tag(mac: hmac.HMAC, payload: bytes | bytearray) -> bytes:
        mac = mac.copy()
        mac.update(payload)
        return mac.digest()[:TAG_SIZE]

    def sign(self, token: Token) -> str:
        payload = bytearray([token.kind])
        payload += _encode_varint(token.message_id)
        if token.kind is TokenKind.CLICK:
            if token.tracked_url_id is None:
                raise ValueError("a click token names its tracked URL")
            payload += _encode_varint(token.tracked_url_id)
            if token.url is not None:
                if not token.url:
                    raise ValueError("a personalized URL cannot be empty")
                payload += token.url.encode("utf-8")
        raw = bytes(payload) + self._tag(self._macs[0], payload)
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    def unsign(self, value: str, kind: TokenKind | None = None) -> Token:
        """The token ``value`` stands for; ``InvalidToken`` unless a key of ours signed it."""
        if not value or len(value) > MAX_TOKEN_LENGTH:
            raise InvalidToken("empty or oversized token")
        # base64 decoding is lenient (it skips junk, accepts "+/" and padding, ignores the last
        # character's unused bits): only the exact text we wrote is a token, so a link has one
        # spelling and an altered one is refused.
        if not _TOKEN_TEXT.fullmatch(value):
            raise InvalidToken("not base64url")
        try:
            raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        except (binascii.Error, ValueError):
            raise InvalidToken("not base64url") from None
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != value:
            raise InvalidToken("not base64url as we write it")
        if len(raw) <= TAG_SIZE:
            raise InvalidToken("too short")
        payload, tag = raw[:-TAG_SIZE], raw[-TAG_SIZE:]
        if not any(hmac.compare_digest(tag, self._tag(mac, payload)) for mac in self._macs):
            raise InvalidToken("bad signature")
        # From here on the payload is ours; a parse failure means a bug or a key leak.
        try:
            token_kind = TokenKind(payload[0])
        except ValueError:
            raise InvalidToken("unknown kind") from None
        if kind is not None and token_kind is not kind:
            raise InvalidToken(f"a {token_kind.name.lower()} token, not a {kind.name.lower()} one")
        message_id, pos = _decode_varint(payload, 1)
        if token_kind is not TokenKind.CLICK:
            if pos != len(payload):
                raise InvalidToken("trailing bytes")
            return Token(token_kind, message_id)
        tracked_url_id, pos = _decode_varint(payload, pos)
        url = payload[pos:].decode("utf-8") if pos < len(payload) else None
        return Token(token_kind, message_id, tracked_url_id, url)
