"""Every setting of HotClicks, declared once: the relay and the Flask extension derive theirs from here.

A :class:`Setting` holds a setting's name (the relay's TOML key and :class:`RelayConfig` field), its
parser, its default as a user writes it (``"1h"``, ``"auto"``), its ``HOTCLICKS_*`` name (the relay's
environment variable and the Flask extension's config key), its relay flag, its help text and the
side(s) that use it. The relay's argparse options, TOML and environment lookup and ``RelayConfig``
defaults, the extension's ``DEFAULT_CONFIG`` and the tables of docs/relay.md,
docs/flask-extension.md and README.md are all derived from :data:`SETTINGS`, so a default is written once.

No SQLAlchemy, Flask or aiosmtpd (both sides import it), and no I/O outside ``python -m
hotclicks.settings``, which prints the docs tables; with ``--docs`` it rewrites them in
:data:`DOCS`' files, run from the project's root.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .executions import PERIODS

__all__ = [
    "DEFAULT_DATABASE_URL",
    "DEFAULT_SPOOL_DIR",
    "DKIM_SIGNED_POLICIES",
    "DOCS",
    "FLASK",
    "LIST_UNSUBSCRIBE_POLICIES",
    "RELAY",
    "SETTINGS",
    "UPSTREAM_SECURITY",
    "Setting",
    "default",
    "flask_defaults",
    "flask_table",
    "parse_bool",
    "parse_duration",
    "parse_list",
    "parse_processes",
    "parse_workers",
    "readme_table",
    "relay_table",
    "replace_table",
]

#: The database both sides use when none is given (a file in the working directory).
DEFAULT_DATABASE_URL = "sqlite:///hotclicks.sqlite3"
#: Where accepted mail waits for the upstream when nothing is configured.
DEFAULT_SPOOL_DIR = "hotclicks-spool"
#: Upstream connection security: none, STARTTLS (required) or TLS from the first byte.
UPSTREAM_SECURITY = ("none", "starttls", "tls")
#: What to do with a message that arrives DKIM-signed when the relay has no key of its own:
#: "keep" forwards it unchanged and untracked (its signature stays valid), "strip" removes the old
#: signature and tracks it. With a key, the relay always re-signs.
DKIM_SIGNED_POLICIES = ("keep", "strip")
#: What to do with a marketing message's own List-Unsubscribe (an http(s) or mailto target):
#: "keep" forwards it and its List-Unsubscribe-Post as the sender wrote them (the sender's system
#: gets the opt-outs), "replace" puts the relay's one-click URL first, the sender's mailto second.
LIST_UNSUBSCRIBE_POLICIES = ("keep", "replace")

# -- parsers: a value as a flag, a variable or a TOML file gives it, to what the code uses ---------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(value: str | float | dt.timedelta, default_unit: str = "s") -> dt.timedelta:
    """``30s``, ``15m``, ``1h``, ``5d`` or ``2w``; a bare number counts in ``default_unit``.

    The one duration grammar of the relay's settings (bare: seconds) and ``flask hotclicks purge
    --older-than`` (bare: days). Raises ValueError for anything else.
    """
    if isinstance(value, dt.timedelta):
        return value
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError("expected a duration like 30s, 15m, 1h, 5d or 2w")
    return dt.timedelta(seconds=float(match[1]) * _UNITS[match[2] or default_unit])


def parse_bool(value: str | bool) -> bool:
    """``true``/``false``, ``yes``/``no``, ``on``/``off``, ``1``/``0`` (any case), or a bool."""
    if isinstance(value, bool):
        return value
    lowered = str(value).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def parse_workers(value: str | int) -> int:
    """A number of worker processes, or "auto": one when the machine has another core to give."""
    if str(value).strip().lower() == "auto":
        return 1 if (os.cpu_count() or 1) >= 2 else 0
    workers = int(value)
    if workers < 0:
        raise ValueError("expected 0 or more, or auto")
    return workers


def parse_processes(value: str | int) -> int:
    """A number of relay processes, or "auto": one per core."""
    if str(value).strip().lower() == "auto":
        return os.cpu_count() or 1
    processes = int(value)
    if processes < 1:
        raise ValueError("expected 1 or more, or auto")
    return processes


def parse_list(value: str | Sequence[str]) -> tuple[str, ...]:
    """A comma-separated string (or a TOML array) as a tuple of its non-empty items."""
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    return tuple(str(item).strip() for item in items if str(item).strip())


def _reports_open(value: str | bool) -> str | bool:
    """``"debug"``, or a boolean."""
    return "debug" if str(value).strip().lower() == "debug" else parse_bool(value)


def _optional(value: Any) -> Any:
    """A value kept as given (a Flask-SQLAlchemy bind key may be any hashable)."""
    return value


# -- the schema ---------------------------------------------------------------------------------

_RELAY = frozenset({"relay"})
_FLASK = frozenset({"flask"})
_BOTH = _RELAY | _FLASK


@dataclass(frozen=True)
class Setting:
    """One setting, as each side names and reads it."""

    #: snake_case: the relay's TOML key and ``RelayConfig`` field.
    name: str
    #: One line for ``--help`` and the docs tables.
    help: str
    #: As a user writes it (``"1h"``, ``"auto"``); None: unset.
    default: Any = None
    #: A flag's, variable's or TOML value to what the code uses; raises ValueError or TypeError.
    parse: Callable[[Any], Any] = str
    #: "relay", "flask" or both.
    sides: frozenset[str] = _RELAY
    #: The name after ``HOTCLICKS_``: the relay's environment variable, the extension's config key.
    env: str = ""
    #: The relay's flag (``--`` and the name with dashes unless given).
    flag: str = ""
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    #: The relay refuses to start without it.
    required: bool = False
    #: The extension's docs say more than ``help`` (how the Flask side uses it); Markdown.
    flask_help: str | None = None

    def __post_init__(self) -> None:
        if not self.env:
            object.__setattr__(self, "env", self.name.upper())
        if not self.flag and "relay" in self.sides:
            object.__setattr__(self, "flag", "--" + self.name.replace("_", "-"))

    @property
    def key(self) -> str:
        """``HOTCLICKS_*``: the relay's environment variable and the extension's config key."""
        return f"HOTCLICKS_{self.env}"

    @property
    def boolean(self) -> bool:
        """A ``--flag/--no-flag`` pair on the relay's command line."""
        return self.parse is parse_bool

    def value(self) -> Any:
        """The default, parsed (None stays None; "auto" is resolved on this machine now)."""
        return None if self.default is None else self.parse(self.default)

    def flask_default(self) -> Any:
        """The default in the extension's config: a list (a fresh one) where the relay has a tuple."""
        return list(self.default) if isinstance(self.default, tuple) else self.default


