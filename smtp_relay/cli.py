"""``hotclicks-relay``: run the relay, or migrate its database.

Every option can also come from a ``HOTCLICKS_*`` environment variable (the flag wins). Errors in
the settings are turned into a message and exit code 2 here, at one boundary.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

from hotclicks import db
from hotclicks.errors import ConfigurationError

from .config import RelayConfig, parse_host_port
from .handler import RelaySMTP
from .server import build_handler, smtp_kwargs

log = logging.getLogger("smtp_relay")

DEFAULT_LISTEN = "127.0.0.1:2525"
DEFAULT_UPSTREAM = "127.0.0.1:25"


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"HOTCLICKS_{name}", default)


def _list(value: str | None) -> frozenset[str]:
    return frozenset(item.strip().lower() for item in (value or "").split(",") if item.strip())


def _parser() -> argparse.ArgumentParser:
    database = argparse.ArgumentParser(add_help=False)
    database.add_argument(
        "--database-url",
        default=_env("DATABASE_URL", db.DEFAULT_DATABASE_URL),
        help="SQLAlchemy URL of the database shared with the Flask app "
        "(env HOTCLICKS_DATABASE_URL; default: %(default)s)",
    )
    parser = argparse.ArgumentParser(
        prog="hotclicks-relay",
        parents=[database],
        description="An SMTP relay that rewrites every link of outgoing mail into a signed "
        "tracked link and forwards the mail to your mail server.",
        epilog="Commands: 'hotclicks-relay' runs the relay; 'hotclicks-relay db upgrade' "
        "creates or migrates the database; 'hotclicks-relay db current' shows its revision.",
    )
    parser.add_argument(
        "--listen",
        default=_env("LISTEN", DEFAULT_LISTEN),
        help="HOST:PORT to accept mail on (env HOTCLICKS_LISTEN; default: %(default)s)",
    )
    parser.add_argument(
        "--upstream",
        default=_env("UPSTREAM", DEFAULT_UPSTREAM),
        help="HOST:PORT of the mail server to forward to (env HOTCLICKS_UPSTREAM; "
        "default: %(default)s)",
    )
    parser.add_argument(
        "--base-url",
        default=_env("BASE_URL"),
        help="public URL under which the Flask app serves the tracking routes, "
        "e.g. https://t.example.com/t (env HOTCLICKS_BASE_URL; required)",
    )
    parser.add_argument(
        "--secret-key",
        default=_env("SECRET_KEY"),
        help="key that signs tracking links, shared with the Flask app (env HOTCLICKS_SECRET_KEY; "
        "required)",
    )
    parser.add_argument(
        "--fallback-keys",
        default=_env("SECRET_KEY_FALLBACKS", ""),
        help="comma-separated older keys still accepted after a rotation "
        "(env HOTCLICKS_SECRET_KEY_FALLBACKS)",
    )
    parser.add_argument(
        "--personal-params",
        default=_env("PERSONAL_PARAMS", ""),
        help="comma-separated query parameters that identify a recipient (env "
        "HOTCLICKS_PERSONAL_PARAMS)",
    )
    parser.add_argument(
        "--exclude-domains",
        default=_env("EXCLUDED_DOMAINS", ""),
        help="comma-separated domains whose links are not tracked (env HOTCLICKS_EXCLUDED_DOMAINS)",
    )
    parser.add_argument(
        "--no-open-pixel",
        action="store_true",
        default=_env("OPEN_PIXEL", "1") in ("0", "false", "no", "off"),
        help="do not add the open pixel (env HOTCLICKS_OPEN_PIXEL=0)",
    )
    parser.add_argument(
        "--transactional-period",
        default=_env("TRANSACTIONAL_PERIOD", "month"),
        choices=["day", "week", "month"],
        help="period of a transactional delivery's executions (env "
        "HOTCLICKS_TRANSACTIONAL_PERIOD; default: %(default)s)",
    )
    parser.add_argument(
        "--log-level",
        default=_env("LOG_LEVEL", "INFO"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="default: %(default)s",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    db_parser = commands.add_parser("db", parents=[database], help="manage the database schema")
    db_parser.add_argument("action", choices=["upgrade", "current"])
    return parser


def config_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> RelayConfig:
    if not args.base_url:
        parser.error("--base-url (or HOTCLICKS_BASE_URL) is required")
    if not args.secret_key:
        parser.error("--secret-key (or HOTCLICKS_SECRET_KEY) is required; it must match the Flask app's")
    return RelayConfig(
        listen=parse_host_port(args.listen, "--listen"),
        upstream=parse_host_port(args.upstream, "--upstream"),
        database_url=args.database_url,
        base_url=args.base_url,
        secret_key=args.secret_key,
        fallback_keys=tuple(k for k in args.fallback_keys.split(",") if k),
        personal_params=_list(args.personal_params),
        excluded_domains=_list(args.exclude_domains),
        open_pixel=not args.no_open_pixel,
        transactional_period=args.transactional_period,
    )


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


async def serve(config: RelayConfig) -> None:
    """Run the relay until SIGTERM or SIGINT; in-flight transactions finish first."""
    handler = build_handler(config)
    loop = asyncio.get_running_loop()
    kwargs = smtp_kwargs(config)
    server = await loop.create_server(
        lambda: RelaySMTP(handler, loop=loop, **kwargs), *config.listen
    )
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    host, port = config.listen
    log.info("relay listening on %s:%s, forwarding to %s:%s", host, port, *config.upstream)
    print(f"hotclicks-relay listening on {host}:{port}", flush=True)
    await stop.wait()
    log.info("stopping: no new connections, finishing the ones in flight")
    server.close()
    await server.wait_closed()


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        if args.command == "db":
            run_db_command(args.database_url, args.action)
            return 0
        config = config_from_args(args, parser)
        asyncio.run(serve(config))
    except ConfigurationError as exc:
        print(f"hotclicks-relay: error: {exc}", file=sys.stderr)
        return 2
    return 0
