"""The ``HotClicks`` Flask extension: per-app state, configuration and registration."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

from flask import Flask
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from hotclicks import db
from hotclicks.errors import ConfigurationError
from hotclicks.tokens import TokenSigner

#: Every setting of the extension with its default: the one place they are defined.
DEFAULT_CONFIG: dict[str, Any] = {
    # SQLAlchemy URL of the database shared with the relay.
    "HOTCLICKS_DATABASE_URL": db.DEFAULT_DATABASE_URL,
    # Key that signs tracking links; the relay must be given the same one. Required.
    "HOTCLICKS_SECRET_KEY": None,
    # Older keys still accepted after a rotation, newest first.
    "HOTCLICKS_SECRET_KEY_FALLBACKS": [],
    # Public URL of the tracking routes, as given to the relay's --base-url. Its path is where
    # the routes are mounted; unset, they are mounted at HOTCLICKS_TRACKING_PREFIX.
    "HOTCLICKS_BASE_URL": None,
    "HOTCLICKS_TRACKING_PREFIX": "/t",
    # Where the reports blueprint (pages and /api) is mounted.
    "HOTCLICKS_REPORT_PREFIX": "/hotclicks",
}

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class HotClicksState:
    """What one app's extension needs at request time, kept in ``app.extensions["hotclicks"]``."""

    extension: HotClicks
    engine: Engine
    sessions: sessionmaker[Session]
    signer: TokenSigner
    #: Tracked URLs never change once created, so their targets are cached per process.
    target_cache: dict[int, str] = field(default_factory=dict)


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


class HotClicks:
    """Adds the tracking routes (click redirect, open pixel, opt-out) and the reports to an app.

    ``HotClicks(app)``, or ``hotclicks = HotClicks()`` then ``hotclicks.init_app(app)`` in an app
    factory. Nothing app-specific is stored on this object, so one instance serves several apps.
    """

    def __init__(self, app: Flask | None = None) -> None:
        self._report_access: Callable[[], bool] | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        if "hotclicks" in app.extensions:
            raise RuntimeError(
                "HotClicks is already set up on this app: call init_app(app) once per app "
                "(use HotClicks() without an app in an app factory)"
            )
        for key, value in DEFAULT_CONFIG.items():
            app.config.setdefault(key, value)
        config = app.config
        signer = TokenSigner(
            config["HOTCLICKS_SECRET_KEY"] or "", config["HOTCLICKS_SECRET_KEY_FALLBACKS"]
        )
        engine = db.create_db_engine(config["HOTCLICKS_DATABASE_URL"])
        app.extensions["hotclicks"] = HotClicksState(
            self, engine, db.session_factory(engine), signer
        )

        from . import cli, reports, tracking

        app.register_blueprint(tracking.blueprint, url_prefix=_tracking_prefix(config) or None)
        app.register_blueprint(
            reports.blueprint, url_prefix=config["HOTCLICKS_REPORT_PREFIX"].rstrip("/") or None
        )
        app.cli.add_command(cli.hotclicks_cli)

    def report_access(self, callback: F) -> F:
        """Register the check that decides who may see the reports (True lets the request in).

        Without one, the reports are closed, except in debug and testing mode.
        """
        self._report_access = callback
        return callback


def get_state(app: Flask) -> HotClicksState:
    try:
        return app.extensions["hotclicks"]  # type: ignore[no-any-return]
    except KeyError:
        raise RuntimeError(
            "HotClicks is not set up on this app: call HotClicks(app) or init_app(app)"
        ) from None
