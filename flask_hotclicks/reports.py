"""The reports blueprint: hot clicks and tracking statistics, as pages and as JSON under /api."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, current_app, jsonify, request
from sqlalchemy import select

from hotclicks.models import Delivery, Execution
from hotclicks.store import hot_clicks, latest_execution

from .extension import get_state

blueprint = Blueprint("hotclicks_reports", __name__, template_folder="templates")


@blueprint.before_request
def _check_access() -> None:
    """Closed unless the host app lets the request in (open in debug and testing only)."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    check = get_state(app).extension._report_access
    if check is None:
        if not (app.debug or app.testing):
            abort(403)
    elif not check():
        abort(403)


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


@blueprint.route("/api/deliveries/<code>/hot-clicks")
def hot_clicks_json(code: str) -> Any:
    """Each tracked URL of one execution (the latest unless ?execution=ID) with its share of clicks."""
    state = get_state(current_app._get_current_object())  # type: ignore[attr-defined]
    with state.sessions() as session:
        delivery = session.scalars(select(Delivery).where(Delivery.code == code)).first()
        if delivery is None:
            abort(404)
        wanted = request.args.get("execution", type=int)
        if wanted is not None:
            execution = session.get(Execution, wanted)
            if execution is None or execution.delivery_id != delivery.id:
                abort(404)
        else:
            execution = latest_execution(session, delivery)
        if execution is None:
            return jsonify(delivery=delivery.code, execution=None, total_clicks=0, links=[])
        include_machine = request.args.get("machine") in ("1", "true", "yes")
        lines = hot_clicks(session, execution, include_machine=include_machine)
        return jsonify(
            delivery=delivery.code,
            execution=_execution_json(execution),
            total_clicks=sum(line.clicks for line in lines),
            links=[
                {
                    "id": line.tracked_url.id,
                    "url": line.tracked_url.url,
                    "label": line.tracked_url.label,
                    "name": line.tracked_url.name,
                    "part": line.tracked_url.part,
                    "position": line.tracked_url.position,
                    "clicks": line.clicks,
                    "unique_clickers": line.unique_clickers,
                    "percent": line.percent,
                }
                for line in lines
            ],
        )
