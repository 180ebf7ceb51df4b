"""A copy refused for good or given up bounces to its sender (RFC 3464), once, headers only."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import logging
import smtplib
from dataclasses import replace
from pathlib import Path

from sqlalchemy import select

from hotclicks.db.models import Message, MessageStatus, RelayIncident
from smtp_relay import RelayController
from smtp_relay.bounces import build_dsn, original_headers

from .helpers import BASE_URL, newsletter

SENDER = "news@shop.example"
#: How the sink's aiosmtpd spells ``MAIL FROM:<>``.
NULL_SENDER = "<>"


def send(listen, recipients=("ann@example.org",), sender: str = SENDER) -> None:
    with smtplib.SMTP(*listen, timeout=30) as client:
        client.sendmail(sender, list(recipients), newsletter())


def refuse_rcpt(upstream, refused: str, reply: str) -> None:
    """Make the sink refuse one recipient at RCPT (per connection: set before the relay connects)."""

    async def handle_RCPT(server, session, envelope, address, options):
        if address == refused:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    upstream.sink.handle_RCPT = handle_RCPT


def bounces(upstream) -> list[email.message.EmailMessage]:
    return [
        email.message_from_bytes(m.data, policy=email.policy.default)
        for m in upstream.messages
        if m.mail_from == NULL_SENDER
    ]


def report_fields(dsn) -> tuple[dict[str, str], list[dict[str, str]]]:
    """The per-message fields and the per-recipient blocks of a DSN's message/delivery-status."""
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"
    human, status, headers = dsn.get_payload()
    assert human.get_content_type() == "text/plain"
    assert status.get_content_type() == "message/delivery-status"
    assert headers.get_content_type() == "text/rfc822-headers"
    per_message, *per_recipient = status.get_payload()
    return dict(per_message.items()), [dict(block.items()) for block in per_recipient]


def bounce_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("bounce to ")]


def statuses(sessions) -> dict[str, MessageStatus]:
    with sessions() as session:
        return {m.recipient.address: m.status for m in session.scalars(select(Message))}


def spooled(relay) -> list[Path]:
    return sorted((Path(relay.config.spool_dir) / "queue").glob("*.msg"))


def test_a_recipient_refused_for_good_bounces_to_the_sender_and_the_other_is_delivered(relay, upstream, sessions, caplog):
    caplog.set_level(logging.INFO, logger="smtp_relay")
    refuse_rcpt(upstream, "bob@example.org", "550 5.1.1 no such user")
    send(relay.config.listen, ["ann@example.org", "bob@example.org"])
    relay.wait_idle()

    delivered = [m for m in upstream.messages if m.mail_from == SENDER]
    assert [m.rcpt_tos for m in delivered] == [["ann@example.org"]]
    assert b"/t/c/" in delivered[0].data
    (dsn,) = bounces(upstream)
    assert [m.rcpt_tos for m in upstream.messages if m.mail_from == NULL_SENDER] == [[SENDER]]
    assert dsn["To"].addresses[0].addr_spec == SENDER and dsn["Auto-Submitted"] == "auto-replied"
    assert not [name for name in dsn.keys() if name.lower().startswith("x-hotclicks")]

    per_message, (recipient,) = report_fields(dsn)
    assert per_message["Reporting-MTA"] == "dns; relay.test"
    assert email.utils.parsedate_to_datetime(per_message["Arrival-Date"]).tzinfo is not None
    assert recipient == {
        "Final-Recipient": "rfc822; bob@example.org",
        "Action": "failed",
        "Status": "5.1.1",
        "Diagnostic-Code": "smtp; 550 5.1.1 no such user",
    }
    headers = dsn.get_payload()[2].get_content()
    assert "Subject: Spring news" in headers and "Message-ID: <spring-1@shop.example>" in headers
    assert "Spring is here" not in headers  # headers only, no body
    raw = next(m.data for m in upstream.messages if m.mail_from == NULL_SENDER)
    assert BASE_URL.encode() not in raw  # neither a tracked link nor the signed List-Unsubscribe
    assert "bob@example.org" in dsn.get_payload()[0].get_content()

    assert statuses(sessions) == {"ann@example.org": MessageStatus.SENT, "bob@example.org": MessageStatus.FAILED}
    (line,) = bounce_lines(caplog)
    assert SENDER in line and "bob@example.org" in line
    assert spooled(relay) == []


