"""Telling people from machines: the bot rules as plain functions over plain values.

Link scanners (Microsoft Safe Links, Proofpoint, Mimecast, Barracuda), Apple's image proxy and
prefetchers follow the links and load the pixels of mail nobody has read yet. Their events are
kept, flagged ``is_machine`` with a reason, and left out of every figure by default. Gmail's and
Yahoo's image proxies load the pixel when the person opens the message: people's opens.

Three kinds of rule:

- **request rules** (:func:`request_reason`) look at the request alone: its method, its prefetch
  headers, its user agent; with the client's network (a :class:`ClickFact`'s or
  :class:`OpenFact`'s ``network_kind``) they make a click's or an open's own verdict
  (:func:`judge_open`);
- **message rules** (:func:`judge_message`) re-judge all the clicks of one message each time one
  arrives: a trap click, every visible link clicked, several links faster than a person reads,
  too soon after delivery. More events can turn a people's click into a machine's, never back;
- **fleet rules** (:func:`fleet_keys`) look across messages: one client clicking many recipients'
  messages just after their delivery.

Nothing here does I/O or reads settings: :class:`BotRules` carries them.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from . import networks

__all__ = [
    "APPLE_MPP_AGENT",
    "DEFAULT_RULES",
    "HUMAN",
    "IMAGE_PROXY_AGENTS",
    "KNOWN_AGENTS",
    "BotRules",
    "ClickFact",
    "FleetRow",
    "OpenFact",
    "Verdict",
    "fleet_keys",
    "fleet_window",
    "is_fleet",
    "judge_message",
    "judge_open",
    "may_be_fleet",
    "message_window",
    "request_reason",
]

#: Reasons recorded in ``machine_reason`` (the part before any ``:``).
REASON_HEAD = "head"
REASON_PREFETCH = "prefetch"
REASON_AGENT = "agent"  #: followed by ``:<name of the scanner or proxy>``
REASON_TOO_SOON = "too-soon-after-delivery"
REASON_BURST = "burst"
REASON_TRAP = "trap-link"
REASON_TRAP_BURST = "trap-burst"
REASON_NETWORK = "network"  #: followed by ``:<name of the network list>``
REASON_SWEEP = "sweep"
REASON_ALL_LINKS = "all-links"
REASON_UNREAD = "before-any-reader"
REASON_FLEET = "fleet"
REASON_APPLE_MPP = "apple-mpp"
#: Not a machine's: a people's open made through an image proxy (``Verdict(False, "proxy")``).
REASON_PROXY = "proxy"

#: Kinds of network list the rules know, as :mod:`hotclicks.networks` declares them.
NETWORK_SCANNER = networks.KIND_SCANNER
NETWORK_IMAGE_PROXY = networks.KIND_IMAGE_PROXY
NETWORK_APPLE_RELAY = networks.KIND_APPLE_RELAY


#: Known scanners and proxies, as (name, regular expression over the user agent). Checked in
#: order, case-insensitively; the name goes in the recorded reason (``agent:proofpoint``).
KNOWN_AGENTS: tuple[tuple[str, str], ...] = (
    ("microsoft-safe-links", r"safelinks|safe links|microsoft office existence|bingpreview|ms-office|msoffice"),
    ("proofpoint", r"proofpoint|urldefense"),
    ("mimecast", r"mimecast"),
    ("barracuda", r"barracuda"),
    ("symantec", r"symantec|messagelabs"),
    ("trend-micro", r"trendmicro|trend micro"),
    ("cisco-ironport", r"ironport"),
    ("sophos", r"sophos"),
    ("fortinet", r"fortiguard|fortimail"),
    ("generic-bot", r"\b(bot|crawler|spider|scanner|preview|headlesschrome|python-requests|curl|wget|go-http-client|java/|okhttp|libwww)\b"),
)

#: Image proxies that fetch a message's images when the person opens it: a people's open, seen
#: through a proxy. They follow no links, so a *click* with their agent is a machine's.
IMAGE_PROXY_AGENTS: tuple[tuple[str, str], ...] = (
    ("google-image-proxy", r"googleimageproxy|via ggpht\.com"),
    ("yahoo-mail-proxy", r"yahoomailproxy"),
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
    """The settings of the bot rules (``HOTCLICKS_BOT_*`` in the Flask extension).

    A number of seconds of 0 turns its rule off. The defaults hold for any scanner rather than
    fit one set of traffic: each says what a person cannot do, or does not do.
    """

    #: A click this many seconds or less after the message was delivered is a scanner's: nobody
    #: sees, opens and clicks a message that fast; gateways check links as the mail passes.
    delivery_seconds: float = 5.0
    #: Clicks on ``burst_links`` different links of one message within this many seconds are a
    #: scanner's: a person needs at least a second to aim at a second link, even into a tab.
    burst_seconds: float = 1.0
    burst_links: int = 2
    #: Clicks on ``sweep_links`` different links of one message within this many seconds are a
    #: scanner's, however it spaces them: people click one or two links of a message; four
    #: different ones in 20 s (5 s a link, to read each, aim and come back) is a checker's sweep.
    sweep_seconds: float = 20.0
    sweep_links: int = 4
    #: Every visible link of a message of at least ``all_links_min`` links clicked within this
    #: many seconds: all of them are a scanner's. Scanners follow every link; a person who clicks
    #: each one of three or more (the footer and the "view online" link among them) within a
    #: minute is not reading. Below three links, one person may well click them all.
    all_links_seconds: float = 60.0
    all_links_min: int = 3
    #: A click on the trap link marks the message's clicks this many seconds either side of it:
    #: a scanner's other requests of the same pass.
    trap_seconds: float = 10.0
    #: A click this many seconds or less after delivery, with no people's open of the message
    #: before it, is a machine's. Off (0) by default: people who read with images off (many
    #: companies' default) never open, and would be flagged when they read mail as it comes.
    unread_seconds: float = 0.0
    #: A client (its stored network prefix) that clicked the messages of ``fleet_recipients``
    #: recipients or more, each within ``fleet_delivery_seconds`` of that message's delivery, is a
    #: fleet: one scanner in front of many mailboxes. Five: one office rarely has five people
    #: reading a message within two minutes of its arrival.
    fleet_recipients: int = 5
    fleet_delivery_seconds: float = 120.0
    #: ... and only if those early recipients are at least this share of all the recipients the
    #: client clicked for: people behind a company's NAT click at their own pace, most of them
    #: long after delivery, so their early share stays low; a scanner's is all early. 0 turns
    #: the fleet rule off.
    fleet_share: float = 0.8
    #: How far back the fleet rule looks at a client's clicks (:func:`fleet_window`): a day shows
    #: a company's people at their own pace after the first early ones.
    fleet_history_seconds: float = 86400.0
    #: More user agent patterns (regular expressions, case-insensitive) to count as machines.
    extra_agents: tuple[str, ...] = ()
    #: Count Apple Mail Privacy Protection's opens as machine opens.
    apple_mpp_opens: bool = True
    _agents: tuple[tuple[str, re.Pattern[str]], ...] = field(init=False, repr=False, compare=False)
    _proxies: tuple[tuple[str, re.Pattern[str]], ...] = field(init=False, repr=False, compare=False)
    _cache: dict[str, str | None] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        agents = [(name, re.compile(pattern, re.I)) for name, pattern in KNOWN_AGENTS]
        agents += [("custom", re.compile(pattern, re.I)) for pattern in self.extra_agents]
        object.__setattr__(self, "_agents", tuple(agents))
        object.__setattr__(self, "_proxies", tuple((n, re.compile(p, re.I)) for n, p in IMAGE_PROXY_AGENTS))
        object.__setattr__(self, "_cache", {})

    def agent_name(self, user_agent: str | None) -> str | None:
        """The name of the known scanner ``user_agent`` belongs to, if any (image proxies aside:
        :meth:`image_proxy_name`)."""
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

    def image_proxy_name(self, user_agent: str | None) -> str | None:
        """The name of the image proxy ``user_agent`` belongs to, if any."""
        if user_agent:
            for name, pattern in self._proxies:
                if pattern.search(user_agent):
                    return name
        return None


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
    the exact header names. For an open (``is_open``), an image proxy's agent is no reason:
    :func:`judge_open` tells a people's open through Gmail's proxy from Apple's prefetch.
    """
    if method.upper() == "HEAD":
        return REASON_HEAD
    for name, value in PREFETCH_HEADERS:
        seen = headers.get(name)
        if seen and value in seen.lower():
            return REASON_PREFETCH
    agent = rules.agent_name(user_agent)
    if agent is None and not is_open:
        agent = rules.image_proxy_name(user_agent)  # an image proxy follows no links
    if agent is not None:
        return f"{REASON_AGENT}:{agent}"
    return None


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether an event is a machine's, and why. A people's verdict may carry a reason too, a
    note that is no machine's: ``Verdict(False, "proxy")``, an open seen through an image proxy
    (stored as ``is_machine=False`` with that reason)."""

    is_machine: bool
    reason: str | None = None


HUMAN = Verdict(False)


def message_window(rules: BotRules = DEFAULT_RULES) -> dt.timedelta:
    """How far either side of new clicks :func:`judge_message` looks: the caller fetches the
    message's clicks within it (every message rule is a rule of nearby clicks)."""
    return dt.timedelta(
        seconds=max(rules.burst_seconds, rules.sweep_seconds, rules.all_links_seconds, rules.trap_seconds, 0)
    )


