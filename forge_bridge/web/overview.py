"""What the operator sees, in one place: agent slots, the queue, running and recent tasks with their log tails,
sessions, the poller, each forge's API quota and what its GitHub App reaches — for the status page and `forge-bridge status`."""
from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from redis import Redis

from forge_bridge import redact
from forge_bridge.agents import presets, budget, sandbox
from forge_bridge.forges import app_reach
from forge_bridge.store import hosts, metrics, queue
from forge_bridge.workspace import worktrees
from forge_bridge.config import Settings
from forge_bridge.store.line import Line
from forge_bridge.models import Task, TaskState
from forge_bridge.intake.poller import STATE_KEY
from forge_bridge.refs import parse_issue_ref
from forge_bridge.store.sessions import Store

RECENT = 100
SHOWN_RECENT = 20


def task_view(task: Task) -> dict[str, Any]:
    view = asdict(task)
    view["duration"] = round(task.duration, 3)
    return view


def log_tail(settings: Settings, task: Task, lines: int = redact.TAIL_LINES) -> str:
    return redact.log_tail(settings, worktrees.log_path(settings.data_dir, parse_issue_ref(task.issue), task.id), lines)


def _the_line(conn: Redis, settings: Settings, store: Store, tasks: list[Task]) -> list[dict[str, Any]]:
    """Every queued task in the order it will start (those with an agent slot to wait for first, then those
    behind an earlier task of their own issue), each saying where it stands."""
    scheduler = queue.Scheduler(conn, settings.max_concurrent_agents, settings.task_timeout)
    order = scheduler.agent_line()
    known = {t.id: t for t in store.tasks([tid for tid in order if tid not in {t.id for t in tasks}])}
    everyone = {**known, **{t.id: t for t in tasks}}
    snapshot = Line(order, everyone, queue.slots_in_use(conn), settings.max_concurrent_agents,
                    scheduler.waits_on(list(everyone)))
    waiting = snapshot.waiting()
    queued = [t for t in {**known, **{t.id: t for t in tasks}}.values() if t.state is TaskState.QUEUED]
    queued.sort(key=lambda t: (waiting.index(t.id) if t.id in waiting else len(waiting), t.queued_at))
    return [{**task_view(t), "stands": snapshot.stands(t, scheduler.waiting(t.issue))} for t in queued]


def overview(conn: Redis, settings: Settings) -> dict[str, Any]:
    store, now = Store(conn), time.time()
    tasks = store.tasks(store.recent_task_ids(RECENT))
    running = [{**task_view(t), "elapsed": round(now - t.started_at), "log_tail": log_tail(settings, t)}
               for t in tasks if t.state is TaskState.RUNNING]
    queued = _the_line(conn, settings, store, tasks)
    sessions = [store.session(issue) for issue in sorted(store.session_ids())]
    poller = {k.decode(): float(v) if k != b"last_error" else v.decode() for k, v in conn.hgetall(STATE_KEY).items()}
    quota = {field.decode(): int(float(value)) for field, value in conn.hgetall(metrics.QUOTA).items()}
    return {"slots": {"in_use": queue.slots_in_use(conn), "limit": settings.max_concurrent_agents},
            "queues": queue.queue_depths(conn), "running": running, "queued": queued,
            "recent": [task_view(t) for t in tasks if t.state.finished][:SHOWN_RECENT],
            "sessions": [asdict(s) for s in sessions if s is not None], "poller": poller, "quota": quota,
            "warnings": [*sandbox.warnings(conn), *queue.layout_warnings(queue.worker_layout(conn),
                                                                         settings.max_concurrent_agents)],
            "apps": app_reach.reach(conn, settings), "egress_refused": metrics.recent_refusals(conn),
            "hosts": hosts.shown(conn),
            "spend_today": budget.Ledger(conn).repos_today()}
