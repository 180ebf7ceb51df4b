"""The Alembic migrations are the schema: they build exactly what the models describe."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from hotclicks import db
from hotclicks.errors import ConfigurationError
from hotclicks.db.models import Base


def test_upgrade_from_empty_matches_the_models_and_downgrade_removes_everything(database_url):
    engine = db.create_db_engine(database_url)
    try:
        assert db.current_revision(engine) is None
        db.upgrade(engine)
        assert db.current_revision(engine) == db.head_revision()
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"compare_type": True, "version_table": db.VERSION_TABLE}
            )
            assert compare_metadata(context, Base.metadata) == []
            tables = set(inspect(connection).get_table_names())
        assert set(Base.metadata.tables) | {db.VERSION_TABLE} == tables

        db.downgrade(engine)
        with engine.connect() as connection:
            left = set(inspect(connection).get_table_names()) - {db.VERSION_TABLE}
        assert left == set()
        assert db.current_revision(engine) is None

        db.upgrade(engine)  # and back up again: the lineage is repeatable
        assert db.current_revision(engine) == db.head_revision()
    finally:
        engine.dispose()


def test_a_database_that_was_never_migrated_is_refused_with_the_command_to_run(database_url):
    engine = db.create_db_engine(database_url)
    try:
        with pytest.raises(ConfigurationError, match="db upgrade"):
            db.check_migrated(engine)
        db.upgrade(engine)
        db.check_migrated(engine)
    finally:
        engine.dispose()


def test_a_bad_database_url_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match="not a database URL"):
        db.create_db_engine("nonsense")
