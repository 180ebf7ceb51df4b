"""One tracked newsletter end to end: smtplib -> relay -> upstream sink, then clicks -> report.

Real servers on free ports of 127.0.0.1 (an aiosmtpd sink as upstream, the relay), the Flask app
through its test client, one shared database.
"""

from __future__ import annotations

import re
import smtplib
from urllib.parse import urlsplit

from sqlalchemy import select

from hotclicks.db.models import Click, Message, MessageStatus, Recipient

from .helpers import BASE_URL, NEWSLETTER_HREFS, NEWSLETTER_LINKS, TEXT_LINK, newsletter, tracked_hrefs, trap_hrefs

RECIPIENTS = ["ann@example.org", "bob@example.org", "cat@example.org"]


def send(relay, message: bytes, recipients=RECIPIENTS) -> None:
    """Send through the relay and wait until it has forwarded (250 means "spooled")."""
    with smtplib.SMTP(*relay.config.listen, timeout=30) as client:
        client.sendmail("news@shop.example", recipients, message)
    relay.wait_idle()


def untrack(forwarded: bytes, originals: dict[str, str]) -> bytes:
    """The forwarded bytes with each tracked link put back, the trap link and the open pixel removed."""
    restored = re.sub(
        rb'<a href="' + re.escape(BASE_URL.encode()) + rb'/c/[A-Za-z0-9_-]+" style="display:none![^>]*></a>'
        rb'<img src="' + re.escape(BASE_URL.encode()) + rb'/o/[A-Za-z0-9_-]+"[^>]*/>',
        b"",
        forwarded,
    )
    for tracked, original in originals.items():
        restored = restored.replace(tracked.encode(), original.encode(), 1)
    return restored


def test_a_newsletter_is_split_per_recipient_with_every_link_tracked_and_nothing_else_changed(
    relay, upstream, sessions
):
    sent = newsletter()
    send(relay, sent)

    assert sorted(m.rcpt_tos[0] for m in upstream.messages) == sorted(RECIPIENTS)
    assert all(len(m.rcpt_tos) == 1 for m in upstream.messages)
    seen_tokens: set[str] = set()
    for received in upstream.messages:
        data = received.data
        assert b"X-HotClicks" not in data
        html_hrefs = tracked_hrefs(data, part="html")
        assert len(html_hrefs) == len(NEWSLETTER_LINKS)
        tokens = {urlsplit(href).path.rsplit("/", 1)[1] for href in html_hrefs}
        assert len(tokens) == len(NEWSLETTER_LINKS)  # one token per link
        assert not tokens & seen_tokens  # and per recipient
        seen_tokens |= tokens
        assert b"/o/" in data  # the open pixel
        assert len(trap_hrefs(data)) == 1  # and the hidden trap link, just before it
        # Undo the link changes: every other byte is the one that was sent, headers aside.
        originals = dict(zip(tracked_hrefs(data), [TEXT_LINK, *NEWSLETTER_HREFS]))
        expected = re.sub(rb"X-HotClicks-[A-Za-z]+: [^\r\n]*\r\n", b"", sent)
        data = re.sub(rb"List-Unsubscribe(-Post)?: [^\r\n]*\r\n([ \t][^\r\n]*\r\n)*", b"", data)
        assert untrack(data, originals) == expected

    with sessions() as session:
        messages = session.scalars(select(Message)).all()
        assert {m.status for m in messages} == {MessageStatus.SENT}
        addresses = {session.get(Recipient, m.recipient_id).address for m in messages}
        assert addresses == set(RECIPIENTS)


def test_following_a_link_records_a_click_and_redirects_to_the_original_url(
    relay, upstream, client, sessions
):
    send(relay, newsletter(), ["ann@example.org"])
    href = tracked_hrefs(upstream.messages[0].data, part="html")[1]

    response = client.get(urlsplit(href).path, headers={"User-Agent": "Mozilla/5.0 test"})
    assert response.status_code == 302
    assert response.headers["Location"] == NEWSLETTER_LINKS[1]

    with sessions() as session:
        (clicked,) = session.scalars(select(Click)).all()
        message = session.scalars(select(Message)).one()
        assert clicked.message_id == message.id
        assert clicked.user_agent == "Mozilla/5.0 test"
        assert clicked.ip == "127.0.0.0"  # anonymized to its /24


def test_a_forged_or_altered_link_gets_a_not_valid_page_and_no_redirect(relay, upstream, client, sessions):
    send(relay, newsletter(), ["ann@example.org"])
    path = urlsplit(tracked_hrefs(upstream.messages[0].data, part="html")[0]).path
    token = path.rsplit("/", 1)[1]
    altered = token[:-1] + ("A" if token[-1] != "A" else "B")
    for bad in (path[:-3], path.replace(token, altered), "/t/c/not-a-token", "/t/c/" + "A" * 40):
        response = client.get(bad)
        assert response.status_code == 404, bad
        assert "Location" not in response.headers
        assert b"This link is not valid" in response.data
    with sessions() as session:
        assert session.scalars(select(Click)).all() == []


def test_the_json_report_gives_each_links_share_of_the_executions_clicks(relay, upstream, client):
    send(relay, newsletter())
    by_recipient = {m.rcpt_tos[0]: tracked_hrefs(m.data, part="html") for m in upstream.messages}
    clicks = [
        ("ann@example.org", 0), ("bob@example.org", 0), ("cat@example.org", 0),
        ("ann@example.org", 0),  # ann clicks the first link twice
        ("bob@example.org", 2),
    ]
    for address, index in clicks:
        assert client.get(urlsplit(by_recipient[address][index]).path).status_code == 302

    report = client.get("/hotclicks/api/deliveries/spring-news/hot-clicks").get_json()
    assert report["delivery"] == "spring-news"
    assert report["total_clicks"] == 5
    html_links = [link for link in report["links"] if link["part"] == "html"]
    assert [link["url"] for link in html_links] == NEWSLETTER_LINKS
    assert [link["clicks"] for link in html_links] == [4, 0, 1]
    assert [link["unique_clickers"] for link in html_links] == [3, 0, 1]
    assert [link["percent"] for link in html_links] == [80.0, 0.0, 20.0]
    assert html_links[0]["label"] == "Shop the spring sale"


def test_an_unknown_delivery_is_a_404(client):
    assert client.get("/hotclicks/api/deliveries/nope/hot-clicks").status_code == 404


def test_a_message_without_the_delivery_header_passes_through_untouched(relay, upstream, sessions):
    sent = re.sub(rb"X-HotClicks-Delivery: [^\r\n]*\r\n", b"", newsletter())
    send(relay, sent)
    assert len(upstream.messages) == 1
    assert sorted(upstream.messages[0].rcpt_tos) == sorted(RECIPIENTS)
    assert upstream.messages[0].data == sent
    with sessions() as session:
        assert session.scalars(select(Message)).all() == []


def test_when_upstream_is_down_the_message_waits_deferred_in_the_spool(relay, upstream, sessions):
    upstream.stop()
    send(relay, newsletter(), ["ann@example.org"])
    assert [e.recipients for e in relay.handler.deliverer.deferred] == [["ann@example.org"]]
    with sessions() as session:
        (message,) = session.scalars(select(Message)).all()
        assert message.status is MessageStatus.DEFERRED
        assert "unreachable" in message.status_reply
