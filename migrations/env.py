"""Alembic environment of HotClicks' own lineage (branch ``hotclicks``, own version table).

Run programmatically through ``hotclicks.db.upgrade`` (the CLIs call it), which hands over the
engine in ``config.attributes["engine"]``; with the ``alembic`` command, set
``sqlalchemy.url`` in the config.
"""

from alembic import context
from sqlalchemy import create_engine

from hotclicks.db import VERSION_TABLE
from hotclicks.db.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        version_table=VERSION_TABLE,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = config.attributes.get("engine")
    if engine is None:
        engine = create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            version_table=VERSION_TABLE,
            # SQLite cannot ALTER most things; batch mode recreates tables instead.
            render_as_batch=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