# -- facts and judges of the message rules -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClickFact:
    """One click of a message, as the message rules need it."""

    tracked_url_id: int
    at: dt.datetime
    #: :func:`request_reason`'s answer for the click's request.
    request_reason: str | None = None
    #: The network list the client's address is in (:mod:`hotclicks.networks`), and its kind.
    network: str | None = None
    network_kind: str | None = None
    #: The tracked URL is the hidden trap link.
    is_trap: bool = False


@dataclass(frozen=True, slots=True)
class OpenFact:
    """One open of a message's pixel."""

    at: dt.datetime
    user_agent: str | None = None
    #: :func:`request_reason`'s answer for the open's request (``is_open=True``).
    request_reason: str | None = None
    network: str | None = None
    network_kind: str | None = None


def judge_open(fact: OpenFact, rules: BotRules = DEFAULT_RULES) -> Verdict:
    """Whether an open is a machine's. Gmail's and Yahoo's proxies fetch images when the person
    opens the message: a people's open, noted ``proxy``. Apple's proxy fetches every message as
    it arrives, read or not: a machine's (``apple-mpp``)."""
    if fact.request_reason is not None:
        return Verdict(True, fact.request_reason)
    if fact.network_kind == NETWORK_SCANNER:
        return Verdict(True, f"{REASON_NETWORK}:{fact.network}")
    if (fact.user_agent or "").strip() == APPLE_MPP_AGENT:
        return Verdict(True, REASON_APPLE_MPP) if rules.apple_mpp_opens else Verdict(False, REASON_PROXY)
    if fact.network_kind == NETWORK_IMAGE_PROXY or rules.image_proxy_name(fact.user_agent) is not None:
        return Verdict(False, REASON_PROXY)
    return HUMAN


