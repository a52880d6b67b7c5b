"""What the operator sees, in one place: agent slots, the queue, running and recent tasks with their log tails,
sessions, the poller, each forge's API quota and what its GitHub App reaches — for the status page and `forge-bridge status`."""
from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from redis import Redis

from forge_bridge import agents, app_reach, metrics, queue, redact, sandbox, worktrees
from forge_bridge.config import Settings
from forge_bridge.models import Task, TaskState
from forge_bridge.poller import STATE_KEY
from forge_bridge.refs import parse_issue_ref
from forge_bridge.sessions import Store

RECENT = 100
SHOWN_RECENT = 20


def task_view(task: Task) -> dict[str, Any]:
    view = asdict(task)
    view["duration"] = round(task.duration, 3)
    return view


def log_tail(settings: Settings, task: Task, lines: int = agents.TAIL_LINES) -> str:
    return redact.log_tail(settings, worktrees.log_path(settings.data_dir, parse_issue_ref(task.issue), task.id), lines)


def overview(conn: Redis, settings: Settings) -> dict[str, Any]:
    store, now = Store(conn), time.time()
    tasks = store.tasks(store.recent_task_ids(RECENT))
    running = [{**task_view(t), "elapsed": round(now - t.started_at), "log_tail": log_tail(settings, t)}
               for t in tasks if t.state is TaskState.RUNNING]
    queued = sorted((task_view(t) for t in tasks if t.state is TaskState.QUEUED), key=lambda t: t["queued_at"])
    sessions = [store.session(issue) for issue in sorted(store.session_ids())]
    poller = {k.decode(): float(v) if k != b"last_error" else v.decode() for k, v in conn.hgetall(STATE_KEY).items()}
    quota = {field.decode(): int(float(value)) for field, value in conn.hgetall(metrics.QUOTA).items()}
    return {"slots": {"in_use": queue.slots_in_use(conn), "limit": settings.max_concurrent_agents},
            "queues": queue.queue_depths(conn), "running": running, "queued": queued,
            "recent": [task_view(t) for t in tasks if t.state.finished][:SHOWN_RECENT],
            "sessions": [asdict(s) for s in sessions if s is not None], "poller": poller, "quota": quota,
            "warnings": sandbox.warnings(conn), "apps": app_reach.reach(conn, settings)}
