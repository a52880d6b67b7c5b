"""End to end: a label on the fake forge -> webhook (or poller) -> `forge-bridge serve` with its embedded server
and a real RQ worker process -> real git -> the fake agent -> a branch, a pull request, one status comment."""
from __future__ import annotations

import json
import subprocess

import pytest
from fakeforge.server import FakeForge
from fakeforge.state import Issue, Repo
from helpers import wait_for

from forge_bridge.store.sessions import Store
from forge_bridge.work.report import STATUS_MARKER

TITLE = "Fix the emoji names"
BODY = "Names like <😀> & friends break the list; quote `$(rm -rf ~)` literally."


def _status_comments(forge: FakeForge, repo: Repo, issue: Issue) -> list[str]:
    return [body for body in forge.comments_of(repo, issue) if STATUS_MARKER in body]


def _settled(forge: FakeForge, repo: Repo, issue: Issue, label: str):
    labels = forge.labels_of(repo, issue)
    return labels if label in labels and not any(l.endswith(":running") or l.endswith(":queued") for l in labels) \
        else None


def _branch_file(repo: Repo, branch: str, path: str) -> str:
    return subprocess.run(["git", "show", f"{branch}:{path}"], cwd=repo.bare, capture_output=True, text=True,
                          check=True).stdout


def _assert_reviewed(forge: FakeForge, repo: Repo, issue: Issue, bridge) -> None:
    wait_for(lambda: _settled(forge, repo, issue, "kugetsu:review"), timeout=90, what="the review label")
    assert forge.labels_of(repo, issue) == ["kugetsu:review"]  # todo removed, one state label
    [pull] = repo.pulls.values()
    assert pull.head == "kugetsu/1-fix-the-emoji-names" and pull.base == "main"
    assert pull.title == TITLE and pull.body.startswith(f"Closes #{issue.number}")
    # The agent got the issue's title and body on stdin, and its commit is on the pushed branch.
    assert _branch_file(repo, pull.head, "AGENT_WORK.md").strip() == f"{TITLE}\n\n{BODY}"
    [status] = _status_comments(forge, repo, issue)
    pull_url = f"{forge.url}/alice/widgets/{'pull' if forge.kind == 'github' else 'pulls'}/{pull.number}"
    assert pull_url in status and "succeeded" in status and "kugetsu/1-fix-the-emoji-names" in status
    worktree = bridge.data_dir / "worktrees" / f"127.0.0.1_{forge.port}-alice-widgets-1"
    assert (worktree / "AGENT_WORK.md").exists()


def test_label_webhook_opens_pull_request(forge, start_bridge):
    repo = forge.create_repo("alice", "widgets")
    issue = forge.create_issue(repo, TITLE, BODY)
    bridge = start_bridge([forge])

    [answer] = forge.add_label(repo, issue, "kugetsu:todo")

    assert answer.status_code == 202 and answer.json()["status"] == "queued"
    _assert_reviewed(forge, repo, issue, bridge)
    assert bridge.stop() == 0


@pytest.mark.parametrize("method, path", [("POST", "/issues/1/comments"), ("PATCH", "/issues/comments/")],
                         ids=["queued report", "running report"])
