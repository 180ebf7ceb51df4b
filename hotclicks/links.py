"""The tracking URLs a message carries, built the way the Flask extension's routes read them.

The relay calls these (it never imports Flask); the routes are under the public base URL of the
tracking routes (``HOTCLICKS_BASE_URL``):

==================  ===========================================================================
``/c/<token>``      click: records the click, redirects to the recipient's exact target
``/o/<token>``      open pixel: a 1x1 GIF, records an open
``/u/<token>``      unsubscribe: GET shows a page with a button, POST unsubscribes (RFC 8058)
``/n/<token>``      tracking opt-out: GET shows a page with a button, POST stops tracking them
==================  ===========================================================================

``/u/`` and ``/n/`` take the same UNSUBSCRIBE token: it lets its bearer manage the preferences
of the message's recipient, and each route only acts on a POST.

The hidden trap link is an ordinary click link to a tracked URL named :data:`TRAP_LINK_NAME`,
registered with :func:`trap_link_spec` and written into the HTML by the rewriter
(``rewrite.TRAP_TEMPLATE``); a person never sees it, so any click on it (and every other click of
that message around it) is a machine's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from .bots import TRAP_LINK_NAME
from .tokens import Token, TokenKind, TokenSigner

__all__ = [
    "LIST_UNSUBSCRIBE_POST",
    "TRAP_LINK_NAME",
    "LinkSpec",
    "click_url",
    "key_digest",
    "list_unsubscribe_headers",
    "open_url",
    "tracking_opt_out_url",
    "trap_link_spec",
    "unsubscribe_url",
    "variant_signature",
]

#: The ``List-Unsubscribe-Post`` value of RFC 8058 one-click unsubscribe.
LIST_UNSUBSCRIBE_POST = "List-Unsubscribe=One-Click"
#: Where the trap link's tracked URL says it goes; the click route answers a trap click with an
#: empty page instead of a redirect, so this is never followed.
TRAP_LINK_URL = "about:blank"


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """What the relay knows of one link when it registers the tracked URLs of a message."""

    part: str  #: "html" or "text"
    key: str
    url: str  #: the target without personal query parameters
    name: str | None
    label: str
    position: int


def key_digest(link_key: str) -> str:
    """The fixed-size digest that stands for a link key in the unique constraint."""
    return hashlib.sha256(link_key.encode("utf-8", "surrogatepass")).hexdigest()


def variant_signature(links: Iterable[LinkSpec]) -> str:
    """Variants of dynamic content differ by the set of links they contain."""
    keys = sorted({f"{link.part}\x00{link.key}" for link in links})
    return hashlib.sha256("\x01".join(keys).encode("utf-8", "surrogatepass")).hexdigest()


def _base(base_url: str) -> str:
    return base_url.rstrip("/")


def click_url(signer: TokenSigner, base_url: str, message_id: int, tracked_url_id: int, url: str | None = None) -> str:
    """The click link of one tracked URL for one message (``url``: a personalized target)."""
    return f"{_base(base_url)}/c/{signer.sign(Token(TokenKind.CLICK, message_id, tracked_url_id, url))}"


def open_url(signer: TokenSigner, base_url: str, message_id: int) -> str:
    return f"{_base(base_url)}/o/{signer.sign(Token(TokenKind.OPEN, message_id))}"


def unsubscribe_url(signer: TokenSigner, base_url: str, message_id: int) -> str:
    return f"{_base(base_url)}/u/{signer.sign(Token(TokenKind.UNSUBSCRIBE, message_id))}"


def tracking_opt_out_url(signer: TokenSigner, base_url: str, message_id: int) -> str:
    """A link the sender may put in the message for the recipient to stop being tracked."""
    return f"{_base(base_url)}/n/{signer.sign(Token(TokenKind.UNSUBSCRIBE, message_id))}"


def list_unsubscribe_headers(
    signer: TokenSigner, base_url: str, message_id: int, *, mailto: str | None = None
) -> dict[str, str]:
    """``List-Unsubscribe`` and ``List-Unsubscribe-Post`` (RFC 2369, RFC 8058) for one message.

    ``mailto``: an address that also unsubscribes, put second (for clients without HTTPS POST).
    """
    value = f"<{unsubscribe_url(signer, base_url, message_id)}>"
    if mailto:
        value += f", <mailto:{mailto}>"
    return {"List-Unsubscribe": value, "List-Unsubscribe-Post": LIST_UNSUBSCRIBE_POST}


def trap_link_spec(part: str = "html", position: int = 1_000_000) -> LinkSpec:
    """The trap link, to pass to ``db.sending.ensure_tracked_urls`` with the message's own links."""
    return LinkSpec(
        part=part, key=TRAP_LINK_NAME, url=TRAP_LINK_URL, name=TRAP_LINK_NAME, label="", position=position
    )

