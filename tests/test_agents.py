"""One agent run with real subprocesses: the prompt on stdin (then closed), argv substitution without a shell,
a restricted environment, the timeout killing the whole process group."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from helpers import alive, wait_for

from forge_bridge.agents.presets import agent_env, build_argv, run_agent
from forge_bridge.redact import tail
from forge_bridge.config import AgentConfig
from forge_bridge.models import TaskAction

PY = sys.executable


def _run(tmp_path: Path, script: str, *, prompt: str = "hello", timeout: float = 30, **agent) -> tuple:
    config = AgentConfig(preset="command", argv=(PY, "-c", script), **agent)
    log = tmp_path / "agent.log"
    result = run_agent([PY, "-c", script], prompt=prompt, cwd=tmp_path, env=dict(os.environ), timeout=timeout,
                       log=log, agent=config)
    return result, log.read_text()


def test_prompt_arrives_on_stdin_and_stdin_is_closed(tmp_path):
    result, log = _run(tmp_path, "import sys; data = sys.stdin.read(); print('got', len(data), repr(data[:5]))",
                       prompt="x" * 200_000)
    assert result.ok and "got 200000 'xxxxx'" in log


def test_session_id_and_summary_are_read_from_json_lines(tmp_path):
    script = "import json; print('noise {'); print(json.dumps({'sid': 'abc', 'sum': 'did it'}))"
    result, _ = _run(tmp_path, script, session_id="json:sid", summary="json:sum")
    assert (result.session_id, result.summary) == ("abc", "did it")


def test_exit_code_is_reported(tmp_path):
    result, _ = _run(tmp_path, "raise SystemExit(7)")
    assert not result.ok and result.exit_code == 7 and not result.timed_out


def test_timeout_kills_the_whole_process_group(tmp_path):
    script = ("import signal, subprocess, sys\n"
              "c = subprocess.Popen([sys.executable, '-c', 'import signal; signal.pause()'])\n"
              "print('child', c.pid, flush=True); signal.pause()")
    result, log = _run(tmp_path, script, timeout=1.5)
    assert result.timed_out and not result.ok
    child = int(log.split("child ")[1].split()[0])
    wait_for(lambda: not alive(child), timeout=10, what="the agent's child to be gone")


def test_argv_placeholders_are_substituted_once_and_never_through_a_shell(tmp_path):
    agent = AgentConfig(preset="command", argv=("tool", "--msg", "{prompt}", "{issue_ref}"))
    prompt = "$(touch pwned) `id` {issue_ref} ; rm -rf ~"
    argv = build_argv(agent, TaskAction.START, {"prompt": prompt, "issue_ref": "h/o/r#1"})
    assert argv == ["tool", "--msg", prompt, "h/o/r#1"]
    result, log = _run(tmp_path, "import sys; print(sys.argv[1])", prompt=prompt)
    assert not (tmp_path / "pwned").exists()


def test_kugetsu_preset():
    agent = AgentConfig(preset="kugetsu")
    assert build_argv(agent, TaskAction.CONTINUE, {"issue_ref": "h/o/r#2", "prompt": "go"}) == \
        ["kugetsu", "continue", "h/o/r#2", "--", "go"]
    long = build_argv(agent, TaskAction.START, {"issue_ref": "h/o/r#2", "prompt": "é" * 100_000})[-1]
    assert len(long.encode()) < 128 * 1024 and long.endswith("the whole prompt is on stdin]")


def test_agent_environment_holds_only_what_it_needs():
    environ = {"PATH": "/bin", "HOME": "/h", "LANG": "C", "GITHUB_TOKEN": "secret", "FORGE_WEBHOOK": "s",
               "ANTHROPIC_API_KEY": "k"}
    env = agent_env(AgentConfig(pass_env=("ANTHROPIC_API_KEY",)), {"FORGE_BRIDGE_TASK_ID": "t1"}, environ=environ)
    assert env == {"PATH": "/bin", "HOME": "/h", "LANG": "C", "ANTHROPIC_API_KEY": "k", "FORGE_BRIDGE_TASK_ID": "t1"}


def test_a_missing_agent_is_a_failure_written_to_the_log(tmp_path):
    config = AgentConfig(preset="command", argv=("no-such-agent-here",))
    log = tmp_path / "a.log"
    result = run_agent(["no-such-agent-here"], prompt="", cwd=tmp_path, env={}, timeout=5, log=log, agent=config)
    assert not result.ok and "cannot start agent" in tail(log) and "cannot start agent" in result.failure


def test_the_session_id_is_heard_while_the_agent_still_runs(tmp_path):
    """This agent names its session, then ends only once the bridge has heard it (the callback releases it): a
    session id read only after the end would leave it waiting until the timeout."""
    release = tmp_path / "release"
    os.mkfifo(release)   # opening it to read blocks the agent until the bridge's callback opens it to write
    script = (f"import json; print(json.dumps({{'sid': 'early-1'}}), flush=True); open({str(release)!r}).read()")
    heard = []

    def on_session(session_id: str) -> None:
        heard.append(session_id)
        with open(release, "w") as gate:
            gate.write("go")

    config = AgentConfig(preset="command", argv=(PY, "-c", script), session_id="json:sid")
    result = run_agent([PY, "-c", script], prompt="", cwd=tmp_path, env=dict(os.environ), timeout=15,
                       log=tmp_path / "a.log", agent=config, on_session=on_session)
    assert result.ok and heard == ["early-1"] and result.session_id == "early-1"
