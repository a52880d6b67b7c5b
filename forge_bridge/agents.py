"""Agent argv templates and presets, and one agent run: prompt on stdin, a timeout, a log, a process-group kill."""
from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from forge_bridge.config import AgentConfig
from forge_bridge.models import TaskAction
from forge_bridge.streams import judge

PLACEHOLDER_RE = re.compile(r"\{(prompt|session_id|issue_ref|worktree|branch|title)\}")
BASE_ENV = ("PATH", "HOME", "LANG")
KILL_GRACE = 5.0
CANCEL_POLL = 0.5
PR_SET_PDEATHSIG = 1
TAIL_LINES = 20

# argv templates per preset and action; the prompt also always goes to stdin.
PRESETS: dict[str, dict[TaskAction, tuple[str, ...]]] = {
    "kugetsu": {
        TaskAction.START: ("kugetsu", "start", "{issue_ref}", "{prompt}"),
        TaskAction.CONTINUE: ("kugetsu", "continue", "{issue_ref}", "{prompt}"),
    },
    # Claude Code: the bridge picks the session id for the first run, and resumes it after.
    "claude": {
        TaskAction.START: ("claude", "-p", "--output-format", "stream-json", "--verbose", "--session-id",
                           "{session_id}"),
        TaskAction.CONTINUE: ("claude", "-p", "--output-format", "stream-json", "--verbose", "--resume",
                              "{session_id}"),
    },
    # Codex: the prompt on stdin; the thread id comes from `thread.started`.
    "codex": {
        TaskAction.START: ("codex", "exec", "--json"),
        TaskAction.CONTINUE: ("codex", "exec", "--json", "resume", "{session_id}"),
    },
}
PREASSIGNED_SESSION = {"claude"}   # presets whose session id the bridge chooses


class AgentConfigError(ValueError):
    """The configured preset cannot be run yet."""


@dataclass(frozen=True)
class AgentResult:
    exit_code: int | None
    timed_out: bool
    session_id: str
    summary: str
    stopped: str = ""              # why the bridge stopped it: cancelled | shutdown | worker gone
    failure: str = ""              # the agent's own output says it failed, whatever its exit code

    @property
    def ok(self) -> bool:
        return not self.timed_out and not self.stopped and self.exit_code == 0 and not self.failure


def substitute(template: str, values: Mapping[str, str]) -> str:
    """One pass, so braces inside a value (text from a forge) are never expanded again."""
    return PLACEHOLDER_RE.sub(lambda m: values.get(m[1], ""), template)


def build_argv(agent: AgentConfig, action: TaskAction, values: Mapping[str, str]) -> list[str]:
    if agent.preset == "command":
        template = agent.argv
    elif agent.preset in PRESETS:
        template = PRESETS[agent.preset][action]
    else:
        raise AgentConfigError(f"agent preset {agent.preset!r} is not available in this version; use \"command\"")
    return [substitute(part, values) for part in template]


def agent_env(agent: AgentConfig, variables: Mapping[str, str], *, environ: Mapping[str, str] | None = None) -> dict:
    """Only what the agent needs: never the bridge's secrets or other forges' tokens."""
    environ = os.environ if environ is None else environ
    env = {k: environ[k] for k in (*BASE_ENV, *agent.pass_env) if k in environ}
    env.update(variables)
    return env


def _die_with_parent() -> None:
    """In the agent, before exec: the kernel sends SIGKILL when the worker running it dies (Linux), so a
    SIGKILLed worker leaves no agent behind; its children are reaped by process group afterwards."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def _feed_stdin(process: subprocess.Popen, prompt: str) -> None:
    try:
        process.stdin.write(prompt.encode())
    except (BrokenPipeError, OSError):
        pass  # an agent may exit without reading its input
    finally:
        try:
            process.stdin.close()
        except OSError:
            pass


def kill_group(pgid: int) -> None:
    """SIGKILL a process group that outlived its worker (reaping what a dead one left)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_group(process: subprocess.Popen) -> None:
    """TERM, then KILL, the agent's whole process group, so no child outlives it."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE), (signal.SIGKILL, None)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        if wait is not None:
            try:
                process.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                return


def _wait(process: subprocess.Popen, timeout: float, should_stop: Callable[[], str]) -> str:
    """"exited", "timeout" or why it must stop: wait in short steps so a stop is seen within a second."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            process.wait(timeout=max(0.0, min(CANCEL_POLL, deadline - time.monotonic())))
            return "exited"
        except subprocess.TimeoutExpired:
            pass
        if time.monotonic() >= deadline:
            return "timeout"
        reason = should_stop()
        if reason:
            return reason


def run_agent(argv: list[str], *, prompt: str, cwd: Path, env: dict[str, str], timeout: float,
              log: Path, agent: AgentConfig, should_stop: Callable[[], str] = lambda: "",
              on_start: Callable[[int], None] = lambda pid: None) -> AgentResult:
    offset = log.stat().st_size if log.exists() else 0
    with open(log, "ab") as out:
        try:
            process = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True,
                                       preexec_fn=_die_with_parent)
        except OSError as error:
            out.write(f"forge-bridge: cannot start agent {argv[0]!r}: {error}\n".encode())
            return AgentResult(exit_code=None, timed_out=False, session_id="", summary="")
        on_start(process.pid)
        threading.Thread(target=_feed_stdin, args=(process, prompt), daemon=True).start()
        ended = _wait(process, timeout, should_stop)
        _kill_group(process)  # after a timeout or cancel, and after a normal exit too: no leftovers
        process.wait()
        if ended != "exited":
            out.write(f"\nforge-bridge: agent stopped ({ended})\n".encode())
    verdict = judge(agent, read_new_lines(log, offset))
    return AgentResult(exit_code=process.returncode if ended == "exited" else None, timed_out=ended == "timeout",
                       stopped=ended if ended not in ("exited", "timeout") else "", session_id=verdict.session_id,
                       summary=verdict.summary, failure=verdict.failure)


def read_new_lines(log: Path, offset: int) -> list[str]:
    with open(log, "rb") as handle:
        handle.seek(offset)
        return handle.read().decode(errors="replace").splitlines()


def tail(log: Path, lines: int = TAIL_LINES) -> str:
    if not log.exists():
        return ""
    with open(log, "rb") as handle:
        handle.seek(max(0, log.stat().st_size - 64 * 1024))
        return "\n".join(handle.read().decode(errors="replace").splitlines()[-lines:])
