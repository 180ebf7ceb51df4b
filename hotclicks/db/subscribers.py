"""Subscribers' choices: opt-outs (unsubscribe, resubscribe) and the tracking opt-out."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from .models import Message, OptOut, Recipient, utcnow

__all__ = [
    "OPT_OUT_SOURCES",
    "active_opt_out",
    "is_unsubscribed",
    "message_recipient",
    "resubscribe",
    "set_tracking_opt_out",
    "unsubscribe",
]

#: OptOut.source values.
OPT_OUT_SOURCES = ("link", "one-click", "api")


def message_recipient(session: Session, message_id: int) -> Recipient | None:
    return session.scalars(
        select(Recipient).join(Message, Message.recipient_id == Recipient.id).where(Message.id == message_id)
    ).first()


def active_opt_out(session: Session, recipient_id: int) -> OptOut | None:
    return session.scalars(
        select(OptOut)
        .where(OptOut.recipient_id == recipient_id, OptOut.cancelled_at.is_(None))
        .order_by(OptOut.id)
        .limit(1)
    ).first()


def is_unsubscribed(session: Session, recipient_id: int) -> bool:
    """Whether the recipient has an opt-out in force (the relay suppresses marketing mail)."""
    return active_opt_out(session, recipient_id) is not None


def unsubscribe(
    session: Session, recipient_id: int, *, message_id: int | None = None, source: str = "link"
) -> OptOut:
    """Unsubscribe a recipient (idempotent: an opt-out in force is returned as it is)."""
    if source not in OPT_OUT_SOURCES:
        raise ValueError(f"source must be one of {', '.join(OPT_OUT_SOURCES)}, not {source!r}")
    existing = active_opt_out(session, recipient_id)
    if existing is not None:
        return existing
    opt_out = OptOut(recipient_id=recipient_id, message_id=message_id, source=source, created_at=utcnow())
    session.add(opt_out)
    session.flush()
    return opt_out


def resubscribe(session: Session, recipient_id: int) -> int:
    """Cancel the recipient's opt-outs in force; how many there were."""
    result = session.execute(
        update(OptOut)
        .where(OptOut.recipient_id == recipient_id, OptOut.cancelled_at.is_(None))
        .values(cancelled_at=utcnow())
    )
    return result.rowcount or 0


def set_tracking_opt_out(session: Session, recipient_id: int, opted_out: bool = True) -> None:
    """Stop (or resume) tracking a recipient: their later clicks count anonymously."""
    session.execute(update(Recipient).where(Recipient.id == recipient_id).values(tracking_opt_out=opted_out))
