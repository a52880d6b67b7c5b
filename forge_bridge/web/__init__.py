"""The Flask application factory: one blueprint per area, the Redis connection made here, never global."""
from __future__ import annotations

from dataclasses import dataclass

from flask import Flask
from redis import Redis

from forge_bridge import queue
from forge_bridge.config import ConfigError, Settings, load_settings
from forge_bridge.sessions import Store


@dataclass
class Bridge:
    settings: Settings
    conn: Redis

    @property
    def store(self) -> Store:
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


def create_app(settings: Settings | None = None) -> Flask:
    from forge_bridge.web import api, health, metrics, page, webhooks

    settings = settings or load_settings()
    if not settings.redis_url:
        raise ConfigError(f"{settings.source}: redis_url is empty; `forge-bridge serve` starts an embedded server")
    require_webhook_secrets(settings)
    app = Flask("forge_bridge")
    app.extensions["forge_bridge"] = Bridge(settings=settings, conn=queue.connect(settings.redis_url, socket_timeout=3))
    app.register_blueprint(webhooks.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(page.bp)
    return app
