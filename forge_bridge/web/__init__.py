"""The Flask application factory: one blueprint per area (the webhook endpoint a WSGI app in front), the Redis
connection made here, never global.

The web layer: the webhook endpoint (a WSGI app in front of Flask), the status page, the read-only API,
/metrics and /healthz, and the overview that the page and `forge-bridge status` show. Imports every layer below
it: the shared vocabulary, store/, forges/, workspace/, agents/, work/ and intake/."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import cached_property

from flask import Flask
from redis import Redis

from forge_bridge.store import queue
from forge_bridge.config import ConfigError, Settings, load_settings
from forge_bridge.store.sessions import Store


REDIS_TIMEOUT = 1.0


@dataclass
class Bridge:
    settings: Settings
    conn: Redis

    @cached_property
    def store(self) -> Store:   # one per app: a Store registers its Lua scripts once, not per request
        return Store(self.conn)


def require_webhook_secrets(settings: Settings) -> None:
    """Refuse to start when a forge names a webhook secret variable that is empty, unless explicitly insecure.
    A forge without `webhook_secret_env` takes no webhooks (polling only) and starts fine."""
    if settings.insecure_no_signature:
        return
    for forge in settings.forges:
        if forge.webhook_secret_env and not forge.webhook_secret():
            raise ConfigError(f"{settings.source}: forge {forge.name!r} has no webhook secret "
                              f"(${forge.webhook_secret_env} is empty); set it, leave webhook_secret_env out for "
                              "polling only, or set insecure_no_signature = true for local experiments")


def check_exposure(settings: Settings, bind: str) -> str:
    """Refuse to open the page, the API (issue bodies, agent logs) and the metrics beyond this machine without
    ui_token, unless ui_public says so; then the warning to log."""
    host = bind.rsplit(":", 1)[0].strip("[]") if ":" in bind else bind
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if loopback or settings.ui_token:
        return ""
    if not settings.ui_public:
        raise ConfigError(f"{settings.source}: refusing to listen on {bind} with no ui_token: the status page, the "
                          f"API and the metrics would be open to anyone who can reach it; set ${settings.ui_token_env}, "
                          "bind to 127.0.0.1, or set ui_public = true")
    return f"listening on {bind} with no ui_token (ui_public = true): the page, API and metrics are open to all"


def create_app(settings: Settings | None = None) -> Flask:
    from forge_bridge.web import api, health, metrics, page, webhooks

    settings = settings or load_settings()
    if not settings.redis_url:
        raise ConfigError(f"{settings.source}: redis_url is empty; `forge-bridge serve` starts an embedded server")
    require_webhook_secrets(settings)
    app = Flask("forge_bridge")
    # A Redis that accepts but never answers costs a request at most two one-second tries: the answer (503)
    # comes well inside Gitea's 5 s delivery timeout.
    conn = queue.connect(settings.redis_url, socket_timeout=REDIS_TIMEOUT, retries=1)
    bridge = app.extensions["forge_bridge"] = Bridge(settings=settings, conn=conn)
    app.wsgi_app = webhooks.WebhookApp(app.wsgi_app, bridge)   # the hot path, in front of Flask
    app.register_blueprint(health.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(page.bp)
    return app
