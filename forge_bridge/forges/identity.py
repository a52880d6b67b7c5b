"""The bridge's own login on each forge: configured (`bot_login`), or for a GitHub App `<slug>[bot]` (`GET /app`)
and on GitLab the token's user (`GET /user`), read once per process start and remembered in Redis for when the
forge cannot be reached."""
from __future__ import annotations

import dataclasses
import logging

from redis import Redis
from redis.exceptions import RedisError

from forge_bridge.config import ForgeConfig, Settings
from forge_bridge.forges.base import ForgeError
from forge_bridge.models import ForgeKind

log = logging.getLogger(__name__)
KEY = "fb:app-login:{forge}"


def _read_login(forge: ForgeConfig) -> str:
    if forge.is_app:
        from forge_bridge.forges.github_app import GitHubApp

        return GitHubApp(forge.api_url, forge.app_id, forge.private_key).login()
    from forge_bridge.forges.gitlab import GitLabClient

    return GitLabClient(forge.url, forge.token()).whoami()


def _own_login(forge: ForgeConfig, conn: Redis | None) -> str:
    try:
        login = _read_login(forge)
    except ForgeError as error:
        remembered = _remembered(forge, conn)
        log.warning("forge %s: cannot read the bridge's own login (%s)%s", forge.name, error,
                    f"; using {remembered!r} from before" if remembered else
                    "; its own comments are not told apart until it can")
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


def _reads_own_login(forge: ForgeConfig) -> bool:
    return not forge.bot_login and (forge.is_app or (forge.kind is ForgeKind.GITLAB and bool(forge.token())))


def with_bot_logins(settings: Settings, conn: Redis | None = None) -> Settings:
    """The settings with every GitHub App and GitLab forge's `bot_login` filled in (an explicit one is kept)."""
    forges = tuple(dataclasses.replace(forge, bot_login=_own_login(forge, conn))
                   if _reads_own_login(forge) else forge for forge in settings.forges)
    return dataclasses.replace(settings, forges=forges) if forges != settings.forges else settings
