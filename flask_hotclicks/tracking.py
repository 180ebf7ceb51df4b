"""The routes a recipient's mail client reaches: click redirect, open pixel, opt-outs.

They are on the path of every click, so they do little: check the signature (no database work for
a bad one), judge the request with the core's bot rules, record (one lean transaction, or one
journal append), answer. A bad token gets a 404 page, never a 500 and never a redirect; so does
a link cut short or with anything else after the prefix (:class:`AnyTokenConverter`).

====================  ======================================================================
``/c/<token>``        GET: record the click, 302 to the target. HEAD: 302, nothing recorded.
``/o/<token>``        the open pixel (1x1 GIF, not cached), records an open
``/u/<token>``        GET: a page with an Unsubscribe (or Resubscribe) button; POST: do it.
                      A POST with ``List-Unsubscribe=One-Click`` is RFC 8058's one-click.
``/n/<token>``        GET: a page with a "Stop tracking me" (or "Track me again") button; POST: do it
====================  ======================================================================
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask import Blueprint, Response, current_app, redirect, render_template, request
from werkzeug.routing import BaseConverter
from sqlalchemy.orm import Session

from hotclicks import bots
from hotclicks.devices import device_family
from hotclicks.errors import InvalidToken
from hotclicks.links import LIST_UNSUBSCRIBE_POST
from hotclicks.db.models import Recipient, utcnow
from hotclicks.privacy import anonymize_ip
from hotclicks.db.events import ClickEvent, OpenEvent, record_clicks, record_opens, tracked_url_target
from hotclicks.db.subscribers import is_unsubscribed, message_recipient, resubscribe, set_tracking_opt_out, unsubscribe
from hotclicks.tokens import Token, TokenKind

from .extension import HotClicksState, get_state

log = logging.getLogger("flask_hotclicks")

blueprint = Blueprint("hotclicks_tracking", __name__, template_folder="templates")


class AnyTokenConverter(BaseConverter):
    """Any text after the route's prefix, slashes and newlines too: whatever a mail client did
    to a link reaches the route and gets the "not valid" page, not the host app's 404."""

    regex = r"(?s:.+)"
    part_isolating = False

#: The open pixel: a transparent 1x1 GIF.
PIXEL_GIF = bytes.fromhex(
    "47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b"
)
_NO_CACHE = {"Cache-Control": "no-store, no-cache, must-revalidate, max-age=0", "Pragma": "no-cache"}
_PAGE_HEADERS = {"Cache-Control": "no-store", "X-Robots-Tag": "noindex", "Referrer-Policy": "no-referrer"}


def _state() -> HotClicksState:
    return get_state(current_app._get_current_object())  # type: ignore[attr-defined]


def invalid_link() -> Any:
    """The page a forged, altered or unknown link gets: the host app's handler, else the
    template ``hotclicks/invalid_link.html`` (which the host app may override). Always a 404."""
    handler = _state().extension._invalid_link_handler
    if handler is not None:
        response = current_app.make_response(handler())
        response.status_code = 404
    else:
        response = current_app.make_response((render_template("hotclicks/invalid_link.html"), 404))
    response.headers.update(_PAGE_HEADERS)
    return response


def _unsign(state: HotClicksState, value: str, kind: TokenKind) -> Token | None:
    try:
        return state.signer.unsign(value, kind)
    except InvalidToken as exc:
        log.info("refused a %s token: %s", kind.name.lower(), exc)
        return None


def _target(state: HotClicksState, token: Token) -> tuple[str, bool] | None:
    """The tracked URL's target and whether it is the trap link (cached: they never change)."""
    assert token.tracked_url_id is not None
    found = state.target_cache.get(token.tracked_url_id)
    if found is None:
        with state.sessions() as session:
            found = tracked_url_target(session, token.tracked_url_id)
        if found is None:
            return None
        state.target_cache[token.tracked_url_id] = found
    if token.url is not None:  # a personalized link: the recipient's own target, which we signed
        return token.url, found[1]
    return found


#: What a browser's URL parser strips from a URL (tabs and newlines, anywhere) and what cannot
#: stand in a header as it is (other control characters and spaces, which it percent-encodes).
_URL_REMOVED = re.compile(r"[\t\n\r]")
_URL_ENCODED = re.compile(r"[\x00-\x20\x7f]")
_C0_AND_SPACE = "".join(map(chr, range(0x21)))


def _location(target: str) -> str:
    """``target`` as a Location header: the URL a browser would make of it, never a header
    split (the relay strips these already; a target written by other means might not)."""
    if not _URL_ENCODED.search(target):
        return target
    cleaned = _URL_REMOVED.sub("", target).strip(_C0_AND_SPACE)
    return _URL_ENCODED.sub(lambda m: f"%{ord(m.group()):02X}", cleaned)


#: Truncating an address parses it; the same few networks click again and again.
_anonymize_ip = functools.lru_cache(maxsize=8192)(anonymize_ip)


def _network(state: HotClicksState) -> tuple[str | None, str | None]:
    """The named network list the client's full address is in, and its kind: read before the
    address is truncated for storage, and only the list's name is kept."""
    found = state.networks.match(request.remote_addr) if request.remote_addr else None
    return (found.name, found.kind) if found is not None else (None, None)


