"""The README's Guide 3 run against a real Postfix: client -> Postfix -> relay -> recipient's server.

A private Postfix instance (its own configuration, queue and data directories, listening on free
ports of 127.0.0.1) is configured from the ``<!-- postfix: name -->`` blocks of README.md and
docs/relay.md, with the guide's ports (2525 for the relay, 10026 for the content filter's return
port) replaced by free ones. The aiosmtpd sink stands for the recipients' server (after a
``relayhost`` setup, the smarthost). Needs Debian's ``postfix`` package and root, since Postfix
starts as root and drops to its ``mail_owner``; skipped otherwise.
"""

from __future__ import annotations

import dataclasses
import email
import email.policy
import os
import pwd
import re
import shutil
import smtplib
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from hotclicks.db.models import Message, MessageStatus, Recipient

from .conftest import free_port
from .helpers import NEWSLETTER_LINKS, newsletter, tracked_hrefs

POSTFIX = shutil.which("postfix") or shutil.which("postfix", path="/usr/sbin:/usr/local/sbin") or "postfix"
POSTQUEUE = str(Path(POSTFIX).with_name("postqueue"))


def why_postfix_cannot_run() -> str | None:
    if not Path(POSTFIX).is_file():
        return "Postfix is not installed (apt-get install postfix)"
    if os.geteuid() != 0:
        return "a private Postfix instance must be started as root"
    try:
        pwd.getpwnam("postfix")
    except KeyError:
        return "Postfix's mail_owner user 'postfix' does not exist"
    return None


ROOT = Path(__file__).resolve().parents[1]
GUIDES = [ROOT / "README.md", ROOT / "docs" / "relay.md"]
#: The relay's address and the content filter's return port, as the guide writes them.
GUIDE_RELAY = "127.0.0.1]:2525"
GUIDE_RETURN = "127.0.0.1:10026"
RECIPIENTS = ["ann@example.org", "bob@example.org"]
#: How long Postfix and the relay get to bring a message to the sink.
DEADLINE = 30.0


def excerpts(path: Path) -> dict[str, str]:
    """The ``<!-- postfix: name -->`` code blocks of one document, by name."""
    found = re.findall(r"<!-- postfix: (\S+) -->\s*```\n(.*?)```", path.read_text(), re.S)
    return dict(found)


def guide_blocks() -> dict[str, str]:
    """Every named block of the guides; a block found in both documents must read the same."""
    blocks: dict[str, str] = {}
    for path in GUIDES:
        for name, text in excerpts(path).items():
            assert blocks.get(name, text) == text, f"{path.name} and another guide differ on {name}"
            blocks[name] = text
    return blocks


@dataclasses.dataclass(frozen=True)
class Setup:
    """One way the guide tells users to wire Postfix to the relay."""

    #: Guide blocks appended to main.cf and to master.cf.
    main_cf: tuple[str, ...]
    master_cf: tuple[str, ...] = ()
    #: The relay hands mail back to Postfix (content filter) instead of to the sink.
    returns_to_postfix: bool = False
    #: Settings of the user's own main.cf that the guide must cope with.
    users_main_cf: str = ""


SETUPS = {
    "relayhost": Setup(main_cf=("relayhost/main.cf",)),
    "content-filter": Setup(
        main_cf=("content-filter/main.cf",),
        master_cf=("content-filter/master.cf",),
        returns_to_postfix=True,
    ),
    "relayhost-tls-encrypt": Setup(
        main_cf=("relayhost/main.cf", "tls/main.cf"),
        users_main_cf="smtp_tls_security_level = encrypt\n",
    ),
}

#: Postfix's own services, none of them chrooted (the queue is a temporary directory).
MASTER_CF = """\
127.0.0.1:{smtpd} inet n - n - - smtpd
pickup     unix  n - n 60 1 pickup
cleanup    unix  n - n - 0 cleanup
qmgr       unix  n - n 300 1 qmgr
tlsmgr     unix  - - n 1000? 1 tlsmgr
rewrite    unix  - - n - - trivial-rewrite
bounce     unix  - - n - 0 bounce
defer      unix  - - n - 0 bounce
trace      unix  - - n - 0 bounce
verify     unix  - - n - 1 verify
flush      unix  n - n 1000? 0 flush
proxymap   unix  - - n - - proxymap
proxywrite unix  - - n - 1 proxymap
smtp       unix  - - n - - smtp
relay      unix  - - n - - smtp
showq      unix  n - n - - showq
error      unix  - - n - - error
retry      unix  - - n - - error
discard    unix  - - n - - discard
anvil      unix  - - n - 1 anvil
scache     unix  - - n - 1 scache
postlog    unix-dgram n - n - 1 postlogd
"""


