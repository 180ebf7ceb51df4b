"""The ``X-HotClicks-*`` headers a sender puts on a message, so the relay knows what it is.

The version is computed from the template's source: republish a changed template and its
messages carry a new version, which starts a new execution by itself (PRODUCT.md, "How a message
is identified"). Works without Flask; ``flask_hotclicks`` adds a helper that reads a Jinja
template's source by name.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from .executions import (
    HEADER_DELIVERY,
    HEADER_RECIPIENT,
    HEADER_RUN,
    HEADER_TYPE,
    HEADER_VERSION,
    HEADERS,
    MarkError,
    read_marks,
)
from .enums import DeliveryType

__all__ = ["mark_message", "template_version", "tracking_headers"]

#: Hex digits of the source's SHA-256 kept as the version: enough to never collide by chance.
VERSION_LENGTH = 16


def template_version(*sources: str | bytes) -> str:
    """A short, stable digest of a template's source (several: a HTML and a text template)."""
    digest = hashlib.sha256()
    for source in sources:
        data = source.encode("utf-8") if isinstance(source, str) else bytes(source)
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()[:VERSION_LENGTH]


def tracking_headers(
    delivery: str,
    *,
    type: DeliveryType | str = DeliveryType.ONE_OFF,
    run: str | None = None,
    recipient: str | int | None = None,
    version: str | None = None,
    template_source: str | bytes | Iterable[str | bytes] | None = None,
) -> dict[str, str]:
    """The headers that mark a message as one of ``delivery``.

    ``version`` is the content's version; without it, it is computed from ``template_source``
    (one source or several). ``recipient`` is the recipient's id in the sender's own system.
    Raises ``ValueError`` (:class:`~hotclicks.executions.MarkError`) for values the relay would
    refuse, so mistakes show at the sender.
    """
    if version is None and template_source is not None:
        sources = (
            [template_source] if isinstance(template_source, (str, bytes)) else list(template_source)
        )
        version = template_version(*sources)
    headers = {
        HEADER_DELIVERY: delivery,
        HEADER_TYPE: DeliveryType(type).value,
    }
    if run is not None:
        headers[HEADER_RUN] = str(run)
    if version is not None:
        headers[HEADER_VERSION] = str(version)
    if recipient is not None:
        headers[HEADER_RECIPIENT] = str(recipient)
    read_marks(headers)  # the relay's own check
    return headers


def mark_message(message: Any, headers: dict[str, str]) -> Any:
    """Put ``headers`` on ``message`` and return it, replacing any earlier ``X-HotClicks-*``.

    ``message`` is an ``email.message.Message``/``EmailMessage``, a Flask-Mail ``Message`` or a
    Flask-Mailman (Django-style) ``EmailMessage``: both keep extra headers in ``extra_headers``.
    """
    if hasattr(message, "extra_headers"):
        extra = dict(message.extra_headers or {})
        for name in list(extra):
            if name.lower() in {h.lower() for h in HEADERS}:
                del extra[name]
        extra.update(headers)
        message.extra_headers = extra
        return message
    if hasattr(message, "__setitem__") and hasattr(message, "__delitem__"):
        for name in HEADERS:
            del message[name]  # email.message deletes every occurrence, and none is fine
        for name, value in headers.items():
            message[name] = value
        return message
    raise TypeError(
        f"cannot put headers on a {type(message).__name__}: pass an email.message.Message, "
        "a Flask-Mail Message or a Flask-Mailman EmailMessage, or use tracking_headers()"
    )


__all__ += ["MarkError"]
