"""The shared database: connecting to it and migrating it (here), and one module per aggregate.

``models`` is the schema; ``sending`` (deliveries, executions, tracked URLs, variants,
recipients), ``events`` (clicks and opens), ``journal`` (clicks written ahead to a file),
``subscribers`` (opt-outs), ``admin`` (test profiles, relay accounts, retention), ``rollup`` (the
reports' aggregates) and ``stats`` (every report query) read and write it; ``upsert`` is how rows
that concurrent writers may create are written.

Both halves (relay and Flask extension) call these, so SQLite gets the same settings everywhere:
WAL so readers never block the writer, a busy timeout so concurrent writers wait instead of
failing with "database is locked", and foreign keys on (:func:`sqlite_pragmas` goes on a host
app's Flask-SQLAlchemy engine too).
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.orm import Session, sessionmaker

from ..errors import ConfigurationError
from ..settings import DEFAULT_DATABASE_URL

__all__ = [
    "BRANCH_LABEL",
    "DEFAULT_DATABASE_URL",
    "SQLITE_BUSY_TIMEOUT",
    "VERSION_TABLE",
    "check_migrated",
    "create_db_engine",
    "current_revision",
    "downgrade",
    "head_revision",
    "session_factory",
    "sqlite_pragmas",
    "upgrade",
]

log = logging.getLogger("hotclicks.db")

#: How long an SQLite writer waits for the lock before giving up, in seconds.
SQLITE_BUSY_TIMEOUT = 30

#: The Alembic branch label and version table of HotClicks' lineage, so that it can run on its own
#: or be mounted beside a host application's own migrations.
BRANCH_LABEL = "hotclicks"
VERSION_TABLE = "hotclicks_alembic_version"


def sqlite_pragmas(dbapi_connection: Any, connection_record: Any) -> None:
    """Set HotClicks' SQLite settings on a new connection: WAL, ``synchronous=NORMAL`` (safe with
    WAL), foreign keys, and the busy timeout. A ``connect`` event listener, for our own engines and
    for a host app's Flask-SQLAlchemy engine alike."""
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT * 1000}")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def create_db_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for ``url``, tuned for HotClicks on SQLite and PostgreSQL.

    A ``postgresql://`` URL uses psycopg 3 (``pip install hotclicks[postgresql]``).
    """
    try:
        parsed = make_url(url)
    except Exception as exc:  # sqlalchemy raises ArgumentError, but be explicit for users
        raise ConfigurationError(f"not a database URL: {url!r} ({exc})") from None
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() == "sqlite":
        connect_args = kwargs.pop("connect_args", {})
        connect_args.setdefault("timeout", SQLITE_BUSY_TIMEOUT)
        # SQLAlchemy's pool hands a connection to one thread at a time; the relay uses threads.
        connect_args.setdefault("check_same_thread", False)
        database = parsed.database
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, connect_args=connect_args, **kwargs)
        event.listen(engine, "connect", sqlite_pragmas)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    try:
        return create_engine(parsed, **kwargs)
    except ModuleNotFoundError as exc:
        raise ConfigurationError(
            f"the driver for {parsed.drivername} is not installed ({exc.name}); "
            "for PostgreSQL run: pip install 'hotclicks[postgresql]'"
        ) from None


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded objects usable after commit (the views read them afterwards)."""
    return sessionmaker(engine, expire_on_commit=False)


def _alembic_config(engine: Engine) -> Any:
    from alembic.config import Config

    script_location = resources.files("hotclicks.migrations")
    config = Config()
    config.set_main_option("script_location", str(script_location))
    config.set_main_option("version_table", VERSION_TABLE)
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "hotclicks@head") -> None:
    """Migrate the database to ``revision`` (the newest by default)."""
    from alembic import command

    command.upgrade(_alembic_config(engine), revision)


def downgrade(engine: Engine, revision: str = "hotclicks@base") -> None:
    """Migrate the database down to ``revision`` (removing every table by default)."""
    from alembic import command

    command.downgrade(_alembic_config(engine), revision)


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None when it was never migrated."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"version_table": VERSION_TABLE}
        )
        return context.get_current_revision()


def head_revision() -> str:
    """The newest revision the installed package ships."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_alembic_config(create_engine("sqlite://")))
    head = script.get_current_head()
    assert head is not None
    return head


def check_migrated(engine: Engine) -> None:
    """Fail at start, with the command to run, when the schema is missing or behind."""
    try:
        current = current_revision(engine)
    except Exception as exc:
        raise ConfigurationError(
            f"cannot reach the database {engine.url.render_as_string(hide_password=True)}: {exc}"
        ) from None
    head = head_revision()
    if current != head:
        raise ConfigurationError(
            f"the database {engine.url.render_as_string(hide_password=True)} is at revision "
            f"{current or 'none'}, not {head}: run 'hotclicks-relay db upgrade' "
            "or 'flask hotclicks db upgrade' first"
        )
