"""Partial work is kept: a run that fails after changing files commits them (`WIP: …`), pushes the branch and
opens a draft pull request; the next success marks it ready — on both forge kinds, through `serve`."""
from __future__ import annotations

import json
import subprocess

import pytest

from helpers import wait_for

from forge_bridge.work.report import STATUS_MARKER


def _tasks(bridge) -> list[dict]:
    return sorted((json.loads(bridge.redis.get(key)) for key in bridge.redis.keys("fb:task:*")),
                  key=lambda t: t["queued_at"])


def _status(forge, repo, issue) -> str:
    return next((body for body in forge.comments_of(repo, issue) if STATUS_MARKER in body), "")


def test_a_failed_runs_work_is_kept_as_a_draft_and_the_next_success_makes_it_ready(forge, start_bridge):
    repo = forge.create_repo("alice", "widgets")
    issue = forge.create_issue(repo, "Half a feature", "Build it, then FAILNOW")
    bridge = start_bridge([forge], agent_args=["--fail-when", "FAILNOW", "--leave", "half-done.txt"])
    forge.add_label(repo, issue, "kugetsu:todo")
    wait_for(lambda: repo.pulls, timeout=60, what="the draft pull request")
    [pull] = repo.pulls.values()
    [task] = wait_for(lambda: [t for t in _tasks(bridge) if t["state"] == "failed"], timeout=30, what="the failure")
    assert pull.head == "kugetsu/1-half-a-feature"
    if forge.kind == "github":
        assert pull.draft and pull.title == "Half a feature"
    else:
        assert pull.title == "WIP: Half a feature"
    subject = subprocess.run(["git", "log", "-1", "--format=%s", pull.head], cwd=repo.bare, capture_output=True,
                             text=True, check=True).stdout.strip()
    assert subject == "WIP: Half a feature (#1)"
    shown = subprocess.run(["git", "show", f"{pull.head}:half-done.txt"], cwd=repo.bare, capture_output=True,
                           text=True, check=True).stdout
    assert shown.startswith("half done: Half a feature")
    assert task["outcome"].startswith("the agent exited with code 3; partial work kept: 1 commit(s) pushed to "
                                      f"kugetsu/1-half-a-feature (draft pull request #{pull.number})")
    wait_for(lambda: "partial work kept" in _status(forge, repo, issue), timeout=30, what="the status comment")
    # The next task succeeds on the same branch: the draft becomes a pull request ready for review.
    forge.comment(repo, issue, "/kugetsu continue finish it")
    wait_for(lambda: [t for t in _tasks(bridge) if t["state"] == "succeeded"], timeout=60, what="the success")
    wait_for(lambda: not pull.draft and not pull.title.startswith("WIP:"), timeout=30, what="the ready pull request")
    assert pull.title == "Half a feature" and len(repo.pulls) == 1





@pytest.mark.parametrize("agent_args, settings", [
    (["--mode", "fail", "--leave", "half-done.txt"], {"keep_partial_work": "false"}),   # turned off
    (["--mode", "fail"], {}),                                                          # nothing was changed
], ids=["turned off", "no changes"])
def test_nothing_is_pushed_when_keeping_is_off_or_there_is_nothing_to_keep(github, start_bridge, agent_args,
                                                                           settings):
    repo = github.create_repo("alice", "widgets")
    issue = github.create_issue(repo, "Nothing kept")
    bridge = start_bridge([github], agent_args=agent_args, settings=settings)
    github.add_label(repo, issue, "kugetsu:todo")
    [task] = wait_for(lambda: [t for t in _tasks(bridge) if t["state"] == "failed"], timeout=60, what="the failure")
    assert not repo.pulls and repo.branch_sha("kugetsu/1-nothing-kept") is None
    assert task["outcome"] == "the agent exited with code 3"
