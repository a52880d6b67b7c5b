"""The only module that imports RQ: the two queues, per-issue lines in front of the global agent slots, the worker.

Two limits hold by construction:
- One task per issue at a time, in arrival order: each issue has a line (a Redis list). Only the task at its
  head is ever handed to RQ; the next one is handed over when the head leaves. Joining and leaving are single
  Lua scripts, so exactly one process submits each head.
- `max_concurrent_agents` across every worker on every host: RQ 3's RateLimit takes the slot atomically (a
  Lua script) when a job is let onto the queue; jobs over the limit wait in its rate-limited set — queued,
  not failed, not polling. Because only heads are submitted, no slot is ever held by a task that must wait
  for its issue, so no slot idles while a task could run.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from redis import Redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError
from redis.retry import Retry as RedisRetry
from rq import Callback, Queue, Retry, Worker
from rq.exceptions import NoSuchJobError, StopRequested
from rq.job import Job
from rq.rate_limit import RateLimit, RateLimitRegistry
from rq.scripts import _build_hset_args
from rq.utils import get_call_string, now, utcformat

log = logging.getLogger(__name__)
EVENTS_QUEUE = "forge-bridge-events"   # intake: authorize, label, comment; short forge API jobs
AGENTS_QUEUE = "forge-bridge-agents"   # agent runs, limited by the global agent slots
AGENT_SLOTS = "forge-bridge-agent-slots"
EVENT_JOB_TIMEOUT = 300
EVENT_RETRY = Retry(max=3, interval=[10, 60, 300])   # a forge outage delays intake; it loses nothing
JOB_TIMEOUT_MARGIN = 300               # the runner kills the agent itself; RQ's timeout is a backstop
FAILURE_TTL = 7 * 24 * 3600
# A dead worker's job is found abandoned when its execution heartbeat (monitoring interval + grace) lapses
# and the next maintenance runs. An idle worker blocks in dequeue for worker_ttl - 15 s and only runs
# maintenance between dequeues, so all are short: at most 5 + 25 + 15 + 15 s, inside the promised 2 minutes.
JOB_MONITORING_INTERVAL = 5
HEARTBEAT_GRACE = 25   # RQ allows 60 s; the worker that sends the heartbeat idles meanwhile, 25 s is ample
MAINTENANCE_INTERVAL = 15
WORKER_TTL = MAINTENANCE_INTERVAL + 15
MAX_RECONNECT_WAIT = 30.0
PUBSUB_WAKE = 1.0

_JOIN_LINE = """
redis.call('RPUSH', KEYS[1], ARGV[1])
return redis.call('LINDEX', KEYS[1], 0) == ARGV[1] and 1 or 0
"""
# Leave the line; when the leaver was the head, answer the new head (to be submitted), else nothing.
_LEAVE_LINE = """
local head = redis.call('LINDEX', KEYS[1], 0)
redis.call('LREM', KEYS[1], 0, ARGV[1])
if head == ARGV[1] then return redis.call('LINDEX', KEYS[1], 0) end
return false
"""


def connect(url: str, *, socket_timeout: float | None = None, retries: int = 2) -> Redis:
    """Bounded retries: a webhook must get its 503 well inside the forge's 5 s delivery timeout. Workers keep
    no socket timeout, since RQ blocks on the queues for minutes at a time."""
    connect_timeout = min(2.0, socket_timeout) if socket_timeout else 2.0
    return Redis.from_url(url, health_check_interval=30, socket_connect_timeout=connect_timeout,
                          socket_timeout=socket_timeout, retry=RedisRetry(ExponentialBackoff(cap=0.5, base=0.05), retries))


def enqueue_event(conn: Redis, event_json: str) -> str:
    """The job and its place in the queue in one round trip (RQ writes both into the pipeline it is given)."""
    with conn.pipeline() as pipe:
        job = Queue(EVENTS_QUEUE, connection=conn).enqueue(
            "jobs.tasks.handle_event", event_json, job_timeout=EVENT_JOB_TIMEOUT, failure_ttl=FAILURE_TTL,
            retry=EVENT_RETRY, pipeline=pipe)
        pipe.execute()
    return job.id


@dataclass(frozen=True)
class PreparedJob:
    """An RQ job for another module's Lua script to write in the same round trip as its own keys: the hash
    fields exactly as RQ lays them out (its own unique enqueue writes the same `_build_hset_args`, then
    pushes the id), the queue's list to push the id on and the set of known queues. rq is pinned (==3.0.0)."""
    id: str
    key: str
    queue_key: str
    queues_key: str
    fields: list


