"""The header fields the relay keeps, adds and removes: a sender's own List-Unsubscribe is kept as
written (or replaced, ``--list-unsubscribe replace``), ours goes on a message without one, and no
``X-HotClicks-*`` field reaches the upstream, tracked or not. DKIM-signed mail: test_relay_dkim.py."""

from __future__ import annotations

import email
import email.policy
import smtplib
from dataclasses import replace

import pytest
from sqlalchemy import select

from hotclicks.db import sending, subscribers
from hotclicks.db.models import Message, Recipient, RelayIncident
from hotclicks.tokens import TokenKind, TokenSigner
from smtp_relay.cli import _parser, config_from_settings, resolve_settings

from .conftest import SECRET_KEY
from .helpers import BASE_URL, newsletter, running_relay, tracked_hrefs

#: A sender's own unsubscribe fields, folded as its system wrote them.
SENDERS_FIELDS = (
    b"List-Unsubscribe: <https://shop.example/unsubscribe?u=ann&list=spring>,\r\n"
    b"\t<mailto:leave@shop.example?subject=unsubscribe>\r\n"
    b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
)
MAILTO_ONLY = b"List-Unsubscribe: <mailto:unsub@shop.example?subject=stop>\r\nList-Unsubscribe-Post: nonsense\r\n"


def send(relay, message: bytes, recipients=("ann@example.org",)) -> None:
    with smtplib.SMTP(*relay.config.listen, timeout=30) as client:
        client.sendmail("news@shop.example", list(recipients), message)
    relay.wait_idle()


def with_fields(fields: bytes, delivery: str = "spring-news") -> bytes:
    return newsletter(delivery, fields.replace(b"\r\n", b"\n").decode())


def header_block(data: bytes) -> bytes:
    return data[: data.index(b"\r\n\r\n") + 2]


def headers_of(data: bytes) -> email.message.Message:
    return email.message_from_bytes(data, policy=email.policy.default)


def incidents(sessions) -> list[tuple[str, str]]:
    with sessions() as session:
        return [(i.kind, i.reason) for i in session.scalars(select(RelayIncident).order_by(RelayIncident.id))]


def message_ids(sessions) -> dict[str, int]:
    with sessions() as session:
        return {session.get(Recipient, m.recipient_id).address: m.id for m in session.scalars(select(Message))}


# -- List-Unsubscribe -----------------------------------------------------------------------------


@pytest.mark.parametrize("fields", [SENDERS_FIELDS, MAILTO_ONLY], ids=["https-and-post", "mailto-only"])
def test_the_senders_list_unsubscribe_is_forwarded_as_written_and_none_is_added(relay, upstream, fields):
    sent = with_fields(fields)
    send(relay, sent, ["ann@example.org", "bob@example.org"])
    assert len(upstream.messages) == 2
    for received in upstream.messages:
        data = received.data
        assert data.count(fields) == 1 and data.lower().count(b"list-unsubscribe") == fields.lower().count(b"list-unsubscribe")
        assert f"{BASE_URL}/u/".encode() not in data
        # Every other header byte as it came, but the relay's mark.
        assert header_block(data) == header_block(sent).replace(b"X-HotClicks-Delivery: spring-news\r\n", b"")
        assert tracked_hrefs(data)  # the copy is tracked all the same


@pytest.mark.parametrize(
    "fields", [b"", b"List-Unsubscribe: <ftp://shop.example/leave>\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"],
    ids=["none", "no-usable-target"],
)
def test_a_message_without_a_usable_list_unsubscribe_gets_ours(relay, upstream, sessions, fields):
    send(relay, with_fields(fields))
    (received,) = upstream.messages
    headers = headers_of(received.data)
    (value,) = headers.get_all("List-Unsubscribe")
    assert headers.get_all("List-Unsubscribe-Post") == ["List-Unsubscribe=One-Click"]
    url = str(value).strip("<>")
    assert url.startswith(BASE_URL + "/u/") and b"ftp:" not in received.data
    token = TokenSigner(SECRET_KEY).unsign(url.rsplit("/", 1)[1], TokenKind.UNSUBSCRIBE)
    assert token.message_id == message_ids(sessions)["ann@example.org"]


