"""The only module that imports RQ: the two queues, enqueueing by dotted path, and the worker."""
from __future__ import annotations

from redis import Redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from rq import Queue, Worker
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.rate_limit import RateLimit

EVENTS_QUEUE = "forge-bridge-events"   # intake: authorize, label, comment; short forge API jobs
AGENTS_QUEUE = "forge-bridge-agents"   # agent runs, limited by the global agent slots
AGENT_SLOTS = "forge-bridge-agent-slots"
EVENT_JOB_TIMEOUT = 300
JOB_TIMEOUT_MARGIN = 300               # the runner kills the agent itself; RQ's timeout is a backstop


def connect(url: str, *, socket_timeout: float | None = None) -> Redis:
    """Bounded retries: a webhook must get its 503 well inside the forge's 5 s delivery timeout. Workers keep
    no socket timeout, since RQ blocks on the queues for minutes at a time."""
    return Redis.from_url(url, health_check_interval=30, socket_connect_timeout=2, socket_timeout=socket_timeout,
                          retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2))


def enqueue_event(conn: Redis, event_json: str) -> str:
    job = Queue(EVENTS_QUEUE, connection=conn).enqueue(
        "jobs.tasks.handle_event", event_json, job_timeout=EVENT_JOB_TIMEOUT, failure_ttl=7 * 24 * 3600)
    return job.id


def enqueue_agent_run(conn: Redis, task_id: str, *, max_agents: int, task_timeout: float) -> str:
    """RQ 3's RateLimit holds `max_agents` jobs at once across every worker on every host: the slot is
    taken atomically (a Lua script) when the job is let onto the queue, so no count-then-start race."""
    job = Queue(AGENTS_QUEUE, connection=conn).enqueue(
        "jobs.tasks.run_task", task_id, job_id=f"task-{task_id}",
        job_timeout=int(task_timeout) + JOB_TIMEOUT_MARGIN,
        rate_limit=RateLimit(AGENT_SLOTS, concurrency=max_agents), failure_ttl=7 * 24 * 3600)
    return job.id


def cancel_agent_run(conn: Redis, task_id: str) -> None:
    """Take a queued agent run off the queue (and out of the rate limiter's waiting set)."""
    try:
        Job.fetch(f"task-{task_id}", connection=conn).cancel()
    except NoSuchJobError:
        pass


def queue_depths(conn: Redis) -> dict[str, int]:
    return {name: Queue(name, connection=conn).count for name in (EVENTS_QUEUE, AGENTS_QUEUE)}


def work(conn: Redis, *, name: str | None = None, burst: bool = False) -> None:
    """Run one worker on both queues, intake first so acknowledgements are never stuck behind agents."""
    queues = [Queue(EVENTS_QUEUE, connection=conn), Queue(AGENTS_QUEUE, connection=conn)]
    Worker(queues, connection=conn, name=name).work(burst=burst, with_scheduler=False)
