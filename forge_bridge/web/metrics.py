"""GET /metrics in Prometheus text format (behind ui_token when it is set, like the rest of the operator's view)."""
from flask import Blueprint, Response, current_app
from prometheus_client import CONTENT_TYPE_LATEST

from forge_bridge.store import metrics
from forge_bridge.web.api import require_ui_token

bp = Blueprint("metrics", __name__)
bp.before_request(require_ui_token)


@bp.get("/metrics")
def scrape():
    bridge = current_app.extensions["forge_bridge"]
    metrics.PENDING.flush(bridge.conn)   # this process's own counts are current; others' are at most a second old
    return Response(metrics.render(bridge.conn, bridge.settings), mimetype=CONTENT_TYPE_LATEST)
