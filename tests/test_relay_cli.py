"""``hotclicks-relay``'s options: flags, environment, TOML file; errors say what to fix."""

from __future__ import annotations

import datetime as dt

import pytest

from smtp_relay.cli import OPTIONS, _parser, config_from_settings, main, resolve_settings

from .conftest import free_port


def test_help_documents_every_option_with_its_variable_and_toml_key(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for option in OPTIONS:
        assert option.flag in out and f"HOTCLICKS_{option.env}" in out and f"TOML {option.name}" in out


def test_flag_beats_environment_beats_file_beats_default(tmp_path):
    config = tmp_path / "relay.toml"
    config.write_text('spool_dir = "from-file"\nmax_queue_age = "2d"\nbase_url = "https://file.example/t"\nallow_networks = ["10.0.0.0/8"]\n')
    args = _parser().parse_args(["--config", str(config), "--spool-dir", "from-flag"])
    settings = resolve_settings(args, {"HOTCLICKS_SPOOL_DIR": "from-env", "HOTCLICKS_MAX_QUEUE_AGE": "3d", "HOTCLICKS_SECRET_KEY": "k"})
    assert settings["spool_dir"] == "from-flag"
    assert settings["max_queue_age"] == dt.timedelta(days=3)
    assert settings["base_url"] == "https://file.example/t"
    assert settings["allow_networks"] == ("10.0.0.0/8",)
    assert settings["retry_delay"] == dt.timedelta(minutes=1)
    assert config_from_settings(settings).spool_dir == "from-flag"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--secret-key", "k"], "--base-url (or HOTCLICKS_BASE_URL) is required"),
        (["--base-url", "https://t.example/t"], "--secret-key (or HOTCLICKS_SECRET_KEY) is required"),
        (["--base-url", "ftp://x", "--secret-key", "k"], "must be the public http(s) URL"),
        (["--base-url", "https://t.example/t", "--secret-key", "k", "--listen", "nope"], "--listen must be HOST:PORT"),
        (["--base-url", "https://t.example/t", "--secret-key", "k", "--max-queue-age", "soon"], "--max-queue-age: 'soon' is not valid"),
        (["--base-url", "https://t.example/t", "--secret-key", "k", "--dkim-selector", "s"], "DKIM signing needs all three"),
        (["--base-url", "https://t.example/t", "--secret-key", "k", "--auth-database"], "--auth-database needs --tls-cert-file"),
        (["--base-url", "https://t.example/t", "--secret-key", "k", "--max-connections", "0"], "--max-connections must be at least 1"),
        (["--base-url", "https://t.example/t", "--secret-key", "k", "--client-timeout", "0s"], "--client-timeout must be longer than 0 s"),
        (["--base-url", "https://t.example/t", "--secret-key", "k", "--rewrite-workers", "-1"], "--rewrite-workers: '-1' is not valid"),
    ],
)
def test_a_bad_setting_fails_at_start_saying_what_to_fix(argv, message, capsys, monkeypatch, tmp_path):
    for option in OPTIONS:
        monkeypatch.delenv(f"HOTCLICKS_{option.env}", raising=False)
    assert main([*argv, "--spool-dir", str(tmp_path / "spool")]) == 2
    assert message in capsys.readouterr().err


def test_rewrite_workers_auto_is_one_when_there_is_another_core(monkeypatch):
    monkeypatch.delenv("HOTCLICKS_REWRITE_WORKERS", raising=False)
    for cpus, workers in ((1, 0), (2, 1), (64, 1)):
        monkeypatch.setattr("os.cpu_count", lambda: cpus)
        settings = resolve_settings(_parser().parse_args([]), {"HOTCLICKS_SECRET_KEY": "k"})
        assert settings["rewrite_workers"] == workers
    assert resolve_settings(_parser().parse_args(["--rewrite-workers", "3"]), {})["rewrite_workers"] == 3


def test_an_unknown_flag_or_choice_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--upstream-security", "maybe"])
    assert done.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_an_unknown_key_in_the_config_file_is_an_error(tmp_path, capsys):
    config = tmp_path / "relay.toml"
    config.write_text('spool_directory = "x"\n')
    assert main(["--config", str(config), "queue"]) == 2
    assert "unknown setting 'spool_directory'" in capsys.readouterr().err


def test_an_unreachable_database_fails_at_start(tmp_path, capsys):
    code = main([
        "--database-url", f"postgresql://nobody@127.0.0.1:{free_port()}/none",
        "--base-url", "https://t.example/t", "--secret-key", "k" * 32,
        "--listen", f"127.0.0.1:{free_port()}", "--spool-dir", str(tmp_path / "spool"),
    ])
    assert code == 2
    assert "cannot reach the database" in capsys.readouterr().err


def test_queue_and_retry_on_an_empty_spool(tmp_path, capsys):
    (tmp_path / "spool" / "queue").mkdir(parents=True)
    assert main(["queue", "--spool-dir", str(tmp_path / "spool")]) == 0
    assert "0 copies in the spool" in capsys.readouterr().out
    assert main(["retry", "--spool-dir", str(tmp_path / "spool")]) == 0
    assert (tmp_path / "spool" / "retry-now").exists()
    assert main(["retry", "--spool-dir", str(tmp_path / "nothing")]) == 2
