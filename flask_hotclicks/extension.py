"""The ``HotClicks`` Flask extension: per-app state, configuration and registration."""

from __future__ import annotations

import atexit
import copy
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from flask import Flask
from sqlalchemy import Engine, event
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from hotclicks import db, settings
from hotclicks.bots import BotRules
from hotclicks.errors import ConfigurationError
from hotclicks.db import rollup
from hotclicks.db.journal import EventJournal, replay_orphans
from hotclicks.networks import NetworkIndex, network_index
from hotclicks.tokens import TokenSigner

if TYPE_CHECKING:
    from hotclicks.db.models import TestProfile

log = logging.getLogger("flask_hotclicks")

#: Every setting of the extension with its default, from :mod:`hotclicks.settings` (where each is
#: declared with its meaning; docs/flask-extension.md's table is generated from it). Set with
#: ``app.config.setdefault`` and read once, in ``init_app``.
DEFAULT_CONFIG: dict[str, Any] = settings.flask_defaults()

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Preview:
    """What a preview renderer returns: a delivery's content as one profile would receive it."""

    html: str | None = None
    text: str | None = None


class Roller:
    """Folds settled clicks into the report aggregates every ``interval`` seconds, off the request
    path, so that a report GET only reads (aggregates plus the live tail, the same figures).

    One daemon thread per process, started by :meth:`start` on the process's first request (a
    gunicorn worker forked after ``init_app`` starts its own). Several processes may roll up at
    once: :func:`~hotclicks.db.rollup.roll_up` serializes them on its state rows.
    """

    def __init__(self, sessions: sessionmaker[Session], interval: float) -> None:
        self.sessions = sessions
        self.interval = interval
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pid = -1
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start this process's thread, once (cheap after that: a request calls it each time)."""
        if self.interval <= 0 or self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid() or self._stop.is_set():
                return
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name="hotclicks-rollup", daemon=True)
            self._thread.start()
        atexit.register(self.close)

    def roll_up_once(self) -> dict[str, int] | None:
        """One round: how many rows of each source were folded, or None when nothing was due or
        the database was busy (the live tail keeps the reports right until the next round)."""
        try:
            with self.sessions() as session:
                if not rollup.needs_roll_up(session):
                    return None
            with self.sessions.begin() as session:
                return rollup.roll_up(session)
        except OperationalError as exc:  # a lock held too long, a restart: the next round folds it
            log.warning("roll-up: the database is busy or unreachable (%s); trying again in %ss",
                        exc.orig or exc, self.interval)
            return None

    def _run(self) -> None:
        pid = os.getpid()
        while not self._stop.wait(self.interval) and self._pid == pid:
            try:
                folded = self.roll_up_once()
            except Exception:  # a bug must not stop the roll-ups for the process's lifetime
                log.exception("roll-up failed; trying again in %ss", self.interval)
                continue
            if folded and any(folded.values()):
                log.debug("roll-up: folded %s", folded)

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread (a roll-up under way finishes first, or is rolled back at exit)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and self._pid == os.getpid():
            thread.join(timeout)


