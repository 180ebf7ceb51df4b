"""One settings schema: the relay's CLI and defaults, the extension's keys and the docs agree with it."""

from __future__ import annotations

import ast
import dataclasses
import datetime as dt
import re
from pathlib import Path

import pytest

from flask_hotclicks import DEFAULT_CONFIG
from hotclicks import db, executions, settings
from hotclicks.settings import DOCS, FLASK, RELAY, SETTINGS, parse_duration
from smtp_relay.cli import _parser
from smtp_relay.config import RelayConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted(DOCS))
def test_the_docs_table_is_the_schemas(path):
    table = DOCS[path]()
    text = (ROOT / path).read_text()
    assert settings.replace_table(text, table) == text, (
        f"{path}'s settings table differs from hotclicks/settings.py: run "
        f"`python -m hotclicks.settings --docs`, or paste this table between its markers:\n\n{table}"
    )


def test_every_flag_of_the_relay_has_a_schema_entry():
    flags = {
        flag
        for action in _parser()._actions
        for flag in action.option_strings
        if flag not in ("-h", "--help", "--config") and not flag.startswith("--no-")
    }
    assert flags == {s.flag for s in RELAY}


def test_every_key_the_extension_reads_has_a_schema_entry():
    keys = set()
    for module in ("extension", "reports", "tracking", "cli", "senders"):
        source = (ROOT / "flask_hotclicks" / f"{module}.py").read_text()
        keys |= set(re.findall(r"[\"'](HOTCLICKS_[A-Z_]+)[\"']", source))
    assert keys <= {s.key for s in FLASK}
    assert set(DEFAULT_CONFIG) == {s.key for s in FLASK}


def test_names_are_unique_and_the_shared_settings_are_named_alike_on_both_sides():
    assert len({s.name for s in SETTINGS}) == len({s.key for s in SETTINGS}) == len(SETTINGS)
    shared = {s.name for s in SETTINGS if s.sides == {"relay", "flask"}}
    assert shared == {"database_url", "secret_key", "fallback_keys", "base_url", "personal_params", "excluded_domains"}


def test_relay_config_starts_from_the_schemas_defaults():
    config = RelayConfig(("127.0.0.1", 2525), ("127.0.0.1", 25), "sqlite://", "https://t.example/t", "k")
    for field in dataclasses.fields(RelayConfig):
        if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            continue
        expected = settings.default(field.name)
        if isinstance(getattr(config, field.name), frozenset):
            expected = frozenset(expected)
        assert getattr(config, field.name) == expected, field.name


def test_rewrite_workers_default_to_auto_in_the_library_as_on_the_command_line(monkeypatch):
    base = (("127.0.0.1", 2525), ("127.0.0.1", 25), "sqlite://", "https://t.example/t", "k")
    for cpus, workers in ((1, 0), (2, 1)):
        monkeypatch.setattr("os.cpu_count", lambda: cpus)
        assert RelayConfig(*base).rewrite_workers == workers


def test_constants_the_schema_cannot_import_agree_with_their_sources():
    assert settings.DEFAULT_DATABASE_URL == db.DEFAULT_DATABASE_URL
    assert settings.default("quiet_gap") == executions.DEFAULT_QUIET_GAP
    assert next(s for s in RELAY if s.name == "transactional_period").choices == executions.PERIODS


def test_the_schema_imports_no_framework():
    tree = ast.parse((ROOT / "hotclicks" / "settings.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert not imported & {"sqlalchemy", "flask", "aiosmtpd", "hotclicks"}


@pytest.mark.parametrize(
    "value, unit, expected",
    [
        ("30", "s", dt.timedelta(seconds=30)),
        ("1.5", "s", dt.timedelta(seconds=1.5)),
        ("30s", "s", dt.timedelta(seconds=30)),
        ("15m", "s", dt.timedelta(minutes=15)),
        (" 1 h ", "s", dt.timedelta(hours=1)),
        ("5d", "s", dt.timedelta(days=5)),
        ("2w", "s", dt.timedelta(weeks=2)),
        (90, "s", dt.timedelta(seconds=90)),
        ("400", "d", dt.timedelta(days=400)),
        ("400d", "d", dt.timedelta(days=400)),
        ("12w", "d", dt.timedelta(weeks=12)),
        ("36h", "d", dt.timedelta(hours=36)),
    ],
)
def test_one_duration_grammar_reads_what_either_side_read_before(value, unit, expected):
    assert parse_duration(value, default_unit=unit) == expected


@pytest.mark.parametrize("value", ["soon", "", "-1s", "1y", "5 days", "1h30m"])
def test_a_duration_that_is_not_one_says_what_is_expected(value):
    with pytest.raises(ValueError, match="expected a duration like 30s, 15m, 1h, 5d or 2w"):
        parse_duration(value)


def test_the_tables_can_be_regenerated_from_the_command_line(capsys):
    assert settings._main([]) == 0
    out = capsys.readouterr().out
    assert "| `--max-queue-age` | `HOTCLICKS_MAX_QUEUE_AGE` | `max_queue_age` | `5d` |" in out
    assert '| `HOTCLICKS_REPORTS_OPEN` | `"debug"` |' in out