def _own_reason(
    click: ClickFact, delivered_at: dt.datetime | None, readers: Sequence[dt.datetime], rules: BotRules
) -> str | None:
    """Why one click is a machine's by itself: its request, its network, its time."""
    if click.is_trap:
        return REASON_TRAP
    if click.request_reason is not None:
        return click.request_reason
    if click.network_kind == NETWORK_SCANNER:
        return f"{REASON_NETWORK}:{click.network}"
    if delivered_at is not None:
        after = (click.at - delivered_at).total_seconds()
        if rules.delivery_seconds > 0 and after <= rules.delivery_seconds:
            return REASON_TOO_SOON
        if rules.unread_seconds > 0 and after <= rules.unread_seconds and not any(r <= click.at for r in readers):
            return REASON_UNREAD
    return None


def _spans(clicks: list[tuple[dt.datetime, int, int]], seconds: float, links: int) -> set[int]:
    """The indexes of ``clicks`` (time, link, index; sorted by time) within any span of
    ``seconds`` that holds ``links`` different links or more."""
    found: set[int] = set()
    if seconds <= 0 or links < 1:
        return found
    window = dt.timedelta(seconds=seconds)
    start = 0
    for end in range(len(clicks)):
        while clicks[end][0] - clicks[start][0] > window:
            start += 1
        span = clicks[start : end + 1]
        if len({link for _, link, _ in span}) >= links:
            found.update(index for _, _, index in span)
    return found