@dataclass
class HotClicksState:
    """What one app's extension needs at request time, kept in ``app.extensions["hotclicks"]``."""

    extension: HotClicks
    engine: Engine
    sessions: sessionmaker[Session]
    signer: TokenSigner
    rules: BotRules = field(default_factory=BotRules)
    #: Settings the routes read on every request, read once from the config.
    anonymize_ip: bool = True
    store_ip: bool = True
    store_user_agent: bool = True
    #: The journal of clicks and opens, when HOTCLICKS_JOURNAL_DIR is set.
    journal: EventJournal | None = None
    personal_params: frozenset[str] = frozenset()
    excluded_domains: frozenset[str] = frozenset()
    #: True when the engine belongs to the host app (Flask-SQLAlchemy): never disposed by us.
    borrowed_engine: bool = False
    #: Tracked URLs never change once created, so their targets are cached per process.
    target_cache: dict[int, tuple[str, bool]] = field(default_factory=dict)
    #: The shipped and operator network lists (HOTCLICKS_BOT_NETWORKS_DIR), and that directory.
    networks: NetworkIndex = field(default_factory=NetworkIndex)
    networks_dir: str | None = None
    #: The roll-up thread (HOTCLICKS_ROLLUP_INTERVAL; an interval of 0 never starts it).
    roller: Roller | None = None

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A session whose statements all read one snapshot, as a report's must: the aggregates
        and the tail above the watermark it read have to agree even when a roll-up commits between
        two of them (PostgreSQL: REPEATABLE READ, which never fails a transaction that only reads;
        SQLite: one read transaction, where each statement would otherwise see the latest)."""
        with self.sessions() as session:
            dialect = self.engine.dialect.name
            if dialect == "postgresql":
                session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            elif dialect == "sqlite":
                connection = session.connection()
                if not connection.connection.dbapi_connection.in_transaction:  # type: ignore[union-attr]
                    connection.exec_driver_sql("BEGIN")
            yield session

    def dispose(self) -> None:
        """Stop the roll-ups, commit what the journal holds and release the database (tests, shutdown)."""
        if self.roller is not None:
            self.roller.close()
        if self.journal is not None:
            self.journal.close()
        if not self.borrowed_engine:
            self.engine.dispose()


def _tracking_prefix(config: dict[str, Any]) -> str:
    base_url = config["HOTCLICKS_BASE_URL"]
    if base_url:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigurationError(
                f"HOTCLICKS_BASE_URL must be an http(s) URL like https://t.example.com/t, not {base_url!r}"
            )
        return parts.path.rstrip("/")
    return config["HOTCLICKS_TRACKING_PREFIX"].rstrip("/")


def _flask_sqlalchemy_engine(app: Flask, bind: str | None) -> Engine:
    ext = app.extensions.get("sqlalchemy")
    if ext is None:
        raise ConfigurationError(
            "HOTCLICKS_USE_FLASK_SQLALCHEMY is set but Flask-SQLAlchemy is not set up on this app: "
            "call db.init_app(app) before HotClicks(app)"
        )
    with app.app_context():
        engines = ext.engines
        if bind not in engines:
            raise ConfigurationError(
                f"Flask-SQLAlchemy has no bind {bind!r} (HOTCLICKS_FLASK_SQLALCHEMY_BIND); "
                f"it has {sorted(map(str, engines))}"
            )
        engine: Engine = engines[bind]
    if engine.dialect.name == "sqlite":
        # Concurrent workers must wait for the lock rather than fail with "database is locked".
        event.listen(engine, "connect", db.sqlite_pragmas)
    return engine


def _signer(config: dict[str, Any]) -> TokenSigner:
    key = config["HOTCLICKS_SECRET_KEY"]
    fallbacks = list(config["HOTCLICKS_SECRET_KEY_FALLBACKS"] or [])
    if not key:
        key = config.get("SECRET_KEY")
        fallbacks += list(config.get("SECRET_KEY_FALLBACKS") or [])
    if not key:
        raise ConfigurationError(
            "no secret key for tracking links: set HOTCLICKS_SECRET_KEY (or the app's SECRET_KEY) "
            "to the key the relay is given"
        )
    return TokenSigner(key, fallbacks)


def _rules(config: dict[str, Any]) -> BotRules:
    return BotRules(
        delivery_seconds=float(config["HOTCLICKS_BOT_DELIVERY_SECONDS"]),
        burst_seconds=float(config["HOTCLICKS_BOT_BURST_SECONDS"]),
        burst_links=int(config["HOTCLICKS_BOT_BURST_LINKS"]),
        trap_seconds=float(config["HOTCLICKS_BOT_TRAP_SECONDS"]),
        sweep_seconds=float(config["HOTCLICKS_BOT_SWEEP_SECONDS"]),
        sweep_links=int(config["HOTCLICKS_BOT_SWEEP_LINKS"]),
        all_links_seconds=float(config["HOTCLICKS_BOT_ALL_LINKS_SECONDS"]),
        all_links_min=int(config["HOTCLICKS_BOT_ALL_LINKS_MIN"]),
        fleet_recipients=int(config["HOTCLICKS_BOT_FLEET_RECIPIENTS"]),
        fleet_delivery_seconds=float(config["HOTCLICKS_BOT_FLEET_SECONDS"]),
        fleet_share=float(config["HOTCLICKS_BOT_FLEET_SHARE"]),
        extra_agents=tuple(config["HOTCLICKS_BOT_USER_AGENTS"] or ()),
        apple_mpp_opens=bool(config["HOTCLICKS_BOT_APPLE_MPP_OPENS"]),
    )


class HotClicks:
    """Adds the tracking routes (click redirect, open pixel, opt-out) and the reports to an app.

    ``HotClicks(app)``, or ``hotclicks = HotClicks()`` then ``hotclicks.init_app(app)`` in an app
    factory. Nothing app-specific is stored on this object, so one instance serves several apps.
    """

    def __init__(self, app: Flask | None = None) -> None:
        self._report_access: Callable[[], bool] | None = None
        self._preview_renderer: Callable[[str, TestProfile | None], Preview | dict[str, Any] | None] | None = None
        self._invalid_link_handler: Callable[[], Any] | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        if "hotclicks" in app.extensions:
            raise RuntimeError(
                "HotClicks is already set up on this app: call init_app(app) once per app "
                "(use HotClicks() without an app in an app factory)"
            )
        for key in DEFAULT_CONFIG:  # fresh lists, never one shared by two apps
            app.config.setdefault(key, copy.copy(DEFAULT_CONFIG[key]))
        config = app.config
        tracking_prefix = _tracking_prefix(config)
        signer = _signer(config)
        rules = _rules(config)
        networks_dir = os.fspath(config["HOTCLICKS_BOT_NETWORKS_DIR"] or os.path.join(app.instance_path, "hotclicks-networks"))
        networks = network_index(networks_dir)  # a bad operator list stops the start, saying which
        if config["HOTCLICKS_USE_FLASK_SQLALCHEMY"]:
            engine = _flask_sqlalchemy_engine(app, config["HOTCLICKS_FLASK_SQLALCHEMY_BIND"])
            borrowed = True
        else:
            engine = db.create_db_engine(config["HOTCLICKS_DATABASE_URL"])
            borrowed = False
        if config["HOTCLICKS_CHECK_SCHEMA"]:
            db.check_migrated(engine)
        sessions = db.session_factory(engine)
        journal = None
        if config["HOTCLICKS_JOURNAL_DIR"]:
            directory = config["HOTCLICKS_JOURNAL_DIR"]
            try:  # clicks acknowledged by processes that died before committing them
                replayed = replay_orphans(directory, sessions, rules)
                if replayed:
                    log.info("replayed %s events from the journal", replayed)
            except Exception:
                log.exception("cannot replay the journal in %s yet; it is kept for the next start", directory)
            journal = EventJournal(
                directory,
                sessions,
                rules,
                fsync=bool(config["HOTCLICKS_JOURNAL_FSYNC"]),
                interval=float(config["HOTCLICKS_JOURNAL_INTERVAL"]),
            )
            atexit.register(journal.close)
        state = HotClicksState(
            self,
            engine,
            sessions,
            signer,
            rules=rules,
            anonymize_ip=bool(config["HOTCLICKS_ANONYMIZE_IP"]),
            store_ip=bool(config["HOTCLICKS_STORE_IP"]),
            store_user_agent=bool(config["HOTCLICKS_STORE_USER_AGENT"]),
            personal_params=frozenset(config["HOTCLICKS_PERSONAL_PARAMS"] or ()),
            excluded_domains=frozenset(d.lower() for d in config["HOTCLICKS_EXCLUDED_DOMAINS"] or ()),
            journal=journal,
            borrowed_engine=borrowed,
        )
        state.networks, state.networks_dir = networks, networks_dir
        state.roller = Roller(sessions, float(config["HOTCLICKS_ROLLUP_INTERVAL"]))
        app.extensions["hotclicks"] = state
        app.before_request(state.roller.start)

        from . import cli, reports, tracking

        app.url_map.converters["hotclicks_token"] = tracking.AnyTokenConverter
        app.register_blueprint(tracking.blueprint, url_prefix=tracking_prefix or None)
        app.register_blueprint(
            reports.blueprint, url_prefix=config["HOTCLICKS_REPORT_PREFIX"].rstrip("/") or None
        )
        csrf = app.extensions.get("csrf")
        if csrf is not None and hasattr(csrf, "exempt"):
            # Flask-WTF: the unsubscribe POSTs come from mailbox providers, with no CSRF token;
            # the signed token in the URL is what authorizes them.
            csrf.exempt(tracking.blueprint)
        app.cli.add_command(cli.hotclicks_cli)

    # -- callbacks ----------------------------------------------------------------------------

    def report_access(self, callback: F) -> F:
        """Register the check that decides who may see the reports (True lets the request in).

        Without one, the reports are closed, except in debug and testing mode.
        """
        self._report_access = callback
        return callback

    def preview_renderer(self, callback: F) -> F:
        """Register how to render a delivery's content for a test profile (or for no profile).

        ``callback(delivery_code, profile)`` gets a :class:`~hotclicks.db.models.TestProfile` or None
        (a recipient with no attributes) and returns a :class:`Preview`, a dict with ``html`` and
        ``text``, or None when it cannot render that delivery. The hot clicks report uses it.
        """
        self._preview_renderer = callback
        return callback

    def render_preview(self, delivery: str, profile: TestProfile | None = None) -> Preview | None:
        """The host app's rendering of ``delivery`` for ``profile``, or None without a renderer."""
        if self._preview_renderer is None:
            return None
        result = self._preview_renderer(delivery, profile)
        if result is None or isinstance(result, Preview):
            return result
        if isinstance(result, dict):
            return Preview(html=result.get("html"), text=result.get("text"))
        raise TypeError(
            f"the preview renderer returned a {type(result).__name__}: return a Preview, "
            "a dict with 'html' and 'text', or None"
        )

    def invalid_link_handler(self, callback: F) -> F:
        """Register the view for a bad link (forged, altered, unknown); it should answer a 404.

        Without one, ``hotclicks/invalid_link.html`` is rendered (override the template, or this).
        """
        self._invalid_link_handler = callback
        return callback


def get_state(app: Flask) -> HotClicksState:
    try:
        return app.extensions["hotclicks"]  # type: ignore[no-any-return]
    except KeyError:
        raise RuntimeError(
            "HotClicks is not set up on this app: call HotClicks(app) or init_app(app)"
        ) from None
