"""The routes a recipient's mail client reaches: click redirect, open pixel, opt-out.

They are on the path of every click, so they do little: check the signature (no database work for
a bad one), one lean insert, answer. A bad token gets a 404 page, never a 500 and never a redirect.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, current_app, redirect, render_template, request
from sqlalchemy import select

from hotclicks.errors import InvalidToken
from hotclicks.models import TrackedUrl
from hotclicks.privacy import anonymize_ip
from hotclicks.store import record_click, record_open
from hotclicks.tokens import Token, TokenKind

from .extension import HotClicksState, get_state

log = logging.getLogger("flask_hotclicks")

blueprint = Blueprint("hotclicks_tracking", __name__)

#: The open pixel: a transparent 1x1 GIF.
PIXEL_GIF = bytes.fromhex(
    "47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b"
)
_NO_CACHE = {"Cache-Control": "no-store, no-cache, must-revalidate, max-age=0", "Pragma": "no-cache"}


def _state() -> HotClicksState:
    return get_state(current_app._get_current_object())  # type: ignore[attr-defined]


def invalid_link() -> tuple[str, int, dict[str, str]]:
    """The page a forged, altered or unknown link gets (override hotclicks/invalid_link.html)."""
    return render_template("hotclicks/invalid_link.html"), 404, {"Cache-Control": "no-store"}


def _unsign(value: str, kind: TokenKind) -> Token | None:
    try:
        return _state().signer.unsign(value, kind)
    except InvalidToken as exc:
        log.info("refused a %s token: %s", kind.name.lower(), exc)
        return None


def _target(state: HotClicksState, token: Token) -> str | None:
    assert token.tracked_url_id is not None
    if token.url is not None:
        return token.url
    cached = state.target_cache.get(token.tracked_url_id)
    if cached is not None:
        return cached
    with state.sessions() as session:
        url = session.scalar(select(TrackedUrl.url).where(TrackedUrl.id == token.tracked_url_id))
    if url is not None:
        state.target_cache[token.tracked_url_id] = url
    return url


def _client() -> dict[str, Any]:
    return {"user_agent": request.user_agent.string or None, "ip": anonymize_ip(request.remote_addr)}


@blueprint.route("/c/<token>", methods=["GET", "HEAD"])
def click(token: str) -> Any:
    signed = _unsign(token, TokenKind.CLICK)
    if signed is None:
        return invalid_link()
    state = _state()
    target = _target(state, signed)
    if target is None:
        return invalid_link()
    if request.method == "GET":  # a HEAD is a link checker looking, not a person clicking
        assert signed.tracked_url_id is not None
        with state.sessions.begin() as session:
            record_click(
                session,
                message_id=signed.message_id,
                tracked_url_id=signed.tracked_url_id,
                **_client(),
            )
    response = redirect(target, code=302)
    response.headers.update(_NO_CACHE)
    return response


@blueprint.route("/o/<token>")
def open_pixel(token: str) -> Any:
    signed = _unsign(token, TokenKind.OPEN)
    if signed is not None:
        with _state().sessions.begin() as session:
            record_open(session, message_id=signed.message_id, **_client())
    # The image is answered either way: a broken image in a mail client helps nobody.
    return Response(PIXEL_GIF, mimetype="image/gif", headers=_NO_CACHE)
