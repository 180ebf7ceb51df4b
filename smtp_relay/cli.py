"""``hotclicks-relay``: run the relay, look at or retry its spool, or migrate its database.

Every setting comes from, in this order of precedence: a flag, a ``HOTCLICKS_*`` environment
variable, the TOML file given with ``--config`` (``HOTCLICKS_CONFIG``), the default. Errors in the
settings are turned into a message and exit code 2 here, at one boundary.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import getpass
import logging
import os
import signal
import socket
import sys
import tomllib
from collections.abc import Callable, Sequence
from typing import Any

from hotclicks import db
from hotclicks.db import admin
from hotclicks.errors import ConfigurationError
from hotclicks.settings import RELAY, Setting

from .auth import hash_password
from .config import RelayConfig, parse_host_port
from .handler import RelaySMTP
from .processes import process_spool, supervise
from .server import _tls_context, build_handler, smtp_kwargs
from .spool import RETRY_TRIGGER, iter_entries, spool_dirs

log = logging.getLogger("smtp_relay")

#: Every setting of the relay, in the order ``--help`` shows them: hotclicks.settings declares them.
OPTIONS = RELAY
_BY_NAME = {option.name: option for option in OPTIONS}


def _describe(option: Setting) -> str:
    default = option.default
    if isinstance(default, tuple):
        default = ",".join(default) or "none"
    shown = "required" if option.required else f"default: {default}"
    return f"{option.help} (env {option.key}; TOML {option.name}; {shown})"


def _options_parser() -> argparse.ArgumentParser:
    """The settings, as a parent of every command; absent flags stay absent (SUPPRESS)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(
        "--config",
        default=argparse.SUPPRESS,
        metavar="FILE",
        help="TOML file of settings, keys as below (env HOTCLICKS_CONFIG)",
    )
    for option in OPTIONS:
        if option.boolean:
            parser.add_argument(option.flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=_describe(option))
        else:
            parser.add_argument(option.flag, dest=option.name, default=argparse.SUPPRESS, choices=option.choices, metavar=option.metavar, help=_describe(option))
    return parser


