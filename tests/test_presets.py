"""Every agent preset end to end on the fake forge, with fakes of the CLIs (tests/agents/bin) printing their
documented event streams: start, continue in the same session, and — when the session is lost (as on another
host) — a new session whose prompt carries the issue's history."""
from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from helpers import agent_jobs_done, wait_for
from test_end_to_end import _branch_file, _settled, _status_comments

from forge_bridge.store.sessions import Store


def _work_lines(repo, branch: str, preset: str) -> list[str]:
    done = subprocess.run(["git", "show", f"{branch}:{preset.upper()}_WORK.md"], cwd=repo.bare, capture_output=True,
                          text=True)
    return done.stdout.splitlines()


def _prompts(bridge, preset: str) -> list[str]:
    """Every prompt the fake CLI was given, across its sessions, in the order they were asked."""
    return [record["prompt"] for record in _records(bridge, preset)]


def _first_run(forge, start_bridge, **bridge_options):
    """A labelled issue's first run, through to its pull request."""
    repo = forge.create_repo("alice", "widgets")
    issue = forge.create_issue(repo, "Sort the list", "alphabetically")
    bridge = start_bridge([forge], **bridge_options)
    forge.add_label(repo, issue, "kugetsu:todo")
    wait_for(lambda: _settled(forge, repo, issue, "kugetsu:review"), timeout=90, what="the first run")
    [pull] = repo.pulls.values()
    return repo, issue, pull, bridge


def _session(bridge, forge) -> str:
    return Store(bridge.redis).session(f"{forge.host}/alice/widgets#1").agent_session_id


def _lose_the_session(bridge, preset: str, session_id: str) -> None:
    """What moving to another host does to an agent's session: the CLI no longer has it."""
    if preset == "aider":
        Path(session_id).unlink()
    else:
        shutil.rmtree(bridge.agent_state / preset)


USAGE = {"claude": "$0.0125 · 1.5k tokens · 2 turns", "codex": "2.4k tokens · 1 turn",
         "opencode": "$0.02 · 1.8k tokens · 1 turn", "aider": "$0.0042 · 1.7k tokens"}


def _assert_the_run_is_told_on_the_pull_request(forge, repo, pull, issue, preset: str) -> None:
    """After a task on an issue with a pull request, a comment there says what that run did; the status comment
    holds the same run's summary and usage."""
    def told():
        return [b for b in forge.comments_of(repo, repo.issues[pull.number]) if b.startswith("**forge-bridge**")]

    [note] = wait_for(told, timeout=30, what="the comment on the pull request")
    assert "task 2 (continue, asked by @alice): **succeeded** — 1 new commit(s) pushed" in note
    assert USAGE[preset] in note and "Commits in this run:\n- " in note
    assert f"/alice/widgets/issues/{issue.number}#issuecomment-" in note
    [status] = _status_comments(forge, repo, issue)
    assert f"| {USAGE[preset]} | succeeded" in status
    if preset != "aider":   # aider prints no summary; the others' is quoted on both
        assert "> summary of ok" in note and "what the agent says it did</summary>\n\n> summary of ok" in status


@pytest.mark.parametrize(("preset", "forge_kind"), [
    ("claude", "gitea"), ("codex", "github"), ("opencode", "gitea"), ("aider", "github")])
def test_preset_starts_continues_and_falls_back_with_history(preset, forge_kind, request, start_bridge):
    forge = request.getfixturevalue(forge_kind)
    repo, issue, pull, bridge = _first_run(forge, start_bridge, preset=preset)
    first = _session(bridge, forge)
    assert first and pull.body.startswith("Closes #1")

    forge.comment(repo, issue, "@kugetsu-bot descending please")
    wait_for(lambda: len(_work_lines(repo, pull.head, preset)) == 2, timeout=90, what="the resumed run")
    assert _session(bridge, forge) == first
    one, two = _work_lines(repo, pull.head, preset)
    if preset == "aider":   # its session is the chat history file, restored on the second run
        assert (one, two) == ("new: alphabetically", "restored: descending please")
    else:
        assert one == f"{first}: alphabetically" and two == f"{first}: descending please"

    _assert_the_run_is_told_on_the_pull_request(forge, repo, pull, issue, preset)

    _lose_the_session(bridge, preset, first)
    forge.comment(repo, issue, "@kugetsu-bot then drop duplicates")
    wait_for(lambda: len(_work_lines(repo, pull.head, preset)) == 3, timeout=90, what="the run in a new session")
    third = _work_lines(repo, pull.head, preset)[2]
    assert third.endswith(": then drop duplicates") and not third.startswith(first)
    history = _prompts(bridge, preset)[-1]   # the new session was told what came before
    for earlier in ("## Earlier tasks", "Sort the list", "descending please", pull.head):
        assert earlier in history
    wait_for(lambda: _settled(forge, repo, issue, "kugetsu:review"), timeout=60, what="the third run to settle")
    assert "new session" in _status_comments(forge, repo, issue)[0]
    if preset != "aider":
        assert _session(bridge, forge) not in ("", first)


