"""The reports blueprint: hot clicks and tracking reports, as pages, as JSON under /api, as CSV.

Views are thin: the figures and rows come from ``hotclicks.db.stats`` (folded by
``hotclicks.db.rollup``), the badges from :mod:`flask_hotclicks.annotate`. Every page has a JSON
twin under ``/api/`` and every table a CSV export (docs/reports.md lists them). The pages are plain
server-rendered HTML with a small script and style sheet shipped in the package, under a strict
Content-Security-Policy; the email itself is shown in a sandboxed frame served by its own route
with a policy of its own, so nothing in an email runs in the report's origin.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask import Blueprint, Response, abort, current_app, jsonify, render_template, request
from werkzeug.wrappers import Response as WerkzeugResponse
from sqlalchemy.orm import Session

from hotclicks.db import stats
from hotclicks.db.admin import list_profiles
from hotclicks.db.models import Delivery, Execution, Message, MessageStatus, Recipient, TestProfile
from hotclicks import bots, devices, heat
from hotclicks.heat import ExecutionFigures, HotClicksReport, VariantShare, percent

from . import annotate
from .extension import HotClicksState, get_state

blueprint = Blueprint(
    "hotclicks_reports",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)

#: The report pages' policy: only the package's own script and style, frames only from here.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'self'"
)
#: The email frame's policy: a sandbox where no script runs (``allow-same-origin`` only, so the
#: page's own script can read the frame's height and show the message at full height; never with
#: ``allow-scripts``), inline styles, no loads but images (and those only when the viewer asks).
FRAME_CSP = (
    "sandbox allow-same-origin; default-src 'none'; script-src 'none'; style-src 'unsafe-inline'; img-src data: {images}; "
    "font-src data:; form-action 'none'; base-uri 'none'; frame-ancestors 'self'"
)
#: Rows of the messages table per page.
PAGE_SIZE = 100


def _state() -> HotClicksState:
    return get_state(current_app._get_current_object())  # type: ignore[attr-defined]


@blueprint.before_request
def _check_access() -> Any:
    """Closed unless the host app lets the request in (HOTCLICKS_REPORTS_OPEN says when else).

    The registered check may answer True (come in), False (403) or a response of its own, such
    as a redirect to the host app's login page.
    """
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    check = get_state(app).extension._report_access
    if check is None:
        opened = app.config["HOTCLICKS_REPORTS_OPEN"]
        if opened == "debug":
            opened = app.debug or app.testing
        if opened is not True:
            abort(403)
        return None
    answer = check()
    if isinstance(answer, WerkzeugResponse):  # the host's own answer, e.g. a login redirect
        return answer
    if not answer:
        abort(403)
    return None


@blueprint.after_request
def _security_headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", PAGE_CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    response.headers.setdefault("Cache-Control", "no-store")
    return response


@contextmanager
def _session() -> Iterator[Session]:
    """A session that only reads, one snapshot: the aggregates plus the live tail above the
    watermark (the extension's roll-up thread folds the clicks, off the request)."""
    with _state().reading() as session:
        yield session


def _flag(name: str) -> bool:
    return request.args.get(name, "") in ("1", "true", "yes", "on")


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None


#: A text cell starting with one of these is a formula to a spreadsheet (CSV injection).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> Any:
    """A CSV cell; a text that a spreadsheet would run (labels and URLs come from the sender's
    email) is quoted with a leading apostrophe, as OWASP advises."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def _csv(filename: str, columns: list[str], rows: list[dict[str, Any]]) -> Response:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in columns])
    return Response(
        out.getvalue(),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def _delivery(session: Session, code: str) -> Delivery:
    delivery = stats.find_delivery(session, code)
    if delivery is None:
        abort(404)
    return delivery


def _execution(session: Session, delivery: Delivery, executions: list[Execution]) -> Execution | None:
    wanted = request.args.get("execution", type=int)
    if wanted is None:
        return executions[0] if executions else None
    for execution in executions:
        if execution.id == wanted:
            return execution
    abort(404)


def _execution_json(execution: Execution) -> dict[str, Any]:
    return {
        "id": execution.id,
        "key": execution.key,
        "run_key": execution.run_key,
        "period": execution.period,
        "version": execution.version,
        "started_at": execution.started_at.isoformat(),
        "last_message_at": execution.last_message_at.isoformat(),
    }


def _figures_json(f: ExecutionFigures) -> dict[str, Any]:
    return {
        "sent": f.sent,
        "delivered": f.delivered,
        "failed": f.failed,
        "opens": f.opens,
        "unique_openers": f.openers,
        "clicks": f.clicks,
        "unique_clickers": f.clickers,
        "click_rate": f.click_rate,
        "reactivity": f.reactivity,
        "opt_outs": f.opt_outs,
        "machine_clicks": f.machine_clicks,
        "last_send": _iso(f.last_send),
    }


FIGURE_COLUMNS = ["sent", "delivered", "failed", "opens", "unique_openers", "clicks", "unique_clickers",
                  "click_rate", "reactivity", "opt_outs", "machine_clicks"]


@blueprint.route("/badges.css")
def badges_css() -> Any:
    """The badges' style sheet: the one the email's frame inlines, so both show the same badges."""
    return Response(annotate.BADGE_CSS, mimetype="text/css")


# -- deliveries ---------------------------------------------------------------------------------


def _deliveries(session: Session) -> list[dict[str, Any]]:
    rows = [
        {"delivery": delivery.code, "type": delivery.type.value, "executions": executions, **_figures_json(total)}
        for delivery, executions, total in stats.delivery_totals(session, request.args.get("q", "").strip())
    ]
    rows.sort(key=lambda r: r["last_send"] or "", reverse=True)
    return rows


DELIVERY_COLUMNS = ["delivery", "type", "executions", "last_send", *FIGURE_COLUMNS]


@blueprint.route("/")
def deliveries_page() -> Any:
    with _session() as session:
        rows = _deliveries(session)
    return render_template("hotclicks/report_deliveries.html", rows=rows, q=request.args.get("q", ""))


@blueprint.route("/api/deliveries")
def deliveries_json() -> Any:
    with _session() as session:
        return jsonify(deliveries=_deliveries(session))


@blueprint.route("/deliveries.csv")
def deliveries_csv() -> Any:
    with _session() as session:
        return _csv("deliveries.csv", DELIVERY_COLUMNS, _deliveries(session))


# -- one delivery --------------------------------------------------------------------------------


def _executions_rows(session: Session, delivery: Delivery, executions: list[Execution]) -> list[dict[str, Any]]:
    figures = stats.execution_figures(session, executions)
    return [{"execution": e.id, **_execution_json(e), **_figures_json(figures[e.id])} for e in executions]


EXECUTION_COLUMNS = ["execution", "started_at", "run_key", "period", "version", *FIGURE_COLUMNS]


def _urls(session: Session, execution: Execution, include_machine: bool) -> list[dict[str, Any]]:
    report = stats.hot_clicks_report(session, execution, include_machine=include_machine)
    return [
        {
            "id": f.tracked_url.id,
            "label": f.tracked_url.label or f.tracked_url.name or "",
            "name": f.tracked_url.name,
            "url": f.tracked_url.url,
            "part": f.tracked_url.part,
            "position": f.tracked_url.position,
            "clicks": f.shown_clicks,
            "unique_clickers": f.shown_clickers,
            "share": f.percent,
        }
        for f in report.links
    ]


URL_COLUMNS = ["id", "part", "position", "label", "url", "clicks", "unique_clickers", "share"]


def _message_json(message: Message, address: str) -> dict[str, Any]:
    return {
        "id": message.id,
        "recipient": address,
        "recipient_id": message.recipient_id,
        "status": message.status.value,
        "reply": message.status_reply,
        "variant": message.variant_id,
        "created_at": _iso(message.created_at),
        "sent_at": _iso(message.sent_at),
    }


def _messages(session: Session, execution: Execution) -> tuple[list[dict[str, Any]], int]:
    page = max(1, request.args.get("page", 1, type=int) or 1)
    rows, count = stats.execution_messages(
        session,
        execution,
        search=request.args.get("q", "").strip().lower(),
        status=request.args.get("status", ""),
        offset=(page - 1) * PAGE_SIZE,
        limit=PAGE_SIZE,
    )
    return [_message_json(m, address) for m, address in rows], count


MESSAGE_COLUMNS = ["id", "recipient", "status", "reply", "variant", "created_at", "sent_at"]


def _reason_rows(counts: dict[str, int], total: int) -> list[dict[str, Any]]:
    return [{"reason": reason, "events": n, "percent": percent(n, total)} for reason, n in counts.items()]


def _machine_share(figures: dict[str, Any], reasons: dict[str, dict[str, int]]) -> dict[str, Any]:
    """How much of an execution's clicks and opens the bot rules gave to machines, and why."""
    machine_opens = {r: n for r, n in reasons["open"].items() if r != bots.REASON_PROXY}
    people_clicks, machine_clicks = figures["clicks"], figures["machine_clicks"]
    all_clicks = people_clicks + machine_clicks
    all_opens = figures["opens"] + sum(machine_opens.values())
    return {
        "clicks": {
            "total": all_clicks,
            "machine": machine_clicks,
            "percent": percent(machine_clicks, all_clicks),
            "by_reason": _reason_rows(reasons["click"], all_clicks),
        },
        "opens": {
            "total": all_opens,
            "machine": sum(machine_opens.values()),
            "percent": percent(sum(machine_opens.values()), all_opens),
            "by_reason": _reason_rows(machine_opens, all_opens),
            # People's opens seen through Gmail's or Yahoo's image proxy (counted as opens).
            "through_proxy": reasons["open"].get(bots.REASON_PROXY, 0),
            # Apple Mail Privacy Protection loads every message: whether these opened is unknown.
            "apple_mpp": machine_opens.get(bots.REASON_APPLE_MPP, 0),
        },
    }


def _device_rows(counts: dict[str, tuple[int, int]], include_machine: bool) -> list[dict[str, Any]]:
    """An execution's clicks per device family (machines' only when asked for) and their shares."""
    shown = {family: h + (x if include_machine else 0) for family, (h, x) in counts.items()}
    total = sum(shown.values())
    return [{"device": family, "clicks": n, "share": percent(n, total)} for family, n in shown.items()]


def _delivery_data(session: Session, code: str) -> dict[str, Any]:
    delivery = _delivery(session, code)
    executions = stats.delivery_executions(session, delivery)
    execution = _execution(session, delivery, executions)
    machine = _flag("machine")
    data: dict[str, Any] = {
        "delivery": delivery.code,
        "type": delivery.type.value,
        "executions": _executions_rows(session, delivery, executions),
        "execution": _execution_json(execution) if execution else None,
        "include_machine": machine,
        "urls": [],
        "click_stream": [],
        "messages": [],
        "messages_total": 0,
        "machine_share": None,
        "cumulative": [],
        "hours_to_50": None,
        "hours_to_90": None,
        "devices": [],
        "domains": [],
    }
    if execution is not None:
        current = next(row for row in data["executions"] if row["execution"] == execution.id)
        data["machine_share"] = _machine_share(current, stats.reason_figures(session, [execution.id])[execution.id])
        data["urls"] = _urls(session, execution, machine)
        data["devices"] = _device_rows(stats.device_figures(session, [execution.id])[execution.id], machine)
        data["domains"] = [
            {"domain": name, "sent": f.sent, "delivered": f.delivered, "opened": f.openers, "clicked": f.clickers,
             "click_rate": f.click_rate}
            for name, f in stats.domain_figures(session, execution)
        ]
        stream = stats.click_stream(session, execution, include_machine=machine)
        data["click_stream"] = [{"hour": h.isoformat(), "clicks": n} for h, n in stream]
        curve = heat.cumulative_shares(stream, execution.started_at)
        data["cumulative"] = [{"hours": h, "percent": p} for h, p in curve]
        data["hours_to_50"] = heat.time_to_share(curve, 50)
        data["hours_to_90"] = heat.time_to_share(curve, 90)
        data["messages"], data["messages_total"] = _messages(session, execution)
    return data


@blueprint.route("/deliveries/<code>")
def delivery_page(code: str) -> Any:
    with _session() as session:
        data = _delivery_data(session, code)
    return render_template(
        "hotclicks/report_delivery.html",
        data=data,
        chart=_chart(data["click_stream"]),
        curve=_curve(data["cumulative"]),
        q=request.args.get("q", ""),
        status=request.args.get("status", ""),
        page=max(1, request.args.get("page", 1, type=int) or 1),
        page_size=PAGE_SIZE,
        statuses=[s.value for s in MessageStatus],
    )


@blueprint.route("/api/deliveries/<code>")
def delivery_json(code: str) -> Any:
    with _session() as session:
        return jsonify(_delivery_data(session, code))


@blueprint.route("/deliveries/<code>/executions.csv")
def executions_csv(code: str) -> Any:
    with _session() as session:
        delivery = _delivery(session, code)
        rows = _executions_rows(session, delivery, stats.delivery_executions(session, delivery))
    return _csv(f"{code}-executions.csv", EXECUTION_COLUMNS, rows)


@blueprint.route("/deliveries/<code>/urls.csv")
def urls_csv(code: str) -> Any:
    with _session() as session:
        data = _delivery_data(session, code)
    return _csv(f"{code}-urls.csv", URL_COLUMNS, data["urls"])


@blueprint.route("/deliveries/<code>/messages.csv")
def messages_csv(code: str) -> Any:
    with _session() as session:
        delivery = _delivery(session, code)
        execution = _execution(session, delivery, stats.delivery_executions(session, delivery))
        rows: list[dict[str, Any]] = []
        if execution is not None:
            rows = [_message_json(m, address) for m, address in stats.execution_messages(session, execution)[0]]
    return _csv(f"{code}-messages.csv", MESSAGE_COLUMNS, rows)


def _chart(stream: list[dict[str, Any]]) -> dict[str, Any]:
    """An SVG bar chart of clicks over time, drawn on the server (no script, no style attribute)."""
    if not stream:
        return {"bars": [], "width": 0, "height": 0}
    hours = [dt.datetime.fromisoformat(p["hour"]) for p in stream]
    per_day = (hours[-1] - hours[0]) > dt.timedelta(hours=72)
    buckets: dict[dt.datetime, int] = {}
    for when, point in zip(hours, stream):
        key = when.replace(hour=0) if per_day else when
        buckets[key] = buckets.get(key, 0) + point["clicks"]
    top = max(buckets.values()) or 1
    width, height, bar = 640, 160, max(4, min(40, 600 // max(1, len(buckets))))
    bars = []
    for i, (when, n) in enumerate(sorted(buckets.items())):
        h = round((height - 20) * n / top)
        bars.append({"x": 20 + i * (bar + 2), "y": height - h, "w": bar, "h": h, "n": n, "when": when.isoformat()})
    return {"bars": bars, "width": max(width, 40 + len(bars) * (bar + 2)), "height": height,
            "unit": "day" if per_day else "hour", "top": top}


def _curve(points: list[dict[str, Any]]) -> dict[str, Any]:
    """The cumulative share of clicks over the hours since sending, as an SVG polyline's points
    (drawn on the server: no script), with the 50 % and 90 % marks."""
    if not points:
        return {"points": "", "width": 0, "height": 0}
    width, height, pad = 640, 180, 30
    last = max(p["hours"] for p in points) or 1
    xy = [(pad, height - pad)]
    for p in points:
        x = pad + (width - 2 * pad) * p["hours"] / last
        xy.append((x, xy[-1][1]))  # a step: the share holds until the hour's clicks are in
        xy.append((x, height - pad - (height - 2 * pad) * p["percent"] / 100))
    marks = [{"share": share, "y": round(height - pad - (height - 2 * pad) * share / 100, 1)} for share in (50, 90)]
    return {"points": " ".join(f"{x:.1f},{y:.1f}" for x, y in xy), "width": width, "height": height,
            "pad": pad, "last": last, "marks": marks}


# -- hot clicks ----------------------------------------------------------------------------------


def _profile(session: Session) -> TestProfile | None:
    wanted = request.args.get("profile", type=int)
    if wanted is None:
        return None
    profile = session.get(TestProfile, wanted)
    if profile is None:
        abort(404)
    return profile


def _hot_clicks(session: Session, code: str, *, frame: bool = False) -> dict[str, Any]:
    """Everything the hot clicks page, its frame and its JSON twin show (the frame: less)."""
    delivery = _delivery(session, code)
    executions = stats.delivery_executions(session, delivery)
    execution = _execution(session, delivery, executions)
    measure = "unique" if request.args.get("measure") == "unique" else "clicks"
    machine = _flag("machine")
    device = request.args.get("device")
    device = device if device in devices.FAMILIES else None
    within = request.args.get("within")
    within = within if within in heat.WINDOWS and device is None else None  # no hours per device
    data: dict[str, Any] = {"delivery": delivery, "executions": executions, "execution": execution,
                            "measure": measure, "include_machine": machine, "report": None, "within": within,
                            "device": device,
                            "show_counts": request.args.get("show") == "counts", "comparison": None}
    if execution is None:
        return data
    state = _state()
    profile = _profile(session)
    report = stats.hot_clicks_report(session, execution, include_machine=machine, measure=measure,
                                     variants=not frame, within=within, device=device)
    data["measure"] = report.measure  # a time window or a device filter counts clicks only
    compare_id = request.args.get("compare", type=int)
    if compare_id is not None:
        other = next((e for e in executions if e.id == compare_id), None)
        if other is None:
            abort(404)
        data["comparison"] = heat.compare(report, stats.hot_clicks_report(
            session, other, include_machine=machine, measure=measure, variants=not frame, within=within,
            device=device))
    if within is not None:
        end = heat.window_end_hour(execution.started_at, within)
        data["window_end"] = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(hours=end)
    preview = state.extension.render_preview(delivery.code, profile)
    content = stats.choose_content(session, execution, profile, (preview.html, preview.text) if preview else None)
    data.update(report=report, profile=profile, content=content)
    if not frame:
        data["counts"] = stats.execution_counts(session, executions, include_machine=machine)
    return data


def _hot_clicks_links_json(report: HotClicksReport | list[heat.LinkFigure]) -> list[dict[str, Any]]:
    return [
        {
            "id": f.tracked_url.id,
            "url": f.tracked_url.url,
            "label": f.tracked_url.label,
            "name": f.tracked_url.name,
            "part": f.tracked_url.part,
            "position": f.tracked_url.position,
            "clicks": f.shown_clicks,
            "unique_clickers": f.shown_clickers,
            "percent": f.percent,
            **({"compare_percent": f.compare_percent, "delta_points": f.delta_points} if f.compared else {}),
        }
        for f in (report.links if isinstance(report, HotClicksReport) else report)
    ]


def _state_args(**changes: Any) -> dict[str, Any]:
    """The page's query arguments with ``changes`` applied (None removes one)."""
    args = {k: v for k, v in request.args.items()
            if k in ("execution", "profile", "view", "machine", "measure", "images", "compare", "within", "show",
                     "device")}
    for key, value in changes.items():
        if value is None:
            args.pop(key, None)
        else:
            args[key] = value
    return args


@blueprint.route("/deliveries/<code>/hot-clicks")
def hot_clicks_page(code: str) -> Any:
    with _session() as session:
        data = _hot_clicks(session, code)
        view = "text" if request.args.get("view") == "text" else "html"
        text_pieces = None
        content = data.get("content")
        report = data["report"]
        if report is not None and content is not None and content.text and view == "text":
            text_pieces = annotate.annotate_text(content.text, report.by_key("text"),
                                             personal_params=_state().personal_params)
        profiles = list_profiles(session)
        return render_template(
            "hotclicks/report_hot_clicks.html",
            view=view,
            text_pieces=text_pieces,
            profiles=profiles,
            args=_state_args,
            heat=list(zip(annotate.HEAT_COLOURS, (0, *annotate.HEAT_THRESHOLDS))),
            badge_html=annotate.badge_html,
            show_images=_flag("images"),
            top=_top_links(report),
            windows=list(heat.WINDOWS),
            device_families=list(devices.FAMILIES),
            heat_level=annotate.heat_level,
            **data,
        )


@blueprint.route("/deliveries/<code>/hot-clicks/frame")
def hot_clicks_frame(code: str) -> Any:
    """The email's HTML with its badges, for the page's sandboxed frame (its own strict policy)."""
    show_images = _flag("images")
    with _session() as session:
        data = _hot_clicks(session, code, frame=True)
        report, content = data["report"], data.get("content")
        if report is None or content is None or not content.html:
            body = "<!DOCTYPE html><p>No HTML content to show.</p>"
        else:
            body, _ = annotate.annotate_html(content.html, report.by_key("html"), measure=data["measure"],
                                             counts=data["show_counts"], personal_params=_state().personal_params,
                                             show_images=show_images)
    response = Response(body, mimetype="text/html")
    response.headers["Content-Security-Policy"] = FRAME_CSP.format(images="http: https:" if show_images else "")
    return response


@blueprint.route("/api/deliveries/<code>/hot-clicks")
def hot_clicks_json(code: str) -> Any:
    """Each tracked URL of one execution (the latest unless ?execution=ID) with its share of clicks."""
    with _session() as session:
        data = _hot_clicks(session, code)
        report: HotClicksReport | None = data["report"]
        if report is None:
            return jsonify(delivery=code, execution=None, total_clicks=0, links=[])
        content: stats.ContentChoice = data["content"]
        badges: dict[str, list[dict[str, Any]]] = {"html": [], "text": []}
        personal = _state().personal_params
        if content.html:
            found = annotate.html_badges(content.html, report.by_key("html"), personal_params=personal)
            badges["html"] = [_badge_json(b) for b in found]
        if content.text:
            badges["text"] = [_badge_json(p.badge) for p in annotate.annotate_text(
                content.text, report.by_key("text"), personal_params=personal) if p.badge]
        comparison: heat.Comparison | None = data["comparison"]
        extra: dict[str, Any] = {"within": data["within"], "device": data["device"], "compare": None}
        if data["within"]:
            extra["window_end"] = data["window_end"].isoformat()
        if comparison is not None:
            extra.update(
                compare={**_execution_json(comparison.other.execution),
                         "total_clicks": comparison.other.total_clicks},
                new_links=[f.tracked_url.id for f in comparison.new],
                gone_links=_hot_clicks_links_json(comparison.gone),
            )
        return jsonify(
            delivery=data["delivery"].code,
            execution=_execution_json(report.execution),
            **extra,
            total_clicks=report.total_clicks,
            total_unique_clickers=report.total_unique,
            measure=report.measure,
            include_machine=report.include_machine,
            links=_hot_clicks_links_json(report),
            profile=None if data["profile"] is None else {"id": data["profile"].id, "name": data["profile"].name},
            content={"source": content.source, "note": content.note,
                     "variant": content.variant.id if content.variant else None, "badges": badges},
            variants=_variants_json(report, comparison),
            anonymous_clicks=report.anonymous_or_unknown_clicks,
            executions=[
                {**_execution_json(e), "messages": data["counts"][e.id][0], "clicks": data["counts"][e.id][1]}
                for e in data["executions"]
            ],
        )


def _badge_json(badge: annotate.Badge) -> dict[str, Any]:
    return {
        "index": badge.index,
        "key": badge.key,
        "url": badge.url,
        "tracked_url": badge.figure.tracked_url.id if badge.figure else None,
        "percent": badge.figure.percent if badge.figure else None,
        "tracked": badge.figure is not None,
    }


def _variants_json(report: HotClicksReport, comparison: heat.Comparison | None) -> list[dict[str, Any]]:
    if comparison is None:
        return [_variant_json(v) for v in report.variants]
    return [
        {**_variant_json(c.share), "compare_clicks_percent": c.other.clicks_percent if c.other else None,
         "delta_points": c.delta_points}
        for c in comparison.variants
    ]


def _top_links(report: HotClicksReport | None, n: int = 3) -> list[heat.LinkFigure]:
    """The ``n`` links with the most of what is shown, the ones a glance should find."""
    if report is None:
        return []
    unique = report.measure == "unique"
    ranked = sorted(report.links, key=lambda f: -(f.shown_clickers if unique else f.shown_clicks))
    return [f for f in ranked[:n] if (f.shown_clickers if unique else f.shown_clicks)]


def _variant_json(v: VariantShare) -> dict[str, Any]:
    return {
        "id": v.variant.id,
        "sample_source": v.variant.sample_source,
        "test_profile": v.profile_name,
        "recipients": v.recipients,
        "recipients_percent": v.recipients_percent,
        "clicks": v.clicks,
        "clicks_percent": v.clicks_percent,
    }


@blueprint.route("/deliveries/<code>/hot-clicks.csv")
def hot_clicks_csv(code: str) -> Any:
    with _session() as session:
        data = _hot_clicks(session, code)
        rows = _hot_clicks_links_json(data["report"]) if data["report"] else []
    return _csv(f"{code}-hot-clicks.csv",
                ["id", "part", "position", "label", "url", "clicks", "unique_clickers", "percent"], rows)


# -- recipients ----------------------------------------------------------------------------------


def _recipient_search(session: Session) -> list[dict[str, Any]]:
    query = request.args.get("q", "").strip().lower()
    if not query:
        return []
    found = stats.find_recipients(session, query, PAGE_SIZE)
    return [{"id": r.id, "address": r.address, "external_id": r.external_id} for r in found]


@blueprint.route("/recipients")
def recipients_page() -> Any:
    with _session() as session:
        found = _recipient_search(session)
    return render_template("hotclicks/report_recipients.html", found=found, q=request.args.get("q", ""))


@blueprint.route("/api/recipients")
def recipients_json() -> Any:
    with _session() as session:
        return jsonify(recipients=_recipient_search(session))


def _recipient(session: Session, recipient_id: int) -> dict[str, Any]:
    recipient = session.get(Recipient, recipient_id)
    if recipient is None:
        abort(404)
    machine = _flag("machine")
    clicks = [
        {
            "clicked_at": c.clicked_at.isoformat(),
            "url": t.url,
            "label": t.label,
            "delivery": code,
            "execution": e.id,
            "execution_started_at": e.started_at.isoformat(),
            "machine": c.is_machine,
            "machine_reason": c.machine_reason,
        }
        for c, t, e, code in stats.recipient_clicks(session, recipient, include_machine=machine)
    ]
    opens = [{"opened_at": o.opened_at.isoformat(), "delivery": code, "execution": e.id, "machine": o.is_machine}
             for o, e, code in stats.recipient_opens(session, recipient, include_machine=machine)]
    opt_outs = [
        {"created_at": o.created_at.isoformat(), "source": o.source, "cancelled_at": _iso(o.cancelled_at),
         "delivery": code}
        for o, code in stats.recipient_opt_outs(session, recipient)
    ]
    return {
        "recipient": {"id": recipient.id, "address": recipient.address, "external_id": recipient.external_id,
                      "tracking_opt_out": recipient.tracking_opt_out},
        "include_machine": machine,
        "clicks": clicks,
        "opens": opens,
        "opt_outs": opt_outs,
    }


CLICK_COLUMNS = ["clicked_at", "label", "url", "delivery", "execution", "machine", "machine_reason"]


@blueprint.route("/recipients/<int:recipient_id>")
def recipient_page(recipient_id: int) -> Any:
    with _session() as session:
        data = _recipient(session, recipient_id)
    return render_template("hotclicks/report_recipient.html", data=data)


@blueprint.route("/api/recipients/<int:recipient_id>")
def recipient_json(recipient_id: int) -> Any:
    with _session() as session:
        return jsonify(_recipient(session, recipient_id))


@blueprint.route("/recipients/<int:recipient_id>/clicks.csv")
def recipient_clicks_csv(recipient_id: int) -> Any:
    with _session() as session:
        data = _recipient(session, recipient_id)
    return _csv(f"recipient-{recipient_id}-clicks.csv", CLICK_COLUMNS, data["clicks"])
