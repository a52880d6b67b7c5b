"""GET /: the status page, rendered on the server (readable without JavaScript), live where JavaScript runs."""
from __future__ import annotations

import time
from importlib.resources import files

import jinja2
from flask import Blueprint, current_app, jsonify

from forge_bridge.models import shown_number
from forge_bridge.web.overview import log_tail, overview
from forge_bridge.work.report import usage_text
from forge_bridge.web.api import require_ui_token

bp = Blueprint("page", __name__)
bp.before_request(require_ui_token)
_ENV = jinja2.Environment(loader=jinja2.FileSystemLoader(str(files("forge_bridge.templates"))), autoescape=True)
_ENV.filters["when"] = lambda t: time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(t))) if t else "—"
_ENV.filters["usage"] = lambda t: usage_text(t["cost_usd"], t["tokens"], t["turns"])
_ENV.filters["shown_number"] = shown_number   # `!7` for a GitLab merge request


@bp.get("/")
def status_page():
    bridge = current_app.extensions["forge_bridge"]
    return _ENV.get_template("status_page.html.j2").render(o=overview(bridge.conn, bridge.settings))


@bp.get("/api/tasks/<task_id>/log")
def task_log(task_id: str):
    bridge = current_app.extensions["forge_bridge"]
    task = bridge.store.task(task_id)
    if task is None:
        return jsonify(status="not_found", reason=f"no task {task_id}"), 404
    return jsonify(task_id=task_id, state=task.state.value, tail=log_tail(bridge.settings, task))
