"""The pull request's and the issue's end, end to end on both forges: merged, closed with everything pushed,
closed with work left, issue closed; plus adopting a pull request someone already opened."""
from __future__ import annotations

import subprocess

from helpers import wait_for
from test_end_to_end import BODY, TITLE, _assert_reviewed, _settled, _status_comments

from forge_bridge.store.sessions import Store


def _reviewed(forge, start_bridge, **bridge_args):
    repo = forge.create_repo("alice", "widgets")
    issue = forge.create_issue(repo, TITLE, BODY)
    bridge = start_bridge([forge], **bridge_args)
    forge.add_label(repo, issue, "kugetsu:todo")
    _assert_reviewed(forge, repo, issue, bridge)
    [pull] = repo.pulls.values()
    worktree = bridge.data_dir / "worktrees" / f"127.0.0.1_{forge.port}-alice-widgets-1"
    return repo, issue, bridge, pull, worktree


def _session(bridge, forge):
    return Store(bridge.redis).session(f"{forge.host}/alice/widgets#1")


def test_merged_pull_request_destroys_the_worktree_and_labels_done(forge, start_bridge):
    repo, issue, bridge, pull, worktree = _reviewed(forge, start_bridge)

    [answer] = forge.merge_pull(repo, pull)

    assert answer.status_code == 202
    wait_for(lambda: forge.labels_of(repo, issue) == ["kugetsu:done"], timeout=60, what="only the done label")
    assert not worktree.exists() and _session(bridge, forge).archived
    assert repo.branch_sha(pull.head) is not None  # kept: delete_branch_on_merge is off
    assert "done" in _status_comments(forge, repo, issue)[0]


def test_merge_deletes_the_branch_when_configured(github, start_bridge):
    repo, issue, bridge, pull, worktree = _reviewed(github, start_bridge,
                                                    settings={"delete_branch_on_merge": "true"})
    github.merge_pull(repo, pull)
    wait_for(lambda: repo.branch_sha(pull.head) is None, timeout=60, what="the branch to be deleted")
    assert not worktree.exists()


def test_closed_unmerged_with_everything_pushed_is_destroyed(gitea, start_bridge):
    repo, issue, bridge, pull, worktree = _reviewed(gitea, start_bridge)
    gitea.close_pull(repo, pull)
    wait_for(lambda: not worktree.exists() and _session(bridge, gitea).archived, timeout=60,
             what="the worktree to go and the session to be archived")


def test_closed_unmerged_with_unpushed_work_is_kept_and_explained(github, start_bridge):
    repo, issue, bridge, pull, worktree = _reviewed(github, start_bridge)
    (worktree / "later.txt").write_text("not pushed")
    subprocess.run(["git", "-C", str(worktree), "add", "later.txt"], check=True)
    subprocess.run(["git", "-C", str(worktree), "-c", "user.name=a", "-c", "user.email=a@b", "commit", "-qm", "wip"],
                   check=True)

    github.close_pull(repo, pull)

    wait_for(lambda: any("not on the remote" in body for body in github.comments_of(repo, issue)), timeout=60,
             what="the explanation")
    assert worktree.exists() and (worktree / "later.txt").exists()


def test_issue_closed_destroys_when_no_pull_request_is_open(gitea, start_bridge):
    repo, issue, bridge, pull, worktree = _reviewed(gitea, start_bridge)
    gitea.close_issue(repo, issue)
    assert worktree.exists()  # the pull request is still open: nothing goes
    gitea.close_pull(repo, pull)
    wait_for(lambda: not worktree.exists(), timeout=60, what="the worktree to go with the last pull request")


def test_an_existing_pull_request_is_adopted(forge, start_bridge):
    repo = forge.create_repo("alice", "widgets")
    issue = forge.create_issue(repo, TITLE, BODY)
    branch = "kugetsu/1-fix-the-emoji-names"
    subprocess.run(["git", "-C", str(repo.bare), "branch", branch, "main"], check=True)
    theirs = forge.state.create_pull(repo, title="Opened by hand", body="", head=branch, base="main", author="alice")
    # The bridge's first look misses it (as a listing racing its creation would); creating then answers
    # "already exists", which must mean: adopt it.
    forge.fail_next(1, 200, path="/pulls", method="GET", body=[])
    bridge = start_bridge([forge])

    forge.add_label(repo, issue, "kugetsu:todo")

    wait_for(lambda: _settled(forge, repo, issue, "kugetsu:review"), timeout=90, what="the review label")
    assert list(repo.pulls) == [theirs.number]
    assert _session(bridge, forge).pull_request_number == theirs.number