def test_the_agent_starts_while_the_forge_is_still_taking_a_report(method, path, github, start_bridge):
    """Nothing a forge write waits for may delay the agent: with the status comment's creation (the intake's
    "queued") or its edit (the runner's "running") held by a slow forge, the agent still starts and does its
    work; the reports land once the forge answers, in order, as one status comment."""
    repo = github.create_repo("alice", "widgets")
    issue = github.create_issue(repo, TITLE, BODY)
    bridge = start_bridge([github], settings={"workers": "2"})   # the default: intake and agent side by side
    slow = github.hold(method, path)
    try:
        github.add_label(repo, issue, "kugetsu:todo")
        worktree = bridge.data_dir / "worktrees" / f"127.0.0.1_{github.port}-alice-widgets-1"
        # well inside the 30 s after which the forge client gives up on the held write by itself
        wait_for(lambda: (worktree / "AGENT_WORK.md").exists(), timeout=15, what="the agent's work")
        # The report may reach the forge only after the (quick) agent's work: then it is held all the same.
        wait_for(lambda: slow.held >= 1, timeout=15, what="the report to reach the slow forge")
        assert "kugetsu:running" not in github.labels_of(repo, issue)
        wait_for(lambda: repo.pulls, timeout=15, what="the pull request, opened while the report is held")
    finally:
        slow.release()
    _assert_reviewed(github, repo, issue, bridge)
    # The held report's copy of the session, read before the pull request was opened, must not undo it.
    session = Store(bridge.redis).session(f"{github.host}/alice/widgets#1")
    [pull] = repo.pulls.values()
    assert session.pull_request_number == pull.number and session.pull_request_url.endswith(f"/pull/{pull.number}")
    assert session.branch == "kugetsu/1-fix-the-emoji-names" and session.worktree


def test_polling_only_without_any_webhook_secret(forge, start_bridge):
    repo = forge.create_repo("alice", "widgets")
    issue = forge.create_issue(repo, TITLE, BODY)
    bridge = start_bridge([forge], poll=True, webhook_secret=False)   # no secret anywhere: serve starts

    [refused] = forge.add_label(repo, issue, "kugetsu:todo")   # a hook left on the forge is turned away;
    assert refused.status_code == 401
    assert refused.json()["reason"] == f"webhooks are not enabled for forge {forge.kind} (no webhook_secret_env)"

    _assert_reviewed(forge, repo, issue, bridge)   # the poller found the label


def test_webhook_and_poller_seeing_one_label_start_one_task(gitea, start_bridge):
    repo = gitea.create_repo("alice", "widgets")
    issue = gitea.create_issue(repo, TITLE, BODY)
    bridge = start_bridge([gitea], poll=True)

    [answer] = gitea.add_label(repo, issue, "kugetsu:todo")

    assert answer.status_code == 202
    _assert_reviewed(gitea, repo, issue, bridge)
    assert len(bridge.redis.keys("fb:task:*")) == 1


@pytest.mark.parametrize(("mode", "outcome"), [("fail", "exited with code 3"), ("nocommit", "no new commits")])
def test_failed_agent_is_reported_with_its_log(mode, outcome, github, start_bridge):
    repo = github.create_repo("alice", "widgets")
    issue = github.create_issue(repo, TITLE, BODY)
    start_bridge([github], agent_args=["--mode", mode])

    github.add_label(repo, issue, "kugetsu:todo")

    wait_for(lambda: _settled(github, repo, issue, "kugetsu:failed"), timeout=90, what="the failed label")
    assert github.labels_of(repo, issue) == ["kugetsu:failed"]
    assert repo.pulls == {}
    [status] = _status_comments(github, repo, issue)
    assert outcome in status and "<details>" in status and f"working on: {TITLE}" in status


def test_hanging_agent_is_stopped_at_task_timeout(github, start_bridge):
    repo = github.create_repo("alice", "widgets")
    issue = github.create_issue(repo, TITLE, BODY)
    start_bridge([github], agent_args=["--mode", "spawn"], settings={"task_timeout": '"2s"'})

    github.add_label(repo, issue, "kugetsu:todo")

    wait_for(lambda: _settled(github, repo, issue, "kugetsu:failed"), timeout=90, what="the failed label")
    [status] = _status_comments(github, repo, issue)
    assert "timed_out" in status and "task_timeout (2s)" in status


def test_external_redis_url_replaces_the_embedded_server(github, start_bridge, redis_url, conn):
    repo = github.create_repo("alice", "widgets")
    issue = github.create_issue(repo, TITLE, BODY)
    bridge = start_bridge([github], settings={"redis_url": f'"{redis_url}"'})

    github.add_label(repo, issue, "kugetsu:todo")

    wait_for(lambda: _settled(github, repo, issue, "kugetsu:review"), timeout=90, what="the review label")
    assert len(conn.keys("fb:task:*")) == 1
    assert not (bridge.data_dir / "valkey").exists()


