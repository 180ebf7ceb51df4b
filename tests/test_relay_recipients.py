"""Per recipient: one copy each with its own tokens, a broad log row each with its status,
opted-out recipients suppressed (marketing only), List-Unsubscribe, samples per variant."""

from __future__ import annotations

import email
import email.policy
import smtplib
from dataclasses import replace

import pytest
from sqlalchemy import select

from hotclicks.db import admin, sending, stats, subscribers
from hotclicks.db.models import ContentVariant, Execution, Message, MessageStatus, ProfileCopy, Recipient, RelayCounter
from hotclicks.tokens import TokenKind, TokenSigner
from smtp_relay import RelayController

from .conftest import SECRET_KEY
from .helpers import BASE_URL, newsletter, running_relay, tracked_hrefs


def send(relay, message: bytes, recipients) -> None:
    with smtplib.SMTP(*relay.config.listen, timeout=30) as client:
        client.sendmail("news@shop.example", list(recipients), message)
    relay.wait_idle()


def headers_of(data: bytes) -> email.message.Message:
    return email.message_from_bytes(data, policy=email.policy.default)


def rows(sessions) -> dict[str, Message]:
    with sessions() as session:
        return {
            session.get(Recipient, m.recipient_id).address: m
            for m in session.scalars(select(Message).order_by(Message.id))
        }


def unsubscribe(sessions, address: str) -> None:
    with sessions.begin() as session:
        subscribers.unsubscribe(session, sending.get_recipient(session, address).id)


def test_an_opted_out_recipient_is_not_sent_a_newsletter_and_is_logged_suppressed(relay, upstream, sessions):
    unsubscribe(sessions, "bob@example.org")
    send(relay, newsletter(), ["ann@example.org", "bob@example.org"])
    assert [m.rcpt_tos for m in upstream.messages] == [["ann@example.org"]]
    logged = rows(sessions)
    assert logged["ann@example.org"].status is MessageStatus.SENT
    assert logged["bob@example.org"].status is MessageStatus.SUPPRESSED
    assert "unsubscribed" in logged["bob@example.org"].status_reply


def test_an_opted_out_recipient_still_gets_transactional_mail_without_list_unsubscribe(relay, upstream, sessions):
    unsubscribe(sessions, "bob@example.org")
    send(relay, newsletter("receipt", "X-HotClicks-Type: transactional\n"), ["bob@example.org"])
    (received,) = upstream.messages
    assert received.rcpt_tos == ["bob@example.org"]
    assert "List-Unsubscribe" not in headers_of(received.data)
    assert rows(sessions)["bob@example.org"].status is MessageStatus.SENT


def test_each_copy_gets_its_own_one_click_list_unsubscribe_and_keeps_the_senders_mailto(engine, relay_config, upstream, sessions):
    extra = "List-Unsubscribe: <mailto:unsub@shop.example?subject=stop>\nList-Unsubscribe-Post: nonsense\n"
    with running_relay(replace(relay_config, list_unsubscribe="replace")) as relay:  # keep: test_relay_headers.py
        send(relay, newsletter(extra_headers=extra), ["ann@example.org", "bob@example.org"])
    logged = rows(sessions)
    signer = TokenSigner(SECRET_KEY)
    for received in upstream.messages:
        headers = headers_of(received.data)
        assert headers.get_all("List-Unsubscribe-Post") == ["List-Unsubscribe=One-Click"]
        (value,) = headers.get_all("List-Unsubscribe")
        url, mailto = [part.strip().strip("<>") for part in str(value).split(",")]
        assert mailto == "mailto:unsub@shop.example?subject=stop"
        assert url.startswith(BASE_URL + "/u/")
        token = signer.unsign(url.rsplit("/", 1)[1], TokenKind.UNSUBSCRIBE)
        assert token.message_id == logged[received.rcpt_tos[0]].id


def test_every_recipient_has_a_sent_row_and_links_of_their_own(relay, upstream, sessions):
    recipients = [f"r{i}@example.org" for i in range(5)]
    send(relay, newsletter(), recipients)
    assert sorted(m.rcpt_tos[0] for m in upstream.messages) == recipients
    hrefs = [tuple(tracked_hrefs(m.data)) for m in upstream.messages]
    assert len(set(hrefs)) == 5
    assert {m.status for m in rows(sessions).values()} == {MessageStatus.SENT}


