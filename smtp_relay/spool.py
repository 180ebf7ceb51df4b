"""The durable spool: where an accepted message waits until the upstream has taken it.

The relay answers 250 only once every copy of a transaction is on disk. Each copy is one file in
``queue/``, written under a temporary name in ``tmp/``, fsync'd, renamed into place, and the
directory fsync'd: after a crash (``kill -9``, power loss) a copy is either entirely there or, if
the client was never answered 250, absent. A file is::

    {"id": ..., "mail_from": ..., "recipients": [...], ...}\\n   <- one line of JSON
    <the exact bytes to forward>

A copy's retry state (attempts, next attempt, last reply, recipients still to deliver) is a small
``<id>.state`` JSON beside it, replaced atomically. The copy's file is removed right after the
upstream answered 250 (or 5xx, or it was given up). A crash between the upstream's 250 and that
removal makes the copy go out again on restart: the one window where a duplicate is possible.

A spool belongs to one relay: it is locked (``flock``) for the relay's lifetime. With
``--processes N`` each relay process has its own, ``<spool-dir>/<n>`` (:func:`spool_dirs`).
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import json
import logging
import os
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from hotclicks.errors import ConfigurationError

log = logging.getLogger("smtp_relay.spool")

#: A file asking the running relay to retry every deferred copy now (``hotclicks-relay retry``).
RETRY_TRIGGER = "retry-now"
_SUFFIX = ".msg"
_STATE = ".state"


@dataclass
class SpoolEntry:
    """One copy waiting for the upstream: its envelope, its bookkeeping, its retry state."""

    id: str
    mail_from: str
    recipients: list[str]
    accepted_at: str  #: ISO 8601, UTC
    mail_options: list[str] = field(default_factory=list)
    message_id: int | None = None  #: its broad log row; None for untracked mail
    delivery: str | None = None
    execution_id: int | None = None
    note: str | None = None
    # retry state (kept in the .state file)
    attempts: int = 0
    next_attempt_at: str | None = None
    last_reply: str | None = None
    #: The bytes to forward, while they are in memory (read back from the file when None).
    data: bytes | None = field(default=None, repr=False, compare=False)

    @property
    def accepted(self) -> dt.datetime:
        return dt.datetime.fromisoformat(self.accepted_at)

    @property
    def next_attempt(self) -> dt.datetime | None:
        return dt.datetime.fromisoformat(self.next_attempt_at) if self.next_attempt_at else None

    def header(self) -> dict[str, Any]:
        values = asdict(self)
        for name in ("attempts", "next_attempt_at", "last_reply", "data"):
            values.pop(name)
        return values


def new_id() -> str:
    """A spool id that sorts by acceptance time."""
    return f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:10]}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """The spool directory; blocking file I/O, to be called from a worker thread."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.queue = self.directory / "queue"
        self.tmp = self.directory / "tmp"
        self._lock: IO[bytes] | None = None
        # Group commit of the queue directory's fsync: a rename is durable once a directory fsync
        # that began after it has returned; concurrent transactions share one.
        self._renames = 0  #: renames done, numbered
        self._synced = 0  #: the highest numbered rename a finished directory fsync covers
        self._count_lock = threading.Lock()
        self._sync_lock = threading.Lock()

    def open(self) -> None:
        """Create the directories and lock the spool; fails at start with what to fix."""
        try:
            for path in (self.directory, self.queue, self.tmp):
                path.mkdir(parents=True, exist_ok=True)
            lock = open(self.directory / "lock", "ab")
        except OSError as exc:
            raise ConfigurationError(f"cannot use the spool directory {str(self.directory)!r} (--spool-dir): {exc}") from None
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise ConfigurationError(
                f"the spool directory {str(self.directory)!r} is in use by another relay; give each "
                "relay a --spool-dir of its own"
            ) from None
        for leftover in self.tmp.iterdir():  # half-written files of a crash: never answered 250
            leftover.unlink(missing_ok=True)
        self._lock = lock

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # -- writing -------------------------------------------------------------------------------

    def store(self, entries: Sequence[SpoolEntry]) -> None:
        """Put copies in the spool durably, all or none; raises OSError (disk full...) otherwise."""
        written: list[tuple[Path, Path]] = []
        try:
            for entry in entries:
                assert entry.data is not None
                tmp = self.tmp / (entry.id + _SUFFIX)
                with open(tmp, "wb") as file:
                    written.append((tmp, self.queue / (entry.id + _SUFFIX)))
                    file.write(json.dumps(entry.header(), separators=(",", ":")).encode() + b"\n")
                    file.write(entry.data)
                    file.flush()
                    os.fsync(file.fileno())
            for tmp, final in written:
                os.rename(tmp, final)
            self._sync_queue()
        except OSError:
            for tmp, final in written:
                tmp.unlink(missing_ok=True)
                final.unlink(missing_ok=True)
            raise

    def _sync_queue(self) -> None:
        """Make the renames this thread has done durable, sharing an fsync with other threads."""
        with self._count_lock:
            self._renames += 1
            mine = self._renames
        with self._sync_lock:
            if self._synced >= mine:
                return  # a directory fsync that began after our renames has finished
            with self._count_lock:
                covered = self._renames
            _fsync_dir(self.queue)
            self._synced = covered

    def save_state(self, entry: SpoolEntry) -> None:
        """Write a copy's retry state (attempts, next attempt, last reply, recipients left)."""
        state = {
            "attempts": entry.attempts,
            "next_attempt_at": entry.next_attempt_at,
            "last_reply": entry.last_reply,
            "recipients": entry.recipients,
        }
        tmp = self.tmp / (entry.id + _STATE)
        with open(tmp, "w", encoding="utf-8") as file:
            json.dump(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.rename(tmp, self.queue / (entry.id + _STATE))

    def remove(self, entry: SpoolEntry) -> None:
        """Forget a copy the upstream took (or that was given up)."""
        (self.queue / (entry.id + _SUFFIX)).unlink(missing_ok=True)
        (self.queue / (entry.id + _STATE)).unlink(missing_ok=True)

    # -- reading -------------------------------------------------------------------------------

    def data(self, entry: SpoolEntry) -> bytes:
        """The bytes to forward of a copy."""
        if entry.data is not None:
            return entry.data
        with open(self.queue / (entry.id + _SUFFIX), "rb") as file:
            file.readline()
            return file.read()

    def entries(self) -> Iterator[SpoolEntry]:
        """Every copy in the spool, oldest first, with its retry state (data not loaded)."""
        return iter_entries(self.queue)


def iter_entries(queue: Path) -> Iterator[SpoolEntry]:
    if not queue.is_dir():
        return
    for path in sorted(queue.glob("*" + _SUFFIX)):
        try:
            with open(path, "rb") as file:
                header = json.loads(file.readline())
        except FileNotFoundError:  # delivered meanwhile
            continue
        except (OSError, ValueError) as exc:
            log.error("spool file %s is unreadable, left in place: %s", path.name, exc)
            continue
        entry = SpoolEntry(**header)
        try:
            state = json.loads((path.with_suffix(_STATE)).read_text(encoding="utf-8"))
        except FileNotFoundError:
            state = None
        except (OSError, ValueError) as exc:
            log.warning("spool state of %s unreadable, retrying it from scratch: %s", entry.id, exc)
            state = None
        if state:
            entry.attempts = state["attempts"]
            entry.next_attempt_at = state["next_attempt_at"]
            entry.last_reply = state["last_reply"]
            entry.recipients = state["recipients"]
        yield entry


def spool_dirs(directory: str | os.PathLike[str]) -> list[Path]:
    """The spools under ``--spool-dir``: its own (a single relay's) and its relay processes'
    (``<n>/``), those that exist."""
    top = Path(directory)
    numbered = sorted((p for p in top.glob("[0-9]*") if p.name.isdigit()), key=lambda p: int(p.name))
    return [d for d in (top, *numbered) if (d / "queue").is_dir()]


def move_entries(source: Spool, target: Spool) -> int:
    """Hand every copy of ``source`` to ``target`` (both open, so locked); how many moved.

    The state goes before the copy: a crash in between leaves the copy where it was, and its
    state beside the copy's future place, where the next move finds it."""
    moved = 0
    for path in sorted(source.queue.glob("*" + _SUFFIX)):
        state = path.with_suffix(_STATE)
        if state.exists():
            os.rename(state, target.queue / state.name)
        os.rename(path, target.queue / path.name)
        moved += 1
    if moved:
        _fsync_dir(target.queue)
        _fsync_dir(source.queue)
    return moved


def is_disk_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)
