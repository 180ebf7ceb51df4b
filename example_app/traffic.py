"""Who fetches a newsletter's links and pixel, and when: people and machines, each event labelled.

A pure model (no I/O, no clock, no Flask): given the recipients of one message, its visible links
and a seed, :func:`events` says every request their mailboxes will make to the click and open
routes, as offsets from the delivery, each labelled ``person`` or ``machine`` with the name of
the behaviour that made it. It is the yardstick of the bot rules (``bench/bots.py`` replays it
through the real routes and compares what they flagged with the labels), and the demo's
simulation can draw from the same behaviours.

The behaviours follow public descriptions of what mailboxes do:

- people open minutes to days after delivery (long-tailed), some click within a minute of
  delivery, tap a link twice, or click several links minutes apart; Gmail users' opens come
  through Google's image proxy; people behind Microsoft's Safe Links have each click checked by
  a Microsoft address a moment before their own request arrives;
- Apple Mail Privacy Protection loads every message's pixel at delivery, read or not, from
  Apple's relays with the bare user agent ``Mozilla/5.0``;
- mail security gateways (about 40 % of recipients here) fetch links at delivery, posing as a
  desktop Chrome or declaring themselves, spacing their requests or not, checking every link or
  one, with HEAD or GET, and some rescan hours later.

Addresses of people are documentation addresses (198.51.100.0/24, 2001:db8::/32); those of
named networks come from their published ranges (a subset of the shipped lists), so rules by
network can be measured too; gateways with no published list get other documentation addresses.
"""

from __future__ import annotations

import ipaddress
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

__all__ = [
    "BEHAVIOURS",
    "DEFAULT_WEIGHTS",
    "Event",
    "MACHINE",
    "NETWORKS",
    "PERSON",
    "Recipient",
    "TRAP",
    "events",
    "recipients_of",
]

PERSON = "person"
MACHINE = "machine"
#: The ``link`` of a request to the hidden trap link the relay adds to a message's HTML: a
#: scanner that follows every href of the HTML follows it too (it is the last one), a person never.
TRAP = "trap"

#: Every behaviour the model knows, with the label of the events it makes.
BEHAVIOURS: dict[str, str] = {
    "open": PERSON,  #: a person's mail client loads the pixel, minutes to days after delivery
    "gmail-open": PERSON,  #: a Gmail user opens: the pixel comes through GoogleImageProxy
    "click": PERSON,  #: one click on one link, a while after opening
    "quick-reader": PERSON,  #: opens and clicks within 20-60 s of delivery
    "double-tap": PERSON,  #: the same link clicked twice within a second
    "several-links": PERSON,  #: two or three links, minutes apart
    "safe-links-person": PERSON,  #: a person's click behind Safe Links (after Microsoft's check)
    "apple-mpp-open": MACHINE,  #: Apple Mail Privacy Protection loads the pixel at delivery
    "safe-links-check": MACHINE,  #: Safe Links' time-of-click check, a moment before the person
    "scan-at-delivery": MACHINE,  #: every link (and the pixel) within seconds, as desktop Chrome
    "scan-spaced": MACHINE,  #: every link as desktop Chrome, more than a second apart
    "scan-one-link": MACHINE,  #: one link only, seconds after delivery
    "scan-head": MACHINE,  #: HEAD on every link at delivery
    "scan-declared": MACHINE,  #: every link, the user agent naming the scanner
    "scan-delayed": MACHINE,  #: every link as desktop Chrome, hours after delivery
}