CI_JOB = "jobs.tasks.handle_failed_check"
EVENT_JOB = "jobs.tasks.handle_event"
# Several hosts. Each issue's tasks go to the host holding its agent session while that host takes tasks.
ISSUE_HOME = "fb:issue-host:"        # issue -> the host that ran its last task (its CLI session lives there)
HOST_WAIT = "fb:host-wait:"          # host -> tasks waiting for one of its agent workers, holding no slot
WAITS_ON = "fb:waits-on:"            # task -> the host it waits for
ROUTED_TO = "fb:routed-hosts"        # every host a task was routed to: whose lists and queues to release
HOSTS = "fb:hosts"                   # host -> its heartbeat, {"beat": time, "agent_workers": n}
DRAINING = "fb:hosts:draining"       # host -> when it was asked to drain
GONE_AFTER = 60.0                    # a host whose heartbeat is older is gone


def host_queue(host: str) -> str:
    return f"{AGENTS_QUEUE}@{host}"


def takes_tasks(conn: Redis, host: str) -> bool:
    """Alive (a heartbeat within GONE_AFTER) and not draining."""
    beat, draining = conn.hget(HOSTS, host), conn.hexists(DRAINING, host)
    return bool(beat) and not draining and time.time() - json.loads(beat)["beat"] <= GONE_AFTER


def idle_agent_worker(conn: Redis, host: str) -> bool:
    return any(worker.get_state() == "idle"
               for worker in Worker.all(queue=Queue(host_queue(host), connection=conn)))


def remember_home(conn: Redis, issue: str, host: str) -> None:
    conn.set(ISSUE_HOME + issue, host)


def release_gone_hosts(conn: Redis, scheduler: "Scheduler") -> int:
    """Housekeeping on any host: the waiting tasks of hosts gone or draining go to any host."""
    routed = sorted(raw.decode() for raw in conn.smembers(ROUTED_TO))
    return sum(scheduler.release(host) for host in routed if not takes_tasks(conn, host))


_DESCRIPTION_LENGTH = 75   # RQ's own (Job.get_call_string)
_PER_JOB = ("created_at", "data", "description", "enqueued_at")   # all else is the same for every job of a kind


@dataclass(frozen=True)
class _JobLayout:
    """RQ's hash fields for one kind of intake job, laid out by RQ itself once; `at` says where each per-job
    value sits. Building each job through RQ's Job objects cost the webhook's hot path as much as everything
    else it does but the round trip (serializer resolution, to_dict)."""
    fields: tuple
    at: dict[str, int]
    serializer: object
    queue_key: str


_layouts: dict[str, _JobLayout] = {}


def _layout(conn: Redis, func: str) -> _JobLayout:
    layout = _layouts.get(func)
    if layout is None:   # exactly the job RQ's own enqueue would save (no I/O: nothing asks the server)
        queue = Queue(EVENTS_QUEUE, connection=conn)
        job = queue.create_job(func, args=("",), timeout=EVENT_JOB_TIMEOUT, failure_ttl=FAILURE_TTL,
                               retry=EVENT_RETRY)
        job.origin, job.enqueued_at = queue.name, now()
        fields = _build_hset_args(job)
        layout = _layouts[func] = _JobLayout(tuple(fields), {name: fields.index(name) + 1 for name in _PER_JOB},
                                             job.serializer, queue.key)
    return layout


def prepare_event_job(conn: Redis, event_json: str, *, func: str = EVENT_JOB) -> PreparedJob:
    """The intake job for one event, as `enqueue_event` would make it, without any I/O: RQ's own fields with
    this job's id, time, arguments and description in their places (tests compare them with RQ's)."""
    layout, args = _layout(conn, func), (event_json,)
    job_id, stamp = str(uuid.uuid4()), utcformat(now())
    fields = list(layout.fields)
    fields[layout.at["created_at"]] = fields[layout.at["enqueued_at"]] = stamp
    fields[layout.at["data"]] = zlib.compress(layout.serializer.dumps((func, None, args, {})))
    fields[layout.at["description"]] = get_call_string(func, args, {}, max_length=_DESCRIPTION_LENGTH)
    return PreparedJob(id=job_id, key=Job.key_for(job_id), queue_key=layout.queue_key,
                       queues_key=Queue.redis_queues_keys, fields=fields)