def test_embedded_server_stops_with_serve_and_keeps_its_data(github, start_bridge):
    from redis.exceptions import ConnectionError as RedisConnectionError

    repo = github.create_repo("alice", "widgets")
    issue = github.create_issue(repo, TITLE, BODY)
    bridge = start_bridge([github])
    github.add_label(repo, issue, "kugetsu:todo")
    wait_for(lambda: _settled(github, repo, issue, "kugetsu:review"), timeout=90, what="the review label")

    assert bridge.stop() == 0
    with pytest.raises(RedisConnectionError):
        bridge.redis.ping()
    bridge.start()
    assert len(bridge.redis.keys("fb:task:*")) == 1  # the append-only file brought it back


def test_comment_start_reaches_the_agent_as_data_never_a_shell(github, start_bridge, tmp_path):
    repo = github.create_repo("alice", "widgets")
    issue = github.create_issue(repo, TITLE, BODY)
    start_bridge([github])
    trap = tmp_path / "pwned"
    request = f"/kugetsu start $(touch {trap}); `touch {trap}` | sh && echo {{prompt}} > {trap}"

    [answer] = github.comment(repo, issue, request)

    assert answer.status_code == 202
    wait_for(lambda: _settled(github, repo, issue, "kugetsu:review"), timeout=90, what="the review label")
    [pull] = repo.pulls.values()
    assert _branch_file(repo, pull.head, "AGENT_WORK.md").strip().endswith(request.removeprefix("/kugetsu start "))
    assert not trap.exists()


def test_a_comment_on_the_pull_request_continues_on_the_same_branch(gitea, start_bridge):
    repo = gitea.create_repo("alice", "widgets")
    issue = gitea.create_issue(repo, TITLE, BODY)
    bridge = start_bridge([gitea])
    gitea.add_label(repo, issue, "kugetsu:todo")
    _assert_reviewed(gitea, repo, issue, bridge)
    [pull] = repo.pulls.values()

    [answer] = gitea.comment(repo, repo.issues[pull.number], "thanks @kugetsu-bot, now also sort the list")

    assert answer.status_code == 202
    wait_for(lambda: "sort the list" in _branch_file(repo, pull.head, "AGENT_WORK.md"), timeout=90,
             what="the second run's commit on the same branch")
    wait_for(lambda: _settled(gitea, repo, issue, "kugetsu:review") and
             "| 2 |" in _status_comments(gitea, repo, issue)[0], timeout=90, what="the second run's report")
    assert list(repo.pulls) == [pull.number]  # the same pull request, updated by the push
    [status] = _status_comments(gitea, repo, issue)
    assert "continue: thanks @kugetsu-bot" in status


def test_a_task_interrupted_by_shutdown_runs_again_after_a_restart(github, start_bridge, tmp_path):
    record = tmp_path / "runs.jsonl"
    repo = github.create_repo("alice", "widgets")
    issue = github.create_issue(repo, TITLE, BODY)
    bridge = start_bridge([github], agent_args=["--sleep", "6", "--record", str(record)])
    github.add_label(repo, issue, "kugetsu:todo")
    wait_for(lambda: record.exists() and '"start"' in record.read_text(), timeout=60, what="the agent to start")

    assert bridge.stop() == 0                       # SIGTERM while the agent works: it is stopped...
    [first] = [json.loads(line) for line in record.read_text().splitlines()]
    assert first["what"] == "start"                 # ...before it could finish
    bridge.start()                                  # the task was requeued, so it runs again

    _assert_reviewed(github, repo, issue, bridge)
    starts = [json.loads(line)["task"] for line in record.read_text().splitlines() if '"start"' in line]
    assert starts == [first["task"], first["task"]]