#: Published ranges of the named networks the machines (and Gmail's proxy) come from.
NETWORKS: dict[str, tuple[str, ...]] = {
    # Exchange Online Protection (Microsoft 365's published ranges, also its SPF record).
    "microsoft-eop": ("40.107.0.0/16", "52.100.0.0/14", "2a01:111:f403::/48"),
    # iCloud Private Relay egress (Apple's published egress-ip-ranges.csv), which MPP uses.
    "apple-relay": ("172.224.226.0/27", "2a02:26f7:b000:4000::/64"),
    # Google's image proxy for Gmail.
    "google-image-proxy": ("66.249.80.0/20", "66.102.0.0/20"),
    # Proofpoint, Mimecast, Barracuda: no published list of the addresses their link checks come
    # from was found, so none is shipped and their real addresses match no list. Documentation
    # addresses (RFC 5737, apart from the people's) stand in for them: they match no list either.
    "proofpoint": ("192.0.2.0/26",),
    "mimecast": ("192.0.2.64/26",),
    "barracuda": ("203.0.113.0/24",),
    # People: documentation addresses, no real network matters.
    "people": ("198.51.100.0/24", "2001:db8::/32"),
}

#: A person's browsers and mail clients.
_BROWSERS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0",
)
_MAIL_CLIENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Microsoft Outlook 16.0.17928; Pro",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:128.0) Gecko/20100101 Thunderbird/128.5.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
)
#: What a scanner posing as a person's desktop browser says: a real Chrome's user agent.
CHROME_AGENT = _BROWSERS[0]
GMAIL_PROXY_AGENT = "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
APPLE_MPP_AGENT = "Mozilla/5.0"
#: Scanners that say who they are, by gateway.
_DECLARED_AGENTS = {
    "proofpoint": "Mozilla/5.0 (compatible; Proofpoint URL Defense)",
    "mimecast": "Mimecast-LinkScanner/2.0",
    "barracuda": "Barracuda Sentinel (EE)",
}

#: How much each link draws the eye, by position: the first two are clearly more attractive.
DEFAULT_WEIGHTS = (9.0, 5.0, 1.4, 1.1, 0.9, 0.7, 0.5, 0.4)

#: Shares of recipients: behind a mail security gateway, and (the others) by mailbox.
P_GATEWAY = 0.40
P_GMAIL = 0.35
P_APPLE_MPP = 0.30
#: Gateways, for recipients behind one.
_GATEWAYS = (("microsoft-eop", 0.55), ("proofpoint", 0.20), ("mimecast", 0.15), ("barracuda", 0.10))
#: How likely a recipient is to open, and to click once opened.
P_OPEN = 0.50
P_CLICK = 0.40
#: How a clicker clicks.
_CLICKERS = (("click", 0.55), ("quick-reader", 0.10), ("double-tap", 0.10), ("several-links", 0.25))


@dataclass(frozen=True, slots=True)
class Event:
    """One request to the click route (``link`` set) or the open route (``link`` None)."""

    kind: str  #: "click" or "open"
    message: str  #: the recipient whose message it is
    link: str | None
    at: float  #: seconds after the message's delivery
    method: str
    headers: tuple[tuple[str, str], ...]  #: User-Agent included
    address: str  #: the client's address
    label: str  #: PERSON or MACHINE
    behaviour: str  #: a key of BEHAVIOURS


@dataclass(frozen=True, slots=True)
class Recipient:
    """What stands between a recipient and the sender: a gateway, a mailbox that proxies images."""

    address: str
    gateway: str | None  #: a key of NETWORKS, or None
    mailbox: str  #: "gmail", "apple-mpp" or "other"
    person_address: str
    browser: str
    mail_client: str


def _pick(rng: random.Random, choices: Sequence[tuple[str, float]]) -> str:
    return rng.choices([c for c, _ in choices], weights=[w for _, w in choices])[0]


def _address(rng: random.Random, network: str) -> str:
    """An address of ``network``: a random host of one of its ranges."""
    net = ipaddress.ip_network(rng.choice(NETWORKS[network]))
    span = min(net.num_addresses - 2, 2**32)
    return str(net.network_address + 1 + rng.randrange(max(span, 1)))


def _lognormal(rng: random.Random, median: float, sigma: float, low: float, high: float) -> float:
    return min(max(median * math.exp(rng.gauss(0.0, sigma)), low), high)


