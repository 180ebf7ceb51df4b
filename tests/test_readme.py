"""The README's guides, run as written: a newcomer who copies them gets tracked mail."""

from __future__ import annotations

import re
import types
from pathlib import Path

import pytest
from jinja2 import DictLoader
from sqlalchemy import select

pytest.importorskip("flask_mailman", reason="the guides use flask-mailman (pip install -e '.[example]')")

from hotclicks.db.models import Delivery, Execution  # noqa: E402

from .conftest import SECRET_KEY  # noqa: E402
from .helpers import BASE_URL, tracked_hrefs  # noqa: E402

README = Path(__file__).resolve().parents[1] / "README.md"


def guide(name: str) -> str:
    """The Python block that follows ``<!-- guide: name -->`` in the README."""
    match = re.search(
        rf"<!-- guide: {re.escape(name)} -->\s*```python\n(.*?)```", README.read_text(), re.S
    )
    assert match, f"the README has no guide block {name!r}"
    return match.group(1)


@pytest.fixture
def guide_app(relay, database_url, monkeypatch):
    monkeypatch.setenv("FLASK_HOTCLICKS_DATABASE_URL", database_url)
    monkeypatch.setenv("FLASK_HOTCLICKS_SECRET_KEY", SECRET_KEY)
    monkeypatch.setenv("FLASK_HOTCLICKS_BASE_URL", BASE_URL)
    monkeypatch.setenv("FLASK_MAIL_PORT", str(relay.config.listen[1]))
    module = types.ModuleType("readme_guide")
    exec(compile(guide("flask-app"), "README.md (guide: flask-app)", "exec"), module.__dict__)
    exec(compile(guide("transactional"), "README.md (guide: transactional)", "exec"), module.__dict__)
    app = module.create_app()
    templates = {
        "emails/spring.html": '<p><a href="https://shop.example/spring">Spring</a> '
        'for {{ subscriber.email }}</p>',
        "emails/receipt.html": '<p><a href="https://shop.example/orders/{{ order.number }}">'
        "Your order</a></p>",
    }
    app.jinja_loader = DictLoader(templates)
    app.templates = templates  # type: ignore[attr-defined]
    yield module, app
    app.extensions["hotclicks"].engine.dispose()


def test_guide_1_a_flask_app_sends_tracked_mail_through_the_relay(guide_app, relay, upstream):
    module, app = guide_app
    with app.app_context():
        module.send_newsletter([{"email": "ann@example.org"}, {"email": "bob@example.org"}])
    relay.wait_idle()
    assert sorted(m.rcpt_tos[0] for m in upstream.messages) == ["ann@example.org", "bob@example.org"]
    for received in upstream.messages:
        assert len(tracked_hrefs(received.data, part="html")) == 1
        assert b"X-HotClicks" not in received.data


def test_guide_2_a_republished_template_starts_a_new_execution(guide_app, relay, upstream, sessions):
    module, app = guide_app
    order = {"number": "A1", "email": "ann@example.org", "customer_id": 7}
    with app.app_context():
        module.send_receipt(order)
        module.send_receipt({**order, "number": "A2"})
        app.templates["emails/receipt.html"] = (  # the template is edited and deployed again
            '<p><a href="https://shop.example/account/orders/{{ order.number }}">Track it</a></p>'
        )
        module.send_receipt({**order, "number": "A3"})
    relay.wait_idle()
    assert len(upstream.messages) == 3
    with sessions() as session:
        executions = session.scalars(
            select(Execution).join(Delivery).where(Delivery.code == "order-receipt")
        ).all()
    assert len(executions) == 2
    assert executions[0].period == executions[1].period
    assert executions[0].version != executions[1].version
