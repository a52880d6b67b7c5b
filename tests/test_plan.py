"""Plan first, then build: a `plan` task runs the agent in its read-only mode, posts its answer as `### Plan`,
pushes nothing and leaves `kugetsu:planned`; `approve` carries the plan out in the same session."""
from __future__ import annotations

import json

import pytest
from helpers import wait_for

from forge_bridge.agents import presets
from forge_bridge.config import AgentConfig
from forge_bridge.models import TaskAction


@pytest.mark.parametrize("preset, flags", [
    ("claude", ["--permission-mode", "plan"]), ("codex", ["--sandbox", "read-only"]),
    ("opencode", ["--agent", "plan"]), ("aider", ["--chat-mode", "ask"]),
])
def test_each_preset_plans_in_its_read_only_mode(preset, flags):
    values = {"prompt": "p", "session_id": "s", "message_file": "m", "history_file": "h", "issue_ref": "r"}
    agent = AgentConfig(preset=preset)
    for action in (TaskAction.START, TaskAction.CONTINUE):
        argv = presets.plan_argv(agent, presets.build_argv(agent, action, values))
        assert any(argv[i:i + 2] == flags for i in range(len(argv))), argv
        assert "workspace-write" not in argv and "acceptEdits" not in argv


def _plans(forge, repo, issue) -> list[str]:
    return [body for body in forge.comments_of(repo, issue) if body.startswith("### Plan")]


def _branch_exists(repo, name: str) -> bool:
    return repo.branch_sha(name) is not None


def test_a_plan_label_posts_a_plan_pushes_nothing_and_approve_builds_it(forge, start_bridge):
    repo = forge.create_repo("alice", "widgets")
    issue = forge.create_issue(repo, "Sort the list", "alphabetically")
    bridge = start_bridge([forge])
    forge.add_label(repo, issue, "kugetsu:plan")
    [plan] = wait_for(lambda: _plans(forge, repo, issue), timeout=60, what="the plan")
    assert plan.startswith("### Plan\n\n1. Read the code. 2. Change it for: Sort the list")
    wait_for(lambda: forge.labels_of(repo, issue) == ["kugetsu:planned"], timeout=30, what="the planned label")
    assert not repo.pulls and not _branch_exists(repo, "kugetsu/1-sort-the-list")
    worktree = bridge.data_dir / "worktrees" / f"127.0.0.1_{forge.port}-alice-widgets-1"
    assert not (worktree / "SCRATCH.md").exists()   # what it wrote while planning was undone
    forge.comment(repo, issue, "/kugetsu approve but keep it stable")
    wait_for(lambda: forge.labels_of(repo, issue) == ["kugetsu:review"], timeout=60, what="the build")
    [pull] = repo.pulls.values()
    tasks = sorted((json.loads(bridge.redis.get(k)) for k in bridge.redis.keys("fb:task:*")),
                   key=lambda t: t["queued_at"])
    assert [(t["mode"], t["action"], t["state"]) for t in tasks] == [("plan", "start", "succeeded"),
                                                                       ("", "continue", "succeeded")]
    assert tasks[1]["message"] == "The plan is approved: carry it out now.\n\nbut keep it stable"
    assert pull.head == "kugetsu/1-sort-the-list"


def test_plan_by_comment_uses_the_presets_read_only_flag_and_approve_without_a_plan_is_refused(github, start_bridge):
    repo = github.create_repo("alice", "widgets")
    issue = github.create_issue(repo, "Refactor", "the parser")
    bridge = start_bridge([github], preset="codex")
    github.comment(repo, issue, "/kugetsu approve")
    wait_for(lambda: any("there is no plan to approve" in c for c in github.comments_of(repo, issue)), timeout=30,
             what="the refusal")
    github.comment(repo, issue, "/kugetsu plan mode:ok focus on errors")
    wait_for(lambda: _plans(github, repo, issue), timeout=60, what="the plan")
    recorded = [json.loads(line) for path in (bridge.agent_state / "codex").glob("*.jsonl")
                for line in path.read_text().splitlines()]
    assert recorded and recorded[-1]["argv"][:4] == ["exec", "--json", "--sandbox", "read-only"]
    assert not repo.pulls


def test_a_plan_label_added_beside_a_todo_label_left_on_the_issue_is_read_as_the_plan(gitea, start_bridge):
    """Gitea sends the whole label set: when `kugetsu:todo` already stood (put there by someone without write
    access, so refused) and a maintainer adds `kugetsu:plan`, the set holds both, and the plan is what was added."""
    repo = gitea.create_repo("alice", "widgets")
    repo.permissions["bob"] = "read"
    issue = gitea.create_issue(repo, "Sort the list", "alphabetically")
    start_bridge([gitea])
    [refused] = gitea.add_label(repo, issue, "kugetsu:todo", sender="bob")
    assert refused.status_code == 202, refused.text
    wait_for(lambda: any("write access" in c for c in gitea.comments_of(repo, issue)), timeout=30,
             what=lambda: f"the refusal; comments: {gitea.comments_of(repo, issue)}")
    [delivered] = gitea.add_label(repo, issue, "kugetsu:plan")
    assert delivered.status_code == 202, delivered.text
    [plan] = wait_for(lambda: _plans(gitea, repo, issue), timeout=60, what="the plan")
    assert plan.startswith("### Plan\n\n")
    wait_for(lambda: "kugetsu:planned" in gitea.labels_of(repo, issue), timeout=30, what="the planned label")
    assert not repo.pulls