def recipients_of(addresses: Sequence[str], seed: int) -> list[Recipient]:
    """Each recipient's gateway and mailbox, drawn from ``seed`` alone."""
    rng = random.Random(f"recipients:{seed}")
    out = []
    for address in addresses:
        gateway = _pick(rng, _GATEWAYS) if rng.random() < P_GATEWAY else None
        if gateway is not None:
            mailbox = "other"  # a company's mailbox
        else:
            draw = rng.random()
            mailbox = "gmail" if draw < P_GMAIL else "apple-mpp" if draw < P_GMAIL + P_APPLE_MPP else "other"
        out.append(
            Recipient(address, gateway, mailbox, _address(rng, "people"), rng.choice(_BROWSERS), rng.choice(_MAIL_CLIENTS))
        )
    return out


def events(
    recipients: Sequence[str],
    links: Sequence[str],
    seed: int,
    *,
    weights: Sequence[float] | None = None,
    trap: bool = False,
) -> list[Event]:
    """Every labelled event for one message sent to each of ``recipients``, sorted by offset.

    ``weights`` says how much each of ``links`` draws people's clicks (:data:`DEFAULT_WEIGHTS`,
    repeated or cut to length, by default). With ``trap``, the message's HTML ends with the hidden
    trap link, and the scanners that fetch every link fetch it too (as :data:`TRAP`). The same
    arguments give the same events.
    """
    if not links:
        raise ValueError("a message needs at least one link")
    if weights is None:
        weights = [DEFAULT_WEIGHTS[min(i, len(DEFAULT_WEIGHTS) - 1)] for i in range(len(links))]
    if len(weights) != len(links):
        raise ValueError("one weight per link")
    out: list[Event] = []
    for recipient in recipients_of(recipients, seed):
        rng = random.Random(f"{seed}:{recipient.address}")
        out += _machines(rng, recipient, [*links, TRAP] if trap else links)
        out += _person(rng, recipient, links, weights)
    out.sort(key=lambda e: (e.at, e.message))
    return out


def _event(recipient: Recipient, kind: str, link: str | None, at: float, agent: str, address: str,
           behaviour: str, method: str = "GET") -> Event:
    return Event(kind, recipient.address, link, at, method, (("User-Agent", agent),), address,
                 BEHAVIOURS[behaviour], behaviour)


def _sweep(rng: random.Random, recipient: Recipient, links: Sequence[str], start: float, gap: tuple[float, float],
           agent: str, network: str, behaviour: str, method: str = "GET") -> Iterator[Event]:
    """A scanner fetching every link in turn, ``gap`` seconds apart, from one address."""
    address = _address(rng, network)
    at = start
    for link in links:
        yield _event(recipient, "click", link, at, agent, address, behaviour, method)
        at += rng.uniform(*gap)


def _visible(links: Sequence[str]) -> Sequence[str]:
    return [link for link in links if link != TRAP]


