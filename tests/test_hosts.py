"""Hosts on one Redis: each worker host's heartbeat and running tasks are shown (page, `status`, /api/hosts), and
`forge-bridge drain` makes a host take no new tasks while its running ones finish; `undrain` gives it work again.
Through `serve` with the fake agent held at a gate the test opens."""
from __future__ import annotations

import subprocess
import sys

import pytest
import requests
from helpers import wait_for

from forge_bridge.config import ConfigError, settings_from_dict
from forge_bridge.models import TaskState
from forge_bridge.store import hosts, queue
from forge_bridge.store.sessions import Store
from test_end_to_end import _settled


def _cli(bridge, *words: str, **kwargs) -> subprocess.CompletedProcess | subprocess.Popen:
    argv = [sys.executable, "-m", "forge_bridge", "--config", str(bridge.config), *words]
    if kwargs.pop("background", False):
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def _state(bridge, github, number: int) -> TaskState | None:
    store = Store(bridge.redis)
    session = store.session(f"127.0.0.1:{github.port}/alice/widgets#{number}")
    tasks = store.tasks(session.task_ids) if session else []
    return tasks[-1].state if tasks else None


def test_a_drained_host_finishes_its_running_task_and_takes_no_other_until_undrained(github, start_bridge, tmp_path):
    gate = tmp_path / "go-ahead"
    repo = github.create_repo("alice", "widgets")
    first, second = github.create_issue(repo, "Slow one", "b"), github.create_issue(repo, "Next one", "b")
    bridge = start_bridge([github], agent_args=["--gate", "Slow one", str(gate)], settings={"host_id": '"host-a"'})
    github.add_label(repo, first, "kugetsu:todo")
    wait_for(lambda: _state(bridge, github, 1) is TaskState.RUNNING, timeout=60, what="the first agent")
    [host] = wait_for(lambda: [h for h in hosts.hosts(bridge.redis) if h.running], timeout=15,
                      what="the heartbeat and the agent's start")
    assert (host.id, host.running, host.draining, host.alive) == ("host-a", 1, False, True)

    draining = _cli(bridge, "drain", "--wait", background=True)
    wait_for(lambda: hosts.draining(bridge.redis, "host-a"), timeout=15, what="the drain")
    github.add_label(repo, second, "kugetsu:todo")   # arrives while the host drains
    wait_for(lambda: _state(bridge, github, 2) is TaskState.QUEUED, timeout=15, what="the second task queued")
    gate.touch()   # the running task finishes
    out, _ = draining.communicate(timeout=60)
    assert draining.returncode == 0 and "host-a: draining" in out and "host-a: drained, no task running" in out
    wait_for(lambda: _settled(github, repo, first, "kugetsu:review"), timeout=60, what="the first task's end")
    wait_for(lambda: queue.worker_layout(bridge.redis).agent_workers == 0, timeout=30,
             what="the agent workers to have stopped")
    assert _state(bridge, github, 2) is TaskState.QUEUED   # no worker here takes it: the host drains
    page = requests.get(f"{bridge.url}/api/hosts", timeout=10).json()["hosts"]
    assert [(h["id"], h["draining"], h["running"]) for h in page] == [("host-a", True, 0)]
    assert "host-a" in _cli(bridge, "status").stdout and "[draining]" in _cli(bridge, "status").stdout

    undrained = _cli(bridge, "undrain")
    assert undrained.returncode == 0 and "host-a: takes tasks again" in undrained.stdout
    wait_for(lambda: _settled(github, repo, second, "kugetsu:review"), timeout=60, what="the second task's run")
    assert not hosts.draining(bridge.redis, "host-a")


def test_hosts_are_listed_with_the_age_of_their_heartbeat(conn):
    hosts.beat(conn, "a", agent_workers=3)
    hosts.set_draining(conn, "b", True)
    now = float(conn.hget(hosts.HOSTS, "a").decode().split('"beat": ')[1].split(",")[0])
    found = {h.id: h for h in hosts.hosts(conn, now=now + 61)}
    assert found["a"].agent_workers == 3 and not found["a"].alive and found["a"].heartbeat_age == 61
    assert found["b"].draining and not found["b"].alive   # asked to drain, never beat


@pytest.mark.parametrize("value", ["two words", "-dash", "x" * 65, "a/b"])
def test_a_bad_host_id_is_one_clear_error(value):
    with pytest.raises(ConfigError, match="host_id: letters, digits"):
        settings_from_dict({"host_id": value}, source="t.toml", environ={})
