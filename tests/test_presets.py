"""Agent presets end to end on the fake forge, with fakes of the CLIs (tests/agents/bin) printing their documented
event streams: start, continue with the same session, and failure decided by the final event."""
from __future__ import annotations

import subprocess
import uuid

from helpers import wait_for
from test_end_to_end import _settled, _status_comments

from forge_bridge.sessions import Store


def _claude_lines(repo, branch: str) -> list[str]:
    done = subprocess.run(["git", "show", f"{branch}:CLAUDE_WORK.md"], cwd=repo.bare, capture_output=True, text=True)
    return [line for line in done.stdout.splitlines() if ": " in line]


def test_claude_starts_a_session_the_bridge_chose_and_resumes_it(gitea, start_bridge):
    repo = gitea.create_repo("alice", "widgets")
    issue = gitea.create_issue(repo, "Sort the list", "alphabetically")
    bridge = start_bridge([gitea], preset="claude")
    gitea.add_label(repo, issue, "kugetsu:todo")
    wait_for(lambda: _settled(gitea, repo, issue, "kugetsu:review"), timeout=90, what="the first run")
    [pull] = repo.pulls.values()
    session = Store(bridge.redis).session(f"{gitea.host}/alice/widgets#1").agent_session_id
    assert uuid.UUID(session) and pull.body.startswith("Closes #1\n\nsummary of sort")

    gitea.comment(repo, repo.issues[pull.number], "@kugetsu-bot descending please")

    wait_for(lambda: len(_claude_lines(repo, pull.head)) == 2, timeout=90, what="the resumed run's commit")
    first, second = _claude_lines(repo, pull.head)
    assert first.startswith(f"{session}: Sort the list") and second == f"{session}: descending please"


def test_claude_error_result_fails_the_task_despite_exit_zero(github, start_bridge):
    repo = github.create_repo("alice", "widgets")
    issue = github.create_issue(repo, "error on purpose", "")
    start_bridge([github], preset="claude")
    github.add_label(repo, issue, "kugetsu:todo")
    wait_for(lambda: _settled(github, repo, issue, "kugetsu:failed"), timeout=90, what="the failed label")
    assert repo.pulls == {}
    assert "the agent reported an error (error_during_execution)" in _status_comments(github, repo, issue)[0]
