"""Fixtures shared by every test: a migrated database on SQLite or PostgreSQL, servers on 127.0.0.1.

The suite runs on SQLite by default. With ``HOTCLICKS_TEST_DATABASE_URL`` set to a PostgreSQL URL,
every test that needs a database gets a schema of its own, created empty and dropped afterwards.
"""

from __future__ import annotations

import os
import threading
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, make_url, text

from hotclicks import db

#: The test suite's database server; unset means a fresh SQLite file per test.
TEST_DATABASE_URL = os.environ.get("HOTCLICKS_TEST_DATABASE_URL", "")

#: The corpus of real emails written by others, beside the repository (absent in a user's clone).
CORPUS = Path(os.environ.get("HOTCLICKS_CORPUS") or Path(__file__).resolve().parents[2] / "shared" / "corpus")

def require_corpus() -> None:
    """Skip the calling test module, saying why, where the corpus is not beside the repository."""
    if not CORPUS.is_dir():
        pytest.skip(
            "HOTCLICKS_CORPUS is not a directory"
            if os.environ.get("HOTCLICKS_CORPUS")
            else "../shared/corpus not found: corpus tests need the shared folder beside the repository",
            allow_module_level=True,
        )


#: A secret key for tests; the relay and the Flask app share it as in production.
SECRET_KEY = "test-secret-key-0123456789abcdef"


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def database_url(tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database that this test alone uses."""
    if not TEST_DATABASE_URL:
        yield f"sqlite:///{tmp_path / 'hotclicks.sqlite3'}"
        return
    url = make_url(TEST_DATABASE_URL)
    if url.get_backend_name() != "postgresql":
        raise pytest.UsageError("HOTCLICKS_TEST_DATABASE_URL must be a postgresql:// URL")
    schema = f"hc_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(url.set(drivername="postgresql+psycopg"))
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield url.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
            hide_password=False
        )
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """A database migrated to the newest revision, as ``db upgrade`` leaves it."""
    engine = db.create_db_engine(database_url)
    db.upgrade(engine)
    yield engine
    engine.dispose()


# -- servers --------------------------------------------------------------------------------------

from dataclasses import dataclass, field  # noqa: E402

from aiosmtpd.controller import Controller  # noqa: E402
from aiosmtpd.smtp import SMTP  # noqa: E402
from flask import Flask  # noqa: E402

from flask_hotclicks import DEFAULT_CONFIG, HotClicks  # noqa: E402
from smtp_relay import RelayConfig, RelayController  # noqa: E402

from .helpers import BASE_URL, running_relay  # noqa: E402


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes


@dataclass
class SinkHandler:
    """An upstream mail server that keeps every message as the exact bytes it received."""

    messages: list[Received] = field(default_factory=list)
    #: When set, the reply given to DATA instead of accepting.
    reply: str | None = None

    async def handle_DATA(self, server, session, envelope) -> str:
        if self.reply is not None:
            return self.reply
        self.messages.append(
            Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content)
        )
        return "250 2.0.0 OK: queued"


class _LongLinesSMTP(SMTP):
    line_length_limit = 256 * 1024


class Upstream(Controller):
    """An aiosmtpd sink on a free port of 127.0.0.1 that a test can stop or make refuse mail."""

    def __init__(self) -> None:
        self.sink = SinkHandler()
        super().__init__(self.sink, hostname="127.0.0.1", port=free_port(), decode_data=False)
        self._running = False

    def factory(self) -> SMTP:
        return _LongLinesSMTP(self.handler, **self.SMTP_kwargs)

    @property
    def messages(self) -> list[Received]:
        return self.sink.messages

    def start(self) -> None:
        super().start()
        self._running = True

    def stop(self, no_assert: bool = False) -> None:
        if self._running:
            self._running = False
            super().stop(no_assert)


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def relay_config(database_url: str, upstream: Upstream, tmp_path: Path) -> RelayConfig:
    return RelayConfig(
        listen=("127.0.0.1", free_port()),
        upstream=(upstream.hostname, upstream.port),
        database_url=database_url,
        base_url=BASE_URL,
        secret_key=SECRET_KEY,
        upstream_timeout=10,
        hostname="relay.test",
        spool_dir=str(tmp_path / "spool"),
        # Rewriting in the relay process, where tests can patch it; workers have their own tests.
        rewrite_workers=0,
    )


@pytest.fixture
def relay(engine: Engine, relay_config: RelayConfig) -> Iterator[RelayController]:
    with running_relay(relay_config) as controller:
        yield controller


@pytest.fixture
def sessions(engine: Engine):
    return db.session_factory(engine)


@pytest.fixture(autouse=True)
def _no_roll_up_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """No app of a test rolls up behind its back: HOTCLICKS_ROLLUP_INTERVAL defaults to 0 here
    (the reports count what is not folded live; tests/test_flask_rollup.py runs the thread itself)."""
    monkeypatch.setitem(DEFAULT_CONFIG, "HOTCLICKS_ROLLUP_INTERVAL", 0)


@pytest.fixture
def app(engine: Engine, database_url: str) -> Iterator[Flask]:
    app = Flask("hotclicks_test_app")
    app.config.update(
        TESTING=True,
        HOTCLICKS_DATABASE_URL=database_url,
        HOTCLICKS_SECRET_KEY=SECRET_KEY,
        HOTCLICKS_BASE_URL=BASE_URL,
        # Tests click within milliseconds of sending, as only a link scanner would in real life:
        # the time-based bot rules are off unless a test turns them on (tests/test_flask_bots.py).
        HOTCLICKS_BOT_DELIVERY_SECONDS=0,
        HOTCLICKS_BOT_BURST_SECONDS=0,
        HOTCLICKS_BOT_SWEEP_SECONDS=0,
        HOTCLICKS_BOT_ALL_LINKS_SECONDS=0,
        HOTCLICKS_BOT_FLEET_SHARE=0,
    )
    HotClicks(app)
    yield app
    app.extensions["hotclicks"].engine.dispose()


@pytest.fixture
def client(app: Flask):
    return app.test_client()


# -- the example app ------------------------------------------------------------------------------


@pytest.fixture
def shop(relay: RelayController, upstream: Upstream, database_url: str) -> Iterator[Flask]:
    """The example app, sending through the test relay, served on a free port of 127.0.0.1.

    Its address is ``app.config["LIVE_URL"]``; its mail's links point at BASE_URL.
    """
    pytest.importorskip("flask_mailman", reason="the example app needs flask-mailman (pip install -e '.[example]')")
    from werkzeug.serving import make_server

    from example_app import create_app

    app = create_app(
        {
            "TESTING": True,
            "HOTCLICKS_DATABASE_URL": database_url,
            "HOTCLICKS_SECRET_KEY": SECRET_KEY,
            "HOTCLICKS_BASE_URL": BASE_URL,
            "MAIL_PORT": relay.config.listen[1],
            # Simulated recipients click milliseconds after the send.
            "HOTCLICKS_BOT_DELIVERY_SECONDS": 0,
        }
    )
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    app.config["LIVE_URL"] = f"http://127.0.0.1:{server.server_port}"
    yield app
    server.shutdown()
    thread.join(timeout=10)
    server.server_close()
    app.extensions["hotclicks"].engine.dispose()


# -- the browser ----------------------------------------------------------------------------------

#: Debian's Chromium; nothing downloads a browser of its own.
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium driven by Playwright, one per test module; skipped where it is absent."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright; no browser download needed)")
    if not CHROMIUM.exists():
        pytest.skip("Debian's Chromium is not installed at /usr/bin/chromium (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()
