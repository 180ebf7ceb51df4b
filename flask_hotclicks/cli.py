"""``flask hotclicks ...``: each command one call into the core, errors turned into exit codes here."""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import with_appcontext

from hotclicks import db

from .extension import get_state


@click.group("hotclicks", help="HotClicks: email click tracking.")
def hotclicks_cli() -> None:
    pass


@hotclicks_cli.group("db", help="Manage the HotClicks database schema.")
def db_group() -> None:
    pass


@db_group.command("upgrade", help="Create the tables or migrate them to the newest revision.")
@with_appcontext
def db_upgrade() -> None:
    engine = get_state(current_app._get_current_object()).engine  # type: ignore[attr-defined]
    db.upgrade(engine)
    click.echo(f"database at revision {db.current_revision(engine)} (head)")


@db_group.command("current", help="Show the revision the database is at.")
@with_appcontext
def db_current() -> None:
    engine = get_state(current_app._get_current_object()).engine  # type: ignore[attr-defined]
    click.echo(db.current_revision(engine) or "none (run 'flask hotclicks db upgrade')")
