"""One accepted SMTP transaction through the relay's stages: decide, record, render.

:meth:`MessageProcessor.prepare` runs them in order and returns the copies to spool, as
:class:`~smtp_relay.spool.SpoolEntry` objects that the spool stores and the deliverer sends.
Blocking code (CPU for the rendering, the database for the recording); the handler runs it in a
thread so the event loop keeps serving other clients.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from hotclicks import links
from hotclicks.db.models import utcnow
from hotclicks.tokens import TokenSigner

from .config import RelayConfig
from .decide import DkimPolicy, LinkOptions, Tracked, decide, storable
from .dkim import DkimSigner
from .incidents import COUNTER_UNTRACKED, INCIDENT_UNPARSED, Incident
from .recorder import Recorded, RecordedRow, Recorder
from .render import CopyMaker, CopyRenderer, Draft
from .spool import SpoolEntry, new_id

__all__ = ["MessageProcessor", "Prepared"]

log = logging.getLogger("smtp_relay")


@dataclass
class Prepared:
    """What a transaction became: the copies to spool and what to record without hurry."""

    copies: list[SpoolEntry]
    #: Broad log rows written for it (to take back if the copies cannot be spooled).
    message_ids: list[int] = field(default_factory=list)
    incidents: list[Incident] = field(default_factory=list)
    counters: list[str] = field(default_factory=list)
    suppressed: list[str] = field(default_factory=list)


class MessageProcessor:
    """Decides what a transaction becomes, records it, and renders one copy per recipient."""

    def __init__(
        self,
        config: RelayConfig,
        sessions: sessionmaker[Session],
        signer: TokenSigner,
        clock: Callable[[], dt.datetime] = utcnow,
        dkim_signer: DkimSigner | None = None,
        renderer: CopyRenderer | None = None,
    ) -> None:
        self.config = config
        self.recorder = Recorder(config, sessions, clock)
        self._dkim_policy = DkimPolicy(resign=dkim_signer is not None, strip=config.dkim_signed == "strip")
        self._keep_unsubscribe = config.list_unsubscribe == "keep"
        self._link_options = LinkOptions(
            frozenset(config.personal_params), frozenset(config.excluded_domains), (config.tracking_base + "/",)
        )
        self.renderer = renderer or CopyRenderer(
            CopyMaker(
                config.secret_key, config.fallback_keys, config.base_url, config.open_pixel, self._link_options, dkim_signer,
                config.trap_link,
            ),
            config.rewrite_workers,
        )

    def prepare(self, mail_from: str, recipients: Sequence[str], raw: bytes, mail_options: Sequence[str] = ()) -> Prepared:
        """The copies to spool for a transaction; blocking, run it in a thread."""
        recipients = list(recipients)
        decision = decide(
            mail_from, recipients, raw, self._dkim_policy, self._link_options, keep_unsubscribe=self._keep_unsubscribe
        )
        if not isinstance(decision, Tracked):
            copy = _entry(mail_from, mail_options, recipients, decision.data, note=decision.note, delivery=decision.delivery)
            return Prepared([copy], incidents=decision.incidents, counters=[COUNTER_UNTRACKED])
        recorded = self._record(decision, recipients)
        message_ids = [row.message_id for row in recorded.rows]
        try:
            draft = Draft(decision.data, decision.parsed, decision.scanned, decision.list_unsubscribe, decision.mailto)
            sent = [row for row in recorded.rows if not row.suppressed]
            targets = {key: (url.id, url.url) for key, url in recorded.tracked.items()}
            rendered = self.renderer.render(draft, [row.message_id for row in sent], targets)
        except Exception:
            # The rows are committed; a transaction answered 451 must leave none behind.
            try:
                self.forget(message_ids)
            except SQLAlchemyError:
                log.exception("could not take back the rows of a refused message")
            raise
        copies: list[tuple[RecordedRow, bytes, str | None]] = []
        incidents: list[Incident] = []
        for row, (data, error) in zip(sent, rendered):
            note = None
            if decision.parsed is None:
                note = "links not rewritten: the message could not be parsed"
            elif error is not None:
                log.warning("message %s: forwarding without rewriting links: %s", row.message_id, error)
                note = f"links not rewritten: {error}"
                incidents.append(
                    Incident(INCIDENT_UNPARSED, note, mail_from, [row.address], row.message_id, decision.message_id_header)
                )
            copies.append((row, data, note))
        accepted_at = utcnow().isoformat()
        entries = [
            _entry(
                mail_from, mail_options, [row.address], data, accepted_at,
                message_id=row.message_id, note=note, delivery=decision.marks.delivery, execution_id=recorded.execution_id,
            )
            for row, data, note in copies
        ]
        return Prepared(
            entries,
            incidents=incidents,
            message_ids=message_ids,
            suppressed=[row.address for row in recorded.rows if row.suppressed],
        )

    def _record(self, decision: Tracked, recipients: list[str]) -> Recorded:
        scanned = decision.scanned or []
        specs = [spec for s in scanned for spec in s.specs]
        if self.config.trap_link and any(s.name == "html" for s in scanned):
            specs.append(links.trap_link_spec("html"))
        sample_html = next((storable(s.part.text) for s in scanned if s.name == "html"), None)
        sample_text = next((storable(s.part.text) for s in scanned if s.name == "text"), None)
        return self.recorder.write_transaction(
            decision.marks, recipients, specs, (sample_html, sample_text), decision.message_id_header, decision.incidents
        )

    def forget(self, message_ids: Sequence[int]) -> None:
        """Take back the broad log rows of a transaction that was refused after all (451)."""
        self.recorder.forget(message_ids)


def _entry(
    mail_from: str, mail_options: Sequence[str], recipients: list[str], data: bytes, accepted_at: str | None = None, **bookkeeping: Any
) -> SpoolEntry:
    """A copy to spool, accepted now unless ``accepted_at`` says when."""
    return SpoolEntry(
        id=new_id(),
        mail_from=mail_from,
        recipients=recipients,
        accepted_at=accepted_at or utcnow().isoformat(),
        mail_options=list(mail_options),
        data=data,
        **bookkeeping,
    )
