"""Scan polled repositories for issues carrying the trigger label; emit the same ForgeEvents webhooks do."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from redis import Redis
from redis.exceptions import RedisError

from forge_bridge import queue
from forge_bridge.config import RepoConfig, Settings
from forge_bridge.forges import ForgeClient, ForgeError, IssueInfo
from forge_bridge.models import EventKind, ForgeEvent, IssueRef, RepoRef
from forge_bridge.sessions import PREFIX, Store
from forge_bridge.triggers import Skip, decide

log = logging.getLogger(__name__)
STATE_KEY = f"{PREFIX}:poller"
MAX_BACKOFF = 300.0


def _label_event(forge: str, ref: IssueRef, issue: IssueInfo, label: str) -> ForgeEvent:
    return ForgeEvent(forge=forge, kind=EventKind.LABELS_CHANGED, issue=ref, sender=issue.author, source="poller",
                      action="polled", labels=issue.labels, label=label, title=issue.title, body=issue.body)


def repo_events(settings: Settings, repo: RepoConfig, client: ForgeClient) -> list[ForgeEvent]:
    forge = settings.forge(repo.forge)
    owner, name = repo.name.split("/", 1)
    todo = settings.label("todo")
    issues = client.list_labeled_issues(RepoRef(forge.host, owner, name), todo)
    return [_label_event(forge.name, IssueRef(RepoRef(forge.host, owner, name), i.number), i, todo)
            for i in issues if not i.is_pull]


def poll_once(settings: Settings, conn: Redis, client_for: Callable[[str], ForgeClient]) -> int:
    """One scan of every polled repository; returns how many events were handed to intake."""
    store, handed = Store(conn), 0
    for repo in settings.polled_repos():
        if any(ch in repo.name for ch in "*?["):
            log.warning("poll: %s is a pattern; polling needs a concrete owner/repo", repo.name)
            continue
        for event in repo_events(settings, repo, client_for(repo.forge)):
            if isinstance(decide(event, settings), Skip):
                continue
            # Intake decides under the issue's lock; this claim only keeps one pending job per sighting.
            if store.claim(f"poll:{event.issue}:{event.label}", ttl=max(int(settings.poll_interval), 30)):
                queue.enqueue_event(conn, event.to_json())
                handed += 1
    return handed


def run(settings: Settings, conn: Redis, client_for: Callable[[str], ForgeClient],
        stop: threading.Event | None = None) -> None:
    """Poll every poll_interval; forge or Redis failures back off and recover by themselves."""
    stop = stop or threading.Event()
    backoff = settings.poll_interval
    while not stop.is_set():
        started = time.time()
        try:
            handed = poll_once(settings, conn, client_for)
            conn.hset(STATE_KEY, mapping={"last_run": started, "next_run": started + settings.poll_interval,
                                          "last_error": ""})
            backoff = settings.poll_interval
            log.info("poll: %d event(s) handed to intake", handed)
        except (ForgeError, RedisError, OSError) as error:
            log.warning("poll failed (%s); retrying in %.0fs", error, backoff)
            stop.wait(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)
            continue
        stop.wait(settings.poll_interval)