@dataclass(frozen=True)
class Scheduler:
    conn: Redis
    max_agents: int
    task_timeout: float

    @staticmethod
    def line_key(issue: str) -> str:
        return f"fb:line:{issue}"

    def submit(self, task_id: str, issue: str) -> bool:
        """Put the task in its issue's line; hand it to RQ at once when it is the head."""
        if self.conn.eval(_JOIN_LINE, 1, self.line_key(issue), task_id):
            self._route(task_id, issue)
            return True
        return False

    def finish(self, task_id: str, issue: str) -> str | None:
        """The task leaves its line (done, failed, cancelled); the next one in the line is handed over."""
        following = self.conn.eval(_LEAVE_LINE, 1, self.line_key(issue), task_id)
        if following:
            following = following.decode()
            self._route(following, issue)
        return following

    def resubmit(self, task_id: str, issue: str = "") -> None:
        """Run the head again (after a shutdown interrupted it): a new RQ job for the same task."""
        self._route(task_id, issue)

    def _route(self, task_id: str, issue: str) -> None:
        """To the host holding the issue's agent session while it takes tasks — at once when one of its agent
        workers is idle, else in its wait list, holding no slot, until one is —, otherwise to any host."""
        home = self.conn.get(ISSUE_HOME + issue) if issue else None
        home = home.decode() if home else ""
        if not home or not takes_tasks(self.conn, home):
            self._enqueue_run(task_id)
            return
        self.conn.sadd(ROUTED_TO, home)
        if idle_agent_worker(self.conn, home):
            self._enqueue_run(task_id, host_queue(home))
        else:
            with self.conn.pipeline() as pipe:
                pipe.rpush(HOST_WAIT + home, task_id)
                pipe.set(WAITS_ON + task_id, home)
                pipe.execute()

    def pull_waiting(self, host: str) -> bool:
        """An idle agent worker of `host` takes the first task waiting for its host onto its host's queue."""
        task_id = self.conn.lpop(HOST_WAIT + host)
        if not task_id:
            return False
        self.conn.delete(WAITS_ON + task_id.decode())
        self._enqueue_run(task_id.decode(), host_queue(host))
        return True

    def waits_on(self, task_ids: list[str]) -> dict[str, str]:
        """Which of these tasks wait for a host of their own, and for which."""
        hosts = self.conn.mget([WAITS_ON + task_id for task_id in task_ids]) if task_ids else []
        return {task_id: host.decode() for task_id, host in zip(task_ids, hosts) if host}

    def release(self, host: str) -> int:
        """A host gone or draining: the tasks waiting for it, and those on its queue, go to any host."""
        moved = 0
        while task_id := self.conn.lpop(HOST_WAIT + host):
            self.conn.delete(WAITS_ON + task_id.decode())
            self._enqueue_run(task_id.decode())
            moved += 1
        source, target = Queue(host_queue(host), connection=self.conn), Queue(AGENTS_QUEUE, connection=self.conn)
        while self.conn.rpoplpush(source.key, target.key):   # admitted already: their slots go along
            moved += 1
        return moved

    def waiting(self, issue: str) -> list[str]:
        return [raw.decode() for raw in self.conn.lrange(self.line_key(issue), 0, -1)]

    def agent_line(self) -> list[str]:
        """Task ids in the order they get an agent slot: those let through (running, or about to start), then
        those the rate limiter holds back, oldest first. Only heads of their issues' lines are ever here."""
        registry = RateLimitRegistry(AGENT_SLOTS, connection=self.conn)
        ids = [*registry.get_allowed_job_ids(), *registry.get_rate_limited_job_ids()]
        return [job_id.split("-")[1] for job_id in ids if job_id.startswith("task-") and job_id.count("-") == 2]

    def cancel(self, task_id: str) -> None:
        """Take a task's queued agent run off RQ (and out of the rate limiter's waiting set, or its host's)."""
        host = self.conn.get(WAITS_ON + task_id)
        if host:
            self.conn.lrem(HOST_WAIT + host.decode(), 0, task_id)
            self.conn.delete(WAITS_ON + task_id)
            return
        job_id = current_job(self.conn, task_id)
        if not job_id:
            return
        try:
            Job.fetch(job_id, connection=self.conn).cancel()
        except NoSuchJobError:
            pass

    def _enqueue_run(self, task_id: str, queue: str = AGENTS_QUEUE) -> None:
        attempt = self.conn.incr(f"fb:attempts:{task_id}")
        job_id = f"task-{task_id}-{attempt}"
        self.conn.set(f"fb:job:{task_id}", job_id)
        Queue(queue, connection=self.conn).enqueue(
            "jobs.tasks.run_task", task_id, job_id=job_id, job_timeout=int(self.task_timeout) + JOB_TIMEOUT_MARGIN,
            rate_limit=RateLimit(AGENT_SLOTS, concurrency=self.max_agents), failure_ttl=FAILURE_TTL,
            on_failure=Callback("jobs.tasks.agent_run_failed"), on_stopped=Callback("jobs.tasks.agent_run_failed"))