@dataclasses.dataclass(frozen=True)
class Ports:
    smtpd: int
    relay: int
    postfix_return: int


class PostfixInstance:
    """A Postfix of its own in ``root``; ``postfix -c`` makes every command act on it alone."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.config_dir = root / "etc"
        self.maillog = root / "maillog"

    def configure(self, main_cf: str, master_cf: str) -> None:
        self.config_dir.mkdir()
        (self.config_dir / "main.cf").write_text(main_cf)
        (self.config_dir / "master.cf").write_text(master_cf)

    def run(self, *args: str, command: str = POSTFIX) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [command, "-c", str(self.config_dir), *args],
            capture_output=True, text=True, timeout=60, check=False,
        )

    def start(self) -> None:
        for action in ("check", "start"):
            done = self.run(action)
            output = done.stdout + done.stderr + self.log()
            assert done.returncode == 0, f"postfix {action} failed: {output}"

    def flush(self) -> None:
        self.run("-f", command=POSTQUEUE)

    def queue(self) -> str:
        return self.run("-p", command=POSTQUEUE).stdout

    def master_pid(self) -> int | None:
        try:
            return int((self.root / "spool" / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        """Stop the master and wait for it to exit; kill it (by its pid) if it will not."""
        pid = self.master_pid()
        self.run("stop")
        if pid is None:
            return
        deadline = time.monotonic() + 30
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, 9)

    def log(self) -> str:
        try:
            return "\n--- Postfix's log ---\n" + self.maillog.read_text()[-6000:]
        except OSError:
            return "\n(no Postfix log)"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _distinct_free_ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return list(ports)


@pytest.fixture(params=SETUPS)
def setup(request) -> Setup:
    return SETUPS[request.param]


@pytest.fixture
def ports() -> Ports:
    return Ports(*_distinct_free_ports(3))


@pytest.fixture
def postfix(setup: Setup, ports: Ports, upstream) -> Iterator[PostfixInstance]:
    """Postfix configured as the guide says, the sink standing for the recipients' server."""
    reason = why_postfix_cannot_run()
    if reason:
        pytest.skip(reason)
    blocks = guide_blocks()

    def guide(names: tuple[str, ...]) -> str:
        text = "".join(blocks[name] for name in names)
        return text.replace(GUIDE_RELAY, f"127.0.0.1]:{ports.relay}").replace(
            GUIDE_RETURN, f"127.0.0.1:{ports.postfix_return}"
        )

    # Postfix's daemons run as mail_owner and must reach the queue: pytest's tmp_path is root's
    # alone (0700), so the instance lives in a temporary directory that others may traverse.
    root = Path(tempfile.mkdtemp(prefix="hotclicks-postfix-"))
    root.chmod(0o755)
    (root / "spool").mkdir()
    instance = PostfixInstance(root)
    main_cf = f"""\
compatibility_level = 3.6
queue_directory = {root / "spool"}
data_directory = {root / "data"}
mail_owner = postfix
maillog_file = {instance.maillog}
maillog_file_prefixes = {root}
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = mail.shop.example
mydestination =
mynetworks = 127.0.0.0/8
# Debian's default, and small so that a message near the limit is quick to build.
smtp_tls_security_level = may
message_size_limit = 200000
"""
    if setup.returns_to_postfix:
        # Where Postfix itself delivers: example.org's server is the sink.
        main_cf += f"transport_maps = inline:{{ example.org=smtp:[127.0.0.1]:{upstream.port} }}\n"
    main_cf += setup.users_main_cf + "# --- the guide ---\n" + guide(setup.main_cf)
    master_cf = MASTER_CF.format(smtpd=ports.smtpd) + guide(setup.master_cf)
    try:
        instance.configure(main_cf, master_cf)
        instance.start()
        yield instance
    finally:
        instance.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def relay_config(relay_config, setup: Setup, ports: Ports, upstream, postfix):
    """The relay on the port Postfix sends to, forwarding as the guide says (Postfix up first)."""
    target = (upstream.hostname, upstream.port)
    if setup.returns_to_postfix:
        target = ("127.0.0.1", ports.postfix_return)
    return dataclasses.replace(relay_config, listen=("127.0.0.1", ports.relay), upstream=target)