def test_kugetsu_preset_starts_continues_and_retells_history_on_another_host(github, start_bridge):
    repo, issue, pull, bridge = _first_run(github, start_bridge, preset="kugetsu")
    github.comment(repo, issue, "@kugetsu-bot descending please")
    wait_for(lambda: len(_work_lines(repo, pull.head, "kugetsu")) == 2, timeout=90, what="the continue")
    wait_for(lambda: _settled(github, repo, issue, "kugetsu:review"), timeout=60, what="the continue to settle")
    _move_the_session(bridge, github)

    github.comment(repo, issue, "@kugetsu-bot then drop duplicates")

    wait_for(lambda: len(_work_lines(repo, pull.head, "kugetsu")) == 3, timeout=90, what="the third run")
    records = _records(bridge, "kugetsu")
    assert [r["argv"][0] for r in records] == ["start", "continue", "start"]
    assert records[1]["prompt"] == "descending please"
    assert "it lives on host another-host" in records[2]["prompt"] and "descending please" in records[2]["prompt"]


def test_a_command_agent_can_take_a_session_id_the_bridge_picks(github, start_bridge):
    repo, issue, pull, bridge = _first_run(github, start_bridge, agent={"session_id": '"uuid"'})
    chosen = _session(bridge, github)
    github.comment(repo, issue, "@kugetsu-bot descending please")
    wait_for(lambda: "descending" in _branch_file(repo, pull.head, "AGENT_WORK.md"), timeout=90, what="continue")
    assert uuid.UUID(chosen) and _session(bridge, github) == chosen
    # the fake agent prints the FORGE_BRIDGE_SESSION_ID it was given: the same both times
    logs = sorted((bridge.data_dir / "logs").rglob("*.log"))
    assert len(logs) == 2 and all(f'"session_id": "{chosen}"' in log.read_text() for log in logs)


def test_a_command_agent_resumes_its_session_and_falls_back_with_history(github, tmp_path, start_bridge):
    sessions = tmp_path / "command-sessions"
    repo, issue, pull, bridge = _first_run(github, start_bridge, agent_args=["--sessions", str(sessions)])
    first = _session(bridge, github)
    github.comment(repo, issue, "@kugetsu-bot descending please")
    wait_for(lambda: "descending" in _branch_file(repo, pull.head, "AGENT_WORK.md"), timeout=90, what="continue")
    assert _session(bridge, github) == first and len((sessions / first).read_text().splitlines()) == 2
    shutil.rmtree(sessions)

    github.comment(repo, issue, "@kugetsu-bot then drop duplicates")

    wait_for(lambda: "drop duplicates" in _branch_file(repo, pull.head, "AGENT_WORK.md"), timeout=90, what="third")
    [new] = [path for path in sessions.iterdir()]
    told = json.loads(new.read_text())["prompt"]
    assert new.name != first and f"resuming session {first} failed" in told and "descending please" in told


def test_claude_error_result_fails_the_task_despite_exit_zero(github, start_bridge):
    repo = github.create_repo("alice", "widgets")
    issue = github.create_issue(repo, "mode:error on purpose", "")
    bridge = start_bridge([github], preset="claude")
    github.add_label(repo, issue, "kugetsu:todo")
    wait_for(lambda: _settled(github, repo, issue, "kugetsu:failed"), timeout=90, what="the failed label")
    # The commit it made before reporting the error is kept, as partial work in a draft: nothing is merged-ready.
    assert [pull.draft for pull in repo.pulls.values()] == [True]
    assert "the agent reported: summary of error; partial work kept" in _status_comments(github, repo, issue)[0]
    assert uuid.UUID(_session(bridge, github))   # stored even though the run failed


def test_a_model_error_is_quoted_in_the_outcome(github, start_bridge):
    repo = github.create_repo("alice", "widgets")
    issue = github.create_issue(repo, "mode:apierror on purpose", "")
    start_bridge([github], preset="claude")
    github.add_label(repo, issue, "kugetsu:todo")
    wait_for(lambda: _settled(github, repo, issue, "kugetsu:failed"), timeout=90, what="the failed label")
    status = _status_comments(github, repo, issue)[0]
    assert "the agent reported: API Error: 400 model: unknown model 'claude-nope'" in status


def test_a_session_recorded_on_another_host_is_not_resumed_but_retold(github, start_bridge):
    repo, issue, pull, bridge = _first_run(github, start_bridge, preset="codex")
    _move_the_session(bridge, github)

    github.comment(repo, issue, "@kugetsu-bot descending please")

    wait_for(lambda: len(_work_lines(repo, pull.head, "codex")) == 2, timeout=90, what="the second run")
    records = _records(bridge, "codex")
    assert len(records) == 2 and not any("resume" in record["argv"] for record in records)  # never tried
    assert "it lives on host another-host" in records[-1]["prompt"] and "alphabetically" in records[-1]["prompt"]


def _move_the_session(bridge, forge) -> None:
    """Make the issue's agent session look as if another host ran it — once the last run has saved it for good."""
    wait_for(lambda: agent_jobs_done(bridge.redis), timeout=30, what="the last agent job to end")
    store = Store(bridge.redis)
    session = store.session(f"{forge.host}/alice/widgets#1")
    session.agent_host = "another-host"
    store.save_session(session)


def _records(bridge, preset: str) -> list[dict]:
    """What the fake CLI was asked, oldest first."""
    found = [json.loads(line) for path in (bridge.agent_state / preset).glob("*.jsonl")
             for line in path.read_text().splitlines()]
    return sorted(found, key=lambda record: record["at"])
