"""RQ entry points: thin — parse the arguments, build the collaborators, call the core."""
from __future__ import annotations

from functools import cache

from rq import get_current_job

from forge_bridge.config import Settings, load_settings
from forge_bridge.forges import make_client
from forge_bridge.intake import Intake
from forge_bridge.models import ForgeEvent
from forge_bridge.runner import Runner
from forge_bridge.sessions import Store


@cache
def settings() -> Settings:
    """Loaded once per worker process (before the fork into each job's work horse)."""
    return load_settings()


def handle_event(event_json: str) -> str:
    event = ForgeEvent.from_json(event_json)
    config = settings()
    conn = get_current_job().connection
    client = make_client(config.forge(event.forge))
    return Intake(config, Store(conn), client, conn).handle(event)


def run_task(task_id: str) -> str:
    config = settings()
    store = Store(get_current_job().connection)
    task = store.task(task_id)
    if task is None:
        return f"no task {task_id}"
    runner = Runner(config, store, make_client(config.forge(task.forge)))
    done = runner.run(task_id)
    return f"{done.state.value}: {done.outcome}" if done else f"no task {task_id}"
