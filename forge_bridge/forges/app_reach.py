"""Which repositories each GitHub App forge can reach: what GitHub's installation events said and what the
worker found for the configured repositories at start, kept in Redis for the status page and `check`."""
from __future__ import annotations

import hashlib
import logging

from redis import Redis

from forge_bridge.config import Settings
from forge_bridge.forges.base import ForgeError
from forge_bridge.models import InstallationChange

log = logging.getLogger(__name__)
REACH = "fb:app-reach:{forge}"       # repository full name -> installation id
MISSING = "fb:app-missing:{forge}"   # configured repository full name -> why the App cannot reach it
SURVEYED = "fb:app-surveyed:{forge}:{asked}"   # a survey of these repositories was made lately
SURVEY_TTL = 60   # the workers one `serve` starts survey once; a restart a minute later asks again


def record(conn: Redis, forge: str, change: InstallationChange) -> None:
    """One installation event, in one round trip (the webhook's hot path)."""
    with conn.pipeline(transaction=True) as pipe:
        if change.added:
            pipe.hset(REACH.format(forge=forge), mapping={name: change.installation for name in change.added})
            pipe.hdel(MISSING.format(forge=forge), *change.added)
        if change.removed:
            pipe.hdel(REACH.format(forge=forge), *change.removed)
        pipe.execute()


def found(conn: Redis, forge: str, repo: str, installation: int) -> None:
    with conn.pipeline(transaction=True) as pipe:
        pipe.hset(REACH.format(forge=forge), repo, installation)
        pipe.hdel(MISSING.format(forge=forge), repo)
        pipe.execute()


def missing(conn: Redis, forge: str, repo: str, why: str) -> None:
    with conn.pipeline(transaction=True) as pipe:
        pipe.hset(MISSING.format(forge=forge), repo, why)
        pipe.hdel(REACH.format(forge=forge), repo)
        pipe.execute()


def reach(conn: Redis, settings: Settings) -> list[dict]:
    """Per App forge: the repositories it reaches (with their installation) and the configured ones it cannot."""
    out = []
    for forge in settings.forges:
        if not forge.is_app:
            continue
        reached = {k.decode(): int(v) for k, v in conn.hgetall(REACH.format(forge=forge.name)).items()}
        lacking = {k.decode(): v.decode() for k, v in conn.hgetall(MISSING.format(forge=forge.name)).items()}
        out.append({"forge": forge.name, "app_id": forge.app_id, "reaches": dict(sorted(reached.items())),
                    "missing": dict(sorted(lacking.items()))})
    return out


def survey(settings: Settings, conn: Redis) -> None:
    """Ask GitHub, for each configured repository with a concrete name, which installation covers it: once for
    the workers that start together (`serve` starts several) with the same App and repositories."""
    for forge in settings.forges:
        if not forge.is_app:
            continue
        repos, _ = settings.concrete_repos(forge)
        asked = f"{forge.api_url} {forge.app_id} {' '.join(sorted(repo.full_name for repo in repos))}"
        key = SURVEYED.format(forge=forge.name, asked=hashlib.sha256(asked.encode()).hexdigest()[:16])
        if not conn.set(key, "1", nx=True, ex=SURVEY_TTL):
            continue
        from forge_bridge.forges.github_app import GitHubApp   # PyGithub: only where an App is configured

        app = GitHubApp(forge.api_url, forge.app_id, forge.private_key)
        for repo in repos:
            try:
                found(conn, forge.name, repo.full_name, app.find_installation(repo))
            except ForgeError as error:
                missing(conn, forge.name, repo.full_name, str(error))
                log.warning("forge %s: %s", forge.name, error)