class BridgeWorker(Worker):
    """RQ's worker, except that a warm shutdown (the first SIGTERM) is passed on to the work horse, which RQ
    puts in a process group of its own: the runner there stops the agent and puts the task back in line."""

    housekeeping: Callable[[], None] | None = None   # the bridge's own periodic work on this host
    drains: Callable[[], bool] | None = None          # whether its host drains: then it takes no new task
    pull_waiting: Callable[[], bool] | None = None    # takes a task waiting for this host onto its queue
    stop_grace: float = 0.0                           # on SIGTERM, how long a running agent may still finish
    asked_to_stop = False
    drained = False

    def dequeue_job_and_maintain_ttl(self, timeout, max_idle_time=None):
        """Nothing while the host drains; a job taken as the drain began goes back, first in line, for another.
        Idle, it first takes a task that waits for this host (its agent session lives here)."""
        if self.drains is not None and self.drains():
            self.drained = True
            return None
        if self.pull_waiting is not None:
            self.pull_waiting()
        result = super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
        if result is not None and self.drains is not None and self.drains():
            job, queue = result
            queue.push_job_id(job.id, at_front=True)
            self.drained = True
            return None
        return result

    def get_heartbeat_ttl(self, job, working_time: float = 0.0) -> int:
        return super().get_heartbeat_ttl(job, working_time) - 60 + HEARTBEAT_GRACE

    def run_maintenance_tasks(self):
        super().run_maintenance_tasks()
        if self.housekeeping is not None:
            try:
                self.housekeeping()
            except StopRequested:   # a stop (SIGTERM) that arrived meanwhile: RQ's way out of its loop
                raise
            except Exception:  # housekeeping must never take a worker down
                log.exception("worker housekeeping failed")

    def request_stop(self, signum, frame):
        """Take no new job; the running agent may finish for `stop_grace` seconds, then it is stopped and its task
        goes back, first in its line."""
        self.asked_to_stop = True
        if self.horse_pid:
            horse = self.horse_pid
            if self.stop_grace > 0:
                timer = threading.Timer(self.stop_grace, _stop_horse, args=(horse,))
                timer.daemon = True
                timer.start()
            else:
                _stop_horse(horse)
        super().request_stop(signum, frame)

    def subscribe(self):
        """RQ's command channel, read in a thread that wakes every second (RQ's wakes every minute): stopping the
        worker waits for that thread, so with RQ's a warm shutdown could hang up to 60 s after its job ended."""
        self.log.info("Worker %s: subscribing to channel %s", self.name, self.pubsub_channel_name)
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub_thread = self.pubsub.run_in_thread(sleep_time=PUBSUB_WAKE, daemon=True,
                                                       exception_handler=self._pubsub_exception_handler)

    def request_force_stop(self, signum, frame):
        """A second SIGTERM is the same stop heard twice (from its process group and from the pool that forked
        it), not RQ's cold shutdown, which would kill the running agent instead of putting its task back in line.
        A second Ctrl-C still forces; serve's grace period ends in SIGKILL regardless."""
        if signum == signal.SIGTERM:
            return
        super().request_force_stop(signum, frame)


