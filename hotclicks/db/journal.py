"""A write-ahead journal of clicks and opens: answer the redirect after one ``write``, commit later.

Committing every click before answering costs a database round trip and a commit per redirect.
With a journal, the click route appends the event to a file of its own process (one ``write``
system call, optionally followed by ``fdatasync``) and answers; a thread of the same process
commits what was appended, in batches, with one transaction per batch. An answered redirect
therefore always has its click either committed or in a journal file:

- the process dies (crash, ``kill -9``, a worker recycled): the file stays on disk; the next
  process that starts with the same journal directory replays it, and so does every live
  journal's thread when it starts and every :data:`ADOPT_SECONDS` (under ``gunicorn --preload``
  a new worker is a fork that runs no start-up code). A file is *orphaned* when no live process holds its ``flock``; each
  process locks its own file for its whole life.
- after each committed batch the file's committed offset goes to a side file. Replay starts
  there, and checks each event against the database before inserting it (an exact timestamp per
  message and link), so an event committed just before a crash is not recorded twice.

Without ``fsync`` an event survives the process but not the machine losing power, which is the
guarantee SQLite gives in WAL mode with ``synchronous=NORMAL``; with ``fsync`` every event is on
disk before the redirect is answered.

This module does file and database I/O, but nothing of Flask: the relay or any WSGI app could use it.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from .. import bots
from .events import ClickEvent, OpenEvent, click_exists, open_exists, record_clicks, record_opens

log = logging.getLogger("hotclicks.db.journal")

#: Journal files end with this; a file being created has another name until it is locked.
SUFFIX = ".jnl"
#: The side file with the committed offset of a journal file.
DONE_SUFFIX = ".done"
#: Start a new file once the current one is this large and fully committed.
ROTATE_BYTES = 4 * 1024 * 1024
#: How often a live journal replays the files of dead processes, in seconds.
ADOPT_SECONDS = 5.0

Event = ClickEvent | OpenEvent


def _json(value: str | None) -> str:
    return "null" if value is None else json.dumps(value)


def _encode(event: Event) -> bytes:
    """One JSON line; written by hand (on the request path) for the few fields it has."""
    common = (
        f'"m":{int(event.message_id)},"t":"{event.at.isoformat()}","a":{_json(event.user_agent)},'
        f'"i":{_json(event.ip)},"r":{_json(event.request_reason)}'
    )
    if event.network is not None:
        common += f',"n":{_json(event.network)},"nk":{_json(event.network_kind)}'
    if isinstance(event, ClickEvent):
        trap = ',"x":1' if event.is_trap else ""
        device = f',"d":{_json(event.device)}' if event.device is not None else ""
        return f'{{"k":"c","u":{int(event.tracked_url_id)},{common}{trap}{device}}}\n'.encode()
    return f'{{"k":"o",{common}}}\n'.encode()


def _decode(line: bytes) -> Event:
    data = json.loads(line)
    at = dt.datetime.fromisoformat(data["t"])
    network = (data.get("n"), data.get("nk"))  # absent from the lines of older versions
    if data["k"] == "c":
        return ClickEvent(data["m"], data["u"], at, data["a"], data["i"], data["r"], bool(data.get("x")), *network,
                          data.get("d"))
    return OpenEvent(data["m"], at, data["a"], data["i"], data["r"], *network)


def _commit(
    sessions: sessionmaker[Session], events: list[Event], rules: bots.BotRules, *, dedupe: bool = False
) -> None:
    # In message order (each message's own events keep their time order): the rows a batch
    # locks (a burst marks a message's clicks) are then locked in the same order by every
    # worker, so two batches never deadlock (PostgreSQL found one in a click storm).
    events = sorted(events, key=lambda e: e.message_id)
    # A Core connection, not an ORM session: the batch is statements only.
    with sessions.kw["bind"].begin() as session:
        if dedupe:
            events = [
                e
                for e in events
                if not (click_exists(session, e) if isinstance(e, ClickEvent) else open_exists(session, e))
            ]
        record_clicks(session, [e for e in events if isinstance(e, ClickEvent)], rules)
        record_opens(session, [e for e in events if isinstance(e, OpenEvent)], rules)


#: Where events the database refuses (not a failure to reach it: a constraint) are set aside,
#: one JSON line each, so one bad event cannot hold back every later one.
REJECTED_FILE = "rejected.jsonl"


def _commit_or_isolate(
    sessions: sessionmaker[Session], events: list[Event], rules: bots.BotRules, directory: Path
) -> None:
    """Commit ``events``; when the database refuses the batch for its content, commit them one by
    one and set aside (logged, and kept in :data:`REJECTED_FILE`) those it refuses."""
    try:
        _commit(sessions, events, rules)
        return
    except (IntegrityError, DataError):
        if len(events) == 1:
            _reject(directory, events[0])
            return
    for event in events:
        try:
            _commit(sessions, [event], rules)
        except (IntegrityError, DataError) as exc:
            log.error("journal: the database refuses an event, set aside: %s", exc.orig)
            _reject(directory, event)


def _reject(directory: Path, event: Event) -> None:
    with open(directory / REJECTED_FILE, "ab") as f:
        f.write(_encode(event))


def _commit_replayed(
    sessions: sessionmaker[Session], events: list[Event], rules: bots.BotRules, directory: Path
) -> None:
    try:
        _commit(sessions, events, rules, dedupe=True)
    except (IntegrityError, DataError):
        for event in events:
            try:
                _commit(sessions, [event], rules, dedupe=True)
            except (IntegrityError, DataError) as exc:
                log.error("journal replay: the database refuses an event, set aside: %s", exc.orig)
                _reject(directory, event)


def _read_lines(path: Path, offset: int) -> Iterator[bytes]:
    with open(path, "rb") as f:
        f.seek(offset)
        for line in f:
            if line.endswith(b"\n"):  # a line cut short by a crash was never acknowledged
                yield line


def _done_offset(path: Path) -> int:
    try:
        return int(Path(str(path) + DONE_SUFFIX).read_text().strip() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def replay_orphans(
    directory: str | os.PathLike[str],
    sessions: sessionmaker[Session],
    rules: bots.BotRules = bots.DEFAULT_RULES,
    *,
    batch_size: int = 1000,
) -> int:
    """Commit the events of every journal file no live process holds, then delete those files.

    Returns how many events were recorded. Files of live processes are left alone.
    """
    recorded = 0
    for path in sorted(Path(directory).glob("*" + SUFFIX)):
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue  # replayed by another process meanwhile
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live process's own journal
            if not path.exists():
                continue
            batch: list[Event] = []
            for line in _read_lines(path, _done_offset(path)):
                try:
                    batch.append(_decode(line))
                except (ValueError, KeyError, TypeError) as exc:
                    log.error("journal %s: skipping an unreadable line (%s)", path.name, exc)
                    continue
                if len(batch) >= batch_size:
                    _commit_replayed(sessions, batch, rules, Path(directory))
                    recorded += len(batch)
                    batch = []
            if batch:
                _commit_replayed(sessions, batch, rules, Path(directory))
                recorded += len(batch)
            Path(str(path) + DONE_SUFFIX).unlink(missing_ok=True)
            path.unlink(missing_ok=True)
            log.info("journal %s replayed", path.name)
        finally:
            os.close(fd)
    return recorded


class EventJournal:
    """One process's journal: :meth:`append` on the request path, a thread commits in batches.

    Safe across ``fork`` (gunicorn workers): a process that finds itself forked opens a file and
    starts a thread of its own on its first append.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        sessions: sessionmaker[Session],
        rules: bots.BotRules = bots.DEFAULT_RULES,
        *,
        fsync: bool = False,
        interval: float = 0.5,
        batch_size: int = 2000,
        adopt_interval: float = ADOPT_SECONDS,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.sessions = sessions
        self.rules = rules
        self.fsync = fsync
        self.interval = interval
        self.batch_size = batch_size
        self.adopt_interval = adopt_interval
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._committed = threading.Condition(self._lock)
        self._pid = -1
        self._closed = False

    # -- the request path -------------------------------------------------------------------

    def append(self, event: Event) -> None:
        """Write ``event`` to the journal; when this returns, the event survives the process."""
        line = _encode(event)
        with self._lock:
            if self._pid != os.getpid():
                self._start()
            os.write(self._fd, line)
            self._pending.append(event)
            self._sent += 1
            self._size += len(line)
            self._written += len(line)
            mine = self._written
            if len(self._pending) >= self.batch_size:
                self._wake.set()
        if self.fsync:
            self._sync(mine)

    def _sync(self, upto: int) -> None:
        """Group commit of the file: one ``fdatasync`` covers every event written before it, so
        threads that append at once share it instead of queueing one each."""
        with self._sync_cond:
            while self._synced < upto:
                if self._syncing:
                    self._sync_cond.wait()
                    continue
                self._syncing = True
                with self._lock:
                    target, fd = self._written, self._fd
                self._sync_cond.release()
                try:
                    os.fdatasync(fd)
                finally:
                    self._sync_cond.acquire()
                    self._syncing = False
                    self._sync_cond.notify_all()
                self._synced = max(self._synced, target)

    # -- the writer ---------------------------------------------------------------------------

    def _open_file(self) -> None:
        name = f"events-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        creating = self.directory / (name + ".new")
        fd = os.open(creating, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_EXCL, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)  # before it has a name replay looks at
        path = self.directory / (name + SUFFIX)
        os.rename(creating, path)
        if self.fsync:  # fdatasync keeps a file's data, not its name: the directory keeps that
            directory = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        self._fd, self._path, self._size, self._done = fd, path, 0, 0

    def _start(self) -> None:
        # Called with the lock held, in a new process (or the first time).
        self._pid = os.getpid()
        self._written = 0  #: bytes appended by this process, over every file
        self._synced = 0  #: of which known to be on disk
        self._syncing = False
        self._sync_cond = threading.Condition()
        self._pending: list[Event] = []
        self._sent = 0  #: events appended so far
        self._acked = 0  #: events committed so far
        self._open_file()
        self._thread = threading.Thread(target=self._run, name="hotclicks-journal", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        pid = os.getpid()
        failures = 0
        adopt_at = time.monotonic()  # at once: a forked worker takes over the one it replaces
        while self._pid == pid:
            self._wake.wait(self.interval)
            self._wake.clear()
            try:
                self._drain()
                if time.monotonic() >= adopt_at:
                    adopt_at = time.monotonic() + self.adopt_interval
                    replayed = replay_orphans(self.directory, self.sessions, self.rules)
                    if replayed:
                        log.info("journal: replayed %s events of a dead process", replayed)
                if failures:
                    log.warning("journal: events committed again after %s failed attempts", failures)
                failures = 0
            except Exception:  # the database is down: the events stay in the file and in memory
                failures += 1
                if failures == 1 or failures % 60 == 0:
                    log.exception("journal: cannot commit events yet (attempt %s), will retry", failures)
                time.sleep(min(0.1 * 2**failures, 5.0))
            if self._closed:
                return

    def _drain(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
            size, path, fd = self._size, self._path, self._fd
        if batch:
            try:
                _commit_or_isolate(self.sessions, batch, self.rules, self.directory)
            except Exception:
                with self._lock:
                    self._pending[:0] = batch
                raise
            Path(str(path) + DONE_SUFFIX).write_text(str(size))
        with self._lock:
            self._acked += len(batch)
            self._committed.notify_all()
            if not self._pending and self._size >= ROTATE_BYTES and self._path == path:
                self._open_file()
                rotate: tuple[Path, int] | None = (path, fd)
            else:
                rotate = None
        if rotate is not None:
            old, old_fd = rotate
            Path(str(old) + DONE_SUFFIX).unlink(missing_ok=True)
            old.unlink(missing_ok=True)
            with self._sync_cond:  # never close a file an fdatasync is running on
                while self._syncing:
                    self._sync_cond.wait()
                os.close(old_fd)

    # -- for tests and shutdown --------------------------------------------------------------

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every event appended so far is committed; False on timeout."""
        with self._lock:
            if self._pid != os.getpid():
                return True  # nothing appended in this process
            target = self._sent
            self._wake.set()
            return self._committed.wait_for(lambda: self._acked >= target, timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Commit what is pending, stop the thread, and delete the file once all is committed."""
        if self._pid != os.getpid():
            return
        done = self.flush(timeout)
        self._closed = True
        self._wake.set()
        self._thread.join(timeout)
        with self._lock:
            self._pid = -1
            if done and not self._pending:
                Path(str(self._path) + DONE_SUFFIX).unlink(missing_ok=True)
                self._path.unlink(missing_ok=True)
            os.close(self._fd)
