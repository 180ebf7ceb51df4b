"""Turning one accepted SMTP transaction into the copies to forward: the relay's real work.

This is blocking code (CPU for the rewriting, the database for the bookkeeping); the handler runs
it in a worker thread so the event loop keeps serving other clients.

A message the relay cannot understand is never dropped: it goes on unchanged and the reason is
logged (and, once it is tracked, recorded on its message rows).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from hotclicks import rewrite
from hotclicks.errors import MimeError
from hotclicks.executions import HEADERS, MarkError, Marks, read_marks
from hotclicks.mime import TextPart, edit_headers, read_headers, rewrite_message, text_parts
from hotclicks.models import Message, MessageStatus, TrackedUrl, utcnow
from hotclicks.store import (
    LinkSpec,
    ensure_tracked_urls,
    ensure_variant,
    get_recipient,
    resolve_execution,
    set_message_status,
    test_profile_for,
    variant_signature,
)
from hotclicks.tokens import Token, TokenKind, TokenSigner

from .config import RelayConfig

log = logging.getLogger("smtp_relay")

#: TrackedUrl.part for each rewritable MIME subtype.
PART_NAMES = {"html": "html", "plain": "text"}


@dataclass
class Outgoing:
    """One copy to forward: to whom, the exact bytes, and its broad log row (None if untracked)."""

    recipients: list[str]
    data: bytes
    message_id: int | None = None
    note: str | None = None


@dataclass(frozen=True)
class _ScannedPart:
    part: TextPart
    name: str
    links: list[rewrite.Link]


class MessageProcessor:
    """Resolves a message's execution, records it, and rewrites one copy per recipient."""

    def __init__(
        self,
        config: RelayConfig,
        sessions: sessionmaker[Session],
        signer: TokenSigner,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.config = config
        self.sessions = sessions
        self.signer = signer
        self.clock = clock
        self._link_options = {
            "personal_params": config.personal_params,
            "excluded_domains": config.excluded_domains,
            "tracked_prefixes": (config.tracking_base + "/",),
        }

    # -- the tracking URLs ---------------------------------------------------------------------

    def click_url(self, message_id: int, tracked: TrackedUrl, url: str) -> str:
        personal = None if url == tracked.url else url
        token = self.signer.sign(Token(TokenKind.CLICK, message_id, tracked.id, personal))
        return f"{self.config.tracking_base}/c/{token}"

    def open_url(self, message_id: int) -> str:
        return f"{self.config.tracking_base}/o/{self.signer.sign(Token(TokenKind.OPEN, message_id))}"

    # -- the work -----------------------------------------------------------------------------

    def prepare(self, mail_from: str, recipients: Sequence[str], raw: bytes) -> list[Outgoing]:
        """The copies to forward for a transaction; blocking, run it in a thread."""
        recipients = list(recipients)
        try:
            headers = read_headers(raw)
            marks = read_marks(headers)
        except (MimeError, MarkError) as exc:
            log.warning("forwarding unchanged, untracked: %s", exc)
            return [Outgoing(recipients, raw, note=f"untracked: {exc}")]
        if marks is None:
            return [Outgoing(recipients, raw, note="untracked: no X-HotClicks-Delivery")]
        stripped = edit_headers(raw, remove=HEADERS)
        try:
            scanned = self._scan(stripped)
        except MimeError as exc:
            log.warning("delivery %s: forwarding unchanged, not rewritten: %s", marks.delivery, exc)
            return [Outgoing(recipients, stripped, note=f"not rewritten: {exc}")]
        message_ids = self._record(marks, recipients, scanned, headers.get("Message-ID"))
        copies = []
        for address, (message_id, tracked) in zip(recipients, message_ids):
            try:
                data = self._rewrite(stripped, scanned, message_id, tracked)
                note = None
            except MimeError as exc:
                log.warning("message %s: forwarding unchanged, not rewritten: %s", message_id, exc)
                data, note = stripped, f"not rewritten: {exc}"
            copies.append(Outgoing([address], data, message_id, note))
        return copies

    def _scan(self, raw: bytes) -> list[_ScannedPart]:
        scanned = []
        for part in text_parts(raw):
            if part.subtype == "html":
                links = rewrite.find_html_links(part.text, **self._link_options)
            else:
                links = rewrite.find_text_links(part.text, **self._link_options)
            scanned.append(_ScannedPart(part, PART_NAMES[part.subtype], links))
        return scanned

    def _record(
        self,
        marks: Marks,
        recipients: list[str],
        scanned: list[_ScannedPart],
        message_id_header: str | None,
    ) -> list[tuple[int, dict[tuple[str, str], TrackedUrl]]]:
        specs = [
            LinkSpec(
                part=s.name,
                key=link.key,
                url=rewrite.canonical_url(link.url, self.config.personal_params),
                name=link.name,
                label=link.label,
                position=link.index,
            )
            for s in scanned
            for link in s.links
        ]
        sample_html = next((s.part.text for s in scanned if s.name == "html"), None)
        sample_text = next((s.part.text for s in scanned if s.name == "text"), None)
        now = self.clock()
        with self.sessions.begin() as session:
            execution = resolve_execution(
                session,
                marks,
                now,
                period=self.config.transactional_period,
                quiet_gap=self.config.quiet_gap,
            )
            tracked = ensure_tracked_urls(session, execution, specs)
            signature = variant_signature(specs)
            rows = []
            for address in recipients:
                recipient = get_recipient(session, address, marks.recipient_id)
                variant = ensure_variant(
                    session,
                    execution,
                    signature,
                    html=sample_html,
                    text=sample_text,
                    test_profile=test_profile_for(session, address),
                )
                message = Message(
                    execution_id=execution.id,
                    recipient_id=recipient.id,
                    variant_id=variant.id,
                    status=MessageStatus.QUEUED,
                    message_id_header=(message_id_header or "")[:998] or None,
                    created_at=now,
                )
                session.add(message)
                rows.append(message)
            session.flush()
            return [(message.id, tracked) for message in rows]

    def _rewrite(
        self,
        raw: bytes,
        scanned: list[_ScannedPart],
        message_id: int,
        tracked: dict[tuple[str, str], TrackedUrl],
    ) -> bytes:
        by_index = {s.part.index: s for s in scanned}
        pixel = self.open_url(message_id) if self.config.open_pixel else None

        def transform(part: TextPart) -> str | None:
            s = by_index[part.index]
            hrefs = {
                link.index: self.click_url(message_id, tracked[(s.name, link.key)], link.url)
                for link in s.links
            }
            if s.name == "html":
                return rewrite.rewrite_html(part.text, hrefs, pixel_url=pixel, **self._link_options)
            if not hrefs:
                return None
            return rewrite.rewrite_text(part.text, hrefs, **self._link_options)

        return rewrite_message(raw, transform)

    def record_outcome(self, outgoing: Outgoing, status: MessageStatus, reply: str | None) -> None:
        """Write where a copy stands after forwarding; blocking, run it in a thread."""
        if outgoing.message_id is None:
            return
        with self.sessions.begin() as session:
            set_message_status(session, outgoing.message_id, status, reply or outgoing.note)
