"""POST /webhooks/<forge>: verify, decide and enqueue in milliseconds; every forge API call happens in a job."""
from __future__ import annotations

from flask import Blueprint, current_app, g, jsonify, request
from redis.exceptions import RedisError

from forge_bridge import app_reach, metrics
from forge_bridge.admission import admit, admit_check
from forge_bridge.config import Settings
from forge_bridge.models import CheckFailed, ForgeEvent, ForgeKind
from forge_bridge.webhooks import (
    BadSignature,
    Ignored,
    Malformed,
    WebhookError,
    parse_delivery,
    read_headers,
    verify_signature,
)
from forge_bridge.webhooks.github import InstallationChange

bp = Blueprint("webhooks", __name__)


@bp.after_request
def count_delivery(response):
    name, status = (request.view_args or {}).get("name", ""), g.get("delivery_status", "")
    if name in ENDPOINTS and status:   # counted in this process, written to Redis in the background
        metrics.count_soon(current_app.extensions["forge_bridge"].conn, metrics.DELIVERIES, name, status)
    return response
MAX_BODY = 25 * 1024 * 1024
BODY_TIMEOUT = 2.0
ENDPOINTS = {"github": ForgeKind.GITHUB, "gitea": ForgeKind.GITEA, "forgejo": ForgeKind.FORGEJO}
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


def answer(status: str, code: int, *, delivery: str = "", reason: str = ""):
    g.delivery_status = status   # for the count: no need to read the answer back
    return jsonify(status=status, delivery=delivery, reason=reason), code


def _sending_forge(settings: Settings, endpoint: ForgeKind, body: bytes, signature: str) -> str:
    """The forge whose secret signed the body. `insecure_no_signature` waives the signature only for forges
    that have no secret; without it, such a forge takes no webhooks at all (polling-only use)."""
    github = endpoint is ForgeKind.GITHUB
    family = [f for f in settings.forges if (f.kind is ForgeKind.GITHUB) == github]
    if not family:
        raise Malformed(f"no {endpoint.value} forge is configured")
    secrets = {f.name: f.webhook_secret() for f in family if f.webhook_secret()}
    secretless = [f.name for f in family if not f.webhook_secret()]
    if secretless and settings.insecure_no_signature:
        try:
            return verify_signature(secrets, body, signature)
        except BadSignature:
            return secretless[0]
    if not secrets:
        names = ", ".join(secretless)
        raise BadSignature(f"webhooks are not enabled for forge {names} (no webhook_secret_env)")
    return verify_signature(secrets, body, signature)


def _read_body() -> bytes:
    """At most MAX_BODY bytes; a longer body (even one without Content-Length) is refused unread. A client that
    stops sending is dropped after BODY_TIMEOUT, so stalled clients cannot hold the server's threads."""
    client = request.environ.get("gunicorn.socket")
    if client is not None:
        client.settimeout(BODY_TIMEOUT)
    body = request.stream.read(MAX_BODY + 1)
    if len(body) > MAX_BODY:
        raise OverflowError
    return body


@bp.post("/webhooks/<name>")
def receive(name: str):
    endpoint = ENDPOINTS.get(name)
    if endpoint is None:
        return answer("not_found", 404, reason=f"no webhook endpoint {name!r}")
    if (request.content_length or 0) > MAX_BODY:
        return answer("too_large", 413, reason="body over 25 MiB")
    bridge = current_app.extensions["forge_bridge"]
    delivery = ""
    try:
        headers = read_headers(request.headers, endpoint=endpoint)
        delivery = headers.delivery
        if not headers.relevant:  # answered from the headers, before the body is read
            return answer("ignored", 200, delivery=delivery, reason=f"event {headers.event!r} is not acted on")
        body = _read_body()
        forge_name = _sending_forge(bridge.settings, endpoint, body, headers.signature)
        if request.mimetype in FORM_TYPES:
            raise Malformed("form-encoded delivery: configure the hook with content type application/json")
        parsed = parse_delivery(headers, body, forge=forge_name, host=bridge.settings.forge(forge_name).host)
    except OverflowError:
        return answer("too_large", 413, delivery=delivery, reason="body over 25 MiB")
    except TimeoutError:
        return answer("timeout", 408, delivery=delivery, reason=f"no body within {BODY_TIMEOUT:.0f}s")
    except WebhookError as error:
        return answer(error.answer, error.status, delivery=delivery, reason=str(error))
    if isinstance(parsed, Ignored):
        return answer("ignored", 200, delivery=delivery, reason=parsed.reason)
    try:
        if isinstance(parsed, CheckFailed):
            admitted = admit_check(bridge.settings, bridge.store, parsed, endpoint=name)
            return answer(admitted.status, 202 if admitted.status == "queued" else 200, delivery=delivery,
                          reason=admitted.reason)
        if isinstance(parsed, InstallationChange):   # a GitHub App gained or lost repositories: noted, no job
            app_reach.record(bridge.conn, forge_name, parsed)
            return answer("recorded", 200, delivery=delivery,
                          reason=f"installation {parsed.installation}: {len(parsed.added)} added, "
                                 f"{len(parsed.removed)} removed")
        return _decide_and_enqueue(bridge, parsed, name)
    except RedisError as error:
        return answer("unavailable", 503, delivery=delivery, reason=f"queue unavailable: {type(error).__name__}")


def _decide_and_enqueue(bridge, event: ForgeEvent, endpoint: str):
    admitted = admit(bridge.settings, bridge.store, event, endpoint=endpoint)
    return answer(admitted.status, 202 if admitted.status == "queued" else 200, delivery=event.delivery,
                  reason=admitted.reason)
