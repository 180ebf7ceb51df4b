"""``flask hotclicks ...``: each command one call into the core, errors turned into exit codes here.

==========================================  ==================================================
``db upgrade`` / ``db current``             migrate the schema / show its revision
``profiles list|add|edit|delete``           manage test profiles
``stats DELIVERY``                          the tracking statistics of a delivery, as a table
``purge --older-than 400d``                 delete old clicks and opens (never tracked URLs)
``sign-url --message ID --tracked-url ID``  print a signed click link, for debugging
``bots networks list|add|remove|check``     the named client networks (scanners, proxies)
``roll-up [--rebuild]``                     fold settled clicks into the report aggregates
==========================================  ==================================================
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click
from flask import current_app
from flask.cli import with_appcontext

from hotclicks import db, links, networks
from hotclicks.db import admin, rollup
from hotclicks.db.models import utcnow
from hotclicks.db.stats import delivery_figures
from hotclicks.errors import HotClicksError
from hotclicks.settings import parse_duration

from .extension import HotClicksState, get_state

F = TypeVar("F", bound=Callable[..., Any])


def _state() -> HotClicksState:
    return get_state(current_app._get_current_object())  # type: ignore[attr-defined]


def _command(function: F) -> F:
    """The one boundary where HotClicks' errors become a message and exit code 1."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except HotClicksError as exc:
            raise click.ClickException(str(exc)) from None

    return with_appcontext(wrapper)  # type: ignore[return-value]


@click.group("hotclicks", help="HotClicks: email click tracking.")
def hotclicks_cli() -> None:
    pass


# -- db ------------------------------------------------------------------------------------------


@hotclicks_cli.group("db", help="Manage the HotClicks database schema.")
def db_group() -> None:
    pass


@db_group.command("upgrade", help="Create the tables or migrate them to the newest revision.")
@_command
def db_upgrade() -> None:
    engine = _state().engine
    db.upgrade(engine)
    click.echo(f"database at revision {db.current_revision(engine)} (head)")


@db_group.command("current", help="Show the revision the database is at.")
@_command
def db_current() -> None:
    click.echo(db.current_revision(_state().engine) or "none (run 'flask hotclicks db upgrade')")


# -- profiles ------------------------------------------------------------------------------------


