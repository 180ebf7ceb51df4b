"""The one way HotClicks writes rows that someone else may be writing at the same moment.

Rows several relays or workers may create at once (deliveries, executions, tracked URLs,
recipients, content variants, the reports' aggregates) are written with ``INSERT ... ON CONFLICT``,
so the database's unique constraints decide between concurrent writers, on SQLite and on
PostgreSQL alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from sqlalchemy import Connection, Select, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from .models import Base

__all__ = ["get_or_create", "upsert"]

M = TypeVar("M", bound=Base)


def upsert(
    executor: Session | Connection,
    table: Any,
    rows: list[dict[str, Any]],
    keys: Sequence[str],
    *,
    add: Sequence[str] = (),
) -> None:
    """Insert ``rows`` into ``table``; a row whose ``keys`` exist already (whoever inserted it) is
    left alone, or, with ``add``, has those counters of the new row added to its own."""
    if not rows:
        return
    bind = executor.get_bind() if isinstance(executor, Session) else executor
    dialect = bind.dialect.name
    if dialect == "postgresql":
        statement: Any = postgresql.insert(table)
    elif dialect == "sqlite":
        statement = sqlite.insert(table)
    else:  # pragma: no cover - only SQLite and PostgreSQL are supported
        raise NotImplementedError(f"HotClicks does not support {dialect}")
    if add:
        statement = statement.on_conflict_do_update(
            index_elements=list(keys),
            set_={c: table.c[c] + statement.excluded[c] for c in add},
        )
    else:
        statement = statement.on_conflict_do_nothing(index_elements=list(keys))
    executor.execute(statement, rows)


def get_or_create(
    session: Session, model: type[M], keys: Mapping[str, Any], values: Mapping[str, Any] = {}
) -> M:
    """The row of ``model`` with ``keys``, inserted with ``values`` when missing (see :func:`upsert`)."""
    query: Select[tuple[M]] = select(model).filter_by(**keys)
    found = session.scalars(query).first()
    if found is not None:
        return found
    upsert(session, model.__table__, [{**keys, **values}], list(keys))
    return session.scalars(query).one()