def _machines(rng: random.Random, recipient: Recipient, links: Sequence[str]) -> Iterator[Event]:
    if recipient.mailbox == "apple-mpp":
        # Every message, read or not, at delivery.
        yield _event(recipient, "open", None, rng.uniform(1.0, 30.0), APPLE_MPP_AGENT,
                     _address(rng, "apple-relay"), "apple-mpp-open")
    gateway = recipient.gateway
    if gateway is None:
        return
    if gateway == "microsoft-eop":
        if rng.random() < 0.6:
            start = rng.uniform(0.5, 8.0)
            address = _address(rng, gateway)
            yield _event(recipient, "open", None, start, CHROME_AGENT, address, "scan-at-delivery")
            yield from _sweep(rng, recipient, links, start + rng.uniform(0.1, 0.5), (0.02, 0.4), CHROME_AGENT,
                              gateway, "scan-at-delivery")
        else:
            yield _event(recipient, "click", rng.choice(_visible(links)), rng.uniform(1.0, 20.0), CHROME_AGENT,
                         _address(rng, gateway), "scan-one-link")
        if rng.random() < 0.3:
            yield from _sweep(rng, recipient, links, rng.uniform(3600.0, 8 * 3600.0), (1.2, 4.0), CHROME_AGENT,
                              gateway, "scan-delayed")
    elif gateway == "proofpoint":
        if rng.random() < 0.6:
            yield from _sweep(rng, recipient, links, rng.uniform(2.0, 30.0), (1.1, 4.0), CHROME_AGENT,
                              gateway, "scan-spaced")
        else:
            yield from _sweep(rng, recipient, links, rng.uniform(1.0, 15.0), (0.05, 0.6),
                              _DECLARED_AGENTS[gateway], gateway, "scan-declared")
    elif gateway == "mimecast":
        if rng.random() < 0.5:
            yield _event(recipient, "click", rng.choice(_visible(links)), rng.uniform(1.0, 20.0), CHROME_AGENT,
                         _address(rng, gateway), "scan-one-link")
        else:
            yield from _sweep(rng, recipient, links, rng.uniform(2.0, 30.0), (1.1, 4.0), CHROME_AGENT,
                              gateway, "scan-spaced")
    else:  # barracuda
        if rng.random() < 0.6:
            yield from _sweep(rng, recipient, links, rng.uniform(0.5, 5.0), (0.02, 0.3),
                              _DECLARED_AGENTS[gateway], gateway, "scan-head", method="HEAD")
        else:
            yield from _sweep(rng, recipient, links, rng.uniform(1.0, 15.0), (0.05, 0.6),
                              _DECLARED_AGENTS[gateway], gateway, "scan-declared")


def _person(rng: random.Random, recipient: Recipient, links: Sequence[str], weights: Sequence[float]) -> Iterator[Event]:
    if rng.random() >= P_OPEN:
        return
    clicker = _pick(rng, _CLICKERS) if rng.random() < P_CLICK else None
    if clicker == "quick-reader":
        opened = rng.uniform(8.0, 18.0)
    else:
        # Long-tailed: half within about two hours, some days later.
        opened = _lognormal(rng, 2 * 3600.0, 1.8, 60.0, 5 * 86400.0)
    if recipient.mailbox == "gmail":
        yield _event(recipient, "open", None, opened, GMAIL_PROXY_AGENT, _address(rng, "google-image-proxy"),
                     "gmail-open")
    elif recipient.mailbox == "other":
        yield _event(recipient, "open", None, opened, recipient.mail_client, recipient.person_address, "open")
    # Apple MPP: the images came from the proxy's copy at delivery; reading loads nothing.
    if clicker is None:
        return
    first = rng.choices(links, weights=weights)[0]
    if clicker == "quick-reader":
        clicks = [(first, rng.uniform(max(opened + 2.0, 20.0), 60.0))]
    else:
        at = opened + _lognormal(rng, 30.0, 1.0, 3.0, 1800.0)
        clicks = [(first, at)]
        if clicker == "double-tap":
            clicks.append((first, at + rng.uniform(0.15, 1.0)))
        elif clicker == "several-links":
            others = [link for link in links if link != first]
            for _ in range(min(rng.choice((1, 2)), len(others))):
                link = rng.choices(others, weights=[weights[links.index(o)] for o in others])[0]
                others.remove(link)
                at += rng.uniform(20.0, 300.0)
                clicks.append((link, at))
    behaviour = "safe-links-person" if recipient.gateway == "microsoft-eop" else clicker
    for link, at in clicks:
        if recipient.gateway == "microsoft-eop":
            # Safe Links checks the link from Microsoft's network, then sends the person on.
            yield _event(recipient, "click", link, at - rng.uniform(0.2, 1.5), CHROME_AGENT,
                         _address(rng, "microsoft-eop"), "safe-links-check")
        yield _event(recipient, "click", link, at, recipient.browser, recipient.person_address, behaviour)
