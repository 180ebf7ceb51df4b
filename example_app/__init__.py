"""The example app: a small shop that sends its mail through the HotClicks relay.

It keeps subscribers with attributes, sends a newsletter with dynamic content, a weekly digest
(a recurring delivery) and order confirmations (a transactional template) with Flask-Mailman, as
any Flask app would, and hosts HotClicks' reports behind its own login.
"""

from __future__ import annotations

import os
import secrets
from typing import Any

from flask import Flask

from flask_hotclicks import HotClicks

from . import views
from .mailings import mail
from .models import create_tables

hotclicks = HotClicks()


def create_app(config: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config.from_mapping(
        SECRET_KEY=os.environ.get("EXAMPLE_SECRET_KEY") or secrets.token_urlsafe(32),
        HOTCLICKS_DATABASE_URL=os.environ.get(
            "HOTCLICKS_DATABASE_URL", "sqlite:///example-hotclicks.sqlite3"
        ),
        HOTCLICKS_SECRET_KEY=os.environ.get("HOTCLICKS_SECRET_KEY"),
        HOTCLICKS_BASE_URL=os.environ.get("HOTCLICKS_BASE_URL", "http://127.0.0.1:5050/t"),
        # Flask-Mailman sends through the relay, as it would through any SMTP server (named
        # explicitly: in testing mode Flask-Mailman would otherwise keep mail in memory).
        MAIL_BACKEND="smtp",
        MAIL_SERVER=os.environ.get("EXAMPLE_MAIL_SERVER", "127.0.0.1"),
        MAIL_PORT=int(os.environ.get("EXAMPLE_MAIL_PORT", "2525")),
        MAIL_USE_TLS=False,
        MAIL_USE_SSL=False,
        MAIL_DEFAULT_SENDER="Maison Verte <news@maison-verte.example>",
        #: The login that opens the reports.
        EXAMPLE_USER=os.environ.get("EXAMPLE_USER", "demo"),
        EXAMPLE_PASSWORD=os.environ.get("EXAMPLE_PASSWORD", "hotclicks"),
        #: Where the demo's upstream sink keeps what it received (shown at /outbox).
        EXAMPLE_OUTBOX=os.environ.get("EXAMPLE_OUTBOX"),
    )
    if config:
        app.config.update(config)
    hotclicks.init_app(app)
    mail.init_app(app)
    create_tables(app.extensions["hotclicks"].engine)
    views.register(app, hotclicks)
    return app