#: Both sides read these, and they must agree (the relay signs the links the extension checks).
_SHARED = (
    Setting("database_url", "SQLAlchemy URL of the database shared by the relay and the Flask app", DEFAULT_DATABASE_URL, sides=_BOTH, metavar="URL",
            flask_help="SQLAlchemy URL of the database shared with the relay; `postgresql://...` uses psycopg 3. SQLite runs in WAL mode (`synchronous=NORMAL`) with foreign keys on and a 30 s busy timeout."),
    Setting("secret_key", "key that signs tracking links, the same on the relay and the Flask app (required by the relay)", sides=_BOTH, metavar="KEY", required=True,
            flask_help="The key that signs tracking links; the relay must be given the same (`--secret-key`). `None`: the app's `SECRET_KEY` (a key of its own is derived from it)."),
    Setting("fallback_keys", "comma-separated older keys still accepted after a rotation", (), parse_list, _BOTH, env="SECRET_KEY_FALLBACKS", metavar="KEYS",
            flask_help="Older keys still accepted, so mail sent before a key rotation keeps working. With `SECRET_KEY` as the key, `SECRET_KEY_FALLBACKS` count too."),
    Setting("base_url", "public URL under which the Flask app serves the tracking routes, e.g. https://t.example.com/t (required by the relay)", sides=_BOTH, metavar="URL", required=True,
            flask_help="The public URL of the tracking routes, exactly as given to the relay's `--base-url` (like `https://t.example.com/t`); the routes are mounted at its path."),
    Setting("personal_params", "comma-separated query parameters that identify a recipient (like uid): links differing only in them are one tracked link", (), parse_list, _BOTH, metavar="NAMES",
            flask_help="The query parameters that identify a recipient: the list the relay is given (`state.personal_params`, used by the reports)."),
    Setting("excluded_domains", "comma-separated domains whose links are not tracked", (), parse_list, _BOTH, flag="--exclude-domains", metavar="DOMAINS",
            flask_help="The domains the relay leaves untracked (`state.excluded_domains`)."),
)

