"""Session and task records in Redis, plus the small atomic primitives (claims, per-issue locks) built on them."""
from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from redis import Redis
from redis.exceptions import RedisError, WatchError

from forge_bridge.models import IssueRef, RepoRef, Session, Task, TaskAction, TaskState

if TYPE_CHECKING:
    from forge_bridge.store.queue import PreparedJob

PREFIX = "fb"
RECENT_KEY = f"{PREFIX}:tasks:recent"
CLAIM_TTL = 7 * 24 * 3600
LOCK_TTL = 120
LOCK_WAIT = 60.0

# QUEUED -> RUNNING exactly once, whoever else holds a job for the same task.
_BEGIN_TASK = """
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local task = cjson.decode(raw)
if task['state'] ~= 'queued' then return 0 end
task['state'] = 'running'
task['started_at'] = tonumber(ARGV[1])
redis.call('SET', KEYS[1], cjson.encode(task))
return 1
"""

# Release a lock only when we still hold it, so an expired holder never frees someone else's lock.
# Admit a webhook delivery in one round trip. KEYS: the claims, the issue's labels key, then (when a job is given)
# the job's hash, its queue's list and RQ's set of queues. ARGV: how many claims, their life, the labels to remember
# ("" for none), the labels' life, when to enqueue ("" never | "*" always | a label: only when this change added
# it, the rule of triggers.label_added for forges that send label sets), the job id, the queue key, its fields.
_ADMIT_EVENT = """
local count = tonumber(ARGV[1])
for i = 1, count do
  if not redis.call('SET', KEYS[i], '1', 'NX', 'EX', ARGV[2]) then
    for j = 1, i - 1 do redis.call('DEL', KEYS[j]) end
    return {0, false, 0}
  end
end
local known = false
if ARGV[3] ~= '' then
  known = redis.call('GET', KEYS[count + 1])
  redis.call('SET', KEYS[count + 1], ARGV[3], 'EX', ARGV[4])
end
local function has(json, label)
  for _, name in ipairs(cjson.decode(json)) do if name == label then return true end end
  return false
end
local when, added = ARGV[5], nil
if when == '*' then
  added = ''
elseif when ~= '' then
  for label in string.gmatch(when, '[^\\n]+') do
    if has(ARGV[3], label) and not (known and has(known, label)) then added = label; break end
  end
end
if not added then
  return {1, known, 0}
end
redis.call('HSET', KEYS[count + 2], unpack(ARGV, 8))
redis.call('RPUSH', KEYS[count + 3], ARGV[6])
redis.call('SADD', KEYS[count + 4], ARGV[7])
if string.find(when, '\\n', 1, true) then
  redis.call('SET', KEYS[count + 5], added, 'EX', ARGV[2])
end
return {1, known, 1}
"""
_EXTEND_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
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
        self._admit = conn.register_script(_ADMIT_EVENT)
        self.conn = conn

    # tasks
    def save_task(self, task: Task) -> None:
        with self.conn.pipeline() as pipe:
            pipe.set(f"{PREFIX}:task:{task.id}", task.to_json())
            pipe.zadd(RECENT_KEY, {task.id: task.queued_at})
            pipe.execute()

    def begin_task(self, task_id: str) -> Task | None:
        """Mark a queued task running, atomically: a second job for it finds it running and does nothing."""
        if not self.conn.eval(_BEGIN_TASK, 1, f"{PREFIX}:task:{task_id}", repr(time.time())):
            return None
        return self.task(task_id)

    def append_message(self, task_id: str, message: str, *, requested_by: str) -> bool:
        """Merge a message into a task still waiting to start; False once it started (WATCH sees the start)."""
        def merge(raw: bytes | None) -> str | None:
            task = Task.from_json(raw) if raw else None
            if task is None or task.state is not TaskState.QUEUED:
                return None
            task.message = f"{task.message}\n\n{message}"
            if requested_by not in task.requested_by.split(", @"):   # shown as "alice, @bob"
                task.requested_by = f"{task.requested_by}, @{requested_by}"
            return task.to_json()

        return self._update(f"{PREFIX}:task:{task_id}", merge)

    def _update(self, key: str, change: Callable[[bytes | None], str | None]) -> bool:
        """Read, change and write one record atomically (optimistic: retried when someone wrote in between);
        `change` answers None to leave it alone."""
        with self.conn.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    new = change(pipe.get(key))
                    if new is None:
                        return False
                    pipe.multi()
                    pipe.set(key, new)
                    pipe.execute()
                    return True
                except WatchError:
                    continue

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

    def new_task(self, issue: IssueRef, *, forge: str, action: TaskAction, message: str, requested_by: str,
                 mode: str = "") -> Task:
        task = Task(id=new_task_id(), issue=str(issue), forge=forge, action=action, message=message,
                    requested_by=requested_by, queued_at=time.time(), mode=mode)
        self.save_task(task)
        return task

    # sessions
    def session(self, issue: IssueRef | str) -> Session | None:
        raw = self.conn.get(f"{PREFIX}:session:{issue}")
        return Session.from_json(raw) if raw else None

    def save_session(self, session: Session) -> None:
        """Intake changes a session while a runner holds its own copy: tasks are only ever added and a merge is
        never undone, so the ids and the merge already stored are kept — a runner saving its copy never drops a
        task queued since, nor a merge seen while it ran."""
        def keep_what_only_grows(raw: bytes | None) -> str:
            stored = Session.from_json(raw) if raw else Session(issue=session.issue, forge=session.forge)
            known = set(stored.task_ids)
            session.task_ids = stored.task_ids + [i for i in session.task_ids if i not in known]
            session.merged = session.merged or stored.merged
            return session.to_json()

        self._update(f"{PREFIX}:session:{session.issue}", keep_what_only_grows)

    def add_task_to_session(self, issue: IssueRef | str, forge: str, task_id: str) -> Session:
        """The issue's session with one more task (made when it has none), changed in the store itself: a runner
        of an earlier task may save what it found (the pull request, the agent's session) at the same moment."""
        added: list[Session] = []

        def with_task(raw: bytes | None) -> str:
            session = Session.from_json(raw) if raw else Session(issue=str(issue), forge=forge)
            session.task_ids.append(task_id)
            session.archived = False
            added[:] = [session]
            return session.to_json()

        self._update(f"{PREFIX}:session:{issue}", with_task)
        return added[0]

    def save_status(self, session: Session) -> None:
        """Only what a report changed (the status comment's id and digest) onto the stored session. Intake's
        copy may have been read before a runner opened the pull request or began the agent's session (the
        agent starts before the intake's report is written): saved whole, it would undo those."""
        def status_only(raw: bytes | None) -> str:
            stored = Session.from_json(raw) if raw else session
            stored.status_comment_id, stored.status_digest = session.status_comment_id, session.status_digest
            return stored.to_json()

        self._update(f"{PREFIX}:session:{session.issue}", status_only)

    def session_ids(self) -> Iterator[str]:
        for key in self.conn.scan_iter(match=f"{PREFIX}:session:*", count=500):
            yield key.decode().removeprefix(f"{PREFIX}:session:")

    def latest_task(self, session: Session | None) -> Task | None:
        tasks = self.tasks(session.task_ids[-1:]) if session and session.task_ids else []
        return tasks[0] if tasks else None

    # what the bridge last knew of an issue's labels (Gitea sends sets, not changes)
    def known_labels(self, issue: IssueRef | str) -> tuple[str, ...] | None:
        raw = self.conn.get(f"{PREFIX}:labels:{issue}")
        return tuple(json.loads(raw)) if raw is not None else None

    def remember_labels(self, issue: IssueRef | str, labels: tuple[str, ...] | list[str]) -> None:
        self.conn.set(f"{PREFIX}:labels:{issue}", json.dumps(sorted(labels)), ex=CLAIM_TTL * 8)

    # the heads the bridge pushed (CI feedback acts only on those), and its CI rounds per pull request
    def remember_push(self, repo: RepoRef | str, sha: str, issue: IssueRef | str) -> None:
        with self.conn.pipeline(transaction=False) as pipe:
            pipe.set(f"{PREFIX}:pushed:{repo}:{sha}", str(issue), ex=CLAIM_TTL * 4)
            pipe.set(f"{PREFIX}:head:{issue}", sha, ex=CLAIM_TTL * 4)
            pipe.execute()

    def last_push(self, issue: IssueRef | str) -> str | None:
        raw = self.conn.get(f"{PREFIX}:head:{issue}")
        return raw.decode() if raw else None

    def pushed_by_bridge(self, repo: RepoRef | str, sha: str) -> str | None:
        raw = self.conn.get(f"{PREFIX}:pushed:{repo}:{sha}")
        return raw.decode() if raw else None

    def next_ci_round(self, issue: IssueRef | str, pull: int) -> int:
        return int(self.conn.incr(f"{PREFIX}:ci-rounds:{issue}:{pull}"))

    # which issue a pull request of the bridge's was opened for
    def link_pull(self, repo: RepoRef, number: int, issue: IssueRef | str) -> None:
        self.conn.set(f"{PREFIX}:pull:{repo}#{number}", str(issue))

    def issue_for_pull(self, repo: RepoRef, number: int) -> str | None:
        raw = self.conn.get(f"{PREFIX}:pull:{repo}#{number}")
        return raw.decode() if raw else None

    # cached answers from the forge
    def cached(self, key: str) -> str | None:
        raw = self.conn.get(f"{PREFIX}:cache:{key}")
        return raw.decode() if raw is not None else None

    def cache(self, key: str, value: str, *, ttl: int) -> None:
        self.conn.set(f"{PREFIX}:cache:{key}", value, ex=ttl)

    # cancelling: a flag any process can set and the runner polls, so it works across hosts
    def request_cancel(self, task_id: str) -> None:
        self.conn.set(f"{PREFIX}:cancel:{task_id}", "1", ex=CLAIM_TTL)

    def cancel_requested(self, task_id: str) -> bool:
        return bool(self.conn.exists(f"{PREFIX}:cancel:{task_id}"))

    # the poller's place in each repository's comment stream
    def cursor(self, name: str) -> str | None:
        raw = self.conn.get(f"{PREFIX}:cursor:{name}")
        return raw.decode() if raw else None

    def set_cursor(self, name: str, value: str) -> None:
        self.conn.set(f"{PREFIX}:cursor:{name}", value)

    # atomic primitives
    def admit_event(self, claims: list[str], issue: IssueRef | str, labels: tuple[str, ...] | None, *,
                    job: PreparedJob | None = None, when: str = "*") -> tuple[bool, tuple[str, ...] | None, bool]:
        """One round trip for the webhook's hot path: claim every key (all or none); for a label change, read
        the labels known before and remember the new ones; then write `job` and push it on its queue — always
        (`when` = "*"), or only when the change added one of the labels `when` names (one a line, first
        first; with more than one, the one added is kept for the job: `added_label`). (claimed, labels known
        before, queued)."""
        keys = [f"{PREFIX}:claim:{key}" for key in claims] + [f"{PREFIX}:labels:{issue}"]
        remembered = json.dumps(sorted(labels)) if labels is not None else ""
        args = [len(claims), CLAIM_TTL, remembered, CLAIM_TTL * 8]
        if job is None:
            args += ["", "", ""]
        else:
            keys += [job.key, job.queue_key, job.queues_key, self._added_key(job.id)]
            args += [when, job.id, job.queue_key, *job.fields]
        claimed, known, queued = self._admit(keys=keys, args=args)
        return bool(claimed), tuple(json.loads(known)) if known else None, bool(queued)

    @staticmethod
    def _added_key(job_id: str) -> str:
        return f"{PREFIX}:added:{job_id}"

    def added_label(self, job_id: str) -> str:
        """Which of several labels in a label set the change that queued this job added ("" when not asked)."""
        return (self.conn.get(self._added_key(job_id)) or b"").decode()

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
        # Renewed while held: a forge's retries may wait far longer than LOCK_TTL (a rate limit's reset), yet a
        # holder that died frees the issue within LOCK_TTL.
        held = threading.Event()
        threading.Thread(target=self._renew, args=(key, token, held), daemon=True).start()
        try:
            yield
        finally:
            held.set()
            self.conn.eval(_RELEASE_LOCK, 1, key, token)

    def _renew(self, key: str, token: str, released: threading.Event) -> None:
        while not released.wait(LOCK_TTL / 3):
            try:
                if not self.conn.eval(_EXTEND_LOCK, 1, key, token, int(LOCK_TTL * 1000)):
                    return   # no longer ours
            except RedisError:
                continue   # Redis is away; try again at the next beat
