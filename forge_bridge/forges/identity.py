"""The bridge's own login on each forge: configured (`bot_login`), or for a GitHub App `<slug>[bot]`, read from
`GET /app` once per process start and remembered in Redis for when GitHub cannot be reached."""
from __future__ import annotations

import dataclasses
import logging

from redis import Redis
from redis.exceptions import RedisError

from forge_bridge.config import ForgeConfig, Settings
from forge_bridge.forges.base import ForgeError

log = logging.getLogger(__name__)
KEY = "fb:app-login:{forge}"


def _app_login(forge: ForgeConfig, conn: Redis | None) -> str:
    from forge_bridge.forges.github_app import GitHubApp

    try:
        login = GitHubApp(forge.api_url, forge.app_id, forge.private_key).login()
    except ForgeError as error:
        remembered = _remembered(forge, conn)
        log.warning("forge %s: cannot read the GitHub App's login (%s)%s", forge.name, error,
                    f"; using {remembered!r} from before" if remembered else
                    "; its own comments are told apart by their bot type only until it can")
        return remembered
    if conn is not None:
        try:
            conn.set(KEY.format(forge=forge.name), login)
        except RedisError:
            pass
    return login


def _remembered(forge: ForgeConfig, conn: Redis | None) -> str:
    if conn is None:
        return ""
    try:
        raw = conn.get(KEY.format(forge=forge.name))
    except RedisError:
        return ""
    return raw.decode() if raw else ""


def with_bot_logins(settings: Settings, conn: Redis | None = None) -> Settings:
    """The settings with every GitHub App forge's `bot_login` filled in (an explicit one is kept)."""
    forges = tuple(dataclasses.replace(forge, bot_login=_app_login(forge, conn))
                   if forge.is_app and not forge.bot_login else forge for forge in settings.forges)
    return dataclasses.replace(settings, forges=forges) if forges != settings.forges else settings
