"""The click redirect and the open pixel, through the Flask test client."""

from __future__ import annotations

import base64

import pytest
from flask import Flask
from sqlalchemy import select

from flask_hotclicks import HotClicks
from hotclicks import links
from hotclicks.db.models import Click, Open
from hotclicks.tokens import Token, TokenKind, TokenSigner

from .conftest import SECRET_KEY
from .flask_seed import TARGETS, send
from .helpers import BASE_URL

BROWSER = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"}


def clicks(sessions) -> list[Click]:
    with sessions() as session:
        return list(session.scalars(select(Click).order_by(Click.id)))


def test_a_click_is_recorded_and_redirected_to_its_target(client, sessions):
    sent = send(sessions)
    response = client.get(sent.click(1), headers=BROWSER, environ_base={"REMOTE_ADDR": "203.0.113.77"})
    assert response.status_code == 302
    assert response.headers["Location"] == TARGETS[1]
    assert "no-store" in response.headers["Cache-Control"]
    (click,) = clicks(sessions)
    assert (click.message_id, click.tracked_url_id) == (sent.message_id, sent.tracked_url_ids[1])
    assert click.ip == "203.0.113.0"
    assert click.user_agent == BROWSER["User-Agent"]
    assert click.is_machine is False


def test_a_personalized_link_goes_to_the_recipients_own_url(client, sessions):
    sent = send(sessions)
    own = TARGETS[0] + "?uid=ann-42&utm_source=news"
    response = client.get(sent.click(0, personal=own), headers=BROWSER)
    assert response.headers["Location"] == own
    assert [c.tracked_url_id for c in clicks(sessions)] == [sent.tracked_url_ids[0]]


def test_head_redirects_without_recording(client, sessions):
    sent = send(sessions)
    response = client.head(sent.click(0), headers=BROWSER)
    assert response.status_code == 302
    assert response.headers["Location"] == TARGETS[0]
    assert clicks(sessions) == []


def test_forged_truncated_and_unknown_tokens_get_the_not_valid_page(client, sessions):
    sent = send(sessions)
    path = sent.click(0)
    token = path.rsplit("/", 1)[1]
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    raw[2] ^= 1  # another tracked URL id, same tag
    altered = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    forged = TokenSigner("someone-elses-key-0123456789").sign(
        Token(TokenKind.CLICK, sent.message_id, sent.tracked_url_ids[0], "https://evil.example/")
    )
    unknown_url = TokenSigner(SECRET_KEY).sign(Token(TokenKind.CLICK, sent.message_id, 999_999))
    an_open_token = sent.open().rsplit("/", 1)[1]
    for bad in (token[:-4], altered, forged, unknown_url, an_open_token, "x", "A" * 9000):
        response = client.get(f"/t/c/{bad}", headers=BROWSER)
        assert response.status_code == 404, bad
        assert "Location" not in response.headers
        assert b"This link is not valid" in response.data
    assert clicks(sessions) == []


def test_a_link_signed_with_a_rotated_out_key_still_works_while_it_is_a_fallback(engine, database_url, sessions):
    old_key = "the-key-of-last-year-0123456789"
    sent = send(sessions)
    path = sent.click(2, signer=TokenSigner(old_key))
    for fallbacks, expected in (([old_key], 302), ([], 404)):
        app = Flask("rotated")
        app.config.update(
            HOTCLICKS_DATABASE_URL=database_url, HOTCLICKS_SECRET_KEY="the-new-key-0123456789abcdef",
            HOTCLICKS_SECRET_KEY_FALLBACKS=fallbacks, HOTCLICKS_BASE_URL=BASE_URL,
        )
        HotClicks(app)
        try:
            assert app.test_client().get(path, headers=BROWSER).status_code == expected
        finally:
            app.extensions["hotclicks"].dispose()


def test_the_host_app_can_replace_the_not_valid_page(engine, database_url):
    app = Flask("custom")
    app.config.update(HOTCLICKS_DATABASE_URL=database_url, HOTCLICKS_SECRET_KEY=SECRET_KEY)
    hotclicks = HotClicks(app)

    @hotclicks.invalid_link_handler
    def _page():
        return "<p>Oops, our link broke. Visit shop.example.</p>"

    try:
        response = app.test_client().get("/t/c/not-a-token")
        assert response.status_code == 404
        assert b"Oops" in response.data
    finally:
        app.extensions["hotclicks"].dispose()


def test_the_open_pixel_is_a_gif_that_is_never_cached_and_records_an_open(client, sessions):
    sent = send(sessions)
    response = client.get(sent.open(), headers=BROWSER)
    assert response.status_code == 200
    assert response.mimetype == "image/gif"
    assert response.data.startswith(b"GIF89a")
    assert "no-store" in response.headers["Cache-Control"]
    with sessions() as session:
        (opened,) = session.scalars(select(Open)).all()
    assert opened.message_id == sent.message_id and opened.is_machine is False
    # A bad token still gets the image, and nothing is recorded; nor for a HEAD.
    assert client.get("/t/o/garbage").mimetype == "image/gif"
    assert client.head(sent.open(), headers=BROWSER).status_code == 200
    with sessions() as session:
        assert len(session.scalars(select(Open)).all()) == 1


@pytest.mark.parametrize(
    ("config", "remote", "expected_ip", "expected_agent"),
    [
        ({}, "2001:db8:1234:5678::1", "2001:db8:1234::", BROWSER["User-Agent"]),
        ({"HOTCLICKS_ANONYMIZE_IP": False}, "203.0.113.77", "203.0.113.77", BROWSER["User-Agent"]),
        ({"HOTCLICKS_STORE_IP": False, "HOTCLICKS_STORE_USER_AGENT": False}, "203.0.113.77", None, None),
    ],
)
def test_privacy_switches(engine, database_url, sessions, config, remote, expected_ip, expected_agent):
    app = Flask("privacy")
    app.config.update(HOTCLICKS_DATABASE_URL=database_url, HOTCLICKS_SECRET_KEY=SECRET_KEY, **config)
    HotClicks(app)
    sent = send(sessions)
    try:
        app.test_client().get(sent.click(0), headers=BROWSER, environ_base={"REMOTE_ADDR": remote})
    finally:
        app.extensions["hotclicks"].dispose()
    (click,) = clicks(sessions)
    assert (click.ip, click.user_agent) == (expected_ip, expected_agent)
    assert click.device == "desktop"  # read at click time, kept whether or not the agent is


def test_a_link_keeps_working_without_any_cache(client, app, sessions):
    sent = send(sessions)
    for _ in range(2):
        app.extensions["hotclicks"].target_cache.clear()
        assert client.get(sent.click(0), headers=BROWSER).headers["Location"] == TARGETS[0]
    assert len(clicks(sessions)) == 2


def test_the_relay_side_url_builders_match_the_routes(client, sessions):
    sent = send(sessions)
    signer = TokenSigner(SECRET_KEY)
    url = links.click_url(signer, BASE_URL + "/", sent.message_id, sent.tracked_url_ids[0])
    assert url.startswith(BASE_URL + "/c/")
    headers = links.list_unsubscribe_headers(signer, BASE_URL, sent.message_id, mailto="unsub@shop.example")
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert headers["List-Unsubscribe"].startswith(f"<{BASE_URL}/u/")
    assert headers["List-Unsubscribe"].endswith(", <mailto:unsub@shop.example>")
