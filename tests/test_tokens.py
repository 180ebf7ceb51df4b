"""Tracking tokens: compact, URL-safe, and impossible to forge or alter."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hotclicks.errors import ConfigurationError, InvalidToken
from hotclicks.tokens import TAG_SIZE, Token, TokenKind, TokenSigner

KEY = "k" * 32
signer = TokenSigner(KEY)


def test_a_click_token_round_trips_and_is_url_safe_and_short():
    token = Token(TokenKind.CLICK, message_id=123456, tracked_url_id=789)
    value = signer.sign(token)
    assert signer.unsign(value) == token
    assert set(value) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert len(value) <= 28  # kind + two varints + 96-bit tag, base64url


def test_a_personalized_click_token_carries_the_recipients_exact_url():
    token = Token(TokenKind.CLICK, 1, 2, url="https://shop.example/?uid=123&é=1")
    assert signer.unsign(signer.sign(token)) == token


@given(
    kind=st.sampled_from(TokenKind),
    message_id=st.integers(0, 2**63 - 1),
    tracked_url_id=st.integers(0, 2**63 - 1),
    url=st.none() | st.text(min_size=1, max_size=300),
)
def test_every_token_round_trips(kind, message_id, tracked_url_id, url):
    if kind is TokenKind.CLICK:
        token = Token(kind, message_id, tracked_url_id, url)
    else:
        token = Token(kind, message_id)
    assert signer.unsign(signer.sign(token)) == token


def _flip(value: str, index: int) -> str:
    raw = bytearray(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
    raw[index] ^= 0x01
    return base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()


def test_any_altered_byte_is_refused():
    value = signer.sign(Token(TokenKind.CLICK, 42, 7, url="https://a.example/x"))
    length = len(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
    for index in range(length):
        with pytest.raises(InvalidToken):
            signer.unsign(_flip(value, index))


@pytest.mark.parametrize(
    "value",
    ["", "a", "!!!!", "AAAA", "A" * 20, "A" * 9000, "%2e%2e", "AQID" + "A" * TAG_SIZE],
)
def test_garbage_is_refused(value):
    with pytest.raises(InvalidToken):
        signer.unsign(value)


def test_truncated_tokens_are_refused():
    value = signer.sign(Token(TokenKind.CLICK, 42, 7))
    for end in range(len(value)):
        with pytest.raises(InvalidToken):
            signer.unsign(value[:end])


def test_a_token_signed_with_another_key_is_refused():
    other = TokenSigner("x" * 32).sign(Token(TokenKind.OPEN, 5))
    with pytest.raises(InvalidToken, match="bad signature"):
        signer.unsign(other)


def test_a_rotated_key_still_verifies_old_tokens_and_signs_with_the_new_one():
    old = signer.sign(Token(TokenKind.CLICK, 1, 2))
    rotated = TokenSigner("n" * 32, fallback_keys=[KEY])
    assert rotated.unsign(old) == Token(TokenKind.CLICK, 1, 2)
    new = rotated.sign(Token(TokenKind.CLICK, 1, 2))
    assert new != old
    with pytest.raises(InvalidToken):
        signer.unsign(new)  # the old key alone does not know the new one


def test_a_token_of_another_kind_is_refused_where_a_kind_is_expected():
    value = signer.sign(Token(TokenKind.OPEN, 5))
    with pytest.raises(InvalidToken, match="open token"):
        signer.unsign(value, TokenKind.CLICK)


@pytest.mark.parametrize("key", ["", "short"])
def test_a_missing_or_short_key_fails_at_start_with_how_to_fix_it(key):
    with pytest.raises(ConfigurationError, match="HOTCLICKS_SECRET_KEY|at least"):
        TokenSigner(key)
