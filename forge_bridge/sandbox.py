"""Confine an agent with bubblewrap: the host read-only, its worktree, its git metadata, its session files and
its HOME writable, a private /tmp and process namespace, and nothing else of data_dir or the bridge user's HOME.

Inside, the repository's mirror is writable (a commit writes objects and refs there) except its config, which
is mounted read-only so the agent cannot give the bridge's git a hook or a program to run; the bridge restores
it after every run anyway (worktrees.Checkout.restore), which also covers `sandbox = "none"`."""
from __future__ import annotations

import logging
import shutil
import socket
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from forge_bridge.config import AgentConfig, Settings

log = logging.getLogger(__name__)
PROBE_TIMEOUT = 10
WARNINGS_KEY = "fb:sandbox-warnings"   # host -> why its agents run without a sandbox
MODES = ("auto", "bwrap", "none")


@dataclass(frozen=True)
class Confinement:
    """Where one agent run may write, and what more it may read."""

    worktree: Path
    mirror: Path
    session_dir: Path
    home: Path
    hidden: tuple[Path, ...]          # data_dir and the bridge user's HOME
    readable: tuple[Path, ...] = ()   # agent.sandbox_paths


def agent_home(settings: Settings) -> Path:
    """The agent's HOME, kept between runs so CLI logins and sessions survive."""
    home = Path(settings.agent.home) if settings.agent.home else settings.data_dir / "agent-home"
    home.mkdir(parents=True, exist_ok=True)
    return home


@cache
def bwrap_works() -> str:
    """"" when bubblewrap runs here; otherwise why not (probed once per process)."""
    program = shutil.which("bwrap")
    if program is None:
        return "bwrap is not installed (Debian: apt-get install bubblewrap)"
    try:
        done = subprocess.run([program, "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "--unshare-pid",
                               "--die-with-parent", "true"], capture_output=True, text=True, timeout=PROBE_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"bwrap does not run here: {error}"
    if done.returncode != 0:
        return f"bwrap does not run here: {(done.stderr or done.stdout).strip()[:200]}"
    return ""


def mode(agent: AgentConfig) -> tuple[str, str]:
    """("bwrap" | "none", a warning when `auto` found no working bwrap)."""
    if agent.sandbox == "none":
        return "none", ""
    problem = bwrap_works()
    if agent.sandbox == "bwrap" or not problem:
        return "bwrap", ""
    return "none", f"agents run without a sandbox: {problem}"


def announce(agent: AgentConfig, conn) -> None:
    """At a worker's start: say in the log, and for the status page, when its agents will run unconfined."""
    _, warning = mode(agent)
    if warning:
        log.warning(warning)
        conn.hset(WARNINGS_KEY, socket.gethostname(), warning)
    else:
        conn.hdel(WARNINGS_KEY, socket.gethostname())


def warnings(conn) -> list[str]:
    return [f"{host.decode()}: {why.decode()}" for host, why in sorted(conn.hgetall(WARNINGS_KEY).items())]


def wrap(argv: list[str], where: Confinement) -> list[str]:
    """The agent's argv, run inside bubblewrap."""
    command = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    for path in where.hidden:
        if str(path) not in ("/", "") and path.exists():
            command += ["--tmpfs", str(path)]
    for path in (where.home, where.worktree, where.mirror, where.session_dir):
        command += ["--bind", str(path), str(path)]
    if (where.mirror / "config").exists():
        command += ["--ro-bind", str(where.mirror / "config"), str(where.mirror / "config")]
    for path in where.readable:
        if path.exists():
            command += ["--ro-bind", str(path), str(path)]
    command += ["--unshare-pid", "--die-with-parent", "--chdir", str(where.worktree), "--setenv", "HOME",
                str(where.home), "--"]
    return command + argv
