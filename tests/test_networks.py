"""Named client networks: the list files, the index, the shipped lists, ``flask hotclicks bots networks``."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

import pytest
from flask import Flask

from flask_hotclicks import HotClicks, get_state
from hotclicks import networks
from hotclicks.errors import ConfigurationError
from hotclicks.networks import (
    KIND_APPLE_RELAY,
    KIND_IMAGE_PROXY,
    KIND_SCANNER,
    InvalidNetworkList,
    NetworkIndex,
    NetworkMatch,
    parse_list,
)

from .conftest import SECRET_KEY


def list_text(name: str = "acme-scanner", kind: str = KIND_SCANNER, *lines: str, header: str = "") -> str:
    body = "\n".join(lines or ("192.0.2.0/24", "2001:db8::/32"))
    return (
        f"# name: {name}\n# kind: {kind}\n# source: https://acme.example/ranges.json\n"
        f"# retrieved: 2026-08-17\n# note: Acme's link scanner.\n# note: Second line.\n{header}\n{body}\n"
    )


def index(*texts: str) -> NetworkIndex:
    return NetworkIndex(parse_list(text) for text in texts)


# -- parsing -------------------------------------------------------------------------------------


def test_a_list_file_is_parsed_with_its_header():
    parsed = parse_list(list_text("acme", KIND_IMAGE_PROXY, "198.51.100.7", "2001:db8::/48  # the v6 half", ""))
    assert parsed.name == "acme" and parsed.kind == "image-proxy"
    assert parsed.source == "https://acme.example/ranges.json"
    assert parsed.retrieved == dt.date(2026, 8, 17)
    assert parsed.note == "Acme's link scanner. Second line."
    assert parsed.networks == (ipaddress.ip_network("198.51.100.7/32"), ipaddress.ip_network("2001:db8::/48"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (list_text().replace("# kind: scanner\n", ""), "<string>: the header has no '# kind:' line"),
        (list_text().replace("# source: https://acme.example/ranges.json\n", ""), "no '# source:' line"),
        (list_text(kind="vpn"), "kind 'vpn' is not one of scanner, image-proxy, apple-relay"),
        (list_text("Acme Scanner"), "name 'Acme Scanner' must be lower-case letters"),
        (list_text().replace("2026-08-17", "last week"), "retrieved 'last week' is not a date like 2026-08-17"),
        (list_text("acme", KIND_SCANNER, "192.0.2.0/24", "192.0.2.300/24"),
         "<string>, line 9: '192.0.2.300/24' is not a network like 192.0.2.0/24"),
        (list_text("acme", KIND_SCANNER, "10.0.0.1/8"), "line 8: '10.0.0.1/8' is not a network"),
        (list_text("acme", KIND_SCANNER, "# nothing here"), "no networks"),
        (list_text(header="# kind: image-proxy"), "line 7: a second '# kind:' line"),
    ],
)
def test_a_bad_list_is_refused_with_a_message_that_says_where_and_why(text, message):
    with pytest.raises(InvalidNetworkList) as caught:
        parse_list(text)
    assert message in str(caught.value)
    assert isinstance(caught.value, ConfigurationError)


def test_a_file_of_an_operator_directory_must_be_named_after_its_list(tmp_path):
    (tmp_path / "acme.txt").write_text(list_text("acme-scanner"))
    with pytest.raises(InvalidNetworkList, match="rename the file acme-scanner.txt"):
        networks.load_lists(tmp_path)
    assert networks.load_lists(tmp_path / "absent") == []
    assert networks.load_lists(None) == []


# -- lookups -------------------------------------------------------------------------------------


def test_lookups_of_ipv4_ipv6_and_ipv4_mapped_addresses():
    found = index(list_text())
    acme = NetworkMatch("acme-scanner", KIND_SCANNER)
    assert found.match("192.0.2.0") == found.match("192.0.2.255") == acme
    assert found.match(" 192.0.2.77 ") == acme
    assert found.match("192.0.1.255") is None and found.match("192.0.3.0") is None
    assert found.match("2001:db8:ffff::1") == acme
    assert found.match("2001:db9::") is None
    assert found.match("::ffff:192.0.2.9") == acme
    assert found.match("::ffff:198.51.100.1") is None
    assert found.match(ipaddress.ip_address("192.0.2.1")) == acme


@pytest.mark.parametrize("garbage", ["", "garbage", "192.0.2", "192.0.2.1.5", "192.0.2.256", "2001:db8:::1", None, 42])
def test_garbage_matches_nothing(garbage):
    assert index(list_text()).match(garbage) is None


def test_the_most_specific_prefix_wins_whatever_the_order_of_the_lists():
    wide = list_text("wide", KIND_SCANNER, "10.0.0.0/8", "2001:db8::/32")
    narrow = list_text("narrow", KIND_IMAGE_PROXY, "10.1.2.0/24", "2001:db8:1::/48")
    inner = list_text("inner", KIND_APPLE_RELAY, "10.1.2.128/25")
    for lists in ([wide, narrow, inner], [inner, narrow, wide]):
        found = index(*lists)
        assert found.match("10.0.0.1").name == "wide"
        assert found.match("10.1.2.1").name == "narrow"
        assert found.match("10.1.2.200").name == "inner"
        assert found.match("10.1.3.0").name == "wide"
        assert found.match("10.255.255.255").name == "wide"
        assert found.match("2001:db8:1::5").name == "narrow"
        assert found.match("2001:db8:2::5").name == "wide"


def test_the_same_prefix_in_two_lists_answers_for_the_first():
    found = index(list_text("first", KIND_SCANNER, "10.0.0.0/8"), list_text("second", KIND_IMAGE_PROXY, "10.0.0.0/8"))
    assert found.match("10.2.3.4") == NetworkMatch("first", KIND_SCANNER)


# -- shipped and operator lists ------------------------------------------------------------------


def test_the_shipped_lists_parse_and_hold_what_their_header_says():
    shipped = {n.name: n for n in networks.shipped_lists()}
    assert {"microsoft-eop", "apple-private-relay", "google-image-proxy", "cloudflare-email-security"} <= set(shipped)
    data = Path(networks.__file__).parent / "data" / "networks"
    for name, network_list in shipped.items():
        assert (data / f"{name}.txt").is_file()
        assert network_list.kind in networks.KINDS
        assert network_list.source.startswith("https://") and network_list.note
        assert network_list.retrieved <= dt.date.today()
        assert network_list.networks
    found = networks.network_index()
    assert found.match("40.107.3.4") == NetworkMatch("microsoft-eop", KIND_SCANNER)
    assert found.match("2a01:111:f403::25") == NetworkMatch("microsoft-eop", KIND_SCANNER)
    assert found.match("::ffff:52.100.1.1") == NetworkMatch("microsoft-eop", KIND_SCANNER)
    assert found.match("66.249.93.10") == NetworkMatch("google-image-proxy", KIND_IMAGE_PROXY)
    assert found.match("104.30.40.7") == NetworkMatch("cloudflare-email-security", KIND_SCANNER)
    assert found.match("2405:8100:c400::25") == NetworkMatch("cloudflare-email-security", KIND_SCANNER)
    assert found.match("17.58.1.1") == NetworkMatch("apple-network", KIND_APPLE_RELAY)
    relay = shipped["apple-private-relay"].networks
    assert found.match(str(relay[0].network_address)) == NetworkMatch("apple-private-relay", KIND_APPLE_RELAY)
    assert found.match(str(relay[-1].network_address)).name == "apple-private-relay"  # IPv6
    assert found.match("192.0.2.1") is None  # documentation addresses are nobody's
    size = (data / "apple-private-relay.txt").stat().st_size
    assert size < 2_000_000


def test_an_operator_list_replaces_the_shipped_one_of_its_name_and_adds_others(tmp_path):
    (tmp_path / "microsoft-eop.txt").write_text(list_text("microsoft-eop", KIND_SCANNER, "198.51.100.0/24"))
    (tmp_path / "acme-scanner.txt").write_text(list_text())
    found = networks.network_index(tmp_path)
    assert found.match("40.107.3.4") is None  # the shipped prefixes are gone
    assert found.match("198.51.100.1") == NetworkMatch("microsoft-eop", KIND_SCANNER)
    assert found.match("192.0.2.1") == NetworkMatch("acme-scanner", KIND_SCANNER)
    assert found.match("66.249.93.10").name == "google-image-proxy"  # the other shipped lists stay


# -- the Flask extension and its CLI ---------------------------------------------------------------


@pytest.fixture
def networks_app(engine, database_url, tmp_path) -> Flask:
    app = Flask("networks_test_app")
    app.config.update(
        TESTING=True,
        HOTCLICKS_DATABASE_URL=database_url,
        HOTCLICKS_SECRET_KEY=SECRET_KEY,
        HOTCLICKS_BOT_NETWORKS_DIR=str(tmp_path / "operator-networks"),
    )
    HotClicks(app)
    yield app
    get_state(app).dispose()


def test_the_extension_builds_the_index_once_per_app(networks_app):
    state = get_state(networks_app)
    assert state.networks.match("40.107.3.4") == NetworkMatch("microsoft-eop", KIND_SCANNER)
    assert state.networks_dir == networks_app.config["HOTCLICKS_BOT_NETWORKS_DIR"]


def test_the_default_operator_directory_is_in_the_instance_folder(engine, database_url, tmp_path):
    app = Flask("instance_app", instance_path=str(tmp_path / "instance"))
    app.config.update(HOTCLICKS_DATABASE_URL=database_url, HOTCLICKS_SECRET_KEY=SECRET_KEY)
    HotClicks(app)
    try:
        assert get_state(app).networks_dir == str(tmp_path / "instance" / "hotclicks-networks")
    finally:
        get_state(app).dispose()


def test_a_bad_operator_list_stops_the_app_at_start(engine, database_url, tmp_path):
    (tmp_path / "acme-scanner.txt").write_text(list_text(kind="vpn"))
    app = Flask("bad_networks_app")
    app.config.update(
        HOTCLICKS_DATABASE_URL=database_url, HOTCLICKS_SECRET_KEY=SECRET_KEY, HOTCLICKS_BOT_NETWORKS_DIR=str(tmp_path)
    )
    with pytest.raises(ConfigurationError, match=r"acme-scanner.txt: kind 'vpn' is not one of"):
        HotClicks(app)


def test_cli_list_add_check_remove(networks_app, tmp_path):
    runner = networks_app.test_cli_runner()

    def run(*args: str):
        return runner.invoke(args=["hotclicks", "bots", "networks", *args])

    listed = run("list")
    assert listed.exit_code == 0, listed.output
    lines = {line.split()[0]: line.split() for line in listed.output.splitlines()[2:] if line.strip()}
    assert lines["microsoft-eop"][1:5] == ["scanner", "7", "2023-07-31", "shipped"]
    assert "https://endpoints.office.com/" in listed.output
    assert networks_app.config["HOTCLICKS_BOT_NETWORKS_DIR"] in listed.output

    checked = run("check", "40.107.3.4")
    assert checked.exit_code == 0 and checked.output.strip() == "40.107.3.4: microsoft-eop (scanner)"
    assert run("check", "192.0.2.1").output.strip() == "192.0.2.1: in no network list"
    bad = run("check", "not-an-address")
    assert bad.exit_code == 1 and "'not-an-address' is not an IPv4 or IPv6 address" in bad.output

    source = tmp_path / "downloaded.txt"
    source.write_text(list_text())
    added = run("add", str(source))
    assert added.exit_code == 0, added.output
    assert "added network list acme-scanner (scanner, 2 prefixes)" in added.output
    assert (Path(networks_app.config["HOTCLICKS_BOT_NETWORKS_DIR"]) / "acme-scanner.txt").is_file()
    assert run("check", "192.0.2.1").output.strip() == "192.0.2.1: acme-scanner (scanner)"
    assert [line.split()[4] for line in run("list").output.splitlines() if line.startswith("acme-scanner")] == [
        "operator"
    ]

    replacing = tmp_path / "eop.txt"
    replacing.write_text(list_text("microsoft-eop", KIND_SCANNER, "198.51.100.0/24"))
    assert "replaces the shipped list" in run("add", str(replacing)).output
    assert "operator (replaces shipped)" in run("list").output
    assert run("check", "40.107.3.4").output.strip() == "40.107.3.4: in no network list"

    broken = tmp_path / "broken.txt"
    broken.write_text(list_text(kind="vpn"))
    refused = run("add", str(broken))
    assert refused.exit_code == 1 and "kind 'vpn' is not one of" in refused.output

    assert run("remove", "microsoft-eop").exit_code == 0
    assert run("check", "40.107.3.4").output.strip() == "40.107.3.4: microsoft-eop (scanner)"
    shipped = run("remove", "google-image-proxy")
    assert shipped.exit_code == 1 and "is a shipped network list: it cannot be removed" in shipped.output
    missing = run("remove", "nope")
    assert missing.exit_code == 1 and "no operator network list 'nope'" in missing.output
