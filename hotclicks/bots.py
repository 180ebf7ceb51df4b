"""Telling people from machines: the bot rules as plain functions over plain values.

Link scanners (Microsoft Safe Links, Proofpoint, Mimecast, Barracuda), image proxies and
prefetchers follow the links and load the pixels of mail nobody has read yet. Their events are
kept, flagged ``is_machine`` with a reason, and left out of every figure by default.

Two kinds of rule:

- **request rules** (:func:`request_reason`) look at the request alone: its method, its prefetch
  headers, its user agent;
- **history rules** (:func:`classify_click`) also need what the database knows: how long ago the
  message was delivered, and the other clicks of the same message in the last moments (several
  links clicked within a second, or a click on the hidden trap link the relay may add).

Nothing here does I/O or reads settings: :class:`BotRules` carries them.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

#: Reasons recorded in ``machine_reason`` (the part before any ``:``).
REASON_HEAD = "head"
REASON_PREFETCH = "prefetch"
REASON_AGENT = "agent"  #: followed by ``:<name of the scanner or proxy>``
REASON_TOO_SOON = "too-soon-after-delivery"
REASON_BURST = "burst"
REASON_TRAP = "trap-link"
REASON_TRAP_BURST = "trap-burst"

#: Known scanners and proxies, as (name, regular expression over the user agent). Checked in
#: order, case-insensitively; the name goes in the recorded reason (``agent:proofpoint``).
KNOWN_AGENTS: tuple[tuple[str, str], ...] = (
    ("microsoft-safe-links", r"safelinks|safe links|microsoft office existence|bingpreview|ms-office|msoffice"),
    ("proofpoint", r"proofpoint|urldefense"),
    ("mimecast", r"mimecast"),
    ("barracuda", r"barracuda"),
    ("google-image-proxy", r"googleimageproxy|via ggpht\.com"),
    ("yahoo-mail-proxy", r"yahoomailproxy"),
    ("symantec", r"symantec|messagelabs"),
    ("trend-micro", r"trendmicro|trend micro"),
    ("cisco-ironport", r"ironport"),
    ("sophos", r"sophos"),
    ("fortinet", r"fortiguard|fortimail"),
    ("generic-bot", r"\b(bot|crawler|spider|scanner|preview|headlesschrome|python-requests|curl|wget|go-http-client|java/|okhttp|libwww)\b"),
)

#: Apple Mail Privacy Protection loads every image of a message through a proxy that says
#: only this, whether or not anyone reads the message: such an *open* proves nothing.
APPLE_MPP_AGENT = "Mozilla/5.0"

#: Request headers by which browsers and mail clients announce a prefetch, with the values
#: that mean one.
PREFETCH_HEADERS: tuple[tuple[str, str], ...] = (
    ("Purpose", "prefetch"),
    ("Sec-Purpose", "prefetch"),
    ("X-Purpose", "preview"),
    ("X-Purpose", "prefetch"),
    ("X-Moz", "prefetch"),
)

#: User agents whose verdict is remembered, per set of rules.
_AGENT_CACHE_SIZE = 4096

#: Name, link key and target of the hidden trap link (see :mod:`hotclicks.links`).
TRAP_LINK_NAME = "hotclicks:trap"


@dataclass(frozen=True)
class BotRules:
    """The settings of the bot rules (``HOTCLICKS_BOT_*`` in the Flask extension)."""

    #: A click this many seconds or less after the message was delivered is a scanner's; 0 turns
    #: the rule off.
    delivery_seconds: float = 5.0
    #: Clicks on ``burst_links`` different links of one message within this many seconds are a
    #: scanner's; 0 turns the rule off.
    burst_seconds: float = 1.0
    burst_links: int = 2
    #: A click on the trap link marks the message's clicks this many seconds either side of it.
    trap_seconds: float = 10.0
    #: More user agent patterns (regular expressions, case-insensitive) to count as machines.
    extra_agents: tuple[str, ...] = ()
    #: Count Apple Mail Privacy Protection's opens as machine opens.
    apple_mpp_opens: bool = True
    _agents: tuple[tuple[str, re.Pattern[str]], ...] = field(init=False, repr=False, compare=False)
    _cache: dict[str, str | None] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        agents = [(name, re.compile(pattern, re.I)) for name, pattern in KNOWN_AGENTS]
        agents += [("custom", re.compile(pattern, re.I)) for pattern in self.extra_agents]
        object.__setattr__(self, "_agents", tuple(agents))
        object.__setattr__(self, "_cache", {})

    def agent_name(self, user_agent: str | None) -> str | None:
        """The name of the known scanner or proxy ``user_agent`` belongs to, if any."""
        if not user_agent:
            return None
        cache = self._cache
        if user_agent in cache:
            return cache[user_agent]
        found = None
        for name, pattern in self._agents:
            if pattern.search(user_agent):
                found = name
                break
        if len(cache) >= _AGENT_CACHE_SIZE:
            cache.clear()  # a few distinct agents make most traffic: refilling is cheap
        cache[user_agent] = found
        return found


DEFAULT_RULES = BotRules()


def request_reason(
    method: str,
    headers: Mapping[str, str],
    user_agent: str | None,
    rules: BotRules = DEFAULT_RULES,
    *,
    is_open: bool = False,
) -> str | None:
    """Why a request is a machine's from the request alone, or None.

    ``headers`` needs a case-insensitive ``get`` (werkzeug's ``Headers``, ``email.message``), or
    the exact header names.
    """
    if method.upper() == "HEAD":
        return REASON_HEAD
    for name, value in PREFETCH_HEADERS:
        seen = headers.get(name)
        if seen and value in seen.lower():
            return REASON_PREFETCH
    agent = rules.agent_name(user_agent)
    if agent is not None:
        return f"{REASON_AGENT}:{agent}"
    if is_open and rules.apple_mpp_opens and (user_agent or "").strip() == APPLE_MPP_AGENT:
        return f"{REASON_AGENT}:apple-mail-privacy-protection"
    return None


@dataclass(frozen=True, slots=True)
class RecentClick:
    """A click of the same message shortly before (or in the same batch as) the one judged."""

    tracked_url_id: int
    at: dt.datetime
    is_trap: bool = False


@dataclass(frozen=True, slots=True)
class Verdict:
    is_machine: bool
    reason: str | None = None


HUMAN = Verdict(False)


def classify_click(
    *,
    at: dt.datetime,
    tracked_url_id: int,
    request: str | None,
    delivered_at: dt.datetime | None,
    recent: Iterable[RecentClick] = (),
    is_trap: bool = False,
    rules: BotRules = DEFAULT_RULES,
) -> Verdict:
    """Whether a click at ``at`` is a machine's, and why.

    ``request`` is :func:`request_reason`'s answer; ``recent`` the message's other clicks close
    to ``at`` (any order, this one excluded).
    """
    if is_trap:
        return Verdict(True, REASON_TRAP)
    if request is not None:
        return Verdict(True, request)
    if (
        rules.delivery_seconds > 0
        and delivered_at is not None
        and (at - delivered_at).total_seconds() <= rules.delivery_seconds
    ):
        return Verdict(True, REASON_TOO_SOON)
    recent = list(recent)
    trap_window = dt.timedelta(seconds=rules.trap_seconds)
    if any(c.is_trap and abs(c.at - at) <= trap_window for c in recent):
        return Verdict(True, REASON_TRAP_BURST)
    if rules.burst_seconds > 0:
        window = dt.timedelta(seconds=rules.burst_seconds)
        near = [c for c in recent if abs(c.at - at) <= window]
        links = {c.tracked_url_id for c in near} | {tracked_url_id}
        if rules.burst_links > 1 and len(links) >= rules.burst_links:
            return Verdict(True, REASON_BURST)
    return HUMAN


def classify_open(*, request: str | None) -> Verdict:
    """Whether an open is a machine's: only the request tells (scanners, proxies, prefetch)."""
    return Verdict(True, request) if request is not None else HUMAN


def history_window(rules: BotRules = DEFAULT_RULES) -> dt.timedelta:
    """How far back the history rules look: what the caller must fetch as ``recent``."""
    return dt.timedelta(seconds=max(rules.burst_seconds, rules.trap_seconds, 0))
