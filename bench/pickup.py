"""P2 pickup: from a label delivery answered to the agent's process started, through `forge-bridge serve` with
its default settings (GitHub's write spacing included) against the tests' fake forge on 127.0.0.1.

Baselines, measured in the same run: starting the same agent program directly (the floor no bridge can beat), and
for the wrap-up case the idle bridge: a label that arrives just as another task's agent ended — while the bridge
pushes its branch, opens its pull request and reports — should start its agent as fast as on an idle bridge; and
for a repository with a setup script of a few seconds, once its spare worktree is set up ahead of need, pickup
should be as fast as for a repository without one.
Last, confined pickup with `agent.network = "allowlist"` (the proxy and the relay in the sandbox) against an open
network, both under bubblewrap.
Run: `.venv/bin/python bench/pickup.py [--issues N] [--kind github|gitea|gitlab] [--network]`."""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import logging  # noqa: E402

from fakeforge.server import FakeForge  # noqa: E402
from helpers import SECRET, healthy, wait_for  # noqa: E402

# The agent writes when it started, then ends without work (the bridge's own steps are what is measured).
# Given a prompt with WRAPUP, it commits a file first, so the bridge has a branch to push and a pull request to open.
AGENT = ("import json, os, subprocess, sys, time; started = time.time(); prompt = sys.stdin.read(); "
         "record = lambda what: open(os.environ['PICKUP_RECORD'], 'a').write(json.dumps({'issue': "
         "os.environ['FORGE_BRIDGE_ISSUE_REF'], 'what': what, 'at': time.time() if what == 'end' else started}) + "
         "'\\n'); record('start'); "
         "'WRAPUP' in prompt and (open('WORK.md', 'w').write(prompt), subprocess.run(['git', 'add', 'WORK.md']), "
         "subprocess.run(['git', '-c', 'user.name=a', '-c', 'user.email=a@b.invalid', 'commit', '-qm', 'work'])); "
         "record('end')")


def _config(root: Path, forge: FakeForge, port: int, record: Path, agent: str = 'sandbox = "none"\n') -> Path:
    config = root / "forge-bridge.toml"
    config.write_text(
        f'data_dir = "{root / "data"}"\nbind = "127.0.0.1:{port}"\n'
        f'[agent]\npreset = "command"\nargv = {json.dumps([sys.executable, "-c", AGENT])}\n'
        f'pass_env = ["PICKUP_RECORD"]\n{agent}'
        f'[[forges]]\nname = "f"\nkind = "{forge.kind}"\nurl = "{forge.url}"\ntoken_env = "T"\n'
        f'webhook_secret_env = "S"\nbot_login = "{forge.bot_login}"\n'   # default write_interval
        '[[repos]]\nforge = "f"\nname = "alice/*"\n')
    return config


def _started(record: Path, what: str = "start") -> dict[str, float]:
    if not record.exists():
        return {}
    return {line["issue"]: line["at"] for line in map(json.loads, record.read_text().splitlines())
            if line.get("what", "start") == what}


def baseline(record: Path, runs: int) -> float:
    """Median seconds to start the agent program directly and hear it start."""
    seconds = []
    for n in range(runs):
        began = time.time()
        subprocess.run([sys.executable, "-c", AGENT], input=b"", env={**os.environ, "PICKUP_RECORD": str(record),
                                                                      "FORGE_BRIDGE_ISSUE_REF": f"direct-{n}"})
        seconds.append(_started(record)[f"direct-{n}"] - began)
    return statistics.median(seconds)


def _label(forge: FakeForge, repo, title: str, body: str = "body", *, name: str = "widgets") -> str:
    issue = forge.create_issue(repo, title, body)
    [answer] = forge.add_label(repo, issue, "kugetsu:todo")
    assert answer.status_code == 202, answer.text
    return f"{forge.host}/alice/{name}#{issue.number}"


def _pickup(forge: FakeForge, repo, record: Path, title: str, *, name: str = "widgets") -> float:
    """Seconds from a label's delivery answered to its agent started."""
    ref = _label(forge, repo, title, name=name)
    answered = time.time()
    wait_for(lambda: ref in _started(record), timeout=120, interval=0.01, what=f"agent for {ref}")
    return _started(record)[ref] - answered


SETUP_SECONDS = 3


def _pickups_with_setup(forge: FakeForge, root: Path, record: Path, issues: int) -> list[float]:
    """Pickups in a repository whose setup script takes SETUP_SECONDS, each once its spare is set up (the worker's
    housekeeping makes and prepares the next spare after each issue takes one)."""
    from helpers import commit_to

    repo = forge.create_repo("alice", "gadgets")
    repo.permissions["alice"] = "write"
    commit_to(repo.bare, "main", {".forge-bridge/setup.sh": f"sleep {SETUP_SECONDS}\n"})
    spare_done = root / "data" / "spares" / "127.0.0.1_{port}-alice-gadgets.git".format(port=forge.port) / \
        "forge-bridge-setup"
    first = _label(forge, repo, "Prime the repository", "body", name="gadgets")
    wait_for(lambda: first in _started(record), timeout=120, interval=0.05, what="the first agent")
    times = []
    for n in range(issues):
        wait_for(spare_done.is_file, timeout=180, interval=0.1, what="the spare's setup")
        times.append(_pickup(forge, repo, record, f"Prepared {n}", name="gadgets"))   # takes the spare, and its mark
    return times