def judge_message(
    clicks: Sequence[ClickFact],
    *,
    delivered_at: dt.datetime | None,
    visible_links: int,
    opens: Sequence[OpenFact] = (),
    rules: BotRules = DEFAULT_RULES,
) -> list[Verdict]:
    """One verdict for each of a message's clicks known so far, in their order.

    Judge them again whenever one arrives and store the verdicts that changed. Facts only add
    up: a span of clicks only gains links, so a people's click may turn machine as later clicks
    arrive, and a machine's never turns back (only :attr:`BotRules.unread_seconds`, off by
    default, can: an open recorded late may show a reader was there first).

    The rules that judge a click by the company it keeps (trap, burst, sweep, all links) only
    group clicks from the same network list (unnamed networks together), and leave out clicks
    whose request names another program (an agent, a prefetch): Safe Links fetching a link from
    Microsoft's network a moment before the person's browser makes the scanner's click a
    machine's (``network:<name>``) and never the person's.
    """
    readers = [o.at for o in opens if not judge_open(o, rules).is_machine]
    reasons: list[str | None] = [_own_reason(c, delivered_at, readers, rules) for c in clicks]
    groups: dict[str | None, list[int]] = defaultdict(list)
    for index, click in enumerate(clicks):
        if click.request_reason is None:
            groups[click.network].append(index)
    trap_window = dt.timedelta(seconds=rules.trap_seconds)
    for members in groups.values():
        traps = [clicks[i].at for i in members if clicks[i].is_trap]
        links = sorted((clicks[i].at, clicks[i].tracked_url_id, i) for i in members if not clicks[i].is_trap)
        marks = [
            ({i for i in members if any(abs(clicks[i].at - t) <= trap_window for t in traps)}, REASON_TRAP_BURST),
            (_spans(links, rules.burst_seconds, max(rules.burst_links, 2)), REASON_BURST),
            (_spans(links, rules.sweep_seconds, max(rules.sweep_links, 2)), REASON_SWEEP),
        ]
        if visible_links >= max(rules.all_links_min, 2):
            marks.append((_spans(links, rules.all_links_seconds, visible_links), REASON_ALL_LINKS))
        for marked, reason in marks:
            for i in marked:
                if reasons[i] is None:
                    reasons[i] = reason
    return [HUMAN if reason is None else Verdict(True, reason) for reason in reasons]


# -- fleets: one client in front of many recipients ----------------------------------------------


@dataclass(frozen=True, slots=True)
class FleetRow:
    """One click as the fleet rule needs it: who clicked (the client's network prefix as stored,
    e.g. its anonymized /24), for which recipient, when, and when that message was delivered."""

    client: str
    recipient: int | str
    at: dt.datetime
    delivered_at: dt.datetime | None


#: Networks whose addresses are never a fleet: this machine, private networks and carrier-grade
#: NAT. Every click seen from one of them means a proxy in front of the app (set up ProxyFix) or
#: many people behind one carrier address, not a scanner.
_NOT_FLEETS = tuple(
    ipaddress.ip_network(n)
    for n in ("127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16",
              "::1/128", "fc00::/7", "fe80::/10")
)


@functools.lru_cache(maxsize=4096)
def may_be_fleet(client: str) -> bool:
    """Whether a client's stored address may be a fleet's: a public one (see ``_NOT_FLEETS``)."""
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return False
    return not any(address in network for network in _NOT_FLEETS if network.version == address.version)


def fleet_window(rules: BotRules = DEFAULT_RULES) -> dt.timedelta:
    """How far back the caller fetches a client's clicks for :func:`fleet_keys`."""
    return dt.timedelta(seconds=max(rules.fleet_history_seconds, rules.fleet_delivery_seconds, 0))


def _early(row: FleetRow, rules: BotRules) -> bool:
    return (
        row.delivered_at is not None
        and (row.at - row.delivered_at).total_seconds() <= rules.fleet_delivery_seconds
    )


def fleet_keys(rows: Iterable[FleetRow], rules: BotRules = DEFAULT_RULES) -> frozenset[str]:
    """The clients of ``rows`` that are fleets: ``fleet_recipients`` recipients or more clicked
    just after delivery, making ``fleet_share`` or more of all the recipients they clicked for.

    Unlike the message rules this may change back: a company's NAT whose first clicks are all
    early stops being a fleet as its people's later clicks arrive.
    """
    if rules.fleet_share <= 0 or rules.fleet_delivery_seconds <= 0 or rules.fleet_recipients < 1:
        return frozenset()
    early: dict[str, set[int | str]] = defaultdict(set)
    every: dict[str, set[int | str]] = defaultdict(set)
    for row in rows:
        every[row.client].add(row.recipient)
        if _early(row, rules):
            early[row.client].add(row.recipient)
    return frozenset(
        client
        for client, recipients in early.items()
        if len(recipients) >= rules.fleet_recipients and len(recipients) >= rules.fleet_share * len(every[client])
    )


def is_fleet(row: FleetRow, fleets: frozenset[str], rules: BotRules = DEFAULT_RULES) -> bool:
    """Whether ``row`` is a fleet's click: from a fleet, just after its message's delivery (the
    same client's later clicks, a NAT's people among them, count)."""
    return row.client in fleets and _early(row, rules)
