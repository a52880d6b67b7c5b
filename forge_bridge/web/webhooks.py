"""POST /webhooks/<forge>: verify, decide and enqueue in milliseconds; every forge API call happens in a job.

A plain WSGI app in front of Flask: Flask's request context, routing, hooks and jsonify cost as much as all
of deciding an ignored event, and the endpoint needs none of them (it has no page, no session, no token)."""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from typing import NamedTuple

from redis.exceptions import RedisError
from werkzeug.exceptions import ClientDisconnected
from werkzeug.wrappers import Request, Response

from forge_bridge.forges import app_reach
from forge_bridge.store import metrics
from forge_bridge.intake.admission import admit, admit_check
from forge_bridge.config import Settings
from forge_bridge.models import CheckFailed, ForgeEvent, ForgeKind
from forge_bridge.web.deadlines import DEADLINES
from forge_bridge.intake.webhooks import (
    BadSignature,
    Ignored,
    Malformed,
    WebhookError,
    family,
    parse_delivery,
    read_headers,
    verify_signature,
    verify_token,
)
from forge_bridge.intake.webhooks.github import InstallationChange

log = logging.getLogger(__name__)
PREFIX = "/webhooks/"
MAX_BODY = 25 * 1024 * 1024
BODY_TIMEOUT = 2.0
BODY_DEADLINE = 10.0   # GitHub gives up on a delivery after 10 s: a body still coming then is not worth a thread
PIECE = 64 * 1024
ENDPOINTS = {"github": ForgeKind.GITHUB, "gitea": ForgeKind.GITEA, "forgejo": ForgeKind.FORGEJO,
             "gitlab": ForgeKind.GITLAB}
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


class Answer(NamedTuple):
    status: str
    code: int
    delivery: str = ""
    reason: str = ""
    body_unread: bool = False   # answered from the headers: the body is dropped after the answer


class WebhookApp:
    """Answers POST /webhooks/<name> itself and hands every other request to `inner` (the Flask app)."""

    def __init__(self, inner: Callable, bridge) -> None:
        self.inner, self.bridge = inner, bridge

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        name = path[len(PREFIX):] if path.startswith(PREFIX) else "/"
        if "/" in name or not name:
            return self.inner(environ, start_response)
        if environ.get("REQUEST_METHOD") != "POST":
            response = _response(Answer("method_not_allowed", 405, reason="webhooks are POSTed"))
            response.headers["Allow"] = "POST"
        else:
            request = Request(environ)
            answer = _receive_counted(self.bridge, name, request)
            response = _response(answer)
            if answer.body_unread:
                response.call_on_close(lambda: _discard_body(request))
        return response(environ, start_response)


def _response(answer: Answer) -> Response:
    # The shape Flask's jsonify gave: sorted keys, compact, one line.
    text = json.dumps({"delivery": answer.delivery, "reason": answer.reason, "status": answer.status},
                      separators=(",", ":"))
    return Response(text + "\n", status=answer.code, mimetype="application/json")


def _receive_counted(bridge, name: str, request: Request) -> Answer:
    found = _endpoint(bridge.settings, name)
    if found is None:
        return Answer("not_found", 404, reason=f"no webhook endpoint {name!r}")
    try:
        answer = receive(bridge, name, found, request)
    except Exception:   # a bug must still answer (and be counted and logged), not drop the connection
        log.exception("webhook delivery to /webhooks/%s failed", name)
        answer = Answer("error", 500, reason="internal error; see the bridge's log")
    metrics.count_soon(bridge.conn, metrics.DELIVERIES, name, answer.status)   # written to Redis in the background
    return answer


def _endpoint(settings: Settings, name: str) -> tuple[ForgeKind, str] | None:
    """`/webhooks/<kind>` takes any forge of that family; `/webhooks/<forge name>` only that forge (its name
    then also limits whose secret may sign). None: no such endpoint."""
    if name in ENDPOINTS:
        return ENDPOINTS[name], ""
    named = next((forge for forge in settings.forges if forge.name == name), None)
    return (named.kind, named.name) if named is not None else None


