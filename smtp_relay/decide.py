"""Deciding what a transaction becomes: tracked or not, which header fields go, which links count.

Pure functions over the message's bytes and the relay's settings: no database, no files, no
network. A message the relay cannot understand is never dropped: it is forwarded unchanged, and
the reason comes back as an incident to record.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from hotclicks import rewrite
from hotclicks.errors import MimeError
from hotclicks.executions import HEADERS, MarkError, Marks, read_marks
from hotclicks.mime import ParsedMessage, TextPart, edit_headers, parse_message, read_headers
from hotclicks.enums import DeliveryType
from hotclicks.links import LinkSpec

from .incidents import (
    INCIDENT_DKIM_KEPT,
    INCIDENT_DKIM_RESIGNED,
    INCIDENT_DKIM_STRIPPED,
    INCIDENT_UNPARSED,
    Incident,
)

__all__ = [
    "DkimPolicy",
    "LinkOptions",
    "ScannedPart",
    "Tracked",
    "Untracked",
    "decide",
    "scan_message",
    "storable",
]

log = logging.getLogger("smtp_relay")

#: TrackedUrl.part for each rewritable MIME subtype.
PART_NAMES = {"html": "html", "plain": "text"}

_UNSUBSCRIBE_HEADERS = ("List-Unsubscribe", "List-Unsubscribe-Post")
_DKIM_HEADER = "DKIM-Signature"
_ANGLE = re.compile(r"<([^<>]*)>")
#: Any line break. The relay's SMTP client (aiosmtplib) sends every bare CR or LF as CRLF.
_LINE_BREAK = re.compile(rb"\r\n|\n|\r")


@dataclass(frozen=True)
class LinkOptions:
    """How links are found; hashable, for the caches."""

    personal_params: frozenset[str] = frozenset()
    excluded_domains: frozenset[str] = frozenset()
    tracked_prefixes: tuple[str, ...] = ()

    def keywords(self) -> dict[str, Collection[str]]:
        """The options as the rewriter's functions take them."""
        return {
            "personal_params": self.personal_params,
            "excluded_domains": self.excluded_domains,
            "tracked_prefixes": self.tracked_prefixes,
        }


@dataclass(frozen=True)
class ScannedPart:
    part: TextPart
    name: str
    links: tuple[rewrite.Link, ...]
    specs: tuple[LinkSpec, ...]  # what is registered of each link


@dataclass(frozen=True)
class DkimPolicy:
    """What to do with a message that arrives DKIM-signed: re-sign it (the relay has a key),
    strip the signature (``--dkim-signed strip``), or else leave the message untracked."""

    resign: bool = False
    strip: bool = False


@dataclass
class Untracked:
    """A transaction forwarded as it came: one copy to every recipient, no row."""

    data: bytes
    note: str
    delivery: str | None = None
    incidents: list[Incident] = field(default_factory=list)


@dataclass
class Tracked:
    """A transaction to record and render, one copy per recipient."""

    marks: Marks
    #: The message without the header fields the relay replaces (marks, DKIM, List-Unsubscribe).
    data: bytes
    message_id_header: str | None
    marketing: bool
    #: The sender's own mailto unsubscribe address, kept beside ours.
    mailto: str | None
    #: The message's text parts and their links; None when it cannot be parsed (links stay).
    parsed: ParsedMessage | None
    scanned: list[ScannedPart] | None
    incidents: list[Incident] = field(default_factory=list)


def storable(text: str) -> str:
    """``text`` as any database can store it: bytes the part's charset could not decode
    (carried as lone surrogates) and NULs (PostgreSQL refuses them) become U+FFFD."""
    if "\x00" not in text:
        try:
            text.encode("utf-8")
            return text  # the common case: nothing to replace
        except UnicodeEncodeError:
            pass
    return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace").replace("\x00", "\ufffd")


