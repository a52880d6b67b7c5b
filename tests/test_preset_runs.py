"""Each preset's argv run against a fake of its CLI (tests/agents/bin) as a real subprocess: the documented event
stream read for the session id, summary and usage, and the misleading cases judged right — exit 0 with an error
event, no final event, no session id, garbage lines, an unknown session on resume."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from helpers import FAKE_AGENT

from forge_bridge.agents.presets import agent_env, build_argv, run_agent
from forge_bridge.config import AgentConfig
from forge_bridge.models import TaskAction

BIN = FAKE_AGENT.parent / "bin"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-q", "--allow-empty", "-m", "0"],
                   cwd=repo, check=True)
    return repo


def run(workdir: Path, preset: str, prompt: str, *, action=TaskAction.START, session_id: str = "",
        issue_ref: str = "h/o/r#1", **agent):
    config = AgentConfig(preset=preset, pass_env=("FAKE_AGENT_STATE",), **agent)
    files = workdir.parent / "session"
    files.mkdir(exist_ok=True)
    (files / "prompt.md").write_text(prompt)
    values = {"prompt": prompt, "session_id": session_id, "issue_ref": issue_ref,
              "message_file": str(files / "prompt.md"), "history_file": str(files / "history.md")}
    environ = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
               "FAKE_AGENT_STATE": str(workdir.parent / "state")}
    log = workdir.parent / "agent.log"
    result = run_agent(build_argv(config, action, values), prompt=prompt, cwd=workdir, timeout=30, log=log,
                       env=agent_env(config, {}, environ=environ), agent=config)
    return result, log.read_text()


CLAUDE_ID = "0b4c56b2-3e0f-4a5b-9d3e-3f1f2d6a7c11"


def test_claude_reads_the_result_event_and_its_usage(workdir):
    result, _ = run(workdir, "claude", "sort the list", session_id=CLAUDE_ID)
    verdict = result.verdict
    assert result.ok and verdict.session_id == CLAUDE_ID and verdict.summary == "summary of ok"
    assert (verdict.cost_usd, verdict.tokens, verdict.turns) == (0.0125, 1500, 2)


@pytest.mark.parametrize(("preset", "head"), [
    ("claude", ["claude", "--model", "m"]), ("codex", ["codex", "exec", "--model", "m"]),
    ("opencode", ["opencode", "run", "--model", "m"]), ("aider", ["aider", "--model", "m"])])
def test_extra_arguments_follow_the_program_and_its_subcommand(preset, head):
    argv = build_argv(AgentConfig(preset=preset, extra_args=("--model", "m")), TaskAction.CONTINUE,
                      {"session_id": "s"})
    assert argv[:len(head)] == head and argv.count("--model") == 1


def test_claude_limits_come_from_configuration():
    argv = build_argv(AgentConfig(preset="claude", max_turns=12, max_budget_usd=2.5), TaskAction.CONTINUE,
                      {"session_id": "s"})
    assert argv[-6:] == ["--resume", "s", "--max-turns", "12", "--max-budget-usd", "2.5"]
    assert "--max-turns" not in build_argv(AgentConfig(preset="claude"), TaskAction.START, {"session_id": "s"})


@pytest.mark.parametrize("preset", ["claude", "codex", "opencode"])
@pytest.mark.parametrize(("mode", "failure"), [
    ("error", "reported"),                    # exit 0, but the CLI says it failed
    ("nofinal", "ended without"),             # exit 0, no final event
])
def test_an_error_event_or_a_missing_final_event_fails_despite_exit_zero(workdir, preset, mode, failure):
    result, _ = run(workdir, preset, f"mode:{mode} please", session_id=CLAUDE_ID)
    assert result.exit_code == 0 and not result.ok and failure in result.failure


@pytest.mark.parametrize("preset", ["claude", "codex", "opencode"])
def test_garbage_lines_are_passed_over(workdir, preset):
    result, log = run(workdir, preset, "mode:garbage here", session_id=CLAUDE_ID)
    assert "not json" in log and result.ok and result.summary == "summary of garbage" and result.session_id


@pytest.mark.parametrize("preset", ["codex", "opencode"])
def test_a_stream_that_names_no_session_leaves_none(workdir, preset):
    result, _ = run(workdir, preset, "mode:nosession")
    assert result.ok and result.session_id == ""


def test_codex_thread_id_usage_and_resume(workdir):
    first, _ = run(workdir, "codex", "first")
    assert first.ok and first.session_id and first.verdict.tokens == 2400 and first.verdict.turns == 1
    again, _ = run(workdir, "codex", "second", action=TaskAction.CONTINUE, session_id=first.session_id)
    assert again.ok and again.session_id == first.session_id
    assert again.verdict.tokens == 4800 and again.verdict.running == {"tokens"}   # the thread's running total


def test_a_cli_that_rejects_the_preset_arguments_is_named_with_the_tested_versions(workdir):
    result, _ = run(workdir, "codex", "first", extra_args=("--full-auto",))
    assert result.exit_code == 2 and not result.ok
    assert result.rejected("codex") == ("the agent's CLI rejected the preset's arguments (error: unexpected argument "
                                        "'--full-auto' found); the codex preset was tested with Codex CLI 0.169.0 "
                                        "to 0.171.0")


def test_claude_unknown_session_on_resume_names_no_session(workdir):
    result, log = run(workdir, "claude", "again", action=TaskAction.CONTINUE, session_id=CLAUDE_ID)
    assert "No conversation found" in log and '"result"' in log   # the lone result echoes the id asked for...
    assert result.session_id == "" and not result.ok             # ...which names no session: fall back
    assert result.failure == f"the agent reported: No conversation found with session ID: {CLAUDE_ID}"


def test_opencode_session_cost_tokens_and_permission(workdir):
    first, _ = run(workdir, "opencode", "first")
    assert first.ok and first.session_id.startswith("ses_")
    assert (first.verdict.cost_usd, first.verdict.tokens, first.verdict.turns) == (0.02, 1800, 1)
    again, _ = run(workdir, "opencode", "second", action=TaskAction.CONTINUE, session_id=first.session_id)
    assert again.ok and again.session_id == first.session_id
    assert (workdir / "OPENCODE_WORK.md").read_text().count(first.session_id) == 2


@pytest.mark.parametrize(("preset", "says"), [
    ("claude", "No conversation found"), ("codex", "no rollout found"), ("opencode", "Session not found")])
def test_an_unknown_session_on_resume_fails_naming_no_session(workdir, preset, says):
    result, log = run(workdir, preset, "go on", action=TaskAction.CONTINUE, session_id="gone-elsewhere")
    assert result.exit_code == 1 and not result.ok and result.session_id == "" and says in log


def test_aider_cost_and_tokens_from_its_report_and_its_history_file(workdir):
    first, log = run(workdir, "aider", "first")
    assert first.ok and (first.verdict.cost_usd, first.verdict.tokens) == (0.0042, 1700)
    history = (workdir.parent / "session" / "history.md").read_text()
    assert "#### first" in history
    second, log = run(workdir, "aider", "second", action=TaskAction.CONTINUE)
    assert second.ok and "Restored 1 messages" in log
    failed, _ = run(workdir, "aider", "mode:error")
    assert failed.exit_code == 1 and not failed.ok


def test_kugetsu_keeps_its_own_sessions(workdir):
    refused, log = run(workdir, "kugetsu", "x", action=TaskAction.CONTINUE, issue_ref="h/o/r#2")
    assert refused.exit_code == 2 and "no session for h/o/r#2" in log
    assert run(workdir, "kugetsu", "first", issue_ref="h/o/r#2")[0].ok
    assert run(workdir, "kugetsu", "more", action=TaskAction.CONTINUE, issue_ref="h/o/r#2")[0].ok


@pytest.mark.parametrize("preset", ["claude", "codex", "opencode", "kugetsu"])
def test_every_fake_waits_for_the_end_of_its_input(workdir, preset):
    """These CLIs read stdin to its end: a run ends only because the bridge writes the whole prompt and closes it
    (a prompt larger than a pipe's buffer, so writing it must not block the wait)."""
    prompt = "x" * 100_000 + "\nthe end"
    result, _ = run(workdir, preset, prompt, session_id=CLAUDE_ID)
    assert result.ok
    assert (workdir / f"{preset.upper()}_WORK.md").read_text().endswith(": the end\n")


def test_a_prompt_too_long_for_an_argv_still_runs_whole_on_stdin(workdir):
    """kugetsu takes the prompt as an argument too, and Linux caps one argument at 128 KiB: the argument is cut,
    the whole prompt is on stdin, and the issue can run."""
    result, _ = run(workdir, "kugetsu", "x" * 200_000 + " the end")
    assert result.ok, result.failure


def test_an_issue_titled_like_an_option_is_a_prompt_not_an_option(workdir):
    result, log = run(workdir, "kugetsu", "--help")
    assert result.ok and "unknown option" not in log