def _parser() -> argparse.ArgumentParser:
    options = _options_parser()
    parser = argparse.ArgumentParser(
        prog="hotclicks-relay",
        parents=[options],
        description="An SMTP relay that rewrites every link of outgoing mail into a signed "
        "tracked link, spools it durably and forwards it to your mail server.",
        epilog="Without a command, runs the relay. Precedence: flag, then HOTCLICKS_* variable, "
        "then --config file, then default. See docs/relay.md.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    db_parser = commands.add_parser("db", parents=[options], help="manage the database schema")
    db_parser.add_argument("action", choices=["upgrade", "current"])
    commands.add_parser("queue", parents=[options], help="list the copies waiting in the spool")
    commands.add_parser("retry", parents=[options], help="ask the running relay to retry every deferred copy now")
    commands.add_parser("hash-password", parents=[options], help="print a password hash for --auth-file (reads the password from stdin)")
    accounts = commands.add_parser("accounts", parents=[options], help="manage the SMTP AUTH accounts of --auth-database")
    actions = accounts.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = actions.add_parser("add", parents=[options], help="add an account; the password is read from a prompt or stdin, never the command line")
    add.add_argument("login")
    add.add_argument("--replace", action="store_true", help="set a new password for an existing account (and enable it again)")
    actions.add_parser("list", parents=[options], help="list the accounts")
    disable = actions.add_parser("disable", parents=[options], help="disable an account (it can no longer authenticate)")
    disable.add_argument("login")
    return parser


def _read_password() -> str:
    """From a prompt on a terminal, else the first line of stdin: never from argv (``ps`` shows it)."""
    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise ConfigurationError("the two passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise ConfigurationError("empty password (give it on stdin or at the prompt)")
    return password


def run_accounts_command(database_url: str, args: argparse.Namespace) -> None:
    engine = db.create_db_engine(database_url)
    try:
        db.check_migrated(engine)
        with db.session_factory(engine).begin() as session:
            try:
                if args.action == "add":
                    account = admin.add_relay_account(session, args.login, hash_password(_read_password()), replace=args.replace)
                    print(f"account {account.login!r} {'updated' if args.replace else 'added'}")
                elif args.action == "disable":
                    account = admin.disable_relay_account(session, args.login)
                    print(f"account {account.login!r} disabled since {account.disabled_at:%Y-%m-%d %H:%M:%S} UTC")
                else:
                    accounts = admin.relay_accounts(session)
                    for account in accounts:
                        state = f"disabled {account.disabled_at:%Y-%m-%d %H:%M}" if account.disabled_at else "enabled"
                        print(f"{account.login}  created {account.created_at:%Y-%m-%d %H:%M}  {state}")
                    print(f"{len(accounts)} accounts")
            except admin.AccountError as exc:
                raise ConfigurationError(str(exc)) from None
    finally:
        engine.dispose()


def resolve_settings(args: argparse.Namespace, environ: dict[str, str] | None = None) -> dict[str, Any]:
    """Every setting's value: flag, then environment, then TOML file, then default."""
    environ = dict(os.environ if environ is None else environ)
    file_values: dict[str, Any] = {}
    config_file = getattr(args, "config", None) or environ.get("HOTCLICKS_CONFIG")
    if config_file:
        try:
            with open(config_file, "rb") as file:
                loaded = tomllib.load(file)
        except OSError as exc:
            raise ConfigurationError(f"cannot read --config {config_file!r}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"--config {config_file!r} is not valid TOML: {exc}") from None
        for key, value in loaded.items():
            name = key.replace("-", "_")
            if name not in _BY_NAME:
                known = ", ".join(sorted(_BY_NAME))
                raise ConfigurationError(f"unknown setting {key!r} in {config_file!r}; known settings: {known}")
            file_values[name] = value
    settings = {}
    for option in OPTIONS:
        if hasattr(args, option.name):
            value, source = getattr(args, option.name), option.flag
        elif option.key in environ:
            value, source = environ[option.key], option.key
        elif option.name in file_values:
            value, source = file_values[option.name], f"{option.name} in {config_file}"
        else:
            settings[option.name] = option.value()
            continue
        try:
            settings[option.name] = option.parse(value) if value is not None else None
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"{source}: {value!r} is not valid ({exc})") from None
        if option.choices and settings[option.name] not in option.choices:
            raise ConfigurationError(f"{source}: {value!r} is not one of {', '.join(option.choices)}")
    return settings


def config_from_settings(settings: dict[str, Any]) -> RelayConfig:
    if not settings["base_url"]:
        raise ConfigurationError("--base-url (or HOTCLICKS_BASE_URL) is required")
    if not settings["secret_key"]:
        raise ConfigurationError("--secret-key (or HOTCLICKS_SECRET_KEY) is required; it must match the Flask app's")
    values = {k: v for k, v in settings.items() if k != "log_level"}
    values["listen"] = parse_host_port(settings["listen"], "--listen")
    values["upstream"] = parse_host_port(settings["upstream"], "--upstream")
    values["personal_params"] = frozenset(p.lower() for p in settings["personal_params"])
    values["excluded_domains"] = frozenset(d.lower() for d in settings["excluded_domains"])
    return RelayConfig(**values)


def run_db_command(database_url: str, action: str) -> None:
    engine = db.create_db_engine(database_url)
    try:
        if action == "upgrade":
            db.upgrade(engine)
            print(f"database at revision {db.current_revision(engine)} (head)")
        else:
            print(db.current_revision(engine) or "none (run 'hotclicks-relay db upgrade')")
    finally:
        engine.dispose()


def show_queue(spool_dir: str) -> int:
    """Print the spool (each relay process's, with ``--processes``), one copy a line; how many
    copies there are."""
    entries = [entry for directory in spool_dirs(spool_dir) for entry in iter_entries(directory / "queue")]
    for entry in entries:
        state = f"deferred, attempt {entry.attempts}, next {entry.next_attempt_at}" if entry.attempts else "queued"
        print(
            f"{entry.id}  accepted {entry.accepted_at}  {state}  from <{entry.mail_from}> "
            f"to {','.join(entry.recipients)}  delivery={entry.delivery or '-'} "
            f"message={entry.message_id if entry.message_id is not None else 'untracked'}"
            + (f"  last reply: {entry.last_reply}" if entry.last_reply else "")
        )
    print(f"{len(entries)} copies in the spool {spool_dir}")
    return len(entries)


def request_retry(spool_dir: str) -> None:
    """Ask the relay that owns the spool (every relay process, with ``--processes``) to retry
    every deferred copy now."""
    directories = spool_dirs(spool_dir)
    if not directories:
        raise ConfigurationError(f"no spool at {spool_dir!r} (--spool-dir)")
    for directory in directories:
        (directory / RETRY_TRIGGER).touch()
    print(f"retry requested: the relay using {spool_dir} retries its deferred copies within a second")


async def serve(config: RelayConfig, sock: socket.socket | None = None, ready: Callable[[], None] | None = None) -> None:
    """Run the relay until SIGTERM or SIGINT; in-flight transactions finish first.

    With ``sock`` (a relay process of ``--processes``), it accepts on that socket, bound by the
    supervisor, and calls ``ready`` once it does instead of announcing itself."""
    handler = build_handler(config)
    loop = asyncio.get_running_loop()
    kwargs = smtp_kwargs(config, handler.authenticator)
    ssl_context = _tls_context(config) if config.implicit_tls else None
    address = {"sock": sock} if sock is not None else {"host": config.listen[0], "port": config.listen[1]}
    try:
        await handler.start()
        server = await loop.create_server(lambda: RelaySMTP(handler, loop=loop, **kwargs), ssl=ssl_context, **address)
    except OSError as exc:
        await handler.stop(0)
        handler.spool.close()
        raise ConfigurationError(f"cannot listen on {config.listen[0]}:{config.listen[1]} (--listen): {exc}") from None
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    host, port = config.listen
    log.info("relay listening on %s:%s, forwarding to %s:%s, spool %s", host, port, *config.upstream, config.spool_dir)
    if ready is None:
        print(f"hotclicks-relay listening on {host}:{port}", flush=True)
    else:
        ready()
    await stop.wait()
    log.info("stopping: no new connections, finishing the transactions in flight")
    server.close()
    await handler.stop()
    handler.spool.close()
    handler.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = resolve_settings(args)
        logging.basicConfig(level=settings["log_level"], format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        if args.command == "db":
            run_db_command(settings["database_url"], args.action)
        elif args.command == "queue":
            show_queue(settings["spool_dir"])
        elif args.command == "retry":
            request_retry(settings["spool_dir"])
        elif args.command == "hash-password":
            print(hash_password(_read_password()))
        elif args.command == "accounts":
            run_accounts_command(settings["database_url"], args)
        else:
            config = config_from_settings(settings)
            if config.processes > 1:
                _check_start(config)
                return supervise(config, _run_process)
            asyncio.run(serve(config))
    except ConfigurationError as exc:
        return _error(exc)
    return 0


def _error(exc: ConfigurationError) -> int:
    print(f"hotclicks-relay: error: {exc}", file=sys.stderr)
    return 2


def _check_start(config: RelayConfig) -> None:
    """Fail as a single relay would at start (settings, TLS files, database, spool), once and
    before any relay process is forked: their errors would be said N times, or lost."""
    handler = build_handler(dataclasses.replace(config, spool_dir=process_spool(config.spool_dir, 0)))
    try:
        smtp_kwargs(config, handler.authenticator)
    finally:
        handler.close()


def _run_process(config: RelayConfig, sock: socket.socket, ready: Callable[[], None]) -> int:
    """One relay process of ``--processes``, in the supervisor's fork; its exit code."""
    try:
        asyncio.run(serve(config, sock, ready))
    except ConfigurationError as exc:
        return _error(exc)
    return 0
