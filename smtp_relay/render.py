"""Each recipient's copy of a message, complete: links, header fields, DKIM signature.

This is the relay's CPU work (decoding, splicing, signing a token per link, hashing and signing
the copy with the DKIM key). A relay process does it under one GIL with everything else it does
(SMTP, the database, the spool), so on a machine with more cores it can hand it to worker
processes (``--rewrite-workers``): a transaction's copies are rendered by one worker, from the
message's bytes and the ids the relay recorded, and come back ready to spool.

A worker never outlives its relay: it watches the relay's process id and exits when the relay
is gone, even after a ``kill -9`` (the pool's own pipes would keep it waiting forever).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from multiprocessing.context import BaseContext

from hotclicks import links, rewrite
from hotclicks.errors import MimeError
from hotclicks.mime import ParsedMessage, edit_headers, edit_message
from hotclicks.tokens import TokenSigner

from .decide import LinkOptions, ScannedPart, scan_message
from .dkim import DkimSigner

__all__ = ["CopyMaker", "CopyRenderer", "Draft", "Rendered", "Targets", "render_copies", "render_copy"]

log = logging.getLogger("smtp_relay")

#: (part name, link key) -> (tracked URL id, tracked URL's target): what a copy's links become.
Targets = Mapping[tuple[str, str], tuple[int, str]]
#: A copy's bytes, and why its links were not rewritten (None when they were).
Rendered = tuple[bytes, MimeError | None]


@dataclass(frozen=True)
class CopyMaker:
    """What rendering a copy needs besides the message: picklable, for the workers."""

    secret_key: str
    fallback_keys: tuple[str, ...]
    base_url: str
    open_pixel: bool
    options: LinkOptions
    dkim: DkimSigner | None = None
    #: Add the hidden trap link to HTML parts (its tracked URL is among the targets).
    trap_link: bool = False


@dataclass(frozen=True)
class Draft:
    """A transaction's message as each of its copies starts from it."""

    #: Without the header fields the relay removes or replaces (X-HotClicks-*, DKIM, List-Unsubscribe).
    data: bytes
    #: The message's text parts and their links; None: its links are not rewritten.
    parsed: ParsedMessage | None = None
    scanned: Sequence[ScannedPart] | None = None
    #: Each copy gets the relay's List-Unsubscribe fields, the sender's mailto kept beside ours.
    list_unsubscribe: bool = False
    mailto: str | None = None


def render_copy(
    parsed: ParsedMessage,
    scanned: Sequence[ScannedPart],
    message_id: int,
    targets: Targets,
    signer: TokenSigner,
    maker: CopyMaker,
) -> bytes:
    """One recipient's copy: each link to its tracked URL, the trap link and the open pixel in the HTML."""
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
            trap = None
            if maker.trap_link:
                trap = links.click_url(signer, base, message_id, targets[("html", links.TRAP_LINK_NAME)][0])
            edits[s.part.index] = rewrite.html_edits(s.part.text, hrefs, pixel_url=pixel, trap_url=trap, **options)
        elif hrefs:
            edits[s.part.index] = rewrite.text_edits(s.part.text, hrefs, **options)
    return edit_message(parsed, edits)


def _finish(data: bytes, draft: Draft, message_id: int, signer: TokenSigner, maker: CopyMaker) -> bytes:
    """A copy's header fields: its own List-Unsubscribe (when the relay adds it), then the DKIM signature."""
    if draft.list_unsubscribe:
        unsubscribe = links.list_unsubscribe_headers(signer, maker.base_url, message_id, mailto=draft.mailto)
        data = edit_headers(data, add=list(unsubscribe.items()))
    if maker.dkim is not None:
        data = maker.dkim.sign(data)
    return data


def render_copies(
    draft: Draft, message_ids: Sequence[int], targets: Targets, signer: TokenSigner, maker: CopyMaker
) -> list[Rendered]:
    """Each message id's copy, ready to spool, and why its links were not rewritten if they were not."""
    copies: list[Rendered] = []
    for message_id in message_ids:
        data, error = draft.data, None
        if draft.parsed is not None and draft.scanned is not None:
            try:
                data = render_copy(draft.parsed, draft.scanned, message_id, targets, signer, maker)
            except MimeError as exc:
                data, error = draft.data, exc
        copies.append((_finish(data, draft, message_id, signer, maker), error))
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


def _render_in_worker(
    draft: Draft, rewrite_links: bool, message_ids: Sequence[int], targets: dict[tuple[str, str], tuple[int, str]]
) -> list[Rendered]:
    """The worker's side of :meth:`CopyRenderer.render`: the draft came without its parsed parts
    (cheaper to parse again here than to pickle), so it scans the message first."""
    assert _worker_signer is not None and _worker_maker is not None
    if rewrite_links:
        try:
            parsed, scanned = scan_message(draft.data, _worker_maker.options)
        except MimeError as exc:  # the relay read it: cannot be, unless the two disagree
            return [(data, exc) for data, _ in render_copies(draft, message_ids, {}, _worker_signer, _worker_maker)]
        draft = replace(draft, parsed=parsed, scanned=scanned)
    return render_copies(draft, message_ids, targets, _worker_signer, _worker_maker)


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

    def render(self, draft: Draft, message_ids: Sequence[int], targets: Targets) -> list[Rendered]:
        """Each message id's copy of ``draft`` (see :func:`render_copies`)."""
        if not self.workers or not message_ids:
            return render_copies(draft, message_ids, targets, self.signer, self.maker)
        pool = self._get_pool()
        bare = replace(draft, parsed=None, scanned=None)
        rewrite_links = draft.parsed is not None
        try:
            return pool.submit(_render_in_worker, bare, rewrite_links, list(message_ids), dict(targets)).result()
        except BrokenProcessPool:
            # A worker died (killed, out of memory): this transaction is rendered here and the
            # next one gets new workers.
            log.error("a rewriting worker died; rendering in the relay process and starting new workers")
            with self._lock:
                if self._pool is pool:
                    self._pool = None
            pool.shutdown(wait=False)
            return render_copies(draft, message_ids, targets, self.signer, self.maker)

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