_DURATION_ARGS = {"parse": parse_duration, "metavar": "DURATION"}

#: The relay's own, in the order ``--help`` shows them after the shared ones.
_RELAY_ONLY = (
    Setting("listen", "HOST:PORT to accept mail on; any address but loopback needs --auth-file, --auth-database or --allow-networks", "127.0.0.1:2525", metavar="HOST:PORT"),
    Setting("upstream", "HOST:PORT of the mail server to forward to", "127.0.0.1:25", metavar="HOST:PORT"),
    Setting("open_pixel", "add the open pixel to HTML parts", True, parse_bool),
    Setting("trap_link", "add the hidden trap link to HTML parts: only link scanners click it, which tells their clicks from people's", True, parse_bool),
    Setting("list_unsubscribe", "a marketing message's own List-Unsubscribe (http(s) or mailto): keep it and its List-Unsubscribe-Post as the sender wrote them, or replace it with the relay's one-click URL (the sender's mailto kept second); a message without one gets the relay's either way", "keep", choices=LIST_UNSUBSCRIBE_POLICIES),
    Setting("transactional_period", "period of a transactional delivery's executions", "month", choices=PERIODS),
    Setting("quiet_gap", "a recurring delivery without X-HotClicks-Run starts a new run after this long without a message", "1h", **_DURATION_ARGS),
    Setting("spool_dir", "directory where accepted mail waits for the upstream (this relay's alone)", DEFAULT_SPOOL_DIR, metavar="DIR"),
    Setting("max_message_size", "largest message accepted, in bytes (552 above)", 32 * 1024 * 1024, int, metavar="BYTES"),
    Setting("max_recipients", "most recipients per transaction (452 above)", 1000, int, metavar="N"),
    Setting("upstream_security", "upstream connection: plain, STARTTLS or TLS", "none", choices=UPSTREAM_SECURITY),
    Setting("upstream_verify", "check the upstream's TLS certificate", True, parse_bool),
    Setting("upstream_ca_file", "CA bundle to check the upstream's certificate with (default: the system's)", metavar="FILE"),
    Setting("upstream_username", "user for AUTH to the upstream", metavar="USER"),
    Setting("upstream_password", "password for AUTH to the upstream (prefer the env variable or the config file)", metavar="PASSWORD"),
    Setting("upstream_timeout", "seconds to wait for the upstream before counting it down", 60.0, float, metavar="SECONDS"),
    Setting("upstream_connections", "connections to the upstream, each delivering one copy at a time", 8, int, metavar="N"),
    Setting("rewrite_workers", "worker processes that rewrite the copies, so that rewriting uses another core; 0: the relay process rewrites; auto: 1 on a machine of 2 cores or more", "auto", parse_workers, metavar="N"),
    Setting("processes", "relay processes accepting on the --listen socket, each with a spool of its own (--spool-dir/0, /1, ...), one that dies restarted; 1: a single relay process, no supervisor; auto: one per core", "auto", parse_processes, metavar="N"),
    Setting("retry_delay", "first retry after a temporary failure; doubles each time", "1m", **_DURATION_ARGS),
    Setting("retry_max_delay", "longest wait between two retries", "1h", **_DURATION_ARGS),
    Setting("max_queue_age", "a copy not delivered this long after acceptance is marked failed", "5d", **_DURATION_ARGS),
    Setting("bounces", "send the sender a delivery status notification (RFC 3464) for a copy the upstream refuses (5xx) or that is given up; never for mail from <>", True, parse_bool),
    Setting("keep_recipient_samples", "keep a sample of each content variant from real recipients (test profiles' copies are always kept)", True, parse_bool),
    Setting("dkim_key_file", "PEM private key to DKIM-sign every message after rewriting", metavar="FILE"),
    Setting("dkim_selector", "DKIM selector (s=)", metavar="SELECTOR"),
    Setting("dkim_domain", "DKIM signing domain (d=)", metavar="DOMAIN"),
    Setting("dkim_signed", "a message that arrives DKIM-signed, when the relay has no key: keep it unchanged (untracked) or strip the signature and track it", "keep", choices=DKIM_SIGNED_POLICIES),
    Setting("tls_cert_file", "certificate (PEM) for STARTTLS or implicit TLS", metavar="FILE"),
    Setting("tls_key_file", "private key (PEM) of --tls-cert-file", metavar="FILE"),
    Setting("implicit_tls", "TLS from the first byte (port 465 style) instead of STARTTLS", False, parse_bool),
    Setting("auth_file", "file of user:hash lines for SMTP AUTH PLAIN/LOGIN (see 'hash-password'); needs TLS", metavar="FILE"),
    Setting("auth_database", "SMTP AUTH PLAIN/LOGIN against the accounts in the database (see 'accounts'); needs TLS", False, parse_bool),
    Setting("auth_max_failures", "failed AUTH attempts a client address (IPv6: its /64) may make within --auth-failure-window; then 421 until the oldest ages out", 5, int, metavar="N"),
    Setting("auth_failure_window", "the window in which failed AUTH attempts are counted", "15m", **_DURATION_ARGS),
    Setting("auth_failure_delay", "pause before answering a failed AUTH", "1s", **_DURATION_ARGS),
    Setting("allow_networks", "comma-separated client networks allowed to send without AUTH, e.g. 10.0.0.0/8", (), parse_list, metavar="CIDRS"),
    Setting("client_timeout", "disconnect a client that sends nothing for this long (idle, or stopped mid-command or mid-DATA)", "5m", **_DURATION_ARGS),
    Setting("max_connections", "client connections open at once (421 beyond)", 1000, int, metavar="N"),
    Setting("max_connections_per_client", "client connections open at once from one address (421 beyond)", 100, int, metavar="N"),
    Setting("hostname", "name in the SMTP banner and EHLO (default: this machine's FQDN)", metavar="NAME"),
    Setting("log_level", "logging level", "INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR")),
)