def test_test_profiles_copy_is_the_sample_of_its_variant_and_each_variant_has_one(relay, upstream, sessions):
    with sessions.begin() as session:
        admin.create_profile(session, "Woman, 30", "tester@shop.example", {"gender": "f"})
    send(relay, newsletter(), ["ann@example.org"])  # first sample from a real recipient
    send(relay, newsletter(), ["tester@shop.example"])  # the test profile's replaces it
    other = newsletter().replace(b"https://blog.example/spring", b"https://blog.example/summer")
    send(relay, other, ["bob@example.org"])  # another variant: another set of links
    with sessions() as session:
        variants = session.scalars(select(ContentVariant).order_by(ContentVariant.id)).all()
        assert len(variants) == 2
        assert variants[0].sample_source == "test-profile" and variants[0].test_profile_id is not None
        assert "https://blog.example/spring" in variants[0].html
        assert variants[1].sample_source == "recipient" and "https://blog.example/summer" in variants[1].html
        assert variants[0].text and "/t/c/" not in variants[0].html  # the content, not a copy's links


def test_each_test_profile_keeps_its_own_copy_and_the_report_shows_it(relay, upstream, sessions):
    with sessions.begin() as session:
        admin.create_profile(session, "Woman, 30", "anna@shop.example", {"gender": "f"})
        admin.create_profile(session, "Man, 40", "marc@shop.example", {"gender": "m"})
    # Same links, so the same variant; only the personalised greeting differs.
    for name, address in (("Anna", "anna@shop.example"), ("Marc", "marc@shop.example")):
        send(relay, newsletter().replace(b"Spring is here.", f"Hello {name}, spring is here.".encode())
             .replace(b'<body   style="margin:0">', f'<body   style="margin:0"><p>Dear {name},</p>'.encode()), [address])
    send(relay, newsletter(), ["ann@example.org"])
    with sessions() as session:
        (variant,) = session.scalars(select(ContentVariant)).all()
        assert variant.sample_source == "test-profile" and "Dear Anna" in variant.html  # the first profile's
        copies = session.scalars(select(ProfileCopy).order_by(ProfileCopy.message_id)).all()
        assert [("Dear Anna" in c.html, "Dear Marc" in c.html) for c in copies] == [(True, False), (False, True)]
        assert "Hello Marc" in copies[1].text and "/t/c/" not in copies[1].html  # the content, not links
        execution = session.scalars(select(Execution)).one()
        for name, greeting in (("Woman, 30", "Dear Anna"), ("Man, 40", "Dear Marc")):
            shown = stats.choose_content(session, execution, admin.get_profile(session, name))
            assert shown.source == "test-profile" and greeting in shown.html and shown.variant.id == variant.id
    with sessions.begin() as session:  # a deleted profile takes its copies along
        admin.delete_profile(session, "Man, 40")
    with sessions() as session:
        assert len(session.scalars(select(ProfileCopy)).all()) == 1


def test_samples_from_real_recipients_can_be_switched_off(engine, relay_config, upstream, sessions):
    relay = RelayController(replace(relay_config, keep_recipient_samples=False))
    relay.start()
    try:
        with sessions.begin() as session:
            admin.create_profile(session, "Man, 40", "tester@shop.example")
        send(relay, newsletter(), ["ann@example.org"])
        with sessions() as session:
            (variant,) = session.scalars(select(ContentVariant)).all()
            assert variant.html is None and variant.text is None
        send(relay, newsletter(), ["tester@shop.example"])
        with sessions() as session:
            (variant,) = session.scalars(select(ContentVariant)).all()
            assert variant.sample_source == "test-profile" and "https://blog.example/spring" in variant.html
    finally:
        relay.stop()
        relay.handler.database.dispose()


@pytest.mark.parametrize("recipients", [["ann@example.org"], ["ann@example.org", "bob@example.org"]])
def test_mail_without_a_delivery_goes_untouched_to_all_recipients_and_is_counted(relay, upstream, sessions, recipients):
    plain = b"From: a@example.org\r\nSubject: hi\r\n\r\nSee https://example.org/\r\n"
    send(relay, plain, recipients)
    send(relay, plain, recipients)
    assert [m.data for m in upstream.messages] == [plain, plain]
    assert upstream.messages[0].rcpt_tos == recipients
    with sessions() as session:
        assert session.scalars(select(Message)).all() == []
        (counter,) = session.scalars(select(RelayCounter)).all()
        assert (counter.name, counter.value) == ("untracked", 2)
