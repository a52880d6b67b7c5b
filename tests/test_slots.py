"""`serve` with its default layout of workers: every agent slot fills, and events are read while every slot is
busy — a stop reaches its agent, and a new issue hears its place in line, within 2 s."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from helpers import alive, wait_for

from forge_bridge.store import queue
from forge_bridge.work.report import STATUS_MARKER

EVENTS_WITHIN = 2.0   # the contract: a stop reaches its running agent within 2 s, whatever the other agents do


def _started(record: Path) -> dict[str, int]:
    """issue ref -> the pid of its agent, for each agent that has started."""
    if not record.exists():
        return {}
    return {entry["issue"]: entry["pid"] for entry in map(json.loads, record.read_text().splitlines())
            if entry["what"] == "start"}


def _status(forge, repo, issue) -> str:
    return next((body for body in forge.comments_of(repo, issue) if STATUS_MARKER in body), "")


def test_every_slot_fills_and_events_are_read_while_all_are_busy(github, start_bridge, tmp_path):
    record = tmp_path / "agents.jsonl"
    repo = github.create_repo("alice", "widgets")
    issues = [github.create_issue(repo, f"Slow work {n}", "b") for n in range(4)]
    # workers = 0 is the default (one agent worker per slot); the suite's other bridges run one to save memory.
    bridge = start_bridge([github], agent_args=["--mode", "hang", "--record", str(record)],
                          settings={"workers": "0", "max_concurrent_agents": "3"})

    for issue in issues[:3]:
        github.add_label(repo, issue, "kugetsu:todo")
    wait_for(lambda: len(_started(record)) == 3, timeout=60, what="three agents running at once")
    agents = _started(record)
    assert queue.slots_in_use(bridge.redis) == 3

    began = time.monotonic()
    github.add_label(repo, issues[3], "kugetsu:todo")
    wait_for(lambda: "1st in line" in _status(github, repo, issues[3]), timeout=EVENTS_WITHIN, interval=0.02,
             what="the fourth issue to hear its place in line")
    assert time.monotonic() - began < EVENTS_WITHIN

    stopped = f"127.0.0.1:{github.port}/alice/widgets#{issues[0].number}"
    began = time.monotonic()
    github.comment(repo, issues[0], "/kugetsu stop")
    wait_for(lambda: not alive(agents[stopped]), timeout=EVENTS_WITHIN, interval=0.02, what="the stopped agent to end")
    assert time.monotonic() - began < EVENTS_WITHIN
    assert all(alive(pid) for issue, pid in agents.items() if issue != stopped)   # the others run on
    # its slot goes to the fourth issue, which was waiting
    wait_for(lambda: len(_started(record)) == 4, timeout=30, what="the fourth agent to take the freed slot")
    assert bridge.stop() == 0


def _register(conn, *queues_of_each: tuple[str, ...]) -> None:
    """Workers as RQ registers them on start, on any host (no process needed to be counted)."""
    for queues in queues_of_each:
        queue.BridgeWorker(list(queues), connection=conn).register_birth()


@pytest.mark.parametrize("workers, expected", [
    ([], ["no worker is running"]),
    ([queue.ALL_QUEUES, queue.ALL_QUEUES], ["2 worker(s) take agent runs for 3 agent slots: 1 slot(s) can never fill",
                                            "no worker reads events alone"]),
    ([queue.EVENT_QUEUES, queue.AGENT_QUEUES, queue.AGENT_QUEUES], ["2 worker(s) take agent runs for 3"]),
    ([queue.ALL_QUEUES] * 3, ["no worker reads events alone"]),
    ([queue.EVENT_QUEUES, *[queue.AGENT_QUEUES] * 3], []),
])
def test_a_layout_that_cannot_fill_the_slots_or_starves_events_is_named(conn, workers, expected):
    _register(conn, *workers)
    found = queue.layout_warnings(queue.worker_layout(conn), slots=3)
    assert len(found) == len(expected) and all(line.startswith(start) for line, start in zip(found, expected))


def test_check_counts_the_workers_of_every_host(conn, redis_url):
    from forge_bridge.config import Settings
    from forge_bridge.service.checks import check_workers

    settings = Settings(redis_url=redis_url, max_concurrent_agents=2)
    _register(conn, queue.ALL_QUEUES)                                     # an old-style worker somewhere
    ok, line = check_workers(settings)
    assert ok is None and "1 worker(s) take agent runs for 2" in line and "no worker reads events alone" in line
    _register(conn, queue.EVENT_QUEUES, queue.AGENT_QUEUES)               # another host's pool
    ok, line = check_workers(settings)
    assert ok is True and "2 for agents" in line and "1 read events alone" in line


def test_check_without_redis_judges_this_hosts_settings(tmp_path):
    from forge_bridge.config import Settings
    from forge_bridge.service.checks import check_workers

    assert check_workers(Settings(data_dir=tmp_path, workers=1, max_concurrent_agents=3))[0] is None
    ok, line = check_workers(Settings(data_dir=tmp_path, max_concurrent_agents=3))   # the default: one per slot
    assert ok is True and "runs 3 agent(s) at once and 1 event worker(s)" in line


def test_the_status_page_and_status_show_a_starving_layout(github, start_bridge):
    bridge = start_bridge([github], settings={"workers": "1", "max_concurrent_agents": "2"})
    wait_for(lambda: queue.worker_layout(bridge.redis).agent_workers == 1, timeout=30, what="the workers")
    page = requests.get(f"{bridge.url}/", timeout=10).text
    assert '<p class="warning" role="alert"><strong>Warning:</strong> 1 worker(s) take agent runs for 2 agent slots' \
        in page
    status = subprocess.run([sys.executable, "-m", "forge_bridge", "--config", str(bridge.config), "status"],
                            capture_output=True, text=True, timeout=60, env={**os.environ, "FORGE_BRIDGE_UI_TOKEN": ""})
    assert "warning: 1 worker(s) take agent runs for 2 agent slots" in status.stdout
