"""CI feedback: failing checks on the head the bridge pushed queue one `continue` naming each failed check — at most
`ci_feedback` rounds per pull request, once per head commit, never for a head the bridge did not push."""
from __future__ import annotations

import json

from helpers import wait_for

from forge_bridge.work.report import STATUS_MARKER


def _tasks(bridge) -> list[dict]:
    return sorted((json.loads(bridge.redis.get(key)) for key in bridge.redis.keys("fb:task:*")),
                  key=lambda t: t["queued_at"])


def _settled(bridge) -> bool:
    return bridge.redis.llen("rq:queue:forge-bridge-events") == 0 and all(
        t["state"] not in ("queued", "running") for t in _tasks(bridge))


def _status(forge, repo, issue) -> str:
    return next((body for body in forge.comments_of(repo, issue) if STATUS_MARKER in body), "")


def _first_pull(forge, start_bridge, **settings):
    repo = forge.create_repo("alice", "widgets")
    issue = forge.create_issue(repo, "Make CI green")
    bridge = start_bridge([forge], settings=settings)
    forge.add_label(repo, issue, "kugetsu:todo")
    [pull] = wait_for(lambda: list(repo.pulls.values()), timeout=60, what="the pull request")
    wait_for(lambda: [t["state"] for t in _tasks(bridge)] == ["succeeded"], timeout=60, what="the first task")
    return repo, issue, pull, bridge


def test_a_failed_check_suite_continues_with_each_failed_run_and_rounds_run_out(github, start_bridge):
    repo, issue, pull, bridge = _first_pull(github, start_bridge, ci_feedback="1")
    head = repo.branch_sha(pull.head)
    [answer] = github.fail_check_suite(repo, pull.head, [
        {"name": "unit tests", "conclusion": "failure", "summary": "2 tests failed", "url": "http://ci.example/1"},
        {"name": "lint", "conclusion": "success", "summary": "", "url": ""}])
    assert answer.status_code == 202
    again = github.set_status(repo, head, "failure", context="ci/other")   # the same head: once per commit
    assert [a.json()["status"] for a in again] == ["duplicate"]
    wait_for(lambda: len(_tasks(bridge)) == 2 and _settled(bridge), timeout=60, what="the CI round")
    second = _tasks(bridge)[1]
    assert second["action"] == "continue" and second["requested_by"] == "ci"
    assert second["message"].startswith(f"CI failed: continuing (round 1 of 1)\n\nChecks failing on {head[:7]}:\n"
                                        "- unit tests: failure — 2 tests failed (http://ci.example/1)\n\n")
    assert "lint" not in second["message"]
    assert "CI failed: continuing (round 1 of 1)" in _status(github, repo, issue)
    new_head = repo.branch_sha(pull.head)
    assert new_head != head   # the agent's fix was pushed
    github.fail_check_suite(repo, pull.head, [{"name": "unit tests", "conclusion": "failure", "summary": "",
                                               "url": ""}])
    wait_for(lambda: any("after 1 round(s)" in c for c in github.comments_of(repo, issue)), timeout=30,
             what="the note that rounds ran out")
    assert len(_tasks(bridge)) == 2


def test_a_failed_status_on_gitea_continues_and_a_head_the_bridge_did_not_push_does_not(gitea, start_bridge):
    repo, issue, pull, bridge = _first_pull(gitea, start_bridge, ci_feedback="2")
    others = gitea.set_status(repo, repo.branch_sha("main"), "failure", context="ci/main")
    assert [a.status_code for a in others] == [202]
    wait_for(lambda: _settled(bridge), timeout=30, what="intake")
    assert len(_tasks(bridge)) == 1   # main's head is not the bridge's
    head = repo.branch_sha(pull.head)
    gitea.set_status(repo, head, "pending", context="ci/build")   # not a failure: nothing
    gitea.set_status(repo, head, "error", context="ci/build", description="runner lost",
                     target_url="http://ci.example/9")
    wait_for(lambda: len(_tasks(bridge)) == 2 and _settled(bridge), timeout=60, what="the CI round")
    assert _tasks(bridge)[1]["message"].startswith(
        f"CI failed: continuing (round 1 of 2)\n\nChecks failing on {head[:7]}:\n"
        "- ci/build: error — runner lost (http://ci.example/9)")


def test_ci_events_are_ignored_while_ci_feedback_is_off(github, start_bridge):
    repo, issue, pull, bridge = _first_pull(github, start_bridge)
    [answer] = github.set_status(repo, repo.branch_sha(pull.head), "failure")
    assert answer.status_code == 200 and answer.json() == {
        "status": "ignored", "delivery": answer.json()["delivery"], "reason": "ci_feedback is off"}


def test_the_poller_finds_failed_checks_where_webhooks_are_off(forge, start_bridge):
    repo = forge.create_repo("alice", "widgets")
    issue = forge.create_issue(repo, "Make CI green")
    bridge = start_bridge([forge], poll=True, webhook_secret=False, settings={"ci_feedback": "1"})
    forge.add_label(repo, issue, "kugetsu:todo")   # its hook is turned away; the poller finds the label
    [pull] = wait_for(lambda: list(repo.pulls.values()), timeout=60, what="the pull request")
    wait_for(lambda: [t["state"] for t in _tasks(bridge)] == ["succeeded"], timeout=60, what="the first task")
    head = repo.branch_sha(pull.head)
    forge.set_status(repo, head, "failure", context="ci/build", description="broken", target_url="http://ci/5")
    wait_for(lambda: len(_tasks(bridge)) == 2, timeout=60, what="the poller's CI round")
    assert _tasks(bridge)[1]["message"].startswith(
        f"CI failed: continuing (round 1 of 1)\n\nChecks failing on {head[:7]}:\n- ci/build: failure — broken "
        "(http://ci/5)")
