"""DKIM: signatures made after rewriting verify with dkimpy; a message that arrives signed is left
alone, stripped or re-signed as configured, and the choice is recorded."""

from __future__ import annotations

import base64
import smtplib
from dataclasses import replace

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import select

from hotclicks.db.models import Message, RelayIncident
from smtp_relay import RelayController

from .helpers import newsletter, tracked_hrefs


@pytest.fixture(scope="module")
def key_pair(tmp_path_factory):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path_factory.mktemp("dkim") / "relay.pem"
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return path, b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)


def dns_for(record: bytes, name: bytes):
    def dnsfunc(qname, timeout=5):
        return record if qname.rstrip(b".") == name else None

    return dnsfunc


def start(relay_config, **changes) -> RelayController:
    relay = RelayController(replace(relay_config, **changes))
    relay.start()
    return relay


def stop(relay: RelayController) -> None:
    relay.stop()
    relay.handler.database.dispose()


def send(relay, message: bytes, to=("ann@example.org",)) -> None:
    with smtplib.SMTP(*relay.config.listen, timeout=30) as client:
        client.sendmail("news@shop.example", list(to), message)
    relay.wait_idle()


def presigned(key_path, signed=(b"From", b"Subject")) -> bytes:
    """A newsletter the sender signed itself (with another selector), over the fields ``signed``."""
    raw = newsletter()
    return dkim.sign(raw, b"sender", b"shop.example", key_path.read_bytes(), include_headers=list(signed)) + raw


def incidents(sessions) -> list[str]:
    with sessions() as session:
        return [i.kind for i in session.scalars(select(RelayIncident).order_by(RelayIncident.id))]


def senders_signature_verifies(data: bytes, record: bytes) -> bool:
    return dkim.verify(data, dnsfunc=dns_for(record, b"sender._domainkey.shop.example"))


def test_relayed_messages_are_signed_after_rewriting_and_verify(engine, relay_config, upstream, key_pair):
    key_path, record = key_pair
    relay = start(relay_config, dkim_key_file=str(key_path), dkim_selector="hc", dkim_domain="shop.example")
    try:
        send(relay, newsletter(), ["ann@example.org", "bob@example.org"])
    finally:
        stop(relay)
    assert len(upstream.messages) == 2
    for received in upstream.messages:
        assert tracked_hrefs(received.data)  # rewritten
        assert received.data.startswith(b"DKIM-Signature:")
        assert dkim.verify(received.data, dnsfunc=dns_for(record, b"hc._domainkey.shop.example"))


def test_a_signed_message_is_forwarded_untracked_without_a_key_less_its_marks(relay, upstream, sessions, key_pair):
    raw = presigned(key_pair[0])
    assert senders_signature_verifies(raw, key_pair[1])
    send(relay, raw)
    data = upstream.messages[0].data
    assert data == raw.replace(b"X-HotClicks-Delivery: spring-news\r\n", b"")  # its signature does not cover them
    assert senders_signature_verifies(data, key_pair[1])
    with sessions() as session:
        assert session.scalars(select(Message)).all() == []
    assert incidents(sessions) == ["dkim-kept"]


def test_marks_the_senders_signature_covers_are_forwarded_and_an_incident_says_so(relay, upstream, sessions, key_pair):
    raw = presigned(key_pair[0], (b"From", b"Subject", b"X-HotClicks-Delivery"))
    send(relay, raw)
    data = upstream.messages[0].data
    assert data == raw and senders_signature_verifies(data, key_pair[1])
    assert incidents(sessions) == ["dkim-kept", "marks-kept"]
    with sessions() as session:
        reason = session.scalars(select(RelayIncident.reason).where(RelayIncident.kind == "marks-kept")).one()
    assert "X-HotClicks-Delivery" in reason and "DKIM" in reason


def test_a_signed_message_can_be_stripped_and_tracked(engine, relay_config, upstream, sessions, key_pair):
    relay = start(relay_config, dkim_signed="strip")
    try:
        send(relay, presigned(key_pair[0]))
    finally:
        stop(relay)
    data = upstream.messages[0].data
    assert b"DKIM-Signature" not in data and tracked_hrefs(data)
    assert incidents(sessions) == ["dkim-stripped"]


def test_a_signed_message_is_re_signed_with_the_relays_key(engine, relay_config, upstream, sessions, key_pair):
    key_path, record = key_pair
    relay = start(relay_config, dkim_key_file=str(key_path), dkim_selector="hc", dkim_domain="shop.example")
    try:
        send(relay, presigned(key_path))
    finally:
        stop(relay)
    data = upstream.messages[0].data
    assert data.count(b"DKIM-Signature:") == 1 and b"s=hc;" in data.replace(b" ", b"")
    assert tracked_hrefs(data)
    assert dkim.verify(data, dnsfunc=dns_for(record, b"hc._domainkey.shop.example"))
    assert incidents(sessions) == ["dkim-resigned"]


def test_a_rewrite_worker_renders_each_copy_complete_its_fields_and_a_signature_that_verifies(key_pair):
    from smtp_relay.decide import LinkOptions, scan_message
    from smtp_relay.dkim import DkimSigner
    from smtp_relay.render import CopyMaker, CopyRenderer, Draft

    from .conftest import SECRET_KEY
    from .helpers import BASE_URL

    key_path, record = key_pair
    options = LinkOptions(tracked_prefixes=(BASE_URL + "/",))
    maker = CopyMaker(SECRET_KEY, (), BASE_URL, True, options, DkimSigner(str(key_path), "hc", "shop.example"))
    message = newsletter()
    parsed, scanned = scan_message(message, options)
    targets = {(s.name, link.key): (100 + i, link.url) for s in scanned for i, link in enumerate(s.links)}
    draft = Draft(message, parsed, scanned, list_unsubscribe=True, mailto="leave@shop.example")
    renderer = CopyRenderer(maker, workers=1)
    try:
        renderer.start()
        assert renderer.workers == 1
        copies = renderer.render(draft, [7, 8], targets)
    finally:
        renderer.stop()
    for data, error in copies:
        assert error is None
        assert data.startswith(b"DKIM-Signature:")
        assert b"List-Unsubscribe:" in data and b"mailto:leave@shop.example" in data
        assert tracked_hrefs(data)
        assert dkim.verify(data, dnsfunc=dns_for(record, b"hc._domainkey.shop.example"))
