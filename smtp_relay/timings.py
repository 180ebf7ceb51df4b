"""Where a relay process spends its CPU, by stage, when asked (``HOTCLICKS_STAGE_TIMES=FILE``).

For ``bench/relay.py``: the handler adds each stage's CPU time (``time.thread_time``: this
thread's alone, not the other transactions' running meanwhile) and, when the relay stops, appends
one JSON line of totals to the file (one line per relay process). Unset, the handler keeps none
and pays one ``is None`` test per stage.

Stages: ``loop`` the event loop's thread (receiving, the SMTP dialogue, sending upstream, in one
figure: they interleave on one thread), ``record`` the database writes, ``render`` the copies
(waiting for a rewrite worker when there is one: the worker's own CPU is not in it), ``decide``
the rest of preparing a transaction (parsing, marks, links), ``spool`` writing and fsyncing.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

__all__ = ["ENVIRONMENT", "StageTimes"]

#: The variable naming the file the totals are appended to.
ENVIRONMENT = "HOTCLICKS_STAGE_TIMES"


class StageTimes:
    """CPU seconds per stage and the transactions they were spent on; thread-safe."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.seconds: Counter[str] = Counter()
        self.transactions = 0
        self._lock = threading.Lock()

    @classmethod
    def from_environment(cls) -> StageTimes | None:
        path = os.environ.get(ENVIRONMENT)
        return cls(path) if path else None

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.seconds[stage] += seconds

    def transaction(self, **stages: float) -> None:
        """One transaction accepted, with the CPU seconds of its stages."""
        with self._lock:
            self.seconds.update(stages)
            self.transactions += 1

    def timed(self, stage: str, function: Callable[..., Any]) -> Callable[..., Any]:
        """``function``, its thread's CPU time added to ``stage`` on each call."""

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.thread_time()
            try:
                return function(*args, **kwargs)
            finally:
                self.add(stage, time.thread_time() - started)

        return timed

    def dump(self) -> None:
        """Append the totals as one JSON line: ``{"transactions": n, "seconds": {stage: s}}``."""
        with self._lock:
            seconds = dict(self.seconds)
        # "prepare" holds decide, record and render: decide is what the other two leave.
        seconds["decide"] = seconds.pop("prepare", 0.0) - seconds.get("record", 0.0) - seconds.get("render", 0.0)
        line = json.dumps({"pid": os.getpid(), "transactions": self.transactions, "seconds": seconds})
        with open(self.path, "a", encoding="utf-8") as file:
            file.write(line + "\n")
