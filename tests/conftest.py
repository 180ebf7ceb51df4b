"""Fixtures shared by every test: a migrated database on SQLite or PostgreSQL, servers on 127.0.0.1.

The suite runs on SQLite by default. With ``HOTCLICKS_TEST_DATABASE_URL`` set to a PostgreSQL URL,
every test that needs a database gets a schema of its own, created empty and dropped afterwards.
"""

from __future__ import annotations

import os
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