def _flask(name: str, help: str, default: Any, parse: Callable[[Any], Any]) -> Setting:
    return Setting(name, help, default, parse, _FLASK)


#: The Flask extension's own ``HOTCLICKS_*`` keys, in the order of its docs.
_FLASK_ONLY = (
    _flask("use_flask_sqlalchemy", "`True`: use the engine the host app's Flask-SQLAlchemy already has (set it up first) instead of `HOTCLICKS_DATABASE_URL`. That engine is never disposed by HotClicks; on SQLite it gets HotClicks' settings (WAL, `synchronous=NORMAL`, foreign keys on, the 30 s busy timeout).", False, parse_bool),
    _flask("flask_sqlalchemy_bind", "The Flask-SQLAlchemy bind key whose engine is used (`None`: the default bind).", None, _optional),
    _flask("tracking_prefix", "Where the tracking routes are mounted when `HOTCLICKS_BASE_URL` is unset.", "/t", str),
    _flask("report_prefix", "Where the reports blueprint (pages and `/api`) is mounted.", "/hotclicks", str),
    _flask("reports_open", 'Who may see the reports when no `@hotclicks.report_access` check is registered (a registered check always decides): `"debug"` opens them in debug and testing mode only, `True` to anyone who reaches them (an app that protects the prefix itself, e.g. behind an authenticating proxy), `False` to nobody.', "debug", _reports_open),
    _flask("bot_delivery_seconds", "A click this many seconds or less after its message was delivered (`Message.sent_at`) is a scanner's. `0` turns the rule off.", 5.0, float),
    _flask("bot_burst_seconds", "Clicks on `HOTCLICKS_BOT_BURST_LINKS` different links of one message within this many seconds are a scanner's (all of them are flagged). `0` turns the rule off.", 1.0, float),
    _flask("bot_burst_links", "How many different links make a burst.", 2, int),
    _flask("bot_trap_seconds", "A click on the hidden trap link flags the message's other clicks this many seconds either side of it.", 10.0, float),
    _flask("bot_sweep_seconds", "Clicks on `HOTCLICKS_BOT_SWEEP_LINKS` different links of one message within this many seconds are a link checker's sweep, however it spaces them. `0` turns the rule off.", 20.0, float),
    _flask("bot_sweep_links", "How many different links make a sweep.", 4, int),
    _flask("bot_all_links_seconds", "Every visible link of a message of at least `HOTCLICKS_BOT_ALL_LINKS_MIN` links clicked within this many seconds: all of those clicks are a scanner's. `0` turns the rule off.", 60.0, float),
    _flask("bot_all_links_min", "The fewest links a message must have for the every-link rule.", 3, int),
    _flask("bot_fleet_recipients", "A client (its stored address prefix) that clicked the messages of this many recipients or more, each within `HOTCLICKS_BOT_FLEET_SECONDS` of its delivery, making `HOTCLICKS_BOT_FLEET_SHARE` of the recipients it clicked for, is a scanner in front of many mailboxes: its early clicks are machines'.", 5, int),
    _flask("bot_fleet_seconds", "What \"just after delivery\" means for the fleet rule, in seconds.", 120.0, float),
    _flask("bot_fleet_share", "The share of a client's recipients clicked just after delivery that makes it a fleet (a company's people click at their own pace, most of them later). `0` turns the fleet rule off.", 0.8, float),
    _flask("bot_user_agents", "More user agents to count as machines: regular expressions, case-insensitive, added to the built-in list (`hotclicks.bots.KNOWN_AGENTS`).", (), parse_list),
    _flask("bot_apple_mpp_opens", "Count Apple Mail Privacy Protection's proxy opens as machine opens.", True, parse_bool),
    _flask("bot_networks_dir", "The operator's directory of client network lists (`flask hotclicks bots networks add`): they replace shipped lists of the same name and add others. `None`: `<instance path>/hotclicks-networks`.", None, str),
    _flask("anonymize_ip", "Store IP addresses truncated: IPv4 to its /24, IPv6 to its /48.", True, parse_bool),
    _flask("store_ip", "Store IP addresses at all.", True, parse_bool),
    _flask("store_user_agent", "Store user agents.", True, parse_bool),
    _flask("journal_dir", 'A directory for the write-ahead journal of clicks and opens (see "Durability"). `None`: every click is committed before its redirect.', None, str),
    _flask("journal_fsync", "With the journal: `fdatasync` each event before answering (survives power loss; slower).", False, parse_bool),
    _flask("journal_interval", "With the journal: the longest wait, in seconds, before journaled events are committed.", 0.5, float),
    _flask("rollup_interval", 'Seconds between two roll-ups of the report aggregates by a background thread of each process (started on its first request; see docs/reports.md, "Where the roll-up runs"). `0`: no thread; run `flask hotclicks roll-up` from a timer instead.', 10.0, float),
    _flask("check_schema", "Refuse to start unless the database is at the newest migration.", False, parse_bool),
)

