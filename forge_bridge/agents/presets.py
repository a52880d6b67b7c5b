"""Agent argv templates and presets, and one agent run: prompt on stdin, a timeout, a log, a process-group kill."""
from __future__ import annotations

import ctypes
import json
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
from forge_bridge.agents.streams import Verdict, judge, reports_sessions

PLACEHOLDER_RE = re.compile(r"\{(prompt|session_id|issue_ref|worktree|branch|title|message_file|history_file)\}")
BASE_ENV = ("PATH", "HOME", "LANG")
KILL_GRACE = 5.0
CANCEL_POLL = 0.5
PR_SET_PDEATHSIG = 1
MAX_ARGV_PROMPT = 100_000
CLIPPED_NOTE = "\n\n[… cut here; the whole prompt is on stdin]"

# argv templates per preset and action, pinned to the CLI versions named in the README; the prompt always goes to
# stdin too (aider reads it from a file the bridge writes, since it takes no prompt on stdin).
_CLAUDE = ("claude", "-p", "--output-format", "stream-json", "--verbose", "--permission-mode", "acceptEdits")
# aider: --yes-always would also answer "yes" to its analytics opt-in, to fetching every URL in the prompt (the
# issue's history names the pull request) and to other questions; these keep it to edits.
_AIDER = ("aider", "--yes-always", "--analytics-disable", "--no-show-release-notes", "--no-show-model-warnings",
          "--no-detect-urls",
          "--no-pretty", "--no-stream", "--no-check-update", "--no-gitignore",
          "--message-file", "{message_file}", "--chat-history-file", "{history_file}", "--restore-chat-history",
          "--input-history-file", "{history_file}.input")
PRESETS: dict[str, dict[TaskAction, tuple[str, ...]]] = {
    "kugetsu": {
        # `--` ends the options: an issue titled `--help` is a prompt, not an option
        TaskAction.START: ("kugetsu", "start", "{issue_ref}", "--", "{prompt}"),
        TaskAction.CONTINUE: ("kugetsu", "continue", "{issue_ref}", "--", "{prompt}"),
    },
    # Claude Code: the bridge picks the session id for the first run, and resumes it after.
    "claude": {
        TaskAction.START: (*_CLAUDE, "--session-id", "{session_id}"),
        TaskAction.CONTINUE: (*_CLAUDE, "--resume", "{session_id}"),
    },
    # Codex: the prompt on stdin ("-"); the thread id comes from `thread.started`. `exec resume` has no
    # --sandbox of its own: given before `resume`, it holds for the resumed run too.
    "codex": {
        TaskAction.START: ("codex", "exec", "--json", "--sandbox", "workspace-write", "-"),
        TaskAction.CONTINUE: ("codex", "exec", "--json", "--sandbox", "workspace-write", "resume", "{session_id}",
                              "-"),
    },
    # opencode: the prompt on stdin; the session id is the `sessionID` of its JSON lines.
    "opencode": {
        TaskAction.START: ("opencode", "run", "--format", "json"),
        TaskAction.CONTINUE: ("opencode", "run", "--format", "json", "--session", "{session_id}"),
    },
    # aider: its "session" is a chat history file per issue, restored on every run.
    "aider": {TaskAction.START: _AIDER, TaskAction.CONTINUE: _AIDER},
}
# The CLI versions each preset was run against (the conformance suite installs the newest of each).
TESTED_VERSIONS = {
    "claude": ("Claude Code", "2.1.197", "2.1.332"),
    "codex": ("Codex CLI", "0.169.0", "0.171.0"),
    "opencode": ("opencode", "1.18.33", "1.18.33"),
    "aider": ("aider", "0.86.2", "0.86.2"),
}
# How many leading words name the program and its subcommand (`codex exec`, `opencode run`, `kugetsu start`).
COMMAND_WORDS = {"kugetsu": 2, "claude": 1, "codex": 2, "opencode": 2, "aider": 1}
# Extra environment a preset needs to run unattended: opencode reads its permission config from this variable.
PRESET_ENV = {"opencode": {"OPENCODE_PERMISSION": json.dumps({"edit": "allow", "bash": "allow", "webfetch": "allow",
                                                               "external_directory": "allow"})}}


