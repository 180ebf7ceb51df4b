"""What the relay records besides messages: incidents and daily counters.

Their names and shape are shared by the stages that meet them (deciding, rendering, delivering)
and the one that writes them (:mod:`.recorder`), so none of those imports another for them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "COUNTER_UNTRACKED",
    "INCIDENT_DKIM_KEPT",
    "INCIDENT_DKIM_RESIGNED",
    "INCIDENT_DKIM_STRIPPED",
    "INCIDENT_GIVEN_UP",
    "INCIDENT_MARKS_KEPT",
    "INCIDENT_UNPARSED",
    "Incident",
]

#: RelayCounter names.
COUNTER_UNTRACKED = "untracked"
#: RelayIncident kinds.
INCIDENT_UNPARSED = "forwarded-unchanged"
INCIDENT_DKIM_KEPT = "dkim-kept"
INCIDENT_DKIM_STRIPPED = "dkim-stripped"
INCIDENT_DKIM_RESIGNED = "dkim-resigned"
#: A message forwarded with its X-HotClicks-* fields: its DKIM signature covers them.
INCIDENT_MARKS_KEPT = "marks-kept"
INCIDENT_GIVEN_UP = "given-up"


@dataclass
class Incident:
    """Something the relay did that an operator should be able to find: one RelayIncident row."""

    kind: str
    reason: str
    mail_from: str | None = None
    recipients: Sequence[str] = ()
    message_id: int | None = None
    message_id_header: str | None = None