#: Every setting, each once.
SETTINGS: tuple[Setting, ...] = _SHARED + _RELAY_ONLY + _FLASK_ONLY
#: The relay's, in the order of ``hotclicks-relay --help`` and docs/relay.md.
RELAY: tuple[Setting, ...] = tuple(s for s in SETTINGS if "relay" in s.sides)
#: The Flask extension's, in the order of docs/flask-extension.md.
FLASK: tuple[Setting, ...] = tuple(s for s in SETTINGS if "flask" in s.sides)
_BY_NAME = {s.name: s for s in SETTINGS}


def default(name: str) -> Any:
    """A setting's default, parsed: what ``RelayConfig`` and the relay's CLI both start from."""
    return _BY_NAME[name].value()


def flask_defaults() -> dict[str, Any]:
    """The extension's ``HOTCLICKS_*`` keys and their defaults (new lists on each call)."""
    return {s.key: s.flask_default() for s in FLASK}


# -- the docs tables ----------------------------------------------------------------------------


def _sentence(text: str) -> str:
    return text if text.endswith(".") else text + "."


def _relay_default(setting: Setting) -> str:
    if setting.required:
        return "required"
    if setting.default is None or setting.default == ():
        return "(none)"
    return str(setting.default)


def _flask_default_cell(setting: Setting) -> str:
    value = setting.flask_default()
    # A string where other types are accepted too ("debug" or a bool) is quoted, as in Python.
    if isinstance(value, str) and setting.parse is not str:
        return f'"{value}"'
    return str(value)


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def relay_table() -> str:
    """docs/relay.md's table of the relay's settings, in Markdown."""
    rows = []
    for s in RELAY:
        flag = f"{s.flag} / --no-{s.flag[2:]}" if s.boolean else s.flag
        meaning = _sentence(s.help) + (f" One of {', '.join(s.choices)}." if s.choices else "")
        rows.append((f"`{flag}`", f"`{s.key}`", f"`{s.name}`", f"`{_relay_default(s)}`", meaning))
    return _table(("flag", "environment", "TOML key", "default", "meaning"), rows)


