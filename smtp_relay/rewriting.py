"""Each recipient's copy of a message: its links made tracked links, in this process or in workers.

The rewriting is pure CPU (decoding, splicing, signing a token per link). A relay process does
it under one GIL with everything else it does (SMTP, the database, the spool), so on a machine
with more cores it can hand it to worker processes (``--rewrite-workers``): a transaction's
copies are rendered by one worker, from the message's bytes and the ids the relay recorded.

A worker never outlives its relay: it watches the relay's process id and exits when the relay
is gone, even after a ``kill -9`` (the pool's own pipes would keep it waiting forever).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from functools import lru_cache
from multiprocessing.context import BaseContext

from hotclicks import links, rewrite
from hotclicks.errors import MimeError
from hotclicks.mime import ParsedMessage, TextPart, edit_message, parse_message
from hotclicks.links import LinkSpec
from hotclicks.tokens import TokenSigner

log = logging.getLogger("smtp_relay")

#: TrackedUrl.part for each rewritable MIME subtype.
PART_NAMES = {"html": "html", "plain": "text"}

#: (part name, link key) -> (tracked URL id, tracked URL's target): what a copy's links become.
Targets = Mapping[tuple[str, str], tuple[int, str]]


@dataclass(frozen=True)
class LinkOptions:
    """How links are found; hashable, for the caches."""

    personal_params: frozenset[str] = frozenset()
    excluded_domains: frozenset[str] = frozenset()
    tracked_prefixes: tuple[str, ...] = ()

    def keywords(self) -> dict[str, Collection[str]]:
        """The options as the rewriter's functions take them."""
        return {
            "personal_params": self.personal_params,
            "excluded_domains": self.excluded_domains,
            "tracked_prefixes": self.tracked_prefixes,
        }


@dataclass(frozen=True)
class ScannedPart:
    part: TextPart
    name: str
    links: tuple[rewrite.Link, ...]
    specs: tuple[LinkSpec, ...]  # what is registered of each link


@dataclass(frozen=True)
class CopyMaker:
    """What rendering a copy needs besides the message: picklable, for the workers."""

    secret_key: str
    fallback_keys: tuple[str, ...]
    base_url: str
    open_pixel: bool
    options: LinkOptions


def storable(text: str) -> str:
    """``text`` as any database can store it: bytes the part's charset could not decode
    (carried as lone surrogates) and NULs (PostgreSQL refuses them) become U+FFFD."""
    if "\x00" not in text:
        try:
            text.encode("utf-8")
            return text  # the common case: nothing to replace
        except UnicodeEncodeError:
            pass
    return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace").replace("\x00", "\ufffd")


@lru_cache(maxsize=32)
def _part_links(
    name: str, text: str, options: LinkOptions
) -> tuple[tuple[rewrite.Link, ...], tuple[LinkSpec, ...]]:
    """The trackable links of a part, and what is registered of each.

    Cached: a newsletter's parts are the same text for each of its recipients.
    """
    find = rewrite.find_html_links if name == "html" else rewrite.find_text_links
    found = find(text, **options.keywords())
    # A target with undecodable bytes cannot be stored nor signed faithfully: left alone.
    kept = tuple(link for link in found if storable(link.key) == link.key and storable(link.url) == link.url)
    specs = tuple(
        LinkSpec(
            part=name,
            key=link.key,
            url=rewrite.canonical_url(link.url, options.personal_params),
            name=link.name,
            label=storable(link.label),
            position=link.index,
        )
        for link in kept
    )
    return kept, specs


def scan_message(raw: bytes, options: LinkOptions) -> tuple[ParsedMessage, list[ScannedPart]]:
    """The message parsed, and the links of each rewritable part; MimeError if unreadable."""
    parsed = parse_message(raw)
    scanned = []
    for part in parsed.parts:
        name = PART_NAMES[part.subtype]
        found, specs = _part_links(name, part.text, options)
        scanned.append(ScannedPart(part, name, found, specs))
    return parsed, scanned


def render_copy(
    parsed: ParsedMessage,
    scanned: Sequence[ScannedPart],
    message_id: int,
    targets: Targets,
    signer: TokenSigner,
    maker: CopyMaker,
) -> bytes:
    """One recipient's copy: each link to its tracked URL, the open pixel in the HTML."""
    base = maker.base_url
    pixel = links.open_url(signer, base, message_id) if maker.open_pixel else None
    options = maker.options.keywords()
    edits = {}
    for s in scanned:
        hrefs = {}
        for link in s.links:
            tracked_id, tracked_target = targets[(s.name, link.key)]
            personal = None if link.url == tracked_target else link.url
            hrefs[link.index] = links.click_url(signer, base, message_id, tracked_id, personal)
        if s.name == "html":
            edits[s.part.index] = rewrite.html_edits(s.part.text, hrefs, pixel_url=pixel, **options)
        elif hrefs:
            edits[s.part.index] = rewrite.text_edits(s.part.text, hrefs, **options)
    return edit_message(parsed, edits)


