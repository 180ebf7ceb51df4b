"""The example app's pages: a login for the reports, a home page, and the demo's outbox."""

from __future__ import annotations

import email
import email.policy
import hmac
from pathlib import Path
from typing import Any

from flask import (
    Flask,
    Response,
    abort,
    current_app,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from flask_hotclicks import HotClicks
from hotclicks.db.models import Delivery

from .mailings import NEWSLETTER, newsletter_context, render
from .models import Subscriber


def _logged_in() -> bool:
    return session.get("user") == current_app.config["EXAMPLE_USER"]


def _outbox() -> Path | None:
    folder = current_app.config.get("EXAMPLE_OUTBOX")
    return Path(folder) if folder else None


def register(app: Flask, hotclicks: HotClicks) -> None:
    @hotclicks.report_access
    def reports_for_logged_in_users() -> bool:
        return _logged_in()

    @app.errorhandler(403)
    def forbidden(error: Any) -> Any:
        """A visitor who is not logged in is sent to the login page, and back afterwards."""
        if not _logged_in() and request.method == "GET":
            return redirect(url_for("login", next=request.full_path.rstrip("?")))
        return error

    if hasattr(hotclicks, "preview_renderer"):

        @hotclicks.preview_renderer
        def preview(delivery: str, profile: Any) -> dict[str, str] | None:
            """The newsletter as a profile (or a recipient with no attributes) would see it."""
            if delivery != NEWSLETTER:
                return None
            attributes = dict(profile.attributes) if profile is not None else {}
            attributes.setdefault("first_name", profile.name if profile is not None else "there")
            html, text = render(
                "mail/newsletter.html", "mail/newsletter.txt", **newsletter_context(attributes)
            )
            return {"html": html, "text": text}

    def sessions() -> Session:
        return app.extensions["hotclicks"].sessions()

    @app.route("/")
    def index() -> str:
        with sessions() as db:
            deliveries = db.scalars(select(Delivery).order_by(Delivery.code)).all()
            subscribers = db.scalar(select(func.count(Subscriber.id)))
        return render_template(
            "site/index.html",
            deliveries=deliveries,
            subscribers=subscribers,
            logged_in=_logged_in(),
            report_prefix=app.config["HOTCLICKS_REPORT_PREFIX"],
        )

    @app.route("/login", methods=["GET", "POST"])
    def login() -> Any:
        error = None
        if request.method == "POST":
            user_ok = hmac.compare_digest(request.form.get("user", ""), app.config["EXAMPLE_USER"])
            password_ok = hmac.compare_digest(
                request.form.get("password", ""), app.config["EXAMPLE_PASSWORD"]
            )
            if user_ok and password_ok:
                session["user"] = app.config["EXAMPLE_USER"]
                target = request.args.get("next", "")
                # Only paths of this site: never an open redirect.
                if not target.startswith("/") or target.startswith("//"):
                    target = url_for("index")
                return redirect(target)
            error = "Wrong user or password."
        return render_template("site/login.html", error=error), 401 if error else 200

    @app.post("/logout")
    def logout() -> Any:
        session.clear()
        return redirect(url_for("index"))

    @app.route("/outbox")
    def outbox() -> str:
        if not _logged_in():
            abort(403)
        folder = _outbox()
        files = sorted(folder.glob("*.eml"))[-200:] if folder and folder.is_dir() else []
        rows = []
        for path in reversed(files):
            with path.open("rb") as handle:
                headers = email.message_from_binary_file(handle, policy=email.policy.default, _class=email.message.EmailMessage)
            rows.append({"name": path.stem, "to": headers["To"], "subject": headers["Subject"]})
        return render_template("site/outbox.html", rows=rows, folder=folder)

    @app.route("/outbox/<name>")
    def outbox_message(name: str) -> Response:
        if not _logged_in():
            abort(403)
        folder = _outbox()
        if folder is None or not name.replace("-", "").isalnum():
            abort(404)
        path = folder / f"{name}.eml"
        if not path.is_file():
            abort(404)
        # Shown as text: mail received is never rendered in the app's origin.
        return Response(path.read_bytes(), mimetype="text/plain")
