"""The repository prepares its workspace: its setup script (`agent.setup_script`) runs with bash in the worktree, in
the agent's sandbox, HOME and environment, before the agent's first run there and again whenever the script
changed; spare worktrees run it ahead of need, so a new issue's agent does not wait for it."""
from __future__ import annotations

import hashlib
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from forge_bridge.agents import presets
from forge_bridge.config import AgentConfig, Settings
from forge_bridge.workspace import worktrees

DONE = "forge-bridge-setup"   # in the worktree's git directory: the sha256 of the script last run there to its end
QUOTED_LINES = 10
# Its output is a log like the agent's; nothing in it is a session or a summary.
_SCRIPT = AgentConfig(preset="command", argv=("bash",), session_id="none", summary="none")


class SetupFailed(RuntimeError):
    """The setup script failed, timed out or is not a file to run: the agent is not run. The message is the
    task's outcome and starts with `setup:`."""


@dataclass(frozen=True)
class Script:
    path: Path          # inside the worktree
    name: str           # as configured, for messages
    digest: str


def find(worktree: Path, name: str) -> Script | None:
    """The worktree's setup script, or None when it has none; SetupFailed when the name is there but is not a
    regular file of the worktree's own (a link, perhaps out of it, or a folder)."""
    path = worktree / name
    if not os.path.lexists(path):
        return None
    inside = path.resolve().is_relative_to(worktree.resolve()) and not any(
        (worktree / Path(*Path(name).parts[:n])).is_symlink() for n in range(1, len(Path(name).parts) + 1))
    if not inside or not stat.S_ISREG(os.lstat(path).st_mode):
        raise SetupFailed(f"setup: {name} is not a regular file of the repository (a link or a folder); "
                          "it was not run, and neither was the agent")
    return Script(path, name, hashlib.sha256(path.read_bytes()).hexdigest())


def needed(checkout: worktrees.Checkout, script: Script) -> bool:
    marker = checkout.gitdir / DONE
    return not marker.is_file() or marker.read_text().strip() != script.digest


@dataclass(frozen=True)
class Ran:
    seconds: float
    result: presets.AgentResult | None   # None when nothing ran


def run_if_needed(settings: Settings, checkout: worktrees.Checkout, *, env: dict[str, str],
                  confine, log: Path, should_stop=lambda: "") -> Ran:
    """Run the setup script when this worktree has not run this version of it to its end. `confine` turns an
    argv into the sandboxed one the agent would get. SetupFailed when it fails or times out; a stop (a cancel,
    a shutdown) while it runs is in the result, for the runner to end the task as it ends a stopped agent."""
    script = find(checkout.worktree, settings.agent.setup_script)
    if script is None or not needed(checkout, script):
        return Ran(0.0, None)
    began = time.monotonic()
    with open(log, "a") as out:
        out.write(f"forge-bridge: preparing the workspace with {script.name}\n")
    offset = log.stat().st_size
    result = presets.run_agent(confine(["bash", script.name]), prompt="", cwd=checkout.worktree, env=env,
                               timeout=settings.agent.setup_timeout, log=log, agent=_SCRIPT, should_stop=should_stop)
    seconds = time.monotonic() - began
    if result.stopped:
        return Ran(seconds, result)
    if result.timed_out or result.exit_code != 0:
        why = (f"timed out after {settings.agent.setup_timeout:.0f} s" if result.timed_out
               else f"exited with {result.exit_code}")
        raise SetupFailed(f"setup: {script.name} {why}; the agent was not run. Its last lines:\n"
                          f"{_output_tail(log, offset)}")
    (checkout.gitdir / DONE).write_text(script.digest)
    with open(log, "a") as out:
        out.write(f"forge-bridge: {script.name} done in {seconds:.1f} s\n")
    return Ran(seconds, result)


def _output_tail(log: Path, offset: int) -> str:
    """The script's own last lines (not the agent's, nor the bridge's), as text whatever bytes it wrote."""
    with open(log, "rb") as handle:
        handle.seek(offset)
        lines = handle.read().decode(errors="replace").splitlines()
    own = [line for line in lines if not line.startswith("forge-bridge: ")]
    return "\n".join(own[-QUOTED_LINES:]) or "(no output)"