def _stop_horse(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass   # it ended meanwhile


def current_job(conn: Redis, task_id: str) -> str:
    """The RQ job id of the task's latest attempt ("" before its first)."""
    job_id = conn.get(f"fb:job:{task_id}")
    return job_id.decode() if job_id else ""


def slots_in_use(conn: Redis) -> int:
    return RateLimitRegistry(AGENT_SLOTS, connection=conn).get_allowed_job_count()


def queue_depths(conn: Redis) -> dict[str, int]:
    return {name: Queue(name, connection=conn).count for name in (EVENTS_QUEUE, AGENTS_QUEUE)}


EVENT_QUEUES = (EVENTS_QUEUE,)                 # an event worker: decisions, commands, reports; never an agent
AGENT_QUEUES = (AGENTS_QUEUE,)                 # an agent worker: one agent run at a time
ALL_QUEUES = (EVENTS_QUEUE, AGENTS_QUEUE)      # both, intake first (`worker --burst`)


def work(conn: Redis, *, queues: tuple[str, ...] = ALL_QUEUES, name: str | None = None, burst: bool = False,
         housekeeping: Callable[[], None] | None = None, drains: Callable[[], bool] | None = None,
         pull_waiting: Callable[[], bool] | None = None, stop_grace: float = 0.0) -> bool:
    """One worker on `queues`, in that order. When Redis is unreachable (at start or later), wait with backoff and
    carry on by itself when it returns: RQ's worker retries its dequeues, but quits on a Redis error elsewhere,
    so a new one is started unless asked to stop. True when it stopped because its host drains."""
    wait = 1.0
    while True:
        try:
            worker = BridgeWorker([Queue(queue, connection=conn) for queue in queues], connection=conn, name=name,
                                  job_monitoring_interval=JOB_MONITORING_INTERVAL,
                                  maintenance_interval=MAINTENANCE_INTERVAL, worker_ttl=WORKER_TTL)
            worker.housekeeping, worker.drains, worker.pull_waiting = housekeeping, drains, pull_waiting
            worker.stop_grace = stop_grace
            if housekeeping is not None:
                housekeeping()  # a worker that starts first cleans up what a dead one left
            worker.work(burst=burst, with_scheduler=True)
            if burst or worker.asked_to_stop or worker.drained:
                return worker.drained
            log.warning("worker: RQ's worker quit (Redis?); starting a new one in %.0fs", wait)
        except RedisError as error:
            log.warning("worker: Redis unreachable (%s); retrying in %.0fs", error, wait)
        time.sleep(wait)
        wait = min(wait * 2, MAX_RECONNECT_WAIT)


@dataclass(frozen=True)
class WorkerLayout:
    """The live workers of every host, by what they read (RQ registers each worker with its queues)."""
    agent_workers: int      # workers that take agent runs
    event_only: int         # workers that read events and never run an agent: events never wait behind agents
    hosts: int


def worker_layout(conn: Redis) -> WorkerLayout:
    workers = Worker.all(connection=conn)
    reads = [set(worker.queue_names()) for worker in workers]
    return WorkerLayout(agent_workers=sum(AGENTS_QUEUE in queues for queues in reads),
                        event_only=sum(queues == {EVENTS_QUEUE} for queues in reads),
                        hosts=len({worker.hostname for worker in workers}))


def layout_warnings(layout: WorkerLayout, slots: int) -> list[str]:
    """What a layout of workers cannot do: fill every agent slot, or read events while every agent runs."""
    if not layout.agent_workers and not layout.event_only:
        return ["no worker is running: nothing reads events or runs agents (start `forge-bridge worker`)"]
    found = []
    if layout.agent_workers < slots:
        found.append(f"{layout.agent_workers} worker(s) take agent runs for {slots} agent slots: "
                     f"{slots - layout.agent_workers} slot(s) can never fill (raise `workers`, or run "
                     f"`forge-bridge worker` on more hosts)")
    if not layout.event_only:
        found.append("no worker reads events alone: while every worker runs an agent, commands, stops and replies "
                     "wait for one to finish (`forge-bridge worker` starts `event_workers` of them)")
    return found
