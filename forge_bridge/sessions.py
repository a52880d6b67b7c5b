"""Session and task records in Redis, plus the small atomic primitives (claims, per-issue locks) built on them."""
from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from redis import Redis
from redis.exceptions import RedisError

from forge_bridge.models import IssueRef, Session, Task, TaskAction

PREFIX = "fb"
RECENT_KEY = f"{PREFIX}:tasks:recent"
CLAIM_TTL = 7 * 24 * 3600
LOCK_TTL = 120
LOCK_WAIT = 60.0

# Release a lock only when we still hold it, so an expired holder never frees someone else's lock.
_RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class LockTimeout(RuntimeError):
    """Another worker held an issue's lock for longer than we wait."""


def new_task_id() -> str:
    return uuid.uuid4().hex[:16]


class Store:
    """Every record the bridge keeps, under the `fb:` prefix."""

    def __init__(self, conn: Redis) -> None:
        self.conn = conn

    # tasks
    def save_task(self, task: Task) -> None:
        with self.conn.pipeline() as pipe:
            pipe.set(f"{PREFIX}:task:{task.id}", task.to_json())
            pipe.zadd(RECENT_KEY, {task.id: task.queued_at})
            pipe.execute()

    def task(self, task_id: str) -> Task | None:
        raw = self.conn.get(f"{PREFIX}:task:{task_id}")
        return Task.from_json(raw) if raw else None

    def tasks(self, task_ids: list[str]) -> list[Task]:
        if not task_ids:
            return []
        raws = self.conn.mget([f"{PREFIX}:task:{i}" for i in task_ids])
        return [Task.from_json(raw) for raw in raws if raw]

    def recent_task_ids(self, limit: int = 50) -> list[str]:
        return [i.decode() for i in self.conn.zrevrange(RECENT_KEY, 0, limit - 1)]

    def new_task(self, issue: IssueRef, *, forge: str, action: TaskAction, message: str, requested_by: str) -> Task:
        task = Task(id=new_task_id(), issue=str(issue), forge=forge, action=action, message=message,
                    requested_by=requested_by, queued_at=time.time())
        self.save_task(task)
        return task

    # sessions
    def session(self, issue: IssueRef | str) -> Session | None:
        raw = self.conn.get(f"{PREFIX}:session:{issue}")
        return Session.from_json(raw) if raw else None

    def save_session(self, session: Session) -> None:
        self.conn.set(f"{PREFIX}:session:{session.issue}", session.to_json())

    def session_ids(self) -> Iterator[str]:
        for key in self.conn.scan_iter(match=f"{PREFIX}:session:*", count=500):
            yield key.decode().removeprefix(f"{PREFIX}:session:")

    # atomic primitives
    def claim(self, key: str, *, ttl: int = CLAIM_TTL) -> bool:
        """True for the first caller only: how deliveries and events are made exactly-once."""
        return bool(self.conn.set(f"{PREFIX}:claim:{key}", "1", nx=True, ex=ttl))

    def release_quietly(self, key: str) -> None:
        try:
            self.conn.delete(f"{PREFIX}:claim:{key}")
        except RedisError:
            pass  # Redis is what failed; the claim likely never landed

    @contextmanager
    def issue_lock(self, issue: IssueRef | str, *, wait: float = LOCK_WAIT) -> Iterator[None]:
        """Serialize intake for one issue across every worker on every host."""
        key, token = f"{PREFIX}:lock:{issue}", uuid.uuid4().hex
        deadline = time.monotonic() + wait
        while not self.conn.set(key, token, nx=True, ex=LOCK_TTL):
            if time.monotonic() > deadline:
                raise LockTimeout(f"issue {issue} is locked by another worker")
            time.sleep(0.05)
        try:
            yield
        finally:
            self.conn.eval(_RELEASE_LOCK, 1, key, token)
