"""Deciding what a transaction becomes: tracked or not, which header fields go, which links count.

Pure functions over the message's bytes and the relay's settings: no database, no files, no
network. A message the relay cannot understand is never dropped: it is forwarded unchanged, and
the reason comes back as an incident to record.

The ``X-HotClicks-*`` fields are instructions to the relay, not to the recipient: they leave
every message the relay forwards, tracked or not, except one whose DKIM signature covers them
(removing them would break it; an incident says so).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from email.message import Message
from functools import lru_cache

from hotclicks import rewrite
from hotclicks.errors import MimeError
from hotclicks.executions import MarkError, Marks, read_marks
from hotclicks.mime import ParsedMessage, TextPart, edit_headers, parse_message, read_headers, split_header
from hotclicks.enums import DeliveryType
from hotclicks.links import LinkSpec

from .incidents import (
    INCIDENT_DKIM_KEPT,
    INCIDENT_DKIM_RESIGNED,
    INCIDENT_DKIM_STRIPPED,
    INCIDENT_MARKS_KEPT,
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
#: The targets of a sender's List-Unsubscribe that make the relay keep it (``--list-unsubscribe keep``).
_UNSUBSCRIBE_SCHEMES = ("https:", "http:", "mailto:")
_DKIM_HEADER = "DKIM-Signature"
_ANGLE = re.compile(r"<([^<>]*)>")
#: The start of an X-HotClicks-* field (its name as :func:`~hotclicks.mime.edit_headers` reads it).
_OWN_FIELD = re.compile(rb"^(x-hotclicks-[\x21-\x39\x3b-\x7e]*)[ \t]*:", re.I | re.M)
#: A DKIM-Signature's h= tag (folding whitespace removed first).
_SIGNED_NAMES = re.compile(r"(?:^|;)h=([^;]*)")
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
    #: The message without the header fields the relay removes or replaces (X-HotClicks-*, DKIM,
    #: and List-Unsubscribe when it adds its own).
    data: bytes
    message_id_header: str | None
    #: Each copy gets the relay's List-Unsubscribe fields: a marketing message without a usable
    #: one of the sender's, or any marketing message with ``--list-unsubscribe replace``.
    list_unsubscribe: bool
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


def _has_unsubscribe(values: Sequence[str]) -> bool:
    """Whether a sender's List-Unsubscribe fields name a target a mailbox provider can use."""
    return any(
        target.strip().lower().startswith(_UNSUBSCRIBE_SCHEMES) for value in values for target in _ANGLE.findall(str(value))
    )


def _own_fields(raw: bytes) -> dict[str, str]:
    """The message's X-HotClicks-* field names, lower case, to each its first spelling."""
    header, _ = split_header(raw)
    names: dict[str, str] = {}
    for match in _OWN_FIELD.finditer(header):
        name = match[1].decode("ascii")
        names.setdefault(name.lower(), name)
    return names


def _signed_fields(values: Sequence[str]) -> set[str]:
    """The field names that DKIM-Signature fields cover (their h= tags), lower case."""
    names: set[str] = set()
    for value in values:
        for listed in _SIGNED_NAMES.findall(re.sub(r"\s+", "", str(value))):
            names.update(name.lower() for name in listed.split(":"))
    return names


def _message_id_header(headers: Message) -> str | None:
    return storable(headers.get("Message-ID") or "")[:998] or None


def _untracked(
    raw: bytes, headers: Message, note: str, delivery: str | None, incidents: list[Incident], mail_from: str, recipients: list[str]
) -> Untracked:
    """A message forwarded as it came, but for its X-HotClicks-* fields: removed, unless the
    sender's DKIM signature covers them (then kept, with an incident that says so)."""
    own = _own_fields(raw)
    if own:
        signed = _signed_fields(headers.get_all(_DKIM_HEADER) or [])
        covered = [name for key, name in own.items() if key in signed]
        if covered:
            reason = (
                f"forwarded with its X-HotClicks-* fields: the sender's DKIM signature covers "
                f"{', '.join(covered)} (h=), and removing them would break it"
            )
            log.warning("delivery %s: %s", delivery, reason)
            kept = Incident(INCIDENT_MARKS_KEPT, reason, mail_from, recipients, None, _message_id_header(headers))
            incidents = [*incidents, kept]
        else:
            raw = edit_headers(raw, remove=list(own))
    return Untracked(raw, note, delivery, incidents)


def decide(
    mail_from: str,
    recipients: Sequence[str],
    raw: bytes,
    dkim: DkimPolicy,
    options: LinkOptions,
    *,
    keep_unsubscribe: bool = True,
) -> Untracked | Tracked:
    """Whether and how the relay tracks a transaction's message.

    ``keep_unsubscribe``: a marketing message's own List-Unsubscribe (http(s) or mailto) stays as
    the sender wrote it, with its List-Unsubscribe-Post, and the relay adds none; else the relay
    replaces it with its own (``--list-unsubscribe replace``), keeping the sender's mailto second.
    """
    recipients = list(recipients)
    if not raw.count(b"\r") == raw.count(b"\n") == raw.count(b"\r\n"):
        # Parse what the upstream will get: a bare CR read as nothing here but sent as a
        # line break would move header fields into the body or break a boundary line.
        raw = _LINE_BREAK.sub(b"\r\n", raw)
    try:
        headers = read_headers(raw)
    except MimeError as exc:
        # Its header block cannot be told apart from its body: nothing can be removed from it.
        log.warning("forwarding unchanged, untracked: %s", exc)
        return Untracked(raw, f"untracked: {exc}", incidents=[Incident(INCIDENT_UNPARSED, str(exc), mail_from, recipients)])
    try:
        marks = read_marks(headers)
    except MarkError as exc:
        log.warning("forwarding untracked: %s", exc)
        unreadable = Incident(INCIDENT_UNPARSED, str(exc), mail_from, recipients)
        return _untracked(raw, headers, f"untracked: {exc}", None, [unreadable], mail_from, recipients)
    if marks is None:
        return _untracked(raw, headers, "untracked", None, [], mail_from, recipients)
    message_id_header = _message_id_header(headers)
    remove = list(_own_fields(raw))
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
            return _untracked(raw, headers, "untracked: DKIM-signed", marks.delivery, [kept], mail_from, recipients)
        remove.append(_DKIM_HEADER)
    list_unsubscribe = False
    mailto = None
    if marks.type is not DeliveryType.TRANSACTIONAL:
        theirs = headers.get_all("List-Unsubscribe") or []
        if not (keep_unsubscribe and _has_unsubscribe(theirs)):
            list_unsubscribe = True
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
    return Tracked(marks, stripped, message_id_header, list_unsubscribe, mailto, parsed, scanned, incidents)

