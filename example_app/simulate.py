"""Recipients reading the demo's mail: opens, clicks, opt-outs and link scanners, over real HTTP.

Each message the upstream sink kept is read as a recipient's mail client would: the open pixel
is fetched by those who open it, some links are clicked (the first links of a message far more
than the last ones, so the hot clicks report has something to show), a few recipients
unsubscribe, and a few mailboxes are behind a link scanner that fetches every link at once.
The draws are seeded, so a run is repeatable.
"""

from __future__ import annotations

import email
import email.policy
import random
import re
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

#: A person's browser.
BROWSER_AGENT = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0 Safari/537.36"
)
#: A corporate link scanner, as mailbox security gateways run on every incoming link.
SCANNER_AGENT = "Mozilla/5.0 (compatible; Proofpoint URL Defense)"

#: How likely a recipient is to open, to click once opened, to unsubscribe, to be scanned.
P_OPEN = 0.48
P_CLICK = 0.42
P_OPT_OUT = 0.02
P_SCANNED = 0.03
#: How much each link of a message draws the eye, by its rank among the message's links (the
#: logo draws less than the main image below it).
LINK_WEIGHTS = [3.0, 9.0, 4.0, 3.5, 2.5, 1.6, 1.2, 0.8, 0.6, 0.4, 0.3, 0.2]


@dataclass(frozen=True)
class Request:
    method: str
    url: str
    agent: str
    kind: str  #: "open", "click", "opt-out", "scanner"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirect)


def read_outbox(outbox: Path) -> list[bytes]:
    """The messages the demo's sink kept, in the order it received them."""
    return [path.read_bytes() for path in sorted(outbox.glob("*.eml"))]


def _html_of(data: bytes) -> tuple[str, dict[str, str]]:
    message = email.message_from_bytes(data, policy=email.policy.default)
    body = message.get_body(preferencelist=("html",))
    html = body.get_content() if body is not None else ""
    return html, {k: str(v) for k, v in message.items()}


def plan(messages: Iterable[bytes], base_url: str, seed: int = 7) -> list[Request]:
    """What every recipient does with each of ``messages``, in a repeatable order."""
    rng = random.Random(seed)
    tracked = re.compile(re.escape(base_url) + r"/c/[A-Za-z0-9_-]+")
    pixel = re.compile(re.escape(base_url) + r"/o/[A-Za-z0-9_-]+")
    # The hidden trap link the relay adds: a scanner follows it with the others, a person never sees it.
    trap = re.compile(r'<a href="(' + re.escape(base_url) + r'/c/[A-Za-z0-9_-]+)" style="display:none')
    requests: list[Request] = []
    for data in messages:
        html, headers = _html_of(data)
        every = list(dict.fromkeys(tracked.findall(html)))
        hidden = set(trap.findall(html))
        links = [url for url in every if url not in hidden]
        if not links:
            continue
        if rng.random() < P_SCANNED:
            requests += [Request("HEAD", url, SCANNER_AGENT, "scanner") for url in every]
            requests += [Request("GET", url, SCANNER_AGENT, "scanner") for url in every]
        if rng.random() >= P_OPEN:
            continue
        for url in pixel.findall(html)[:1]:
            requests.append(Request("GET", url, BROWSER_AGENT, "open"))
        if rng.random() < P_CLICK:
            # One click a message: a person clicking several links within the same second
            # is what the bot rules (rightly) take for a scanner.
            weights = [LINK_WEIGHTS[min(i, len(LINK_WEIGHTS) - 1)] for i in range(len(links))]
            url = rng.choices(links, weights=weights)[0]
            requests.append(Request("GET", url, BROWSER_AGENT, "click"))
        unsubscribe = re.search(r"<(https?://[^>]+/u/[^>]+)>", headers.get("List-Unsubscribe", ""))
        if unsubscribe and rng.random() < P_OPT_OUT:
            requests.append(Request("POST", unsubscribe.group(1), BROWSER_AGENT, "opt-out"))
    return requests


@dataclass(frozen=True)
class Outcome:
    request: Request
    status: int
    location: str | None  #: where a redirect pointed


def _perform(request: Request) -> Outcome:
    data = b"List-Unsubscribe=One-Click" if request.method == "POST" else None
    http_request = urllib.request.Request(
        request.url, data=data, method=request.method, headers={"User-Agent": request.agent}
    )
    try:
        with _opener.open(http_request, timeout=30) as response:
            return Outcome(request, int(response.status), response.headers.get("Location"))
    except urllib.error.HTTPError as error:
        return Outcome(request, int(error.code), error.headers.get("Location"))


def run(
    requests: Iterable[Request],
    progress: Callable[[int, int], None] | None = None,
    workers: int = 8,
) -> list[Outcome]:
    """Make the requests over HTTP, several at a time; what each one got, in order."""
    requests = list(requests)
    outcomes = []
    with ThreadPoolExecutor(workers) as pool:
        for done, outcome in enumerate(pool.map(_perform, requests), start=1):
            outcomes.append(outcome)
            if progress is not None:
                progress(done, len(requests))
    return outcomes


def summary(outcomes: Iterable[Outcome]) -> Counter[str]:
    """How many requests of each kind got each status, e.g. ``{"click 302": 120, ...}``."""
    return Counter(f"{o.request.kind} {o.status}" for o in outcomes)
