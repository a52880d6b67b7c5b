"""GET /healthz: 200 when Redis answers, 503 otherwise."""
from flask import Blueprint, current_app, jsonify
from redis.exceptions import RedisError

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    try:
        current_app.extensions["forge_bridge"].conn.ping()
    except RedisError as error:
        return jsonify(status="unavailable", reason=f"redis: {type(error).__name__}"), 503
    return jsonify(status="ok")
