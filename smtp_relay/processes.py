"""Several relay processes on one listening socket: the supervisor of ``--processes N``.

One relay process runs SMTP, the database and the spool under one Python lock, so it uses about
one core. The supervisor binds the listening socket once and forks N relays that accept on it,
each with a spool of its own (``<spool-dir>/<n>``: a spool belongs to one relay). A relay that
dies is replaced by another with the same ``n``, which resumes its spool: nothing accepted is
lost. SIGTERM or SIGINT stops them all, each finishing its transactions in flight as a single
relay does. A relay dies with its supervisor, even after ``kill -9`` (``PR_SET_PDEATHSIG``).

The supervisor starts no thread and touches no database: it forks from a single-threaded process.
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from hotclicks.errors import ConfigurationError

from .config import RelayConfig
from .spool import Spool, move_entries

__all__ = ["RelayRunner", "adopt_spools", "process_spool", "restart_delay", "supervise"]

log = logging.getLogger("smtp_relay.processes")

#: Runs one relay process on the shared socket and calls the callback once it accepts; its exit
#: code (2: a setting is wrong, as the command line's).
RelayRunner = Callable[[RelayConfig, socket.socket, Callable[[], None]], int]

#: Seconds the relays get to finish their transactions at SIGTERM before they are killed (each
#: bounds its own shutdown at 30 s).
STOP_PATIENCE = 60.0
#: A relay that lived this long before dying is restarted at once; sooner, after a growing delay.
STEADY_SECONDS = 10.0
_PR_SET_PDEATHSIG = 1


def process_spool(spool_dir: str, n: int) -> str:
    """The spool of relay process ``n``."""
    return str(Path(spool_dir) / str(n))


def restart_delay(lifetime: float, failures: int) -> float:
    """How long to wait before replacing a relay that died after ``lifetime`` seconds, the
    ``failures``-th quick death in a row: at once after a steady life, else 1, 2, 4... up to 30 s."""
    return 0.0 if lifetime >= STEADY_SECONDS else min(30.0, 2.0 ** max(failures - 1, 0))


def adopt_spools(spool_dir: str, processes: int) -> Spool:
    """Lock ``--spool-dir`` for the supervisor and give relay 0 the copies no relay would resume:
    a single relay's (``<spool-dir>/queue``) and those of relays beyond ``processes``."""
    top = Spool(spool_dir)
    top.open()
    orphans = [top]
    for path in Path(spool_dir).iterdir():
        if path.name.isdigit() and int(path.name) >= processes and (path / "queue").is_dir():
            orphans.append(Spool(path))
            orphans[-1].open()
    target = Spool(process_spool(spool_dir, 0))
    target.open()
    try:
        for source in orphans:
            moved = move_entries(source, target)
            if moved:
                log.info("%d copies of the spool %s handed to relay process 0", moved, source.directory)
    finally:
        target.close()
        for source in orphans[1:]:
            source.close()
    return top


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound; the first relay to serve calls ``listen()`` (asyncio does), so
    nothing is accepted before a relay is ready."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigurationError(f"cannot listen on {host}:{port} (--listen): {exc}") from None
    sock.setblocking(False)
    return sock


