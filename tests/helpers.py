"""Test helpers: wait for a condition with a deadline (never a blind sleep), and paths to the recorded fixtures."""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "webhooks"   # recorded deliveries; see PROTOCOL.md there
FAKE_AGENT = Path(__file__).resolve().parent / "agents" / "fake_agent.py"
SECRET = "It's a Secret to Everybody"


def redated(payload: dict) -> dict:
    """A recorded delivery as if it happened now: the bridge refuses events older than it remembers deliveries."""
    from datetime import datetime, timezone

    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    for part, key in (("comment", "updated_at"), ("comment", "created_at"), ("issue", "updated_at"),
                      ("pull_request", "updated_at"), ("review", "submitted_at"),
                      ("object_attributes", "updated_at")):   # GitLab
        if isinstance(payload.get(part), dict) and key in payload[part]:
            payload[part][key] = now
    return payload


def wait_for(condition: Callable[[], T], *, timeout: float = 60.0, interval: float = 0.05, what: str = "") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            said = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout}s waiting for {said or condition}")
        time.sleep(interval)


def alive(pid: int) -> bool:
    """Whether a process still runs (a zombie waiting to be reaped counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "State:\tZ" in status.read_text())


def healthy(base_url: str) -> bool:
    """Whether a forge-bridge web process answers /healthz with 200 yet."""
    import requests

    try:
        return requests.get(f"{base_url}/healthz", timeout=1).status_code == 200
    except requests.ConnectionError:
        return False


def agent_jobs_done(conn) -> bool:
    """Whether no agent job is running: a work horse (a process group of its own) outlives a kill of its worker,
    and a job's last writes land only when it ends."""
    from rq.registry import StartedJobRegistry

    from forge_bridge.store.queue import AGENTS_QUEUE

    return StartedJobRegistry(AGENTS_QUEUE, connection=conn).count == 0


def commit_to(bare: Path, branch: str, files: dict[str, str], *, links: dict[str, str] | None = None,
              message: str = "change files") -> None:
    """Commit files (and symbolic links) to a branch of a bare repository, as a person pushing would."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder) / "work"
        subprocess.run(["git", "clone", "--quiet", "--branch", branch, str(bare), str(work)], check=True,
                       capture_output=True)
        for name, text in files.items():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            (work / name).write_text(text)
        for name, target in (links or {}).items():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            (work / name).symlink_to(target)
        subprocess.run(["git", "add", "-A"], cwd=work, check=True)
        subprocess.run(["git", "-c", "user.name=Person", "-c", "user.email=person@example.invalid", "commit",
                        "--quiet", "-m", message], cwd=work, check=True)
        subprocess.run(["git", "push", "--quiet", "origin", branch], cwd=work, check=True, capture_output=True)


def kill_process_tree(pid: int) -> None:
    """SIGKILL a process, its group and every descendant's group: RQ puts each work horse in a process group of
    its own, so a worker's group alone leaves its horse running, to write into the next test's Redis."""
    import signal

    found, seen = [pid], set()
    while found:
        current = found.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            found += [int(child) for child in Path(f"/proc/{current}/task/{current}/children").read_text().split()]
        except OSError:
            pass
    own_group = os.getpgid(0)
    for current in seen:
        try:
            group = os.getpgid(current)
            if group != own_group:
                os.killpg(group, signal.SIGKILL)
        except OSError:   # gone already
            pass