def send_to_postfix(ports: Ports, message: bytes, recipients: list[str] = RECIPIENTS) -> None:
    with smtplib.SMTP("127.0.0.1", ports.smtpd, timeout=30) as client:
        client.sendmail("news@shop.example", recipients, message)


def wait_for_sink(upstream, count: int, postfix: PostfixInstance) -> None:
    """Wait, with a deadline, until the sink holds ``count`` messages, flushing Postfix's queue."""
    deadline = time.monotonic() + DEADLINE
    next_flush = time.monotonic() + 5
    while len(upstream.messages) < count:
        if time.monotonic() > deadline:
            pytest.fail(
                f"the sink got {len(upstream.messages)} of {count} messages in {DEADLINE:.0f} s\n"
                f"--- postqueue -p ---\n{postfix.queue()}{postfix.log()}"
            )
        if time.monotonic() > next_flush:
            postfix.flush()
            next_flush += 5
        time.sleep(0.1)


def without_received(data: bytes) -> bytes:
    """The message without the Received headers Postfix put on top of it."""
    return re.sub(rb"\A(Received: [^\r\n]*\r\n([ \t][^\r\n]*\r\n)*)+", b"", data)


def test_the_readme_shows_both_setups_as_docs_relay_md_does():
    readme, docs = excerpts(GUIDES[0]), excerpts(GUIDES[1])
    assert set(readme) == {"relayhost/main.cf", "content-filter/main.cf", "content-filter/master.cf"}
    assert all(docs[name] == text for name, text in readme.items())
    assert {name for setup in SETUPS.values() for name in setup.main_cf + setup.master_cf} <= set(docs)


def test_a_newsletter_sent_to_postfix_reaches_each_recipient_with_tracked_links(
    setup, postfix, ports, relay, upstream, sessions
):
    send_to_postfix(ports, newsletter())
    wait_for_sink(upstream, len(RECIPIENTS), postfix)
    relay.wait_idle()

    assert sorted(r for m in upstream.messages for r in m.rcpt_tos) == RECIPIENTS
    for received in upstream.messages:
        assert b"X-HotClicks" not in received.data
        assert len(tracked_hrefs(received.data, part="html")) == len(NEWSLETTER_LINKS)
        assert len(tracked_hrefs(received.data, part="plain")) == 1
        parsed = email.message_from_bytes(received.data, policy=email.policy.default)
        assert parsed["List-Unsubscribe"]
    with sessions() as session:
        messages = session.scalars(select(Message)).all()
        assert {m.status for m in messages} == {MessageStatus.SENT}
        assert sorted(session.get(Recipient, m.recipient_id).address for m in messages) == RECIPIENTS


@pytest.mark.parametrize("setup", ["relayhost", "content-filter"], indirect=True)
def test_mail_without_the_delivery_header_passes_through_postfix_and_the_relay_unchanged(
    setup, postfix, ports, relay, upstream, sessions
):
    sent = (
        "From: Shop <orders@shop.example>\r\nTo: ann@example.org\r\nSubject: Your order\r\n"
        "Date: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <order-1@shop.example>\r\n"
        "\r\nSee https://shop.example/orders/1 for your order.\r\n"
    ).encode()
    send_to_postfix(ports, sent, ["ann@example.org"])
    wait_for_sink(upstream, 1, postfix)
    relay.wait_idle()

    assert without_received(upstream.messages[0].data) == sent
    with sessions() as session:
        assert session.scalars(select(Message)).all() == []


#: Links of the message near the size limit, each made longer by tracking.
LINKS = 3300


@pytest.mark.parametrize("setup", ["content-filter"], indirect=True)
def test_a_message_near_postfixs_size_limit_still_comes_back_from_the_relay(
    setup, postfix, ports, relay, upstream, sessions
):
    # Many links: the tracked copy is larger than the message Postfix accepted.
    links = "".join(f'<a href="https://shop.example/p/{i}">item {i}</a>\r\n' for i in range(LINKS))
    message = newsletter().replace(b"</body>", links.encode() + b"</body>")
    assert 150_000 < len(message) < 190_000  # under Postfix's message_size_limit of 200000
    send_to_postfix(ports, message, ["ann@example.org"])
    wait_for_sink(upstream, 1, postfix)
    relay.wait_idle()

    assert len(upstream.messages[0].data) > 200_000
    assert len(tracked_hrefs(upstream.messages[0].data, part="html")) == LINKS + len(NEWSLETTER_LINKS)
    with sessions() as session:
        assert [m.status for m in session.scalars(select(Message))] == [MessageStatus.SENT]