def test_replace_puts_ours_in_place_of_the_senders_and_keeps_its_mailto_second(engine, relay_config, upstream):
    with running_relay(replace(relay_config, list_unsubscribe="replace")) as relay:
        send(relay, with_fields(SENDERS_FIELDS))
    (received,) = upstream.messages
    headers = headers_of(received.data)
    assert b"shop.example/unsubscribe" not in received.data
    assert headers.get_all("List-Unsubscribe-Post") == ["List-Unsubscribe=One-Click"]
    (value,) = headers.get_all("List-Unsubscribe")
    ours, mailto = [part.strip().strip("<>") for part in str(value).split(",")]
    assert ours.startswith(BASE_URL + "/u/") and mailto == "mailto:leave@shop.example?subject=unsubscribe"


def test_who_opted_out_through_hotclicks_is_not_sent_mail_that_keeps_the_senders_list_unsubscribe(relay, upstream, sessions):
    with sessions.begin() as session:
        subscribers.unsubscribe(session, sending.get_recipient(session, "bob@example.org").id)
    send(relay, with_fields(SENDERS_FIELDS), ["ann@example.org", "bob@example.org"])
    assert [m.rcpt_tos for m in upstream.messages] == [["ann@example.org"]]
    assert upstream.messages[0].data.count(SENDERS_FIELDS) == 1


def test_list_unsubscribe_is_a_flag_a_variable_and_a_toml_key(tmp_path):
    toml = tmp_path / "relay.toml"
    toml.write_text('list_unsubscribe = "replace"\n')
    base = {"HOTCLICKS_SECRET_KEY": "k", "HOTCLICKS_BASE_URL": "https://t.example/t"}
    assert config_from_settings(resolve_settings(_parser().parse_args([]), base)).list_unsubscribe == "keep"
    assert resolve_settings(_parser().parse_args(["--config", str(toml)]), base)["list_unsubscribe"] == "replace"
    env = {**base, "HOTCLICKS_LIST_UNSUBSCRIBE": "replace"}
    assert resolve_settings(_parser().parse_args([]), env)["list_unsubscribe"] == "replace"
    flag = _parser().parse_args(["--list-unsubscribe", "replace"])
    assert config_from_settings(resolve_settings(flag, base)).list_unsubscribe == "replace"


# -- X-HotClicks-* --------------------------------------------------------------------------------


def test_a_tracked_message_loses_every_x_hotclicks_field_even_one_the_relay_does_not_read(relay, upstream):
    sent = newsletter(extra_headers="X-HotClicks-Type: recurring\nX-Hotclicks-Campaign: spring\n  continued\n")
    send(relay, sent)
    data = upstream.messages[0].data
    assert b"x-hotclicks" not in data.lower()
    assert b"continued" not in data and tracked_hrefs(data)


def test_an_untracked_message_loses_its_x_hotclicks_fields_and_nothing_else(relay, upstream, sessions):
    sent = newsletter().replace(b"X-HotClicks-Delivery: spring-news\r\n", b"X-HotClicks-Recipient: 42\r\n")
    send(relay, sent)
    assert upstream.messages[0].data == sent.replace(b"X-HotClicks-Recipient: 42\r\n", b"")
    assert incidents(sessions) == []


def test_a_message_with_unreadable_marks_loses_them_and_its_incident_says_why(relay, upstream, sessions):
    sent = newsletter(extra_headers="X-HotClicks-Type: weekly\n")
    send(relay, sent)
    expected = sent.replace(b"X-HotClicks-Delivery: spring-news\r\n", b"").replace(b"X-HotClicks-Type: weekly\r\n", b"")
    assert upstream.messages[0].data == expected
    ((kind, reason),) = incidents(sessions)
    assert kind == "forwarded-unchanged" and "weekly" in reason
