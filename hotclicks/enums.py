"""The enumerations the pure core and the database share.

They live here, not beside the models, so the pure modules (execution rules, sender headers) can
use them without importing SQLAlchemy; the model module imports them for its columns.
"""

from __future__ import annotations

import enum

__all__ = ["DeliveryType", "MessageStatus"]


class DeliveryType(str, enum.Enum):
    """How a delivery is cut into executions (PRODUCT.md, "Words")."""

    ONE_OFF = "one-off"
    RECURRING = "recurring"
    TRANSACTIONAL = "transactional"


class MessageStatus(str, enum.Enum):
    """Where one recipient's copy stands: the broad log's status column."""

    QUEUED = "queued"
    SENT = "sent"
    DEFERRED = "deferred"
    FAILED = "failed"
    SUPPRESSED = "suppressed"
