"""GET /api/tasks, /api/tasks/<id>, /api/sessions and their OpenAPI document, behind ui_token when it is set."""
from __future__ import annotations

import base64
import hmac
import json
from dataclasses import asdict
from importlib.resources import files

from flask import Blueprint, Response, current_app, jsonify, request

from forge_bridge.store import hosts, queue
from forge_bridge.web.overview import task_view

bp = Blueprint("api", __name__)
RECENT = 100


def _presented_token() -> str:
    """The token from `Authorization: Bearer <t>` or basic auth (any user name, the token as password)."""
    kind, _, value = request.headers.get("Authorization", "").partition(" ")
    if kind.lower() == "bearer":
        return value.strip()
    if kind.lower() == "basic":
        try:
            return base64.b64decode(value).decode().partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            return ""
    return ""


def require_ui_token() -> Response | None:
    """Used by every blueprint of the operator's surfaces; webhooks and health never ask for it."""
    expected = current_app.extensions["forge_bridge"].settings.ui_token
    if not expected or hmac.compare_digest(_presented_token().encode(), expected.encode()):
        return None
    answer = jsonify(status="unauthorized", reason="a valid ui_token is required (bearer or basic auth)")
    answer.status_code = 401
    answer.headers["WWW-Authenticate"] = 'Basic realm="forge-bridge"'
    return answer


bp.before_request(require_ui_token)


@bp.get("/api/tasks")
def tasks():
    bridge = current_app.extensions["forge_bridge"]
    store = bridge.store
    return jsonify(tasks=[task_view(t) for t in store.tasks(store.recent_task_ids(RECENT))],
                   slots={"in_use": queue.slots_in_use(bridge.conn), "limit": bridge.settings.max_concurrent_agents},
                   queues=queue.queue_depths(bridge.conn))


@bp.get("/api/tasks/<task_id>")
def task(task_id: str):
    found = current_app.extensions["forge_bridge"].store.task(task_id)
    if found is None:
        return jsonify(status="not_found", reason=f"no task {task_id}"), 404
    return jsonify(task_view(found))


@bp.get("/api/sessions")
def sessions():
    store = current_app.extensions["forge_bridge"].store
    found = [store.session(issue) for issue in sorted(store.session_ids())]
    return jsonify(sessions=[asdict(s) for s in found if s is not None])


@bp.get("/api/hosts")
def hosts_():
    conn = current_app.extensions["forge_bridge"].conn
    return jsonify(hosts=hosts.shown(conn))


@bp.get("/api/openapi.json")
def openapi():
    return Response(files("forge_bridge.web").joinpath("openapi.json").read_text(), mimetype="application/json")


def published_document() -> dict:
    return json.loads(files("forge_bridge.web").joinpath("openapi.json").read_text())
