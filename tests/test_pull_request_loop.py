"""The pull request loop: the bridge's pull request asks the person whose trigger started the work to review it,
and its commits credit them (`Co-authored-by:`), on both forge kinds, through `serve`."""
from __future__ import annotations

import subprocess

from helpers import wait_for


def _trailers(repo, branch: str) -> list[str]:
    out = subprocess.run(["git", "log", "--format=%(trailers:key=Co-authored-by,valueonly)%x00", "main.." + branch],
                         cwd=repo.bare, capture_output=True, text=True, check=True).stdout
    return [entry.strip() for entry in out.split("\0") if entry.strip()]


def test_the_requester_is_asked_to_review_and_credited_in_every_new_commit(forge, start_bridge):
    repo = forge.create_repo("alice", "widgets")
    repo.permissions["bob"] = "write"
    forge.user_names["bob"] = "Bob Builder"
    forge.user_emails["bob"] = "bob@example.com"
    issue = forge.create_issue(repo, "Credit where due")
    start_bridge([forge])
    forge.add_label(repo, issue, "kugetsu:todo", sender="bob")
    [pull] = wait_for(lambda: list(repo.pulls.values()), timeout=60, what="the pull request")
    wait_for(lambda: pull.reviewers, timeout=30, what="the review request")
    assert pull.reviewers == ["bob"]
    if forge.kind == "github":
        from fakeforge.github_face import GitHubShapes

        expected = f"Bob Builder <{GitHubShapes(forge).user('bob')['id']}+bob@users.noreply.github.com>"
    else:
        expected = "Bob Builder <bob@example.com>"
    assert _trailers(repo, pull.head) == [expected]   # the agent's one commit, credited
    author = subprocess.run(["git", "log", "-1", "--format=%an", pull.head], cwd=repo.bare, capture_output=True,
                            text=True, check=True).stdout.strip()
    assert author == "Fake Agent"   # authorship is the agent's; the trailer adds the credit


def test_a_review_the_forge_refuses_is_one_log_line_and_no_failure(github, start_bridge):
    repo = github.create_repo("alice", "widgets")
    issue = github.create_issue(repo, "From outside")
    bridge = start_bridge([github], settings={"allow_users": '["carol"]'})   # carol may trigger, not review
    github.add_label(repo, issue, "kugetsu:todo", sender="carol")
    [pull] = wait_for(lambda: list(repo.pulls.values()), timeout=60, what="the pull request")
    wait_for(lambda: "kugetsu:review" in github.labels_of(repo, issue), timeout=30, what="the review label")
    assert pull.reviewers == []
    assert "could not ask carol to review pull request" in bridge.log.read_text()
    assert len(_trailers(repo, pull.head)) == 1   # credited all the same (GitHub knows every login)