def _sending_forge(settings: Settings, endpoint: ForgeKind, body: bytes, signature: str, *, only: str = "") -> str:
    """The forge whose secret signed the body (GitLab: whose secret is the token). `insecure_no_signature` waives
    the signature only for forges that have no secret; without it, such a forge takes no webhooks at all
    (polling-only use)."""
    forges = [f for f in settings.forges if family(f.kind) is family(endpoint) and (not only or f.name == only)]
    if not forges:
        raise Malformed(f"no {endpoint.value} forge is configured")
    secrets = {f.name: f.webhook_secret() for f in forges if f.webhook_secret()}
    secretless = [f.name for f in forges if not f.webhook_secret()]
    verify = verify_token if endpoint is ForgeKind.GITLAB else (lambda s, sig: verify_signature(s, body, sig))
    if secretless and settings.insecure_no_signature:
        try:
            return verify(secrets, signature)
        except BadSignature:
            return secretless[0]
    if not secrets:
        names = ", ".join(secretless)
        raise BadSignature(f"webhooks are not enabled for forge {names} (no webhook_secret_env)")
    return verify(secrets, signature)


def _pieces(request: Request, limit: int) -> Iterator[bytes]:
    """Up to `limit` bytes of the body, a piece at a time. A client that stops sending for BODY_TIMEOUT, or is
    still sending after BODY_DEADLINE, gets TimeoutError: neither a stalled nor a slow but steady client can
    hold one of the server's threads for long."""
    client = request.environ.get("gunicorn.socket")
    deadline, left = time.monotonic() + BODY_DEADLINE, limit
    if client is not None:
        client.settimeout(BODY_TIMEOUT)
    with DEADLINES.cut_off(client, deadline) if client is not None else nullcontext():
        while left > 0:
            piece = request.stream.read(min(PIECE, left))
            if time.monotonic() >= deadline:   # cut off: what came is not the whole body
                raise TimeoutError
            if not piece:
                return
            left -= len(piece)
            yield piece


def _read_body(request: Request) -> bytes:
    """At most MAX_BODY bytes; a longer body (even one without Content-Length) is refused unread."""
    body = b"".join(_pieces(request, MAX_BODY + 1))
    if len(body) > MAX_BODY:
        raise OverflowError
    return body


def _discard_body(request: Request) -> None:
    """Read and drop what is left of the body once the answer has gone. Left unread, gunicorn drains it a
    kilobyte a read before it reuses the connection, which costs more than all of deciding an ignored event."""
    try:
        for _ in _pieces(request, MAX_BODY):
            pass
    except (OSError, ClientDisconnected):   # the client stopped sending or went away: the connection is closed
        pass


def receive(bridge, name: str, found: tuple[ForgeKind, str], request: Request) -> Answer:
    """`found`: the endpoint's forge kind, and the one forge it is for ("" for any of that family)."""
    endpoint, only = found
    if (request.content_length or 0) > MAX_BODY:
        return Answer("too_large", 413, reason="body over 25 MiB")
    delivery = ""
    try:
        headers = read_headers(request.headers, endpoint=endpoint)
        delivery = headers.delivery
        if not headers.relevant:  # answered from the headers, before the body is read
            return Answer("ignored", 200, delivery, f"event {headers.event!r} is not acted on", body_unread=True)
        body = _read_body(request)
        forge_name = _sending_forge(bridge.settings, endpoint, body, headers.signature, only=only)
        if request.mimetype in FORM_TYPES:
            raise Malformed("form-encoded delivery: configure the hook with content type application/json")
        parsed = parse_delivery(headers, body, forge=forge_name, host=bridge.settings.forge(forge_name).host)
    except OverflowError:
        return Answer("too_large", 413, delivery, "body over 25 MiB")
    except TimeoutError:
        return Answer("timeout", 408, delivery,
                      f"the body stopped for {BODY_TIMEOUT:.0f}s or was still coming after {BODY_DEADLINE:.0f}s")
    except WebhookError as error:
        return Answer(error.answer, error.status, delivery, str(error))
    if isinstance(parsed, Ignored):
        return Answer("ignored", 200, delivery, parsed.reason)
    try:
        return _act(bridge, parsed, forge_name, name, delivery)
    except RedisError as error:
        return Answer("unavailable", 503, delivery, f"queue unavailable: {type(error).__name__}")


def _act(bridge, parsed: ForgeEvent | CheckFailed | InstallationChange, forge_name: str, name: str,
         delivery: str) -> Answer:
    if isinstance(parsed, InstallationChange):   # a GitHub App gained or lost repositories: noted, no job
        app_reach.record(bridge.conn, forge_name, parsed)
        return Answer("recorded", 200, delivery,
                      f"installation {parsed.installation}: {len(parsed.added)} added, {len(parsed.removed)} removed")
    admitted = (admit_check if isinstance(parsed, CheckFailed) else admit)(bridge.settings, bridge.store, parsed,
                                                                          endpoint=name)
    return Answer(admitted.status, 202 if admitted.status == "queued" else 200, delivery, admitted.reason)