def _client(state: HotClicksState) -> tuple[str | None, str | None]:
    """The user agent and address to store, as the privacy settings allow."""
    user_agent = request.headers.get("User-Agent") or None if state.store_user_agent else None
    if user_agent is not None and "\x00" in user_agent:  # PostgreSQL refuses NUL in text
        user_agent = user_agent.replace("\x00", "") or None
    ip: str | None = None
    if state.store_ip:
        ip = _anonymize_ip(request.remote_addr) if state.anonymize_ip else request.remote_addr
    return user_agent, ip


@blueprint.route("/c/", defaults={"token": ""}, methods=["GET", "HEAD"])
@blueprint.route("/c/<hotclicks_token:token>", methods=["GET", "HEAD"])
def click(token: str) -> Any:
    state = _state()
    signed = _unsign(state, token, TokenKind.CLICK)
    if signed is None:
        return invalid_link()
    found = _target(state, signed)
    if found is None:
        return invalid_link()
    target, is_trap = found
    # A HEAD is a link checker looking, not a person clicking: answered, never recorded.
    if request.method == "GET":
        assert signed.tracked_url_id is not None
        agent = request.headers.get("User-Agent")
        user_agent, ip = _client(state)
        event = ClickEvent(
            signed.message_id,
            signed.tracked_url_id,
            utcnow(),
            user_agent,
            ip,
            bots.request_reason("GET", request.headers, agent, state.rules),
            is_trap,
            *_network(state),
            device_family(agent),  # from the request's agent: known even when none is stored
        )
        if state.journal is not None:
            state.journal.append(event)
        else:
            with state.engine.begin() as connection:  # Core: no ORM session on the hot path
                record_clicks(connection, [event], state.rules)  # type: ignore[arg-type]
    if is_trap:
        return Response("", 204, headers=_NO_CACHE)
    response = redirect(_location(target), code=302)
    response.headers.update(_NO_CACHE)
    return response


@blueprint.route("/o/", defaults={"token": ""})
@blueprint.route("/o/<hotclicks_token:token>")
def open_pixel(token: str) -> Any:
    state = _state()
    signed = _unsign(state, token, TokenKind.OPEN)
    if signed is not None and request.method == "GET":  # a HEAD loads no image: no open
        agent = request.headers.get("User-Agent")
        user_agent, ip = _client(state)
        event = OpenEvent(
            signed.message_id,
            utcnow(),
            user_agent,
            ip,
            bots.request_reason("GET", request.headers, agent, state.rules, is_open=True),
            *_network(state),
        )
        if state.journal is not None:
            state.journal.append(event)
        else:
            with state.engine.begin() as connection:
                record_opens(connection, [event], state.rules)  # type: ignore[arg-type]
    # The image is answered either way: a broken image in a mail client helps nobody.
    return Response(PIXEL_GIF, mimetype="image/gif", headers=_NO_CACHE)


def _preference_page(template: str, **context: Any) -> Any:
    response = current_app.make_response(render_template(template, **context))
    response.headers.update(_PAGE_HEADERS)
    return response


@contextmanager
def _preferences_of(token: str) -> Iterator[tuple[Session, Recipient, Token] | None]:
    """The recipient a preference link (``/u/``, ``/n/``) stands for, in one transaction; None
    for a link that is not valid."""
    state = _state()
    signed = _unsign(state, token, TokenKind.UNSUBSCRIBE)
    if signed is None:
        yield None
        return
    with state.sessions.begin() as session:
        recipient = message_recipient(session, signed.message_id)
        yield None if recipient is None else (session, recipient, signed)


@blueprint.route("/u/", defaults={"token": ""}, methods=["GET", "POST"])
@blueprint.route("/u/<hotclicks_token:token>", methods=["GET", "POST"])
def unsubscribe_page(token: str) -> Any:
    """GET never unsubscribes (link scanners follow links); POST does, or resubscribes."""
    with _preferences_of(token) as found:
        if found is None:
            return invalid_link()
        session, recipient, signed = found
        done = None
        if request.method == "POST":
            if request.form.get("action") == "resubscribe":
                resubscribe(session, recipient.id)
                done = "resubscribed"
            else:
                one_click = request.form.get("List-Unsubscribe") == LIST_UNSUBSCRIBE_POST.split("=", 1)[1]
                unsubscribe(
                    session,
                    recipient.id,
                    message_id=signed.message_id,
                    source="one-click" if one_click else "link",
                )
                done = "unsubscribed"
            log.info("recipient %s %s (message %s)", recipient.id, done, signed.message_id)
        unsubscribed = is_unsubscribed(session, recipient.id)
        address = recipient.address
    return _preference_page(
        "hotclicks/unsubscribe.html", unsubscribed=unsubscribed, done=done, address=address
    )


@blueprint.route("/n/", defaults={"token": ""}, methods=["GET", "POST"])
@blueprint.route("/n/<hotclicks_token:token>", methods=["GET", "POST"])
def tracking_opt_out_page(token: str) -> Any:
    """The recipient's tracking opt-out: afterwards their clicks count, anonymously."""
    with _preferences_of(token) as found:
        if found is None:
            return invalid_link()
        session, recipient, _ = found
        done = None
        if request.method == "POST":
            opted_out = request.form.get("action") != "track"
            set_tracking_opt_out(session, recipient.id, opted_out)
            done = "opted-out" if opted_out else "tracked"
            session.refresh(recipient)
        opted_out = recipient.tracking_opt_out
        address = recipient.address
    return _preference_page(
        "hotclicks/tracking_opt_out.html", opted_out=opted_out, done=done, address=address
    )