def render_copies(
    parsed: ParsedMessage,
    scanned: Sequence[ScannedPart],
    message_ids: Sequence[int],
    targets: Targets,
    signer: TokenSigner,
    maker: CopyMaker,
) -> list[bytes | MimeError]:
    """Each message id's copy, or why it cannot be rewritten."""
    copies: list[bytes | MimeError] = []
    for message_id in message_ids:
        try:
            copies.append(render_copy(parsed, scanned, message_id, targets, signer, maker))
        except MimeError as exc:
            copies.append(exc)
    return copies


# -- worker processes ----------------------------------------------------------------------------

_worker_signer: TokenSigner | None = None
_worker_maker: CopyMaker | None = None

#: Seconds between a worker's checks that its relay is still there.
_WATCH_INTERVAL = 1.0


def _start_worker(maker: CopyMaker, relay_pid: int) -> None:
    global _worker_signer, _worker_maker
    _worker_maker = maker
    _worker_signer = TokenSigner(maker.secret_key, maker.fallback_keys)
    threading.Thread(target=_watch_relay, args=(relay_pid,), name="watch-relay", daemon=True).start()


def _watch_relay(relay_pid: int) -> None:
    while True:
        time.sleep(_WATCH_INTERVAL)
        try:
            os.kill(relay_pid, 0)
        except ProcessLookupError:
            os._exit(0)
        except PermissionError:  # a process of another user took the id: ours is gone
            os._exit(0)


def _render_in_worker(raw: bytes, message_ids: Sequence[int], targets: dict[tuple[str, str], tuple[int, str]]) -> list[bytes | MimeError]:
    assert _worker_signer is not None and _worker_maker is not None
    try:
        parsed, scanned = scan_message(raw, _worker_maker.options)
    except MimeError as exc:  # the relay read it: cannot be, unless the two disagree
        return [exc for _ in message_ids]
    return render_copies(parsed, scanned, message_ids, targets, _worker_signer, _worker_maker)


def _ready() -> bool:
    return True


class CopyRenderer:
    """Renders a transaction's copies here, or in ``workers`` processes when there are any."""

    def __init__(self, maker: CopyMaker, workers: int = 0) -> None:
        self.maker = maker
        self.signer = TokenSigner(maker.secret_key, maker.fallback_keys)
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the workers (if any) now rather than with the first message. A machine that
        cannot run them (no working multiprocessing: no /dev/shm, a sandbox) gets a warning and
        the rewriting done in the relay process, not a relay that fails to start."""
        if not self.workers:
            return
        try:
            self._get_pool().submit(_ready).result(60)
        except Exception as exc:  # whatever the reason, the relay can do the work itself
            log.warning("rewrite workers could not start (%s); rewriting in the relay process", exc)
            self.stop()
            self.workers = 0

    def stop(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def render(
        self, parsed: ParsedMessage, scanned: Sequence[ScannedPart], message_ids: Sequence[int], targets: Targets
    ) -> list[bytes | MimeError]:
        if not self.workers or not message_ids:
            return render_copies(parsed, scanned, message_ids, targets, self.signer, self.maker)
        pool = self._get_pool()
        try:
            return pool.submit(_render_in_worker, parsed.raw, list(message_ids), dict(targets)).result()
        except BrokenProcessPool:
            # A worker died (killed, out of memory): this transaction is rendered here and the
            # next one gets new workers.
            log.error("a rewriting worker died; rendering in the relay process and starting new workers")
            with self._lock:
                if self._pool is pool:
                    self._pool = None
            pool.shutdown(wait=False)
            return render_copies(parsed, scanned, message_ids, targets, self.signer, self.maker)

    def _get_pool(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                # forkserver: workers start from a clean process that has imported the rewriting
                # once, not from a copy of this one with its threads, locks and connections.
                context: BaseContext
                if "forkserver" in multiprocessing.get_all_start_methods():
                    forkserver = multiprocessing.get_context("forkserver")
                    forkserver.set_forkserver_preload([__name__])
                    context = forkserver
                else:
                    context = multiprocessing.get_context("spawn")
                self._pool = ProcessPoolExecutor(
                    self.workers, mp_context=context, initializer=_start_worker, initargs=(self.maker, os.getpid())
                )
            return self._pool
