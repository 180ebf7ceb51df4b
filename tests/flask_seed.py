"""Seeding the database as the relay would, for the Flask extension's tests (no SMTP involved)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from urllib.parse import urlsplit

from sqlalchemy.orm import Session, sessionmaker

from hotclicks import links
from hotclicks.executions import Marks
from hotclicks.db.models import Message, MessageStatus, utcnow
from hotclicks.db.sending import ensure_tracked_urls, get_recipient, resolve_execution
from hotclicks.links import LinkSpec
from hotclicks.tokens import TokenSigner

from .conftest import SECRET_KEY
from .helpers import BASE_URL

TARGETS = ["https://shop.example/sale", "https://blog.example/spring", "https://shop.example/account"]


@dataclass
class Sent:
    message_id: int
    recipient_id: int
    tracked_url_ids: list[int]
    trap_id: int

    def path(self, url: str) -> str:
        """The path (under the app) of a full tracking URL."""
        return urlsplit(url).path

    def click(self, index: int, personal: str | None = None, signer: TokenSigner | None = None) -> str:
        signer = signer or TokenSigner(SECRET_KEY)
        return self.path(links.click_url(signer, BASE_URL, self.message_id, self.tracked_url_ids[index], personal))

    def trap(self) -> str:
        return self.path(links.click_url(TokenSigner(SECRET_KEY), BASE_URL, self.message_id, self.trap_id))

    def open(self) -> str:
        return self.path(links.open_url(TokenSigner(SECRET_KEY), BASE_URL, self.message_id))

    def unsubscribe(self) -> str:
        return self.path(links.unsubscribe_url(TokenSigner(SECRET_KEY), BASE_URL, self.message_id))

    def tracking_opt_out(self) -> str:
        return self.path(links.tracking_opt_out_url(TokenSigner(SECRET_KEY), BASE_URL, self.message_id))


def send(
    sessions: sessionmaker[Session],
    address: str = "ann@example.org",
    *,
    delivery: str = "spring-news",
    sent_ago: dt.timedelta = dt.timedelta(hours=1),
    link_count: int = 3,
) -> Sent:
    """Record one message of ``delivery`` to ``address`` with three links (or ``link_count``: more are
    ``https://shop.example/more/N``) and a trap link."""
    sent_at = utcnow() - sent_ago
    with sessions.begin() as session:
        execution = resolve_execution(session, Marks(delivery=delivery), sent_at)
        targets = TARGETS[:link_count] + [f"https://shop.example/more/{i}" for i in range(len(TARGETS), link_count)]
        specs = [LinkSpec("html", url, url, None, f"link {i}", i) for i, url in enumerate(targets)]
        tracked = ensure_tracked_urls(session, execution, [*specs, links.trap_link_spec()])
        recipient = get_recipient(session, address)
        message = Message(
            execution_id=execution.id, recipient_id=recipient.id, status=MessageStatus.SENT,
            created_at=sent_at, sent_at=sent_at,
        )
        session.add(message)
        session.flush()
        ids = [tracked[("html", url)].id for url in targets]
        trap = tracked[("html", links.TRAP_LINK_NAME)].id
        return Sent(message.id, recipient.id, ids, trap)
