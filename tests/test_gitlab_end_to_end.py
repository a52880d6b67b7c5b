"""GitLab end to end through `forge-bridge serve`: labels and notes in, a merge request, one status note and one
state label out; who may trigger; exactly once; the merge; polling only; CI feedback; subgroups; hooks."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import requests
from conftest import TOKEN_ENV
from helpers import SECRET, wait_for

from forge_bridge.store.sessions import Store
from forge_bridge.work.report import STATUS_MARKER

TITLE = "Fix the emoji names"
BODY = "Names like <😀> & friends break the list."


def _status(forge, repo, issue) -> list[str]:
    return [body for body in forge.comments_of(repo, issue) if STATUS_MARKER in body]


def _tasks(bridge) -> list[dict]:
    return sorted((json.loads(bridge.redis.get(key)) for key in bridge.redis.keys("fb:task:*")),
                  key=lambda t: t["queued_at"])


def _labelled(gitlab, start_bridge, *, owner: str = "alice", **bridge_args):
    repo = gitlab.create_repo(owner, "widgets")
    repo.permissions["dev"] = "write"
    issue = gitlab.create_issue(repo, TITLE, BODY, author="dev")
    bridge = start_bridge([gitlab], **bridge_args)
    answers = gitlab.add_label(repo, issue, "kugetsu:todo", sender="dev")
    return repo, issue, bridge, answers


def _review_label(gitlab, repo, issue):
    labels = gitlab.labels_of(repo, issue)
    return labels if labels == ["kugetsu:review"] else None


def test_a_label_opens_a_merge_request_with_one_status_note(gitlab, start_bridge):
    repo, issue, bridge, [answer] = _labelled(gitlab, start_bridge)
    assert answer.status_code == 202 and answer.json()["status"] == "queued"
    wait_for(lambda: _review_label(gitlab, repo, issue), timeout=90, what="the review label")
    [pull] = repo.pulls.values()
    assert (pull.number, pull.head, pull.base, pull.title) == (1, "kugetsu/1-fix-the-emoji-names", "main", TITLE)
    assert pull.body.startswith(f"Closes #{issue.number}") and pull.reviewers == ["dev"]
    [status] = _status(gitlab, repo, issue)
    assert f"{gitlab.url}/alice/widgets/-/merge_requests/1" in status and "succeeded" in status
    work = subprocess.run(["git", "show", f"{pull.head}:AGENT_WORK.md"], cwd=repo.bare, capture_output=True,
                          text=True, check=True).stdout
    assert work.strip() == f"{TITLE}\n\n{BODY}"
    assert gitlab.git_refusals == 0 and gitlab.token not in bridge.log.read_text()
    page = requests.get(f"{bridge.url}/", timeout=10).text   # the status page shows GitLab's own numbers
    assert f'<a href="{gitlab.url}/alice/widgets/-/merge_requests/1">!1</a>' in page
    status = _cli(bridge.config, "status", token=gitlab.token)
    assert f"{gitlab.host}/alice/widgets#1" in status.stdout, status.stdout + status.stderr


def test_notes_steer_the_agent_and_only_developers_may(gitlab, start_bridge):
    repo, issue, bridge, _ = _labelled(gitlab, start_bridge)
    wait_for(lambda: _review_label(gitlab, repo, issue), timeout=90, what="the first run")
    [pull] = repo.pulls.values()
    repo.permissions["guest"] = "guest"
    [refused] = gitlab.comment(repo, issue, "/kugetsu continue also sort by age", author="guest")
    [own] = gitlab.comment(repo, issue, "/kugetsu continue from myself", author=gitlab.bot_login)
    assert own.json()["status"] == "ignored" and "own account" in own.json()["reason"]
    wait_for(lambda: any("only people with write access" in c for c in gitlab.comments_of(repo, issue)),
             timeout=30, what="the guest's refusal")
    assert refused.status_code == 202 and len(_tasks(bridge)) == 1
    # A note on the merge request that mentions the bot continues the same branch.
    [answer] = gitlab.comment_on_merge_request(repo, pull, f"@{gitlab.bot_login} now also sort the list", author="dev")
    assert answer.status_code == 202
    wait_for(lambda: len(_tasks(bridge)) == 2 and _tasks(bridge)[1]["state"] == "succeeded", timeout=60,
             what="the continue")
    assert _tasks(bridge)[1]["message"] == "now also sort the list"
    note = next(c for c in gitlab.state.comments.values() if c.body.startswith(f"@{gitlab.bot_login} now"))
    assert note.reactions == [(gitlab.bot_login, "eyes")]
    wait_for(lambda: gitlab.notes_of_merge_request(repo, pull)[1:], timeout=30, what="the run's note")
    run_note = gitlab.notes_of_merge_request(repo, pull)[1]
    status_note = _status(gitlab, repo, issue)
    assert len(status_note) == 1 and f"/-/issues/{issue.number}#note_" in run_note
    assert list(repo.pulls) == [1]   # the same merge request


def test_one_delivery_twice_is_one_task_and_a_wrong_token_is_401(gitlab, start_bridge):
    repo, issue, bridge, [first] = _labelled(gitlab, start_bridge)
    payload = gitlab.face.label_payload(gitlab, repo, issue, "kugetsu:todo", "dev", previous=[])
    url = f"{bridge.url}/webhooks/gitlab"
    body = json.dumps(payload[2]).encode()
    headers = gitlab.headers_for("Issue Hook", "", body, SECRET, "event-1")
    again = [requests.post(url, data=body, headers=headers, timeout=10) for _ in range(2)]
    # the same change under another delivery id (its meaning), then the same delivery again (its key)
    assert [a.json()["status"] for a in again] == ["duplicate", "duplicate"]
    wrong = requests.post(url, data=body, headers={**headers, "X-Gitlab-Token": SECRET + "x"}, timeout=10)
    assert wrong.status_code == 401 and wrong.json()["status"] != "queued"
    for bad, status in ((b"{not json", 400), (b"[]", 400)):
        answer = requests.post(url, data=bad, headers=headers | {"Idempotency-Key": bad.decode()}, timeout=10)
        assert answer.status_code == status, answer.text
    huge = requests.post(url, data=b" " * (25 * 1024 * 1024 + 1), headers={**headers, "Idempotency-Key": "big"},
                         timeout=30)
    assert huge.status_code == 413 and huge.json()["status"] == "too_large"
    push = requests.post(url, data=b"{}", headers={**headers, "X-Gitlab-Event": "Push Hook"}, timeout=10)
    assert push.status_code == 200 and push.json()["status"] == "ignored"
    wait_for(lambda: _review_label(gitlab, repo, issue), timeout=90, what="the one run")
    assert len(_tasks(bridge)) == 1 and first.status_code == 202


def test_merge_labels_done_and_destroys_the_worktree(gitlab, start_bridge):
    repo, issue, bridge, _ = _labelled(gitlab, start_bridge, settings={"delete_branch_on_merge": "true"})
    wait_for(lambda: _review_label(gitlab, repo, issue), timeout=90, what="the merge request")
    [pull] = repo.pulls.values()
    assert pull.id in gitlab.gitlab.remove_source_branch   # asked of GitLab too, as delete_branch_on_merge says
    worktree = bridge.data_dir / "worktrees" / f"127.0.0.1_{gitlab.port}-alice-widgets-1"
    assert worktree.exists()
    [answer] = gitlab.merge_pull(repo, pull)
    assert answer.status_code == 202
    wait_for(lambda: gitlab.labels_of(repo, issue) == ["kugetsu:done"], timeout=60, what="the done label")
    assert not worktree.exists() and Store(bridge.redis).session(f"{gitlab.host}/alice/widgets#1").archived
    assert repo.branch_sha(pull.head) is None


def test_polling_only_finds_the_label_and_a_note_command(gitlab, start_bridge):
    repo, issue, bridge, answers = _labelled(gitlab, start_bridge, poll=True, webhook_secret=False, hooks=False)
    assert answers == []
    wait_for(lambda: _review_label(gitlab, repo, issue), timeout=90, what="the polled label's run")
    gitlab.comment(repo, issue, "/kugetsu continue and add a test", author="dev")
    wait_for(lambda: [t["state"] for t in _tasks(bridge)] == ["succeeded", "succeeded"], timeout=60,
             what="the polled command's run")
    assert _tasks(bridge)[1]["message"] == "and add a test"


def test_a_failed_pipeline_continues_with_its_failed_jobs_and_their_logs(gitlab, start_bridge):
    repo, issue, bridge, _ = _labelled(gitlab, start_bridge, settings={"ci_feedback": "1"})
    wait_for(lambda: _review_label(gitlab, repo, issue), timeout=90, what="the merge request")
    [pull] = repo.pulls.values()
    head = repo.branch_sha(pull.head)
    [answer] = gitlab.fail_pipeline(repo, pull.head, [
        {"name": "unit", "stage": "test", "status": "failed", "log": "collected 3 items\nFAILED test_names.py\n"},
        {"name": "build", "stage": "build", "status": "success", "log": "ok\n"}])
    assert answer.status_code == 202
    wait_for(lambda: len(_tasks(bridge)) == 2 and _tasks(bridge)[1]["state"] == "succeeded", timeout=60,
             what="the CI round")
    message = _tasks(bridge)[1]["message"]
    assert message.startswith(f"CI failed: continuing (round 1 of 1)\n\nChecks failing on {head[:7]}:\n- unit: failed")
    assert "stage test" in message and "FAILED test_names.py" in message and "build" not in message
    assert _tasks(bridge)[1]["requested_by"] == "ci"


def test_a_review_of_inline_notes_is_one_continue(gitlab, start_bridge):
    repo, issue, bridge, _ = _labelled(gitlab, start_bridge)
    wait_for(lambda: _review_label(gitlab, repo, issue), timeout=90, what="the merge request")
    [pull] = repo.pulls.values()
    answers = gitlab.review_merge_request(repo, pull, [
        {"path": "AGENT_WORK.md", "line": 1, "body": "Use a shorter title."},
        {"path": "AGENT_WORK.md", "line": 3, "body": f"@{gitlab.bot_login} and quote the names"}], author="dev")
    assert [a.status_code for a in answers] == [202, 202]
    wait_for(lambda: len(_tasks(bridge)) == 2 and _tasks(bridge)[1]["state"] == "succeeded", timeout=60,
             what="the review's continue")
    message = _tasks(bridge)[1]["message"]
    assert "Use a shorter title." in message and "and quote the names" in message and "AGENT_WORK.md" in message
    assert message.index("Use a shorter title.") < message.index("and quote the names")
    notes = [c for c in gitlab.state.comments.values() if c.author == "dev"]
    assert all(c.reactions == [(gitlab.bot_login, "eyes")] for c in notes)
    assert len(_tasks(bridge)) == 2


def test_a_subgroup_project_and_enqueue_with_a_gitlab_url(gitlab, start_bridge):
    repo, issue, bridge, [answer] = _labelled(
        gitlab, start_bridge, owner="team/sub",
        tables='\n[[repos]]\nforge = "gitlab"\nname = "team/**"\n')
    assert answer.status_code == 202
    wait_for(lambda: _review_label(gitlab, repo, issue), timeout=90, what="the subgroup's merge request")
    worktree = bridge.data_dir / "worktrees" / f"127.0.0.1_{gitlab.port}-team+sub-widgets-1"
    assert worktree.exists()
    url = f"{gitlab.url}/team/sub/widgets/-/issues/{issue.number}"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FORGE_BRIDGE_")}
    done = subprocess.run([sys.executable, "-m", "forge_bridge", "--config", str(bridge.config), "enqueue", url,
                           "rename", "the", "module"], env={**environ, TOKEN_ENV: gitlab.token}, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and "queued task" in done.stdout, done.stdout + done.stderr
    wait_for(lambda: len(_tasks(bridge)) == 2 and _tasks(bridge)[1]["state"] == "succeeded", timeout=60,
             what="the enqueued task")
    assert _tasks(bridge)[1]["issue"] == f"{gitlab.host}/team/sub/widgets#1"


def _cli(config, *args: str, token: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FORGE_BRIDGE_")}
    return subprocess.run([sys.executable, "-m", "forge_bridge", "--config", str(config), *args],
                          env={**environ, "T": token, "S": SECRET}, capture_output=True, text=True, timeout=120)


def _gitlab_config(path, gitlab, public_url: str, *, ci_feedback: int = 0):
    path.write_text(
        f'public_url = "{public_url}"\nci_feedback = {ci_feedback}\n'
        f'[[forges]]\nname = "gl"\nkind = "gitlab"\nurl = "{gitlab.url}"\ntoken_env = "T"\nwebhook_secret_env = "S"\n'
        '[[repos]]\nforge = "gl"\nname = "team/sub/widgets"\n[[repos]]\nforge = "gl"\nname = "team/locked"\n')
    return path


def test_hooks_install_twice_changes_nothing_and_the_hook_delivers(gitlab, start_bridge, tmp_path):
    widgets, locked = gitlab.create_repo("team/sub", "widgets"), gitlab.create_repo("team", "locked")
    widgets.permissions.update({gitlab.bot_login: "maintain", "dev": "write"})
    locked.permissions[gitlab.bot_login] = "write"   # a Developer may not see hooks
    bridge = start_bridge([gitlab], hooks=False, tables='\n[[repos]]\nforge = "gitlab"\nname = "team/**"\n')
    config = _gitlab_config(tmp_path / "hooks.toml", gitlab, bridge.url, ci_feedback=2)

    first = _cli(config, "hooks", "install", token=gitlab.token)
    assert first.returncode == 1 and "Traceback" not in first.stderr, first.stdout + first.stderr
    assert f"gl: team/sub/widgets: created hook" in first.stdout and "pipeline" in first.stdout
    assert "FAIL gl: team/locked: no admin right on the repository (the forge answered 403)" in first.stdout
    [hook] = widgets.hooks.values()
    assert (hook.url, hook.secret) == (f"{bridge.url}/webhooks/gitlab", SECRET)
    assert set(hook.events) == {"issues_events", "confidential_issues_events", "note_events",
                                "confidential_note_events", "merge_requests_events", "pipeline_events"}
    assert {f"kugetsu:{s}" for s in ("queued", "running", "review", "failed", "done")} <= set(widgets.labels)
    installed = {(h.id, h.url, tuple(h.events), h.secret) for h in widgets.hooks.values()}
    hook.secret = "changed by hand"
    again = _cli(config, "hooks", "install", token=gitlab.token)
    assert "(secret sent again)" in again.stdout and SECRET not in again.stdout + again.stderr
    assert {(h.id, h.url, tuple(h.events), h.secret) for h in widgets.hooks.values()} == installed
    listed = _cli(config, "hooks", "list", token=gitlab.token)
    assert f"gl: team/sub/widgets: hook {hook.id} → {bridge.url}/webhooks/gitlab (this bridge); active" in listed.stdout

    issue = gitlab.create_issue(widgets, TITLE, BODY, author="dev")
    [delivered] = gitlab.add_label(widgets, issue, "kugetsu:todo", sender="dev")   # through the installed hook
    assert delivered.status_code == 202, delivered.text


def test_check_names_the_scope_the_role_and_the_hook(gitlab, tmp_path):
    widgets, locked = gitlab.create_repo("team/sub", "widgets"), gitlab.create_repo("team", "locked")
    widgets.permissions[gitlab.bot_login] = "maintain"
    locked.permissions[gitlab.bot_login] = "read"
    config = _gitlab_config(tmp_path / "check.toml", gitlab, "https://bridge.example")
    gitlab.gitlab.scopes = ["read_api"]
    done = _cli(config, "check", token=gitlab.token)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    out = done.stdout
    assert f"ok   gl: reached {gitlab.url}/api/v4; token valid, acting as {gitlab.bot_login}" in out
    assert "FAIL gl: the token has scopes read_api; it needs api" in out
    assert f"ok   gl: team/sub/widgets: {gitlab.bot_login} has Maintainer permission" in out
    assert f"FAIL gl: team/locked: {gitlab.bot_login} has Reporter or Guest permission (needs write)" in out
    assert "gl: team/sub/widgets: no hook → https://bridge.example/webhooks/gitlab" in out
    bad = _cli(config, "check", token="wrong")
    assert "FAIL gl: " in bad.stdout and "token rejected" in bad.stdout


def test_bot_users_trigger_only_when_allowed(gitlab, start_bridge):
    repo = gitlab.create_repo("alice", "widgets")
    repo.permissions.update({"helper-bot": "write", "other-bot": "maintain"})
    gitlab.gitlab.bots.update({"helper-bot", "other-bot"})   # project access tokens' users
    issue = gitlab.create_issue(repo, TITLE, BODY)
    bridge = start_bridge([gitlab], settings={"allow_bots": '["gitlab:helper-bot"]'})
    gitlab.comment(repo, issue, "/kugetsu start", author="other-bot")
    wait_for(lambda: any("only people with write access" in c for c in gitlab.comments_of(repo, issue)),
             timeout=30, what="the unlisted bot's refusal")
    assert _tasks(bridge) == []
    gitlab.comment(repo, issue, "/kugetsu start", author="helper-bot")
    wait_for(lambda: [t["requested_by"] for t in _tasks(bridge)] == ["helper-bot"], timeout=30,
             what="the listed bot's task")


def test_partial_work_is_a_draft_merge_request_made_ready_by_the_next_success(gitlab, start_bridge):
    repo = gitlab.create_repo("alice", "widgets")
    issue = gitlab.create_issue(repo, "Half a feature", "Build it, then FAILNOW")
    bridge = start_bridge([gitlab], agent_args=["--fail-when", "FAILNOW", "--leave", "half-done.txt"])
    gitlab.add_label(repo, issue, "kugetsu:todo")
    [task] = wait_for(lambda: [t for t in _tasks(bridge) if t["state"] == "failed"], timeout=60, what="the failure")
    [pull] = repo.pulls.values()
    assert pull.title == "Draft: Half a feature"
    assert "(draft pull request !1)" in task["outcome"]
    gitlab.comment(repo, issue, "/kugetsu continue finish it")
    wait_for(lambda: [t for t in _tasks(bridge) if t["state"] == "succeeded"], timeout=60, what="the success")
    wait_for(lambda: pull.title == "Half a feature", timeout=30, what="the ready merge request")
    assert len(repo.pulls) == 1
