"""P2 pickup: from a label delivery answered to the agent's process started, through `forge-bridge serve` with
its default settings (GitHub's write spacing included) against the tests' fake forge on 127.0.0.1.

Baseline, measured in the same run: starting the same agent program directly (the floor no bridge can beat).
Run: `.venv/bin/python bench/pickup.py [--issues N] [--kind github|gitea]`."""
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
AGENT = ("import json, os, sys, time; started = time.time(); sys.stdin.read(); "
         "open(os.environ['PICKUP_RECORD'], 'a').write(json.dumps({'issue': os.environ['FORGE_BRIDGE_ISSUE_REF'], "
         "'at': started}) + '\\n')")


def _config(root: Path, forge: FakeForge, port: int, record: Path) -> Path:
    config = root / "forge-bridge.toml"
    config.write_text(
        f'data_dir = "{root / "data"}"\nbind = "127.0.0.1:{port}"\nworkers = 2\nmax_concurrent_agents = 4\n'
        f'[agent]\npreset = "command"\nargv = {json.dumps([sys.executable, "-c", AGENT])}\n'
        f'pass_env = ["PICKUP_RECORD"]\nsandbox = "none"\n'
        f'[[forges]]\nname = "f"\nkind = "{forge.kind}"\nurl = "{forge.url}"\ntoken_env = "T"\n'
        f'webhook_secret_env = "S"\nbot_login = "{forge.bot_login}"\n'   # default write_interval
        '[[repos]]\nforge = "f"\nname = "alice/*"\n')
    return config


def _started(record: Path) -> dict[str, float]:
    if not record.exists():
        return {}
    return {line["issue"]: line["at"] for line in map(json.loads, record.read_text().splitlines())}


def baseline(record: Path, runs: int) -> float:
    """Median seconds to start the agent program directly and hear it start."""
    seconds = []
    for n in range(runs):
        began = time.time()
        subprocess.run([sys.executable, "-c", AGENT], input=b"", env={**os.environ, "PICKUP_RECORD": str(record),
                                                                      "FORGE_BRIDGE_ISSUE_REF": f"direct-{n}"})
        seconds.append(_started(record)[f"direct-{n}"] - began)
    return statistics.median(seconds)


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
            pickups = []
            for n in range(issues):
                issue = forge.create_issue(repo, f"Issue {n}", "body")
                ref = f"{forge.host}/alice/widgets#{issue.number}"
                [answer] = forge.add_label(repo, issue, "kugetsu:todo")
                answered = time.time()
                assert answer.status_code == 202, answer.text
                wait_for(lambda ref=ref: ref in _started(record), timeout=120, interval=0.01, what=f"agent for {ref}")
                pickups.append(_started(record)[ref] - answered)
            p50 = statistics.median(pickups)
            print(f"{kind}: pickup p50 {p50:.3f} s, first {pickups[0]:.3f} s, max {max(pickups):.3f} s over {issues} "
                  f"issues; starting the agent directly {floor:.3f} s; p50 = {p50 / floor:.1f}x that baseline")
        finally:
            serve.send_signal(signal.SIGTERM)
            serve.wait(timeout=60)
            forge.stop()


def main() -> None:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)   # the fake forge's access log
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--issues", type=int, default=10)
    parser.add_argument("--kind", choices=["github", "gitea"], action="append")
    args = parser.parse_args()
    for kind in args.kind or ["github", "gitea"]:
        measure(kind, args.issues)


if __name__ == "__main__":
    main()