def measure(kind: str, issues: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        forge = FakeForge(kind, root / "forge").start()
        repo = forge.create_repo("alice", "widgets")
        repo.permissions["alice"] = "write"
        record = root / "started.jsonl"
        from conftest import free_port

        port = free_port()
        env = {**os.environ, "T": "fake-forge-token", "S": SECRET, "PICKUP_RECORD": str(record)}
        with open(root / "serve.log", "wb") as log:
            serve = subprocess.Popen([sys.executable, "-m", "forge_bridge", "--config",
                                      str(_config(root, forge, port, record)), "serve"], env=env, stdout=log,
                                     stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: healthy(f"http://127.0.0.1:{port}"), timeout=60, what="serve")
            forge.add_hook(f"http://127.0.0.1:{port}/webhooks/{kind}", SECRET)
            floor = baseline(root / "direct.jsonl", 5)
            pickups = [_pickup(forge, repo, record, f"Issue {n}") for n in range(issues)]
            wrapped = []
            for n in range(issues):
                wrapping = _label(forge, repo, f"Wrapped {n}", "WRAPUP")
                wait_for(lambda ref=wrapping: ref in _started(record, "end"), timeout=120, interval=0.01,
                         what=f"the agent of {wrapping} to end")
                wrapped.append(_pickup(forge, repo, record, f"During wrap-up {n}"))   # its task wraps up now
            prepared = _pickups_with_setup(forge, root, record, min(issues, 4))
            p50, during = statistics.median(pickups), statistics.median(wrapped)
            print(f"{kind}: pickup p50 {p50:.3f} s, first {pickups[0]:.3f} s, max {max(pickups):.3f} s over {issues} "
                  f"issues; starting the agent directly {floor:.3f} s; p50 = {p50 / floor:.1f}x that baseline")
            print(f"{kind}: pickup while another task wraps up p50 {during:.3f} s, max {max(wrapped):.3f} s: "
                  f"{during - p50:+.3f} s against the idle bridge's p50 in this run")
            ready = statistics.median(prepared)
            print(f"{kind}: pickup with a {SETUP_SECONDS} s setup script, its spare set up ahead, p50 {ready:.3f} s "
                  f"over {len(prepared)} issues: {ready / p50:.2f}x the p50 without a setup script in this run")
        finally:
            serve.send_signal(signal.SIGTERM)
            serve.wait(timeout=60)
            forge.stop()


def _confined_pickups(kind: str, issues: int, network: str) -> list[float]:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        forge = FakeForge(kind, root / "forge").start()
        repo = forge.create_repo("alice", "widgets")
        repo.permissions["alice"] = "write"
        record = root / "data" / "agent-home" / "started.jsonl"   # the agent's HOME: writable inside the sandbox
        record.parent.mkdir(parents=True)
        from conftest import free_port

        port = free_port()
        readable = json.dumps([str(Path(sys.executable).resolve().parents[1]), str(ROOT)])
        agent = f'sandbox = "bwrap"\nsandbox_paths = {readable}\nnetwork = "{network}"\n'
        env = {**os.environ, "T": "fake-forge-token", "S": SECRET, "PICKUP_RECORD": str(record)}
        with open(root / "serve.log", "wb") as log:
            serve = subprocess.Popen([sys.executable, "-m", "forge_bridge", "--config",
                                      str(_config(root, forge, port, record, agent)), "serve"], env=env, stdout=log,
                                     stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: healthy(f"http://127.0.0.1:{port}"), timeout=60, what="serve")
            forge.add_hook(f"http://127.0.0.1:{port}/webhooks/{kind}", SECRET)
            return [_pickup(forge, repo, record, f"Issue {n}") for n in range(issues)]
        finally:
            serve.send_signal(signal.SIGTERM)
            serve.wait(timeout=60)
            forge.stop()


def compare_networks(kind: str, issues: int, rounds: int = 2) -> None:
    """The allowlist against an open network, both confined, alternating so a slow moment hits both."""
    found: dict[str, list[float]] = {"open": [], "allowlist": []}
    for _ in range(rounds):
        for network in found:
            found[network] += _confined_pickups(kind, issues, network)
    opened, listed = statistics.median(found["open"]), statistics.median(found["allowlist"])
    print(f"{kind}: confined pickup p50, network open {opened:.3f} s, allowlist {listed:.3f} s: "
          f"{(listed - opened) * 1000:+.0f} ms for the proxy and its relay")


def main() -> None:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)   # the fake forge's access log
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--issues", type=int, default=10)
    parser.add_argument("--kind", choices=["github", "gitea", "gitlab"], action="append")
    parser.add_argument("--network", action="store_true", help="only compare confined pickup, open vs allowlist")
    args = parser.parse_args()
    for kind in args.kind or ["github", "gitea"]:
        if not args.network:
            measure(kind, args.issues)
        compare_networks(kind, args.issues)


if __name__ == "__main__":
    main()
