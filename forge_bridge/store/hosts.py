"""Several hosts on one Redis: each worker host's heartbeat, its agent workers, and whether it drains (takes no new
tasks while its running ones finish), as the status page, `status` and `drain` read them."""
from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass

from redis import Redis

from forge_bridge.models import TaskState
from forge_bridge.store.queue import DRAINING, GONE_AFTER, HOSTS
from forge_bridge.store.sessions import Store

BEAT_INTERVAL = 5.0
RECENT = 1000                        # running tasks are looked for among this many recent ones


@dataclass(frozen=True)
class Host:
    id: str
    heartbeat_age: float
    agent_workers: int
    draining: bool
    running: int

    @property
    def alive(self) -> bool:
        return self.heartbeat_age <= GONE_AFTER


def beat(conn: Redis, host: str, *, agent_workers: int) -> None:
    conn.hset(HOSTS, host, json.dumps({"beat": time.time(), "agent_workers": agent_workers}))


def leave(conn: Redis, host: str) -> None:
    """A host's workers stopped: its issues' next tasks go to the other hosts at once, not after GONE_AFTER."""
    conn.hdel(HOSTS, host)


def set_draining(conn: Redis, host: str, draining: bool) -> None:
    if draining:
        conn.hset(DRAINING, host, time.time())
    else:
        conn.hdel(DRAINING, host)


def draining(conn: Redis, host: str) -> bool:
    return bool(conn.hexists(DRAINING, host))


def running_on(conn: Redis, host: str) -> int:
    return _running(conn).get(host, 0)


def _running(conn: Redis) -> dict[str, int]:
    """Running tasks by the host they run on."""
    store = Store(conn)
    return dict(Counter(task.host for task in store.tasks(store.recent_task_ids(RECENT))
                        if task.state is TaskState.RUNNING))


def hosts(conn: Redis, *, now: float | None = None) -> list[Host]:
    """Every host that ever beat (or was asked to drain), with its heartbeat's age and its running tasks."""
    now = time.time() if now is None else now
    beats = {key.decode(): json.loads(value) for key, value in conn.hgetall(HOSTS).items()}
    drains = {key.decode() for key in conn.hkeys(DRAINING)}
    running = _running(conn)
    return [Host(id=host, heartbeat_age=round(now - beats.get(host, {}).get("beat", 0.0), 1),
                 agent_workers=beats.get(host, {}).get("agent_workers", 0), draining=host in drains,
                 running=running.get(host, 0)) for host in sorted(set(beats) | drains)]


def shown(conn: Redis) -> list[dict]:
    """Every host as the page, `status` and /api/hosts show it."""
    return [{**asdict(host), "alive": host.alive} for host in hosts(conn)]
