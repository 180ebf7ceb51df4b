"""The sender's helper: X-HotClicks-* headers, versioned by the template's source, on plain
``email.message``, Flask-Mail and Flask-Mailman messages."""

from __future__ import annotations

import email
from email.message import EmailMessage

import pytest
from flask import Flask
from jinja2 import DictLoader

from flask_hotclicks import headers_for_template, mark_message, tracking_headers
from hotclicks.executions import MarkError, read_marks

TEMPLATE = "<p>Hello {{ name }}, <a href='https://shop.example/'>shop</a></p>"


def test_headers_name_the_delivery_and_version_the_template():
    headers = tracking_headers("welcome", type="transactional", recipient=42, template_source=TEMPLATE)
    assert headers["X-HotClicks-Delivery"] == "welcome"
    assert headers["X-HotClicks-Type"] == "transactional"
    assert headers["X-HotClicks-Recipient"] == "42"
    same = tracking_headers("welcome", type="transactional", template_source=TEMPLATE)
    changed = tracking_headers("welcome", type="transactional", template_source=TEMPLATE + " ")
    assert same["X-HotClicks-Version"] == headers["X-HotClicks-Version"]
    assert changed["X-HotClicks-Version"] != headers["X-HotClicks-Version"]  # republished: new execution
    marks = read_marks(headers)
    assert marks is not None and marks.version == headers["X-HotClicks-Version"]


def test_recurring_runs_and_bad_values():
    headers = tracking_headers("digest", type="recurring", run="2026-W12", version="7")
    assert (headers["X-HotClicks-Run"], headers["X-HotClicks-Version"]) == ("2026-W12", "7")
    with pytest.raises(ValueError):
        tracking_headers("digest", type="weekly")
    with pytest.raises(MarkError):
        tracking_headers("not a code!")


def test_on_a_plain_email_message_earlier_marks_are_replaced():
    message = EmailMessage()
    message["Subject"] = "Hi"
    message["X-HotClicks-Version"] = "old"
    message.set_content("Hello")
    mark_message(message, tracking_headers("news", version="new"))
    parsed = email.message_from_bytes(message.as_bytes())
    assert parsed.get_all("X-HotClicks-Version") == ["new"]
    assert parsed["X-HotClicks-Delivery"] == "news"


def test_on_a_flask_mail_message():
    from flask_mail import Mail, Message

    app = Flask("mailer")
    Mail(app)
    message = Message("Hi", sender="news@shop.example", recipients=["ann@example.org"], body="Hello")
    mark_message(message, tracking_headers("news", template_source=TEMPLATE))
    with app.app_context():
        sent = email.message_from_string(message.as_string())
    assert sent["X-HotClicks-Delivery"] == "news"
    assert sent["X-HotClicks-Version"]


def test_on_a_flask_mailman_message():
    from flask_mailman import EmailMessage as MailmanMessage
    from flask_mailman import Mail

    app = Flask("mailman")
    Mail(app)
    with app.app_context():
        message = MailmanMessage("Hi", "Hello", "news@shop.example", ["ann@example.org"],
                                 headers={"X-HotClicks-Delivery": "stale"})
        mark_message(message, tracking_headers("news", recipient="c-1"))
        sent = message.message()
    assert sent.get_all("X-HotClicks-Delivery") == ["news"]
    assert sent["X-HotClicks-Recipient"] == "c-1"


def test_anything_else_is_refused():
    with pytest.raises(TypeError, match="cannot put headers on a str"):
        mark_message("a message", tracking_headers("news"))


def test_the_flask_helper_reads_the_apps_template_source():
    app = Flask("templates")
    app.jinja_loader = DictLoader({"mail/news.html": TEMPLATE, "mail/news.txt": "Hello {{ name }}"})
    with app.app_context():
        first = headers_for_template("news", "mail/news.html", "mail/news.txt", type="recurring", run="r1")
        app.jinja_loader.mapping["mail/news.txt"] = "Hello again {{ name }}"
        second = headers_for_template("news", "mail/news.html", "mail/news.txt", type="recurring", run="r1")
    assert first["X-HotClicks-Run"] == "r1"
    assert first["X-HotClicks-Version"] != second["X-HotClicks-Version"]