@lru_cache(maxsize=32)
def _part_links(
    name: str, text: str, options: LinkOptions
) -> tuple[tuple[rewrite.Link, ...], tuple[LinkSpec, ...]]:
    """The trackable links of a part, and what is registered of each.

    Cached: a newsletter's parts are the same text for each of its recipients.
    """
    find = rewrite.find_html_links if name == "html" else rewrite.find_text_links
    found = find(text, **options.keywords())
    # A target with undecodable bytes cannot be stored nor signed faithfully: left alone.
    kept = tuple(link for link in found if storable(link.key) == link.key and storable(link.url) == link.url)
    specs = tuple(
        LinkSpec(
            part=name,
            key=link.key,
            url=rewrite.canonical_url(link.url, options.personal_params),
            name=link.name,
            label=storable(link.label),
            position=link.index,
        )
        for link in kept
    )
    return kept, specs


def scan_message(raw: bytes, options: LinkOptions) -> tuple[ParsedMessage, list[ScannedPart]]:
    """The message parsed, and the links of each rewritable part; MimeError if unreadable."""
    parsed = parse_message(raw)
    scanned = []
    for part in parsed.parts:
        name = PART_NAMES[part.subtype]
        found, specs = _part_links(name, part.text, options)
        scanned.append(ScannedPart(part, name, found, specs))
    return parsed, scanned


def _mailto_of(list_unsubscribe: str | None) -> str | None:
    """The sender's own mailto unsubscribe address, kept beside ours."""
    for target in _ANGLE.findall(list_unsubscribe or ""):
        target = target.strip()
        if target.lower().startswith("mailto:") and target.isascii() and target.isprintable():
            return target[len("mailto:"):]
    return None


def decide(
    mail_from: str, recipients: Sequence[str], raw: bytes, dkim: DkimPolicy, options: LinkOptions
) -> Untracked | Tracked:
    """Whether and how the relay tracks a transaction's message."""
    recipients = list(recipients)
    if not raw.count(b"\r") == raw.count(b"\n") == raw.count(b"\r\n"):
        # Parse what the upstream will get: a bare CR read as nothing here but sent as a
        # line break would move header fields into the body or break a boundary line.
        raw = _LINE_BREAK.sub(b"\r\n", raw)
    try:
        headers = read_headers(raw)
        marks = read_marks(headers)
    except (MimeError, MarkError) as exc:
        log.warning("forwarding unchanged, untracked: %s", exc)
        return Untracked(raw, f"untracked: {exc}", incidents=[Incident(INCIDENT_UNPARSED, str(exc), mail_from, recipients)])
    if marks is None:
        return Untracked(raw, "untracked")
    message_id_header = storable(headers.get("Message-ID") or "")[:998] or None
    remove = list(HEADERS)
    incidents = []
    if headers.get(_DKIM_HEADER) is not None:
        if dkim.resign:
            reason = "the message was DKIM-signed; the relay removed that signature and signed it with its own key"
            incidents.append(Incident(INCIDENT_DKIM_RESIGNED, reason, mail_from, recipients, None, message_id_header))
        elif dkim.strip:
            reason = "the message was DKIM-signed; the relay removed that signature (--dkim-signed strip)"
            incidents.append(Incident(INCIDENT_DKIM_STRIPPED, reason, mail_from, recipients, None, message_id_header))
        else:
            reason = (
                "forwarded unchanged, not tracked: the message was DKIM-signed and the relay has "
                "no key to sign it again (--dkim-key-file) nor leave to strip it (--dkim-signed strip)"
            )
            log.info("delivery %s: %s", marks.delivery, reason)
            kept = Incident(INCIDENT_DKIM_KEPT, reason, mail_from, recipients, None, message_id_header)
            return Untracked(raw, "untracked: DKIM-signed", marks.delivery, [kept])
        remove.append(_DKIM_HEADER)
    marketing = marks.type is not DeliveryType.TRANSACTIONAL
    mailto = None
    if marketing:
        mailto = _mailto_of(headers.get("List-Unsubscribe"))
        remove.extend(_UNSUBSCRIBE_HEADERS)
    stripped = edit_headers(raw, remove=remove)
    parsed: ParsedMessage | None
    scanned: list[ScannedPart] | None
    try:
        parsed, scanned = scan_message(stripped, options)
    except MimeError as exc:
        log.warning("delivery %s: forwarding without rewriting links: %s", marks.delivery, exc)
        incidents.append(Incident(INCIDENT_UNPARSED, f"links not rewritten: {exc}", mail_from, recipients, None, message_id_header))
        parsed, scanned = None, None
    return Tracked(marks, stripped, message_id_header, marketing, mailto, parsed, scanned, incidents)