class AgentConfigError(ValueError):
    """The configured preset cannot be run."""


@dataclass(frozen=True)
class AgentResult:
    exit_code: int | None
    timed_out: bool
    verdict: Verdict = Verdict()
    stopped: str = ""              # why the bridge stopped it: cancelled | shutdown | worker gone

    @property
    def session_id(self) -> str:
        return self.verdict.session_id

    @property
    def summary(self) -> str:
        return self.verdict.summary

    @property
    def failure(self) -> str:      # the agent's own output says it failed, whatever its exit code
        return self.verdict.failure

    def rejected(self, preset: str) -> str:
        """When the CLI refused the preset's arguments: what it said, and the versions the preset knows."""
        if not self.verdict.rejected_arguments:
            return ""
        said = f"the agent's CLI rejected the preset's arguments ({self.verdict.rejected_arguments[:200]})"
        if preset in TESTED_VERSIONS:
            name, low, high = TESTED_VERSIONS[preset]
            said += f"; the {preset} preset was tested with {name} {low}" + (f" to {high}" if high != low else "")
        return said

    @property
    def ok(self) -> bool:
        return not self.timed_out and not self.stopped and self.exit_code == 0 and not self.failure


def substitute(template: str, values: Mapping[str, str]) -> str:
    """One pass, so braces inside a value (text from a forge) are never expanded again."""
    return PLACEHOLDER_RE.sub(lambda m: values.get(m[1], ""), template)


def argv_prompt(prompt: str) -> str:
    """The prompt as one argument: Linux refuses an argument over 128 KiB (E2BIG) and the program would never
    start, so a longer one is cut; the whole prompt is on stdin."""
    data = prompt.encode()
    if len(data) <= MAX_ARGV_PROMPT:
        return prompt
    return data[:MAX_ARGV_PROMPT].decode(errors="ignore") + CLIPPED_NOTE


def build_argv(agent: AgentConfig, action: TaskAction, values: Mapping[str, str]) -> list[str]:
    if agent.preset == "command":
        template = agent.argv
    elif agent.preset in PRESETS:
        template = PRESETS[agent.preset][action]
        head = COMMAND_WORDS[agent.preset]   # extra arguments go right after the program and its subcommand
        template = template[:head] + agent.extra_args + template[head:] + _limits(agent)
    else:
        raise AgentConfigError(f"agent preset {agent.preset!r} is not available; use \"command\"")
    values = {**values, "prompt": argv_prompt(values.get("prompt", ""))}
    return [substitute(part, values) for part in template]


def with_instructions(agent: AgentConfig, argv: list[str], *, has_agents_md: bool) -> list[str]:
    """aider reads no instructions file by itself: given the worktree's AGENTS.md as a read-only file, it does.
    (Claude Code, Codex and opencode find theirs in the worktree on their own.)"""
    if agent.preset != "aider" or not has_agents_md:
        return argv
    head = COMMAND_WORDS["aider"]
    return [*argv[:head], "--read", "AGENTS.md", *argv[head:]]


def plan_argv(agent: AgentConfig, argv: list[str]) -> list[str]:
    """The same run in the preset's read-only mode, for a plan: Claude Code `--permission-mode plan`, Codex
    `--sandbox read-only`, opencode `--agent plan`, aider `--chat-mode ask` (each run against its real CLI by the
    conformance suite). Other agents are told by FORGE_BRIDGE_MODE=plan."""
    argv = list(argv)
    if agent.preset == "claude" and "--permission-mode" in argv:
        argv[argv.index("--permission-mode") + 1] = "plan"
    elif agent.preset == "codex" and "workspace-write" in argv:
        argv[argv.index("workspace-write")] = "read-only"
    elif agent.preset == "opencode":
        argv[COMMAND_WORDS["opencode"]:COMMAND_WORDS["opencode"]] = ["--agent", "plan"]
    elif agent.preset == "aider":   # last: aider's --chat-mode and --edit-format are one setting, the last wins
        argv += ["--chat-mode", "ask"]
    return argv


def _limits(agent: AgentConfig) -> tuple[str, ...]:
    """Claude Code's own limits on a run, from the configuration."""
    if agent.preset != "claude":
        return ()
    turns = ("--max-turns", str(agent.max_turns)) if agent.max_turns else ()
    budget = ("--max-budget-usd", f"{agent.max_budget_usd:g}") if agent.max_budget_usd else ()
    return turns + budget