def _die_with(parent: int) -> None:
    """Have the kernel kill this process when its supervisor dies (Linux); else it is up to it."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # it died before prctl
        os._exit(1)


@dataclass
class _Relay:
    n: int
    pid: int
    started: float
    failures: int = 0


@dataclass
class _Supervisor:
    config: RelayConfig
    run: RelayRunner
    sock: socket.socket
    top: Spool
    relays: dict[int, _Relay] = field(default_factory=dict)  #: by pid
    #: Relay numbers to start again, and when.
    pending: dict[int, tuple[float, int]] = field(default_factory=dict)
    stopping: bool = False

    def __post_init__(self) -> None:
        self.ready_r, self.ready_w = os.pipe()
        os.set_blocking(self.ready_r, False)

    def fork(self, n: int, failures: int = 0) -> None:
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            self._child(n, parent)
        self.relays[pid] = _Relay(n, pid, time.monotonic(), failures)
        log.info("relay process %d started (pid %d), spool %s", n, pid, process_spool(self.config.spool_dir, n))

    def _child(self, n: int, parent: int) -> None:
        code = 1
        try:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            _die_with(parent)
            os.close(self.ready_r)
            self.top.close()  # the supervisor keeps its own lock
            config = replace(self.config, spool_dir=process_spool(self.config.spool_dir, n), processes=1)
            code = self.run(config, self.sock, self._ready)
        except BaseException:
            log.exception("relay process %d failed", n)
        finally:
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def _ready(self) -> None:
        os.write(self.ready_w, b"r")

    def reap(self) -> list[tuple[_Relay, int]]:
        """The relays that exited since the last call, with their wait status."""
        gone = []
        while self.relays:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            relay = self.relays.pop(pid, None)
            if relay is not None:
                gone.append((relay, status))
        return gone

    def ready_count(self) -> int:
        try:
            return len(os.read(self.ready_r, 4096))
        except BlockingIOError:
            return 0

    def wait(self, seconds: float) -> None:
        select.select([self.ready_r], [], [], seconds)

    def replace_dead(self) -> None:
        now = time.monotonic()
        for relay, status in self.reap():
            how = f"signal {-os.waitstatus_to_exitcode(status)}" if os.WIFSIGNALED(status) else f"exit code {os.waitstatus_to_exitcode(status)}"
            failures = 0 if now - relay.started >= STEADY_SECONDS else relay.failures + 1
            delay = restart_delay(now - relay.started, failures)
            log.error("relay process %d (pid %d) died (%s); another takes its spool in %.0f s", relay.n, relay.pid, how, delay)
            self.pending[relay.n] = (now + delay, failures)
        for n, (at, failures) in list(self.pending.items()):
            if at <= now:
                del self.pending[n]
                self.fork(n, failures)

    def stop_all(self) -> None:
        """SIGTERM to every relay, then wait for them; SIGKILL to those still there after
        :data:`STOP_PATIENCE`."""
        self.sock.close()
        for pid in self.relays:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_PATIENCE
        while self.relays and time.monotonic() < deadline:
            self.reap()
            self.wait(0.05)
        for pid in list(self.relays):
            log.error("relay process %d (pid %d) still running after %.0f s: killed", self.relays[pid].n, pid, STOP_PATIENCE)
            _signal(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        self.relays.clear()
        self.top.close()


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def supervise(config: RelayConfig, run: RelayRunner) -> int:
    """Run ``config.processes`` relays until SIGTERM or SIGINT; the exit code.

    A relay that fails at start with a wrong setting (exit code 2) stops them all with that code,
    as a single relay would; one that dies later is replaced."""
    top = adopt_spools(config.spool_dir, config.processes)
    try:
        sock = _bind(*config.listen)
    except ConfigurationError:
        top.close()
        raise
    supervisor = _Supervisor(config, run, sock, top)

    def stop(signum: int, frame: object) -> None:
        supervisor.stopping = True

    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        for n in range(config.processes):
            supervisor.fork(n)
        ready = 0
        while ready < config.processes and not supervisor.stopping:
            supervisor.wait(0.2)
            ready += supervisor.ready_count()
            for relay, status in supervisor.reap():
                log.error("relay process %d (pid %d) did not start", relay.n, relay.pid)
                supervisor.stop_all()
                code = os.waitstatus_to_exitcode(status)
                return code if code > 0 else 1
        host, port = config.listen
        log.info("%d relay processes listening on %s:%s, forwarding to %s:%s", config.processes, host, port, *config.upstream)
        print(f"hotclicks-relay listening on {host}:{port} ({config.processes} processes)", flush=True)
        while not supervisor.stopping:
            supervisor.wait(0.5)
            supervisor.ready_count()
            supervisor.replace_dead()
        log.info("stopping: every relay process finishes the transactions in flight")
        supervisor.stop_all()
        return 0
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        os.close(supervisor.ready_r)
        os.close(supervisor.ready_w)
