"""Delivery status notifications (RFC 3464) for copies the upstream refused for good or that were given up.

A client that relays through HotClicks (a Postfix content filter, a smarthost setup) has handed the
mail off at our 250; without a bounce from us a refused copy would vanish for its sender. The
notification carries the original's header fields only (never its body, whose links are tracked,
nor a field that holds one of our signed URLs), comes from ``<>`` so it is never bounced itself,
and is built here from plain facts, without I/O.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from email.message import Message
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.policy import SMTP
from email.utils import format_datetime, make_msgid

#: Status of a refusal whose reply has no enhanced code.
STATUS_REFUSED = "5.0.0"
#: Status of a copy given up, whatever its last reply said (RFC 3463: "delivery time expired");
#: the last reply is in its Diagnostic-Code.
STATUS_GIVEN_UP = "4.4.7"

_ENHANCED = re.compile(r"^5\d{2}[ -](5\.\d{1,3}\.\d{1,3})(?!\S)")
_SMTP_REPLY = re.compile(r"^[2-5]\d{2}(?:[ -]|$)")
_BLANK_LINE = re.compile(rb"\r?\n\r?\n")


def status_of(reply: str, gave_up: bool) -> str:
    """The Status of a failed recipient: the refusal's own enhanced code when it has one."""
    if gave_up:
        return STATUS_GIVEN_UP
    match = _ENHANCED.match(reply)
    return match[1] if match else STATUS_REFUSED


def _one_line(text: str) -> str:
    return " ".join(text.split())


def original_headers(data: bytes, omit_containing: str) -> str:
    """The header fields of a copy as text, without the fields whose value contains ``omit_containing``
    (the relay's base URL: ``List-Unsubscribe`` holds a signed opt-out link)."""
    head = _BLANK_LINE.split(data, 1)[0].decode("utf-8", "replace")
    fields: list[list[str]] = []
    for line in head.splitlines():
        if line[:1] in (" ", "\t") and fields:
            fields[-1].append(line)
        else:
            fields.append([line])
    kept = ["\n".join(lines) for lines in fields if omit_containing not in "".join(lines)]
    return "\n".join(kept) + "\n"


def build_dsn(
    *,
    reporting_mta: str,
    sender: str,
    arrival: dt.datetime,
    failures: Sequence[tuple[str, str]],
    gave_up: bool,
    headers: str,
    now: dt.datetime,
) -> bytes:
    """The notification to ``sender`` that ``failures`` (recipient, last reply) were not delivered.

    ``headers`` are the original's header fields (see :func:`original_headers`); the result is a
    multipart/report with CRLF line endings, ready to spool.
    """
    if gave_up:
        why = "could not be delivered in the time the relay keeps trying; it has given up on"
    else:
        why = "was refused for good by the next mail server for"
    lines = [
        f"This is the mail relay at {reporting_mta}.",
        "",
        f"Your message {why} the recipients below.",
        "",
        *(f"<{address}>: {_one_line(reply)}" for address, reply in failures),
        "",
        "The header fields of your message are attached.",
    ]
    report = MIMEMultipart("report", report_type="delivery-status")
    report["From"] = f"Mail Delivery System <MAILER-DAEMON@{reporting_mta}>"
    report["To"] = f"<{sender}>"
    report["Subject"] = "Undelivered Mail Returned to Sender"
    report["Date"] = format_datetime(now)
    report["Message-ID"] = make_msgid(domain=reporting_mta)
    report["Auto-Submitted"] = "auto-replied"
    human = MIMEText("\n".join(lines) + "\n", "plain")
    del human["MIME-Version"]
    report.attach(human)

    per_message = Message()
    per_message["Reporting-MTA"] = f"dns; {reporting_mta}"
    per_message["Arrival-Date"] = format_datetime(arrival)
    blocks: list[Message | str] = [per_message]
    for address, reply in failures:
        block = Message()
        block["Final-Recipient"] = f"rfc822; {address}"
        block["Action"] = "failed"
        block["Status"] = status_of(reply, gave_up)
        reply = _one_line(reply)
        # "smtp" is for what a server answered; a connection error is our own wording.
        block["Diagnostic-Code"] = f"smtp; {reply}" if _SMTP_REPLY.match(reply) else f"X-HotClicks; {reply}"
        blocks.append(block)
    status = MIMEBase("message", "delivery-status")
    del status["MIME-Version"]
    status.set_payload(blocks)
    report.attach(status)

    original = MIMEText(headers, "rfc822-headers")
    del original["MIME-Version"]
    report.attach(original)
    return report.as_bytes(policy=SMTP)