def _attributes(values: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; a VALUE that is JSON (a number, true, a list...) is read as such."""
    attributes: dict[str, Any] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--attr")
        try:
            attributes[key.strip()] = json.loads(value)
        except ValueError:
            attributes[key.strip()] = value
    return attributes


@hotclicks_cli.group("profiles", help="Manage test profiles (named kinds of recipient).")
def profiles_group() -> None:
    pass


@profiles_group.command("list", help="List the test profiles.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_command
def profiles_list(as_json: bool) -> None:
    with _state().sessions() as session:
        profiles = admin.list_profiles(session)
    if as_json:
        click.echo(
            json.dumps(
                [{"id": p.id, "name": p.name, "address": p.address, "attributes": p.attributes} for p in profiles],
                indent=2,
            )
        )
        return
    if not profiles:
        click.echo("no test profiles (add one with 'flask hotclicks profiles add NAME ADDRESS')")
        return
    _table(
        ["id", "name", "address", "attributes"],
        [[p.id, p.name, p.address, json.dumps(p.attributes, sort_keys=True)] for p in profiles],
    )


@profiles_group.command("add", help="Create a test profile.")
@click.argument("name")
@click.argument("address")
@click.option("--attr", "attrs", multiple=True, metavar="KEY=VALUE", help="An attribute (repeatable).")
@_command
def profiles_add(name: str, address: str, attrs: tuple[str, ...]) -> None:
    with _state().sessions.begin() as session:
        profile = admin.create_profile(session, name, address, _attributes(attrs))
        click.echo(f"created test profile {profile.name} ({profile.address}), id {profile.id}")


@profiles_group.command("edit", help="Change a test profile (given by name or id).")
@click.argument("profile")
@click.option("--name", help="A new name.")
@click.option("--address", help="A new address.")
@click.option("--attr", "attrs", multiple=True, metavar="KEY=VALUE", help="Set an attribute (repeatable).")
@click.option("--remove", multiple=True, metavar="KEY", help="Remove an attribute (repeatable).")
@_command
def profiles_edit(
    profile: str, name: str | None, address: str | None, attrs: tuple[str, ...], remove: tuple[str, ...]
) -> None:
    with _state().sessions.begin() as session:
        changed = admin.update_profile(
            session, profile, name=name, address=address, attributes=_attributes(attrs), remove=remove
        )
        click.echo(f"updated test profile {changed.name} ({changed.address})")


@profiles_group.command("delete", help="Delete a test profile (given by name or id).")
@click.argument("profile")
@_command
def profiles_delete(profile: str) -> None:
    with _state().sessions.begin() as session:
        admin.delete_profile(session, profile)
    click.echo(f"deleted test profile {profile}")


# -- stats, purge, sign-url ------------------------------------------------------------------------


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(
            cell.rjust(width) if cell.replace(".", "", 1).replace("%", "").isdigit() else cell.ljust(width)
            for cell, width in zip(row, widths)
        ).rstrip()

    click.echo(line(cells[0]))
    click.echo("  ".join("-" * w for w in widths))
    for row in cells[1:]:
        click.echo(line(row))


@hotclicks_cli.command("stats", help="Tracking statistics of a delivery, one line per execution.")
@click.argument("delivery")
@_command
def stats(delivery: str) -> None:
    with _state().reading() as session:
        lines = delivery_figures(session, delivery)
    if lines is None:
        raise click.ClickException(f"no delivery {delivery!r}")
    if not lines:
        click.echo(f"delivery {delivery} has no execution yet")
        return
    _table(
        ["execution", "started", "sent", "delivered", "failed", "opens", "clicks", "unique",
         "reactivity", "opt-outs", "bot clicks"],
        [
            [
                s.execution.id,
                s.execution.started_at.strftime("%Y-%m-%d %H:%M"),
                s.sent,
                s.delivered,
                s.failed,
                s.opens,
                s.clicks,
                s.clickers,
                f"{s.reactivity:.1f}%",
                s.opt_outs,
                s.machine_clicks,
            ]
            for s in lines
        ],
    )


def parse_age(value: str) -> dt.timedelta:
    """``400d``, ``12w``, ``36h`` or a number of days: the relay's durations, counted in days when bare."""
    try:
        return parse_duration(value, default_unit="d")
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an age like 400d, 12w or 36h", param_hint="--older-than") from None


@hotclicks_cli.command("purge", help="Delete clicks and opens older than an age; tracked URLs stay, so old links keep working.")
@click.option("--older-than", "older_than", required=True, metavar="AGE", help="Like 400d, 12w or 36h.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@_command
def purge(older_than: str, yes: bool) -> None:
    before = utcnow() - parse_age(older_than)
    if not yes:
        click.confirm(f"Delete clicks and opens from before {before:%Y-%m-%d %H:%M} UTC?", abort=True)
    with _state().sessions.begin() as session:
        counts = admin.purge_events(session, before)
    click.echo(", ".join(f"{n} {what}" for what, n in counts.items()) + " deleted")


@hotclicks_cli.command("sign-url", help="Print a signed click link (or open/unsubscribe link), for debugging.")
@click.option("--message", "message_id", type=int, help="The message's id.")
@click.option("--tracked-url", "tracked_url_id", type=int, help="The tracked URL's id (click links).")
@click.option("--url", help="A personalized target for this recipient (click links).")
@click.option("--kind", type=click.Choice(["click", "open", "unsubscribe", "tracking-opt-out"]), default="click")
@click.option("--decode", "token_to_decode", metavar="TOKEN", help="Decode TOKEN instead and print what it stands for.")
@_command
def sign_url(
    message_id: int | None, tracked_url_id: int | None, url: str | None, kind: str, token_to_decode: str | None
) -> None:
    state = _state()
    base = (current_app.config["HOTCLICKS_BASE_URL"] or current_app.config["HOTCLICKS_TRACKING_PREFIX"])
    if token_to_decode:
        token = state.signer.unsign(token_to_decode)
        click.echo(f"kind={token.kind.name.lower()} message={token.message_id} "
                   f"tracked_url={token.tracked_url_id} url={token.url}")
        return
    if message_id is None:
        raise click.UsageError("give --message ID (or --decode TOKEN)")
    if kind == "click":
        if tracked_url_id is None:
            raise click.UsageError("a click link needs --tracked-url")
        click.echo(links.click_url(state.signer, base, message_id, tracked_url_id, url))
    elif kind == "open":
        click.echo(links.open_url(state.signer, base, message_id))
    elif kind == "unsubscribe":
        click.echo(links.unsubscribe_url(state.signer, base, message_id))
    else:
        click.echo(links.tracking_opt_out_url(state.signer, base, message_id))


# -- bots networks -------------------------------------------------------------------------------


@hotclicks_cli.group("bots", help="The rules that tell people from machines.")
def bots_group() -> None:
    pass


@bots_group.group("networks", help="Named client networks: scanners, image proxies, Apple's relays.")
def networks_group() -> None:
    pass


@networks_group.command("list", help="List the network lists in use: shipped, and the operator's.")
@_command
def networks_list() -> None:
    directory = _state().networks_dir
    shipped = {n.name for n in networks.shipped_lists()}
    operator = networks.load_lists(directory)
    operator_names = {n.name for n in operator}

    def origin(name: str) -> str:
        if name not in operator_names:
            return "shipped"
        return "operator (replaces shipped)" if name in shipped else "operator"

    _table(
        ["name", "kind", "prefixes", "retrieved", "origin", "source"],
        [
            [n.name, n.kind, len(n.networks), n.retrieved.isoformat(), origin(n.name), n.source]
            for n in networks.combine(networks.shipped_lists(), operator)
        ],
    )
    click.echo(f"operator directory: {directory}")


@networks_group.command("add", help="Check a network list file and copy it into the operator directory.")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@_command
def networks_add(file: str) -> None:
    directory = _state().networks_dir
    added = networks.install_list(file, directory)  # type: ignore[arg-type]
    replaces = " (it replaces the shipped list of that name)" if any(
        n.name == added.name for n in networks.shipped_lists()
    ) else ""
    click.echo(f"added network list {added.name} ({added.kind}, {len(added.networks)} prefixes) "
               f"to {directory}{replaces}; running servers use it once restarted")


@networks_group.command("remove", help="Delete a list from the operator directory.")
@click.argument("name")
@_command
def networks_remove(name: str) -> None:
    networks.remove_list(name, _state().networks_dir)
    click.echo(f"removed network list {name}; running servers forget it once restarted")


@networks_group.command("check", help="Which network list an IP address is in.")
@click.argument("address")
@_command
def networks_check(address: str) -> None:
    found = networks.check(address, _state().networks_dir)
    click.echo(f"{address}: {found.name} ({found.kind})" if found else f"{address}: in no network list")


# -- roll-up -------------------------------------------------------------------------------------


@hotclicks_cli.command(
    "roll-up",
    help="Fold the settled clicks, opens and messages into the report aggregates, as the "
    "extension's roll-up thread does (for HOTCLICKS_ROLLUP_INTERVAL=0 and a timer).",
)
@click.option("--rebuild", is_flag=True, help="Clear the aggregates first: every row is folded again from the start.")
@_command
def roll_up(rebuild: bool) -> None:
    with _state().sessions.begin() as session:
        if rebuild:
            rollup.rebuild(session)
        folded = rollup.roll_up(session)
    cleared = "aggregates cleared; " if rebuild else ""
    click.echo(
        f"{cleared}folded {folded['message']} messages, {folded['click']} clicks, {folded['open']} opens "
        f"(rows are folded once they are {rollup.SETTLE_SECONDS:g} s old; the reports count the others live)"
    )