def takes(agent: AgentConfig, placeholder: str) -> bool:
    """Whether the agent's argv names a placeholder (so the bridge need not prepare what it would not read)."""
    templates = [agent.argv] if agent.preset == "command" else PRESETS.get(agent.preset, {}).values()
    return any(f"{{{placeholder}}}" in part for template in templates for part in template)


def executable(agent: AgentConfig) -> str:
    """The program the configured agent runs (for `forge-bridge check`)."""
    return agent.argv[0] if agent.preset == "command" else PRESETS[agent.preset][TaskAction.START][0]


def agent_env(agent: AgentConfig, variables: Mapping[str, str], *, environ: Mapping[str, str] | None = None) -> dict:
    """Only what the agent needs: never the bridge's secrets or other forges' tokens."""
    environ = os.environ if environ is None else environ
    env = {k: environ[k] for k in (*BASE_ENV, *agent.pass_env) if k in environ}
    env.update(PRESET_ENV.get(agent.preset, {}))
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
              on_start: Callable[[int], None] = lambda pid: None,
              on_session: Callable[[str], None] | None = None,
              on_lines: Callable[[list[str]], str] | None = None) -> AgentResult:
    """Run one agent to its end. `on_session` hears the session id the moment the output names it, so it is
    stored even if the worker dies before the agent ends; `on_lines` reads the output as it comes (every half
    second) and may answer why the agent must stop (its budget), which then ends it like a cancel."""
    offset = log.stat().st_size if log.exists() else 0
    with open(log, "ab") as out:
        try:
            process = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True,
                                       preexec_fn=_die_with_parent)
        except OSError as error:
            why = f"cannot start agent {argv[0]!r}: {error}"
            out.write(f"forge-bridge: {why}\n".encode())
            return AgentResult(exit_code=None, timed_out=False, verdict=Verdict(failure=why))
        on_start(process.pid)
        threading.Thread(target=_feed_stdin, args=(process, prompt), daemon=True).start()
        watch = _Watch(agent, log, offset, on_session, on_lines)
        ended = _wait(process, timeout, lambda: watch.poll() or should_stop())
        _kill_group(process)  # after a timeout or cancel, and after a normal exit too: no leftovers
        process.wait()
        if ended != "exited":
            out.write(f"\nforge-bridge: agent stopped ({ended})\n".encode())
    verdict = judge(agent, read_new_lines(log, offset))
    watch.found(verdict.session_id)
    return AgentResult(exit_code=process.returncode if ended == "exited" else None, timed_out=ended == "timeout",
                       stopped=ended if ended not in ("exited", "timeout") else "", verdict=verdict)


@dataclass
class _Watch:
    """Reads the agent's output while it runs, only what is new each time: until it names its session, and
    throughout when `on_lines` reads it too."""

    agent: AgentConfig
    log: Path
    offset: int
    on_session: Callable[[str], None] | None
    on_lines: Callable[[list[str]], str] | None = None
    done: bool = False
    partial: bytes = b""

    def __post_init__(self) -> None:
        self.done = self.on_session is None or not reports_sessions(self.agent)

    def poll(self) -> str:
        if self.done and self.on_lines is None:
            return ""
        lines = self._new_lines()
        if not lines:
            return ""
        if not self.done:
            self.found(judge(self.agent, lines).session_id)
        return self.on_lines(lines) if self.on_lines is not None else ""

    def _new_lines(self) -> list[str]:
        with open(self.log, "rb") as handle:
            handle.seek(self.offset)
            chunk = self.partial + handle.read()
        self.offset += len(chunk) - len(self.partial)
        *complete, self.partial = chunk.split(b"\n")   # a line still being written waits for its end
        return [line.decode(errors="replace") for line in complete]

    def found(self, session_id: str) -> None:
        if session_id and not self.done:
            self.done = True
            self.on_session(session_id)


def read_new_lines(log: Path, offset: int) -> list[str]:
    with open(log, "rb") as handle:
        handle.seek(offset)
        return handle.read().decode(errors="replace").splitlines()
