"""The demo's upstream mail server: an aiosmtpd sink that keeps each message as a .eml file."""

from __future__ import annotations

import itertools
import os
import threading
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP


class _Keeper:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.count = 0
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()

    async def handle_DATA(self, server: SMTP, session: object, envelope: object) -> str:
        data = envelope.original_content  # type: ignore[attr-defined]
        with self._lock:
            number = next(self._numbers)
            self.count += 1
        path = self.folder / f"{number:07d}.eml"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return "250 2.0.0 OK: kept"


class _LongLinesSMTP(SMTP):
    line_length_limit = 256 * 1024


class SinkServer(Controller):
    """Listens on ``host:port`` and writes every message it receives into ``folder``."""

    def __init__(self, folder: Path, host: str = "127.0.0.1", port: int = 2526) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.keeper = _Keeper(folder)
        super().__init__(self.keeper, hostname=host, port=port, decode_data=False)

    def factory(self) -> SMTP:
        return _LongLinesSMTP(self.handler, **self.SMTP_kwargs)

    @property
    def received(self) -> int:
        return self.keeper.count