def test_a_copy_given_up_after_the_maximum_age_bounces_with_status_4_4_7(relay, upstream, caplog):
    caplog.set_level(logging.INFO, logger="smtp_relay")
    upstream.sink.reply = "451 4.3.0 try later"
    send(relay.config.listen)
    relay.wait_idle()
    assert bounce_lines(caplog) == []
    deliverer = relay.handler.deliverer
    later = dt.datetime.now(dt.timezone.utc) + relay.config.max_queue_age + dt.timedelta(minutes=1)
    deliverer.clock = lambda: later  # five days later, without sleeping
    relay.retry_now()
    relay.wait_idle()
    assert len(bounce_lines(caplog)) == 1

    upstream.sink.reply = None  # the bounce itself was deferred by the same 451; now it goes
    assert relay.retry_now() == 1
    relay.wait_idle()
    (dsn,) = bounces(upstream)
    _, (recipient,) = report_fields(dsn)
    assert recipient["Final-Recipient"] == "rfc822; ann@example.org"
    assert recipient["Status"] == "4.4.7"
    assert recipient["Diagnostic-Code"] == "smtp; 451 4.3.0 try later"
    assert [m for m in upstream.messages if m.mail_from == SENDER] == []
    assert spooled(relay) == []


def test_mail_from_the_null_sender_never_bounces(relay, upstream, sessions, caplog):
    caplog.set_level(logging.INFO, logger="smtp_relay")
    upstream.sink.reply = "550 5.1.1 no such user"
    send(relay.config.listen, sender="")
    relay.wait_idle()
    assert statuses(sessions) == {"ann@example.org": MessageStatus.FAILED}
    assert bounce_lines(caplog) == []
    assert upstream.messages == []
    assert spooled(relay) == []


def test_no_bounces_turns_them_off(engine, relay_config, upstream, caplog):
    caplog.set_level(logging.INFO, logger="smtp_relay")
    upstream.sink.reply = "550 5.1.1 no such user"
    relay = RelayController(replace(relay_config, bounces=False))
    relay.start()
    try:
        send(relay.config.listen)
        relay.wait_idle()
        assert bounce_lines(caplog) == []
        assert spooled(relay) == []
    finally:
        relay.stop()
        relay.handler.database.dispose()
    assert upstream.messages == []


def test_a_bounce_refused_for_good_does_not_bounce_again(relay, upstream, sessions, caplog):
    caplog.set_level(logging.INFO, logger="smtp_relay")
    upstream.sink.reply = "550 5.7.1 rejected"
    send(relay.config.listen)
    relay.wait_idle()
    assert len(bounce_lines(caplog)) == 1  # for the message; none for its refused bounce
    assert upstream.messages == []
    assert spooled(relay) == []
    with sessions() as session:
        (refused_bounce,) = session.scalars(select(RelayIncident).where(RelayIncident.kind == "given-up")).all()
        assert refused_bounce.recipients == SENDER


def test_the_notification_keeps_no_field_that_holds_a_relay_url():
    data = (
        b"From: Shop <news@shop.example>\r\nSubject: Hi\r\n"
        b"List-Unsubscribe: <https://t.example/t/u/abc>,\r\n <mailto:u@shop.example>\r\n"
        b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n\r\n<a href=\"https://t.example/t/c/x\">x</a>\r\n"
    )
    headers = original_headers(data, "https://t.example/t")
    assert headers == "From: Shop <news@shop.example>\nSubject: Hi\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\n"
    now = dt.datetime(2026, 4, 1, tzinfo=dt.timezone.utc)
    dsn = build_dsn(
        reporting_mta="relay.test", sender=SENDER, arrival=now, now=now, headers=headers, gave_up=False,
        failures=[("a@example.org", "554 transaction failed"), ("b@example.org", "550 4.1.1 odd")],
    )
    assert b"t.example" not in dsn and b"\r\n" in dsn and b"\n" not in dsn.replace(b"\r\n", b"")
    _, blocks = report_fields(email.message_from_bytes(dsn, policy=email.policy.default))
    assert [b["Status"] for b in blocks] == ["5.0.0", "5.0.0"]  # no enhanced code of the 5 class

