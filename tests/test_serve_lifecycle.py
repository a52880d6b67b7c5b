"""`serve` as a user runs it: repeated start and stop on one data_dir print no traceback and leave no process
behind, and the command line reaches a running serve's embedded server from another terminal."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from conftest import SECRET_ENV, TOKEN_ENV, Bridge
from helpers import FIXTURES, SECRET, alive, wait_for

from forge_bridge.store import embedded
from forge_bridge.service.supervisor import descendants

TITLE = "Fix the emoji names"


def _cli(bridge: Bridge, *args: str) -> subprocess.CompletedProcess:
    """A second terminal: the same configuration, none of serve's environment."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FORGE_BRIDGE_")}
    environ.update({TOKEN_ENV: "fake-forge-token", SECRET_ENV: SECRET})
    return subprocess.run([sys.executable, "-m", "forge_bridge", "--config", str(bridge.config), *args],
                          cwd=bridge.root, capture_output=True, text=True, env=environ, timeout=60)


def _quiet(log: str) -> list[str]:
    return [line for line in log.splitlines() if "Traceback" in line or " ERROR " in line or "Error:" in line]


def test_repeated_stops_print_no_traceback_and_leave_no_process(github, tmp_path):
    record = tmp_path / "runs.jsonl"
    repo = github.create_repo("alice", "widgets")
    issue = github.create_issue(repo, TITLE, "body")
    bridge = Bridge(tmp_path / "bridge", [github], agent_args=["--sleep", "30", "--record", str(record)])
    for cycle in range(5):
        bridge.start()
        if cycle == 1:   # a stop while an agent runs: work horse, agent and scheduler all end first
            github.add_label(repo, issue, "kugetsu:todo")
            wait_for(lambda: record.exists() and '"start"' in record.read_text(), timeout=60, what="the agent")
        if cycle == 3:   # a stop while the workers are still busy starting (they import the forge clients)
            wait_for(lambda: len(descendants(bridge.process.pid)) >= 4, timeout=30, what="serve's children")
        tree = descendants(bridge.process.pid)
        assert bridge.stop() == 0
        assert [pid for pid in tree if alive(pid)] == []
        assert not embedded.answers(bridge.data_dir)
    assert _quiet(bridge.log.read_text()) == []


def test_a_stop_while_the_embedded_server_starts_is_clean(tmp_path, github):
    bridge = Bridge(tmp_path / "bridge", [github])
    environ = {**os.environ, TOKEN_ENV: "t", SECRET_ENV: SECRET}
    for _ in range(3):
        with open(bridge.log, "ab") as log:
            serve = subprocess.Popen([sys.executable, "-m", "forge_bridge", "--config", str(bridge.config), "serve"],
                                     cwd=bridge.root, env=environ, stdout=log, stderr=subprocess.STDOUT)
        # The server's directory appears when it starts: stop right then, before it answers.
        wait_for(lambda: (bridge.data_dir / "valkey").exists(), interval=0.005, timeout=30, what="the server dir")
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=40) in (0, -signal.SIGTERM)
        assert not embedded.answers(bridge.data_dir)
    assert _quiet(bridge.log.read_text()) == []


def test_the_command_line_reaches_a_running_serve(github, tmp_path):
    record = tmp_path / "runs.jsonl"
    repo = github.create_repo("alice", "widgets")
    github.create_issue(repo, TITLE, "body")
    bridge = Bridge(tmp_path / "bridge", [github], agent_args=["--sleep", "30", "--record", str(record)])
    ref = f"127.0.0.1:{github.port}/alice/widgets#1"
    bridge.start()
    try:
        queued = _cli(bridge, "enqueue", ref, "please fix it")
        assert queued.returncode == 0 and ref in queued.stdout, queued.stderr
        wait_for(lambda: record.exists() and '"start"' in record.read_text(), timeout=60, what="the agent")

        status = _cli(bridge, "status", "--json")
        assert status.returncode == 0, status.stderr
        [running] = json.loads(status.stdout)["running"]
        assert running["issue"] == ref
        assert "working on:" in _cli(bridge, "logs", ref).stdout

        stopped = _cli(bridge, "stop", ref)
        assert stopped.returncode == 0, stopped.stderr
        wait_for(lambda: json.loads(_cli(bridge, "status", "--json").stdout)["running"] == [], timeout=30,
                 what="the stopped task to end")
        destroyed = _cli(bridge, "destroy", ref, "--force")
        assert destroyed.returncode == 0 and "Destroyed" in destroyed.stdout, destroyed.stdout + destroyed.stderr

        payload = tmp_path / "comment.json"
        payload.write_text(json.dumps(_comment_payload(github, "/kugetsu status")))
        replayed = _cli(bridge, "replay", str(payload), "--forge", "github", "--event", "issue_comment")
        assert replayed.returncode == 0 and replayed.stdout.startswith("queued"), replayed.stdout + replayed.stderr
    finally:
        assert bridge.stop() == 0
    after = _cli(bridge, "status")
    assert after.returncode == 2 and after.stderr.count("\n") == 1 and "Traceback" not in after.stderr
    assert "no `forge-bridge serve` is running" in after.stderr and str(bridge.data_dir) in after.stderr


def _comment_payload(github, body: str) -> dict:
    """GitHub's recorded issue_comment delivery, moved to the fake forge's repository."""
    payload = json.loads((FIXTURES / "github" / "issue_comment.created.json").read_text())
    payload["repository"].update(name="widgets", full_name="alice/widgets", html_url=f"{github.url}/alice/widgets")
    payload["repository"]["owner"]["login"] = "alice"
    payload["comment"]["body"] = body
    return payload


def test_ctrl_c_in_a_terminal_stops_everything_in_order(github, tmp_path):
    """A terminal's Ctrl-C is SIGINT to the whole foreground process group, not to serve alone: the embedded server
    must still stop last, after every worker that uses it."""
    from helpers import healthy

    bridge = Bridge(tmp_path / "bridge", [github])
    environ = {**os.environ, TOKEN_ENV: "t", SECRET_ENV: SECRET}
    for _ in range(2):
        with open(bridge.log, "ab") as log:   # a process group of its own, as a shell gives a foreground job
            serve = subprocess.Popen([sys.executable, "-m", "forge_bridge", "--config", str(bridge.config), "serve"],
                                     cwd=bridge.root, env=environ, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        wait_for(lambda: healthy(bridge.url), timeout=60, what="serve")
        wait_for(lambda: b"Listening on forge-bridge-events" in bridge.log.read_bytes(), timeout=30, what="workers")
        tree = descendants(serve.pid)
        os.killpg(serve.pid, signal.SIGINT)
        assert serve.wait(timeout=40) == 0
        assert [pid for pid in tree if alive(pid)] == [] and not embedded.answers(bridge.data_dir)
    assert _quiet(bridge.log.read_text()) == []


def test_a_stop_during_housekeeping_ends_the_worker_instead_of_being_logged_and_ignored(conn):
    import pytest
    from rq.exceptions import StopRequested

    from forge_bridge.store import queue

    def housekeeping():
        raise StopRequested()   # what RQ's SIGTERM handler raises wherever the worker is

    worker = queue.BridgeWorker([queue.EVENTS_QUEUE], connection=conn)
    worker.housekeeping = housekeeping
    with pytest.raises(StopRequested):
        worker.run_maintenance_tasks()
