"""RQ entry points: thin — parse the arguments, build the collaborators, call the core."""
from __future__ import annotations

import logging
import os
import signal
from dataclasses import replace
from functools import cache

from rq import get_current_job
from rq.job import Job

from forge_bridge.config import Settings, load_settings
from forge_bridge.forges import make_client
from forge_bridge.intake.handler import Intake
from forge_bridge.logs import task_context
from forge_bridge.models import CheckFailed, EventKind, ForgeEvent
from forge_bridge.store.queue import Scheduler, current_job
from forge_bridge.work.runner import SHUTDOWN, WORKER_GONE, Runner, fail_abandoned
from forge_bridge.store.sessions import Store

log = logging.getLogger(__name__)
_configured: list[Settings] = []


def configure(config: Settings) -> None:
    """The worker hands over the settings it loaded (from --config or the environment) before it forks."""
    _configured[:] = [config]


@cache
def settings() -> Settings:
    """Loaded once per worker process, before the fork into each job's work horse."""
    return _configured[0] if _configured else load_settings()


def scheduler(conn) -> Scheduler:
    config = settings()
    return Scheduler(conn, config.max_concurrent_agents, config.task_timeout)


def handle_event(event_json: str) -> str:
    event = ForgeEvent.from_json(event_json)
    config = settings()
    conn = get_current_job().connection
    store = Store(conn)
    if event.kind is EventKind.LABELS_CHANGED and not event.label:   # a label set: which start label was added
        event = replace(event, label=store.added_label(get_current_job().id))
    client = make_client(config.forge(event.forge), conn=conn)
    with task_context(get_current_job().id, str(event.issue)):
        return Intake(config, store, client, scheduler(conn)).handle(event)


def handle_failed_check(change_json: str) -> str:
    change = CheckFailed.from_json(change_json)
    config = settings()
    conn = get_current_job().connection
    client = make_client(config.forge(change.forge), conn=conn)
    with task_context(get_current_job().id, f"{change.repo}@{change.sha[:7]}"):
        return Intake(config, Store(conn), client, scheduler(conn)).check_failed(change)


class _StopWatch:
    """Inside the work horse: SIGTERM (the worker is stopping) or a dead worker (this process was orphaned)
    stop the agent; the runner then requeues or fails the task instead of leaving it half-run."""

    def __init__(self) -> None:
        self.reason = ""
        self.parent = os.getppid()
        signal.signal(signal.SIGTERM, self._on_term)

    def _on_term(self, signum, frame) -> None:
        self.reason = SHUTDOWN

    def __call__(self) -> str:
        if not self.reason and os.getppid() != self.parent:
            self.reason = WORKER_GONE
        return self.reason


def run_task(task_id: str) -> str:
    config = settings()
    conn = get_current_job().connection
    store = Store(conn)
    task = store.task(task_id)
    if task is None:
        return f"no task {task_id}"
    client = make_client(config.forge(task.forge), conn=conn)
    runner = Runner(config, store, client, scheduler(conn), _StopWatch())
    with task_context(task_id, task.issue):
        done = runner.run(task_id)
    return f"{done.state.value}: {done.outcome}" if done else f"no task {task_id}"


def agent_run_failed(job: Job, connection, exc_type=None, value=None, traceback=None) -> None:
    """RQ's failure (and stop) callback: also called when a dead worker's job is found abandoned."""
    task_id = job.args[0]
    if current_job(connection, task_id) != job.id:
        # An attempt the task has left behind: a worker stopping requeued it, then died before it could
        # close this job, and RQ finds the job abandoned only later, maybe while the new attempt runs.
        log.info("task %s: its superseded job %s ended (%s); the task goes on", task_id, job.id,
                 exc_type.__name__ if exc_type else "stopped")
        return
    store = Store(connection)
    task = store.task(task_id)
    if task is None or task.state.finished:
        return
    reason = "the worker running it died" if exc_type is None or exc_type.__name__ == "AbandonedJobError" \
        else f"the job failed: {exc_type.__name__}: {value}"
    config = settings()
    fail_abandoned(config, store, make_client(config.forge(task.forge), conn=connection), scheduler(connection),
                   task_id, reason)