def flask_table() -> str:
    """docs/flask-extension.md's table of the extension's ``HOTCLICKS_*`` keys, in Markdown."""
    rows = [(f"`{s.key}`", f"`{_flask_default_cell(s)}`", _sentence(s.flask_help or s.help)) for s in FLASK]
    return _table(("key", "default", "meaning"), rows)


#: The README's table: the settings a newcomer sets, both sides' and where the relay listens.
_README = ("database_url", "secret_key", "fallback_keys", "base_url", "personal_params", "excluded_domains", "listen", "upstream", "spool_dir")


def readme_table() -> str:
    """README.md's short table: the shared settings (named alike on both sides) and the relay's
    addresses and spool, the ones to set before anything else."""
    rows = []
    for name in _README:
        s = _BY_NAME[name]
        rows.append((f"`{s.flag}`", f"`{s.key}`", f"`{_relay_default(s)}`", _sentence(s.help)))
    return _table(("relay flag", "relay env / Flask config key", "default", "meaning"), rows)


#: Each docs file (relative to the project) and the table it holds between its markers.
DOCS = {"docs/relay.md": relay_table, "docs/flask-extension.md": flask_table, "README.md": readme_table}
_MARKERS = re.compile(r"(<!-- settings table: generated by python -m hotclicks.settings --docs -->\n)(.*?)(<!-- end of settings table -->)", re.S)


def replace_table(text: str, table: str) -> str:
    """``text`` with the table between its markers replaced; ValueError without exactly one pair."""
    if len(_MARKERS.findall(text)) != 1:
        raise ValueError("expected one settings table between its markers")
    return _MARKERS.sub(lambda m: m[1] + table + m[3], text)


def _main(argv: Sequence[str]) -> int:
    if list(argv) != ["--docs"]:
        for path, render in DOCS.items():
            print(f"{path}:\n\n{render()}")
        return 0
    for path, render in DOCS.items():
        with open(path, encoding="utf-8") as file:
            text = file.read()
        updated = replace_table(text, render())
        if updated != text:
            with open(path, "w", encoding="utf-8") as file:
                file.write(updated)
            print(f"{path}: table updated")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
