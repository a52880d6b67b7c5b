"""Several hosts on one real Redis server (Debian's `redis-server`, with a password), the roles as separate
processes: two worker hosts with data_dirs of their own, web processes and a poller. An issue's tasks stay on the
host holding its agent session; when that host dies or drains they go to the other, which starts a new session
from the issue's history; the slot limit holds across both; exactly-once holds across web processes."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import SECRET_ENV, TOKEN_ENV, free_port
from helpers import FAKE_AGENT, SECRET, healthy, wait_for
from redis import Redis
from test_end_to_end import _settled
from test_scheduling import max_overlap, runs

from forge_bridge.models import IssueRef, RepoRef, TaskState
from forge_bridge.store import queue
from forge_bridge.store.sessions import Store

PASSWORD = "several-hosts-pw"


@pytest.fixture
def redis_server(tmp_path):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (.ci/run installs Debian's redis-server)")
    port = free_port()
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--requirepass", PASSWORD,
                               "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://:{PASSWORD}@127.0.0.1:{port}/0"
    wait_for(lambda: _answers(url), timeout=15, what="redis-server")
    yield url
    server.terminate()
    server.wait(timeout=15)


def _answers(url: str) -> bool:
    try:
        return Redis.from_url(url).ping()
    except Exception:
        return False


@dataclass
class Cluster:
    """The roles of a several-host deployment, each a process of its own, sharing one Redis."""

    root: Path
    forge: object
    redis_url: str
    agent_args: list[str] = field(default_factory=list)
    limit: int = 2
    workers: int = 1
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def config(self, name: str) -> Path:
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        record = self.root / "agent-runs.jsonl"
        argv = [sys.executable, str(FAKE_AGENT), "--record", str(record), "--sessions", str(folder / "cli-sessions"),
                *self.agent_args]
        path = folder / "forge-bridge.toml"
        path.write_text(
            f'data_dir = "{folder / "data"}"\nhost_id = "{name}"\nmax_concurrent_agents = {self.limit}\n'
            f'workers = {self.workers}\npoll_interval = "1s"\ntask_timeout = "120s"\n'
            f'[agent]\npreset = "command"\nargv = {json.dumps(argv)}\nsession_id = "json:session_id"\n'
            'summary = "json:summary"\nsandbox = "none"\n'
            f'[[forges]]\nname = "github"\nkind = "github"\nurl = "{self.forge.url}"\ntoken_env = "{TOKEN_ENV}"\n'
            f'webhook_secret_env = "{SECRET_ENV}"\nbot_login = "{self.forge.bot_login}"\nwrite_interval = 0\n'
            '[[repos]]\nforge = "github"\nname = "alice/*"\n')
        return path

    def start(self, name: str, *role: str) -> subprocess.Popen:
        env = {**os.environ, TOKEN_ENV: self.forge.token, SECRET_ENV: SECRET, "FORGE_BRIDGE_REDIS_URL": self.redis_url}
        config = self.config(name)
        with open(self.root / f"{name}.log", "ab") as log:
            process = subprocess.Popen([sys.executable, "-m", "forge_bridge", "--config", str(config),
                                        *role], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.processes[name] = process
        return process

    def web(self, name: str) -> str:
        port = free_port()
        self.start(name, "web", "--bind", f"127.0.0.1:{port}")
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: healthy(url), timeout=60, what=f"{name}")
        return url

    def kill(self, name: str) -> None:
        os.killpg(self.processes[name].pid, signal.SIGKILL)
        self.processes[name].wait()

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    @property
    def redis(self) -> Redis:
        return Redis.from_url(self.redis_url)


@pytest.fixture
def cluster(github, redis_server, tmp_path):
    made: list[Cluster] = []

    def make(**kwargs) -> Cluster:
        one = Cluster(tmp_path / "cluster", github, redis_server, **kwargs)
        made.append(one)
        return one

    yield make
    for one in made:
        one.stop()


def _tasks(cluster: Cluster, forge, number: int):
    store = Store(cluster.redis)
    session = store.session(f"127.0.0.1:{forge.port}/alice/widgets#{number}")
    return store.tasks(session.task_ids) if session else []


def _done(cluster: Cluster, forge, number: int, count: int) -> bool:
    tasks = _tasks(cluster, forge, number)
    return len(tasks) == count and all(t.state.finished for t in tasks)


def _hosts_up(cluster: Cluster, *names: str) -> None:
    wait_for(lambda: all(queue.takes_tasks(cluster.redis, name) for name in names) and
             queue.worker_layout(cluster.redis).agent_workers >= len(names), timeout=60, what="the worker hosts")


def test_a_session_stays_on_its_host_and_moves_when_the_host_dies(github, cluster):
    hosts = cluster()
    web = hosts.web("web")
    github.add_hook(f"{web}/webhooks/github", SECRET)
    hosts.start("poller", "poll")
    hosts.start("host-a", "worker")
    hosts.start("host-b", "worker")
    _hosts_up(hosts, "host-a", "host-b")
    repo = github.create_repo("alice", "widgets")
    issue = github.create_issue(repo, "Keep the session", "b")

    github.add_label(repo, issue, "kugetsu:todo")
    wait_for(lambda: _done(hosts, github, 1, 1), timeout=90, what="the first task")
    [first] = _tasks(hosts, github, 1)
    home = first.host
    session = Store(hosts.redis).session(str(IssueRef(RepoRef(github.host, "alice", "widgets"), 1)))
    for n in range(4):   # four continues: each resumes the CLI's session on the host that keeps it
        github.comment(repo, issue, f"@{github.bot_login} continue number {n}")
        wait_for(lambda n=n: _done(hosts, github, 1, n + 2), timeout=90, what=f"continue {n}")
    tasks = _tasks(hosts, github, 1)
    assert [t.host for t in tasks] == [home] * 5 and all(t.state is TaskState.SUCCEEDED for t in tasks)
    assert not any(t.session_note for t in tasks)   # resumed every time, never a new session
    assert Store(hosts.redis).session(session.issue).agent_session_id == session.agent_session_id

    hosts.kill(home)   # the host dies with its sessions: the next task runs on the other, from the history
    other = "host-b" if home == "host-a" else "host-a"
    github.comment(repo, issue, f"@{github.bot_login} after the host died")
    wait_for(lambda: _done(hosts, github, 1, 6), timeout=90, interval=0.5, what="the task on the other host")
    last = _tasks(hosts, github, 1)[-1]
    assert last.host == other and last.state is TaskState.SUCCEEDED
    assert last.session_note.startswith("new session")   # the other host has no session: the history is retold


def test_a_drained_host_finishes_its_agent_and_the_issue_moves_on(github, cluster, tmp_path):
    gate = tmp_path / "go-ahead"
    hosts = cluster(agent_args=["--gate", "slow work", str(gate)])
    hosts.start("host-a", "worker")
    _hosts_up(hosts, "host-a")
    web = hosts.web("web")
    github.add_hook(f"{web}/webhooks/github", SECRET)
    repo = github.create_repo("alice", "widgets")
    issue = github.create_issue(repo, "Some slow work", "b")
    github.add_label(repo, issue, "kugetsu:todo")
    wait_for(lambda: any(t.state is TaskState.RUNNING and t.agent_pid for t in _tasks(hosts, github, 1)),
             timeout=60, what="the slow agent on host-a")
    hosts.start("host-b", "worker")
    _hosts_up(hosts, "host-a", "host-b")

    drained = subprocess.run([sys.executable, "-m", "forge_bridge", "--config", str(hosts.config("host-a")), "drain"],
                             capture_output=True, text=True, timeout=60, env={**os.environ,
                                                                             "FORGE_BRIDGE_REDIS_URL": hosts.redis_url})
    assert drained.returncode == 0, drained.stderr
    github.comment(repo, issue, f"@{github.bot_login} then the next step")   # waits behind the running task
    gate.touch()
    wait_for(lambda: _done(hosts, github, 1, 2), timeout=90, what="both tasks")
    first, second = _tasks(hosts, github, 1)
    assert (first.host, first.state) == ("host-a", TaskState.SUCCEEDED)   # finished on the draining host
    assert (second.host, second.state) == ("host-b", TaskState.SUCCEEDED)   # the next went elsewhere


def test_200_tasks_across_two_hosts_never_exceed_the_slot_limit(github, cluster):
    hosts = cluster(agent_args=["--sleep", "0.2"], limit=3, workers=2)   # four agent workers for three slots
    repo = github.create_repo("alice", "widgets")
    issues = [IssueRef(RepoRef(github.host, "alice", "widgets"), github.create_issue(repo, f"Issue {i}", "b").number)
              for i in range(50)]
    hosts.start("host-a", "worker")
    hosts.start("host-b", "worker")
    _hosts_up(hosts, "host-a", "host-b")
    from test_scheduling import Host, submit

    submitter = Host(hosts.root / "submitter", github, hosts.redis_url, [], limit=3)
    order: dict[str, list[str]] = defaultdict(list)
    for round_ in range(4):
        for ref in issues:
            order[str(ref)].append(submit(submitter, ref, f"round {round_}"))
    ids = [t for line in order.values() for t in line]
    store = Store(hosts.redis)
    wait_for(lambda: all(t.state.finished for t in store.tasks(ids)), timeout=400, interval=0.5, what="200 tasks")
    seen = runs(hosts.root / "agent-runs.jsonl")
    assert sorted(seen) == sorted(ids) and all(t.state is TaskState.SUCCEEDED for t in store.tasks(ids))
    assert max_overlap([(r["start"], r["end"]) for r in seen.values()]) <= 3
    for line in order.values():
        assert sorted(line, key=lambda t: seen[t]["start"]) == line
    assert {t.host for t in store.tasks(ids)} == {"host-a", "host-b"}


def test_two_web_processes_given_the_same_delivery_make_one_task(github, cluster):
    hosts = cluster()
    first, second = hosts.web("web-1"), hosts.web("web-2")
    repo = github.create_repo("alice", "widgets")
    issue = github.create_issue(repo, "Once", "b")
    github.state.set_label(repo, issue, "kugetsu:todo", actor="alice", added=True)
    event, event_type, payload = github.face.label_payload(github, repo, issue, "kugetsu:todo", "alice")
    body = json.dumps(payload).encode()
    import requests

    answers = [requests.post(f"{url}/webhooks/github", data=body, timeout=10,
                             headers=github.headers_for(event, event_type, body, SECRET, "same-delivery"))
               for url in (first, second, first)]
    assert sorted(a.status_code for a in answers) == [200, 200, 202], [a.text for a in answers]
    hosts.start("host-a", "worker")
    wait_for(lambda: _settled(github, repo, issue, "kugetsu:review"), timeout=90, what="the one task")
    assert len(_tasks(hosts, github, 1)) == 1
