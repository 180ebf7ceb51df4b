"""Unsubscribe (a page, then a POST; RFC 8058 one-click) and the tracking opt-out."""

from __future__ import annotations

from sqlalchemy import select

from hotclicks.db.models import Click, OptOut
from hotclicks.db.subscribers import is_unsubscribed

from .flask_seed import send

BROWSER = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"}


def opt_outs(sessions) -> list[tuple[str, bool]]:
    with sessions() as session:
        return [(o.source, o.cancelled_at is None) for o in session.scalars(select(OptOut).order_by(OptOut.id))]


def test_a_get_shows_a_button_and_never_unsubscribes(client, sessions):
    sent = send(sessions)
    for _ in range(3):  # link scanners follow the link, several times
        response = client.get(sent.unsubscribe(), headers=BROWSER)
        assert response.status_code == 200
        assert b"<button" in response.data and b"Unsubscribe" in response.data
        assert b"ann@example.org" in response.data
    assert opt_outs(sessions) == []


def test_the_button_unsubscribes_and_the_page_offers_to_resubscribe(client, sessions):
    sent = send(sessions)
    response = client.post(sent.unsubscribe(), data={"action": "unsubscribe"})
    assert response.status_code == 200
    assert b"You are unsubscribed" in response.data and b"Resubscribe" in response.data
    assert opt_outs(sessions) == [("link", True)]
    with sessions() as session:
        assert is_unsubscribed(session, sent.recipient_id)  # what the relay checks to suppress
    # Posting again changes nothing.
    client.post(sent.unsubscribe(), data={"action": "unsubscribe"})
    assert opt_outs(sessions) == [("link", True)]

    response = client.post(sent.unsubscribe(), data={"action": "resubscribe"})
    assert b"You are subscribed again" in response.data
    assert opt_outs(sessions) == [("link", False)]
    with sessions() as session:
        assert not is_unsubscribed(session, sent.recipient_id)


def test_a_one_click_post_from_a_mailbox_provider_unsubscribes(client, sessions):
    sent = send(sessions)
    response = client.post(
        sent.unsubscribe(),
        data="List-Unsubscribe=One-Click",
        content_type="application/x-www-form-urlencoded",
    )
    assert response.status_code == 200
    assert opt_outs(sessions) == [("one-click", True)]
    with sessions() as session:
        assert session.scalars(select(OptOut)).one().message_id == sent.message_id


def test_a_bad_unsubscribe_token_is_a_404_for_get_and_post(client, sessions):
    sent = send(sessions)
    click_token = sent.click(0).rsplit("/", 1)[1]  # a valid token of another kind
    for bad in ("nope", click_token, sent.unsubscribe().rsplit("/", 1)[1][:-2]):
        assert client.get(f"/t/u/{bad}").status_code == 404
        assert client.post(f"/t/u/{bad}", data="List-Unsubscribe=One-Click",
                           content_type="application/x-www-form-urlencoded").status_code == 404
    assert opt_outs(sessions) == []


def test_after_a_tracking_opt_out_clicks_count_anonymously(client, sessions):
    sent = send(sessions)
    client.get(sent.click(0), headers=BROWSER)  # before: known
    page = client.get(sent.tracking_opt_out())
    assert page.status_code == 200 and b"Stop tracking me" in page.data
    response = client.post(sent.tracking_opt_out(), data={"action": "opt-out"})
    assert b"Your clicks are not tracked" in response.data
    assert client.get(sent.click(1), headers=BROWSER).status_code == 302  # the link still works
    with sessions() as session:
        rows = [(c.message_id, c.tracked_url_id, c.user_agent, c.ip)
                for c in session.scalars(select(Click).order_by(Click.id))]
    assert rows[0][0] == sent.message_id
    assert rows[1] == (None, sent.tracked_url_ids[1], None, None)

    client.post(sent.tracking_opt_out(), data={"action": "track"})
    client.get(sent.click(2), headers=BROWSER)
    with sessions() as session:
        last = session.scalars(select(Click).order_by(Click.id.desc())).first()
    assert last.message_id == sent.message_id
