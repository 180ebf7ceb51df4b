"""``hotclicks-relay``: run the relay, look at or retry its spool, or migrate its database.

Every setting comes from, in this order of precedence: a flag, a ``HOTCLICKS_*`` environment
variable, the TOML file given with ``--config`` (``HOTCLICKS_CONFIG``), the default. Errors in the
settings are turned into a message and exit code 2 here, at one boundary.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import getpass
import logging
import os
import re
import signal
import sys
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hotclicks import db
from hotclicks.db import admin
from hotclicks.errors import ConfigurationError

from .auth import hash_password
from .config import DEFAULT_SPOOL_DIR, DKIM_SIGNED_POLICIES, UPSTREAM_SECURITY, RelayConfig, parse_host_port
from .handler import RelaySMTP
from .server import _tls_context, build_handler, smtp_kwargs
from .spool import RETRY_TRIGGER, iter_entries

log = logging.getLogger("smtp_relay")

DEFAULT_LISTEN = "127.0.0.1:2525"
DEFAULT_UPSTREAM = "127.0.0.1:25"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(value: str) -> dt.timedelta:
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError("expected a duration like 30s, 15m, 1h or 5d")
    return dt.timedelta(seconds=float(match[1]) * _UNITS[match[2]])


def _bool(value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    lowered = str(value).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _workers(value: str | int) -> int:
    """A number of worker processes, or "auto": one when the machine has another core to give."""
    if str(value).strip().lower() == "auto":
        return 1 if (os.cpu_count() or 1) >= 2 else 0
    workers = int(value)
    if workers < 0:
        raise ValueError("expected 0 or more, or auto")
    return workers


def _list(value: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    return tuple(str(item).strip() for item in items if str(item).strip())


@dataclass(frozen=True)
class _Option:
    name: str  #: RelayConfig field and TOML key
    flag: str
    env: str
    default: Any
    help: str
    convert: Callable[[Any], Any] = str
    choices: Sequence[str] | None = None
    boolean: bool = False
    metavar: str | None = None


#: Every setting of the relay, in the order ``--help`` shows them (docs/relay.md mirrors this).
OPTIONS = (
    _Option("listen", "--listen", "LISTEN", DEFAULT_LISTEN, "HOST:PORT to accept mail on; any address but loopback needs --auth-file, --auth-database or --allow-networks", metavar="HOST:PORT"),
    _Option("upstream", "--upstream", "UPSTREAM", DEFAULT_UPSTREAM, "HOST:PORT of the mail server to forward to", metavar="HOST:PORT"),
    _Option("database_url", "--database-url", "DATABASE_URL", db.DEFAULT_DATABASE_URL, "SQLAlchemy URL of the database shared with the Flask app", metavar="URL"),
    _Option("base_url", "--base-url", "BASE_URL", None, "public URL under which the Flask app serves the tracking routes, e.g. https://t.example.com/t (required)", metavar="URL"),
    _Option("secret_key", "--secret-key", "SECRET_KEY", None, "key that signs tracking links, the same as the Flask app's (required)", metavar="KEY"),
    _Option("fallback_keys", "--fallback-keys", "SECRET_KEY_FALLBACKS", (), "comma-separated older keys still accepted after a rotation", _list, metavar="KEYS"),
    _Option("personal_params", "--personal-params", "PERSONAL_PARAMS", (), "comma-separated query parameters that identify a recipient", _list, metavar="NAMES"),
    _Option("excluded_domains", "--exclude-domains", "EXCLUDED_DOMAINS", (), "comma-separated domains whose links are not tracked", _list, metavar="DOMAINS"),
    _Option("open_pixel", "--open-pixel", "OPEN_PIXEL", True, "add the open pixel to HTML parts", _bool, boolean=True),
    _Option("transactional_period", "--transactional-period", "TRANSACTIONAL_PERIOD", "month", "period of a transactional delivery's executions", choices=("day", "week", "month")),
    _Option("quiet_gap", "--quiet-gap", "QUIET_GAP", "1h", "a recurring delivery without X-HotClicks-Run starts a new run after this long without a message", _duration, metavar="DURATION"),
    _Option("spool_dir", "--spool-dir", "SPOOL_DIR", DEFAULT_SPOOL_DIR, "directory where accepted mail waits for the upstream (this relay's alone)", metavar="DIR"),
    _Option("max_message_size", "--max-message-size", "MAX_MESSAGE_SIZE", 32 * 1024 * 1024, "largest message accepted, in bytes (552 above)", int, metavar="BYTES"),
    _Option("max_recipients", "--max-recipients", "MAX_RECIPIENTS", 1000, "most recipients per transaction (452 above)", int, metavar="N"),
    _Option("upstream_security", "--upstream-security", "UPSTREAM_SECURITY", "none", "upstream connection: plain, STARTTLS or TLS", choices=UPSTREAM_SECURITY),
    _Option("upstream_verify", "--upstream-verify", "UPSTREAM_VERIFY", True, "check the upstream's TLS certificate", _bool, boolean=True),
    _Option("upstream_ca_file", "--upstream-ca-file", "UPSTREAM_CA_FILE", None, "CA bundle to check the upstream's certificate with (default: the system's)", metavar="FILE"),
    _Option("upstream_username", "--upstream-username", "UPSTREAM_USERNAME", None, "user for AUTH to the upstream", metavar="USER"),
    _Option("upstream_password", "--upstream-password", "UPSTREAM_PASSWORD", None, "password for AUTH to the upstream (prefer the env variable or the config file)", metavar="PASSWORD"),
    _Option("upstream_timeout", "--upstream-timeout", "UPSTREAM_TIMEOUT", 60.0, "seconds to wait for the upstream before counting it down", float, metavar="SECONDS"),
    _Option("upstream_connections", "--upstream-connections", "UPSTREAM_CONNECTIONS", 8, "connections to the upstream, each delivering one copy at a time", int, metavar="N"),
    _Option("rewrite_workers", "--rewrite-workers", "REWRITE_WORKERS", "auto", "worker processes that rewrite the copies, so that rewriting uses another core; 0: the relay process rewrites; auto: 1 on a machine of 2 cores or more", _workers, metavar="N"),
    _Option("retry_delay", "--retry-delay", "RETRY_DELAY", "1m", "first retry after a temporary failure; doubles each time", _duration, metavar="DURATION"),
    _Option("retry_max_delay", "--retry-max-delay", "RETRY_MAX_DELAY", "1h", "longest wait between two retries", _duration, metavar="DURATION"),
    _Option("max_queue_age", "--max-queue-age", "MAX_QUEUE_AGE", "5d", "a copy not delivered this long after acceptance is marked failed", _duration, metavar="DURATION"),
    _Option("bounces", "--bounces", "BOUNCES", True, "send the sender a delivery status notification (RFC 3464) for a copy the upstream refuses (5xx) or that is given up; never for mail from <>", _bool, boolean=True),
    _Option("keep_recipient_samples", "--keep-recipient-samples", "KEEP_RECIPIENT_SAMPLES", True, "keep a sample of each content variant from real recipients (test profiles' copies are always kept)", _bool, boolean=True),
    _Option("dkim_key_file", "--dkim-key-file", "DKIM_KEY_FILE", None, "PEM private key to DKIM-sign every message after rewriting", metavar="FILE"),
    _Option("dkim_selector", "--dkim-selector", "DKIM_SELECTOR", None, "DKIM selector (s=)", metavar="SELECTOR"),
    _Option("dkim_domain", "--dkim-domain", "DKIM_DOMAIN", None, "DKIM signing domain (d=)", metavar="DOMAIN"),
    _Option("dkim_signed", "--dkim-signed", "DKIM_SIGNED", "keep", "a message that arrives DKIM-signed, when the relay has no key: keep it unchanged (untracked) or strip the signature and track it", choices=DKIM_SIGNED_POLICIES),
    _Option("tls_cert_file", "--tls-cert-file", "TLS_CERT_FILE", None, "certificate (PEM) for STARTTLS or implicit TLS", metavar="FILE"),
    _Option("tls_key_file", "--tls-key-file", "TLS_KEY_FILE", None, "private key (PEM) of --tls-cert-file", metavar="FILE"),
    _Option("implicit_tls", "--implicit-tls", "IMPLICIT_TLS", False, "TLS from the first byte (port 465 style) instead of STARTTLS", _bool, boolean=True),
    _Option("auth_file", "--auth-file", "AUTH_FILE", None, "file of user:hash lines for SMTP AUTH PLAIN/LOGIN (see 'hash-password'); needs TLS", metavar="FILE"),
    _Option("auth_database", "--auth-database", "AUTH_DATABASE", False, "SMTP AUTH PLAIN/LOGIN against the accounts in the database (see 'accounts'); needs TLS", _bool, boolean=True),
    _Option("auth_max_failures", "--auth-max-failures", "AUTH_MAX_FAILURES", 5, "failed AUTH attempts a client address (IPv6: its /64) may make within --auth-failure-window; then 421 until the oldest ages out", int, metavar="N"),
    _Option("auth_failure_window", "--auth-failure-window", "AUTH_FAILURE_WINDOW", "15m", "the window in which failed AUTH attempts are counted", _duration, metavar="DURATION"),
    _Option("auth_failure_delay", "--auth-failure-delay", "AUTH_FAILURE_DELAY", "1s", "pause before answering a failed AUTH", _duration, metavar="DURATION"),
    _Option("allow_networks", "--allow-networks", "ALLOW_NETWORKS", (), "comma-separated client networks allowed to send without AUTH, e.g. 10.0.0.0/8", _list, metavar="CIDRS"),
    _Option("client_timeout", "--client-timeout", "CLIENT_TIMEOUT", "5m", "disconnect a client that sends nothing for this long (idle, or stopped mid-command or mid-DATA)", _duration, metavar="DURATION"),
    _Option("max_connections", "--max-connections", "MAX_CONNECTIONS", 1000, "client connections open at once (421 beyond)", int, metavar="N"),
    _Option("max_connections_per_client", "--max-connections-per-client", "MAX_CONNECTIONS_PER_CLIENT", 100, "client connections open at once from one address (421 beyond)", int, metavar="N"),
    _Option("hostname", "--hostname", "HOSTNAME", None, "name in the SMTP banner and EHLO (default: this machine's FQDN)", metavar="NAME"),
    _Option("log_level", "--log-level", "LOG_LEVEL", "INFO", "logging level", choices=("DEBUG", "INFO", "WARNING", "ERROR")),
)
_BY_NAME = {option.name: option for option in OPTIONS}


def _describe(option: _Option) -> str:
    default = option.default
    if isinstance(default, tuple):
        default = ",".join(default) or "none"
    shown = "required" if default is None and option.name in ("base_url", "secret_key") else f"default: {default}"
    return f"{option.help} (env HOTCLICKS_{option.env}; TOML {option.name}; {shown})"


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
        elif f"HOTCLICKS_{option.env}" in environ:
            value, source = environ[f"HOTCLICKS_{option.env}"], f"HOTCLICKS_{option.env}"
        elif option.name in file_values:
            value, source = file_values[option.name], f"{option.name} in {config_file}"
        else:
            settings[option.name] = option.convert(option.default) if option.default is not None else None
            continue
        try:
            settings[option.name] = option.convert(value) if value is not None else None
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
    """Print the spool, one copy a line; how many copies there are."""
    entries = list(iter_entries(Path(spool_dir) / "queue"))
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
    """Ask the relay that owns the spool to retry every deferred copy now."""
    directory = Path(spool_dir)
    if not (directory / "queue").is_dir():
        raise ConfigurationError(f"no spool at {spool_dir!r} (--spool-dir)")
    (directory / RETRY_TRIGGER).touch()
    print(f"retry requested: the relay using {spool_dir} retries its deferred copies within a second")


async def serve(config: RelayConfig) -> None:
    """Run the relay until SIGTERM or SIGINT; in-flight transactions finish first."""
    handler = build_handler(config)
    loop = asyncio.get_running_loop()
    kwargs = smtp_kwargs(config, handler.authenticator)
    ssl_context = _tls_context(config) if config.implicit_tls else None
    try:
        await handler.start()
        server = await loop.create_server(
            lambda: RelaySMTP(handler, loop=loop, **kwargs), *config.listen, ssl=ssl_context
        )
    except OSError as exc:
        await handler.stop(0)
        handler.spool.close()
        raise ConfigurationError(f"cannot listen on {config.listen[0]}:{config.listen[1]} (--listen): {exc}") from None
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    host, port = config.listen
    log.info("relay listening on %s:%s, forwarding to %s:%s, spool %s", host, port, *config.upstream, config.spool_dir)
    print(f"hotclicks-relay listening on {host}:{port}", flush=True)
    await stop.wait()
    log.info("stopping: no new connections, finishing the transactions in flight")
    server.close()
    await handler.stop()
    handler.spool.close()
    handler.processor.sessions.kw["bind"].dispose()


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
            asyncio.run(serve(config_from_settings(settings)))
    except ConfigurationError as exc:
        print(f"hotclicks-relay: error: {exc}", file=sys.stderr)
        return 2
    return 0
