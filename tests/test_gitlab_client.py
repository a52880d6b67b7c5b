"""The GitLab client drives the fake GitLab through python-gitlab for every call the bridge makes, and the fake
answers as GitLab's REST docs say (merge requests numbered apart, notes under their issue, roles as levels)."""
from __future__ import annotations

import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from fakeforge.server import FakeForge
from helpers import commit_to as commit_files

from forge_bridge.config import settings_from_dict
from forge_bridge.forges import BOT_WITH_WRITE, ForgeError, make_client
from forge_bridge.forges.gitlab import GitLabClient, hunk_up_to
from forge_bridge.models import MERGE_REQUEST_BASE, IssueRef, RepoRef
from forge_bridge.workspace import worktrees


def commit_to(bare: Path, branch: str, path: str, text: str) -> None:
    """A new branch from main with one file changed, as a person pushing would."""
    subprocess.run(["git", "branch", branch, "main"], cwd=bare, check=True, capture_output=True)
    commit_files(bare, branch, {path: text})


def _client(forge: FakeForge) -> GitLabClient:
    settings = settings_from_dict({"forges": [{"name": "gl", "kind": "gitlab", "url": forge.url, "token_env": "T"}]},
                                  source="t", environ={"T": forge.token})
    client = make_client(settings.forge("gl"))
    assert isinstance(client, GitLabClient) and settings.forge("gl").api_url == f"{forge.url}/api/v4"
    return client


def _project(forge: FakeForge, owner: str = "team/sub"):
    repo = forge.create_repo(owner, "widgets")
    repo.permissions.update({forge.bot_login: "maintain", "dev": "write", "guest": "guest", "reporter": "read",
                             "tokenbot": "write"})
    return repo, RepoRef(forge.host, owner, "widgets")


def test_issues_labels_and_notes(gitlab):
    repo, ref = _project(gitlab)
    client = _client(gitlab)
    issue = gitlab.create_issue(repo, "Sort the names", "please", author="dev", labels=("kugetsu:todo",))
    other = gitlab.create_issue(repo, "Not this one")
    issue_ref = IssueRef(ref, issue.number)

    assert client.whoami() == gitlab.bot_login and client.token_scopes() == ("api",)
    assert client.get_repo(ref).clone_url == f"{gitlab.url}/team/sub/widgets.git"
    found = client.get_issue(issue_ref)
    assert (found.title, found.body, found.labels, found.state, found.author, found.is_pull) == \
        ("Sort the names", "please", ("kugetsu:todo",), "open", "dev", False)
    assert [i.number for i in client.list_labeled_issues(ref, "kugetsu:todo")] == [issue.number]
    later = datetime.now(timezone.utc) + timedelta(minutes=5)
    assert client.list_labeled_issues(ref, "kugetsu:todo", since=later) == []

    client.ensure_label(ref, "kugetsu:running", "1d76db")
    client.ensure_label(ref, "kugetsu:running", "1d76db")   # a second time: already there
    assert repo.labels["kugetsu:running"].color == "1d76db"
    client.add_label(issue_ref, "kugetsu:running")
    client.remove_label(issue_ref, "kugetsu:todo")
    assert gitlab.labels_of(repo, issue) == ["kugetsu:running"] and other.labels == []
    assert client.label_actor(issue_ref, "kugetsu:running") == gitlab.bot_login

    note = client.create_comment(issue_ref, "status")
    client.edit_comment(issue_ref, note, "status, edited")
    client.add_reaction(issue_ref, note, "eyes")
    client.add_reaction(issue_ref, note, "eyes")   # awarded before: as good as done
    assert [(c.id, c.body, c.author) for c in client.list_comments(issue_ref)] == \
        [(note, "status, edited", gitlab.bot_login)]
    assert gitlab.state.comments[note].reactions == [(gitlab.bot_login, "eyes")]
    with pytest.raises(ForgeError) as missing:
        client.get_issue(IssueRef(ref, 99))
    assert missing.value.status == 404


def test_roles_bots_and_users(gitlab):
    repo, ref = _project(gitlab)
    gitlab.gitlab.bots.add("tokenbot")
    gitlab.user_emails["dev"], gitlab.user_names["dev"] = "dev@example.com", "Dee Veloper"
    client = _client(gitlab)
    assert client.permission(ref, "dev") == "write"
    assert client.permission(ref, gitlab.bot_login) == "maintain"
    assert client.permission(ref, "guest") == "read" and client.permission(ref, "reporter") == "read"
    assert client.permission(ref, "tokenbot") == BOT_WITH_WRITE
    assert client.permission(ref, "stranger") == "none"
    assert client.coauthor(ref, "dev") == "Dee Veloper <dev@example.com>" and client.coauthor(ref, "guest") == ""


def test_merge_requests_in_their_own_number_space(gitlab, tmp_path):
    repo, ref = _project(gitlab)
    client = _client(gitlab)
    gitlab.create_issue(repo, "One")   # issue #1 exists: merge request !1 is another thing
    commit_to(repo.bare, "kugetsu/1-one", "names.py", "print(sorted(['b', 'a']))\n")
    pull = client.create_pull(ref, head="kugetsu/1-one", base="main", title="One", body="Closes #1", draft=True,
                              delete_on_merge=True)
    assert pull.number == MERGE_REQUEST_BASE + 1 and pull.url == f"{gitlab.url}/team/sub/widgets/-/merge_requests/1"
    [stored] = repo.pulls.values()
    assert stored.title == "Draft: One" and stored.id in gitlab.gitlab.remove_source_branch
    assert client.find_open_pull(ref, "kugetsu/1-one") == pull and client.find_open_pull(ref, "other") is None
    assert client.get_issue(IssueRef(ref, pull.number)).is_pull
    with pytest.raises(ForgeError) as twice:
        client.create_pull(ref, head="kugetsu/1-one", base="main", title="One", body="")
    assert twice.value.status == 409

    client.mark_ready(ref, pull.number)
    client.mark_ready(ref, pull.number)   # ready already: nothing to do
    assert stored.title == "One"
    client.request_review(ref, pull.number, "dev")
    assert stored.reviewers == ["dev"]
    note = client.create_comment(IssueRef(ref, pull.number), "what this run did")
    assert gitlab.notes_of_merge_request(repo, stored) == ["what this run did"]
    assert gitlab.comments_of(repo, repo.issues[1]) == []   # not on issue #1

    gitlab.state.merge(repo, stored)
    assert client.get_pull(ref, pull.number).merged and repo.issues[1].state == "open"
    client.delete_branch(ref, "kugetsu/1-one")
    client.delete_branch(ref, "kugetsu/1-one")   # gone already
    assert repo.branch_sha("kugetsu/1-one") is None and note


def test_comments_since_reads_issues_and_merge_requests(gitlab):
    repo, ref = _project(gitlab)
    client = _client(gitlab)
    before = datetime.now(timezone.utc) - timedelta(seconds=2)
    issue = gitlab.create_issue(repo, "One")
    gitlab.comment(repo, issue, "/kugetsu start", author="dev")
    commit_to(repo.bare, "feature", "a.txt", "a\n")
    pull = gitlab.state.create_pull(repo, title="MR", body="", head="feature", base="main", author="dev")
    gitlab.comment_on_merge_request(repo, pull, "@kugetsu-bot more", author="dev")
    found = client.comments_since(ref, before)
    assert [(c.number, c.is_pull, c.body, c.author) for c in found] == \
        [(issue.number, False, "/kugetsu start", "dev"), (MERGE_REQUEST_BASE + pull.number, True, "@kugetsu-bot more", "dev")]
    assert client.comments_since(ref, datetime.now(timezone.utc) + timedelta(minutes=1)) == []


def test_a_review_is_the_inline_notes_published_together(gitlab):
    repo, ref = _project(gitlab)
    client = _client(gitlab)
    commit_to(repo.bare, "feature", "src/names.py", "".join(f"line {n}\n" for n in range(1, 21)))
    pull = gitlab.state.create_pull(repo, title="MR", body="", head="feature", base="main", author="kugetsu-bot")
    gitlab.review_merge_request(repo, pull, [{"path": "src/names.py", "line": 13, "body": "Return a sorted list."},
                                             {"path": "src/names.py", "line": 15, "start_line": 14,
                                              "body": "@kugetsu-bot and skip empty rows"}], author="dev")
    number = MERGE_REQUEST_BASE + pull.number
    notes = [c.id for c in gitlab.state.issue_comments(repo, number)]
    review = client.review(ref, number, notes[1], author="dev", state="commented")
    assert review.id == notes[0] and review == client.review(ref, number, notes[0], author="dev", state="")
    comments = client.review_comments(ref, number, review.id)
    assert [(c.path, c.line, c.start_line, c.body) for c in comments] == [
        ("src/names.py", 13, 0, "Return a sorted list."), ("src/names.py", 15, 14, "@kugetsu-bot and skip empty rows")]
    assert comments[0].diff_hunk.startswith("@@ -0,0 +1,20 @@") and comments[0].diff_hunk.endswith("+line 13")
    client.add_review_comment_reaction(IssueRef(ref, number), notes[1], "eyes")
    assert gitlab.state.comments[notes[1]].reactions == [(gitlab.bot_login, "eyes")]
    assert client.review(ref, number, 424242, author="dev", state="") is None


def test_hunk_up_to_the_commented_line():
    diff = "@@ -1,3 +1,4 @@\n a\n-b\n+B\n+C\n c\n@@ -10,2 +11,2 @@\n x\n+y\n"
    assert hunk_up_to(diff, 3) == "@@ -1,3 +1,4 @@\n a\n-b\n+B\n+C"
    assert hunk_up_to(diff, 12) == "@@ -10,2 +11,2 @@\n x\n+y"
    assert hunk_up_to(diff, 9) == "" and hunk_up_to("", 1) == ""


def test_failed_pipelines_name_their_jobs_with_the_end_of_their_logs(gitlab):
    repo, ref = _project(gitlab)
    client = _client(gitlab)
    commit_to(repo.bare, "feature", "a.txt", "a\n")
    log = "".join(f"step {n}\n" for n in range(1, 41)) + "AssertionError: 1 != 2\n"
    gitlab.fail_pipeline(repo, "feature", [{"name": "unit", "stage": "test", "status": "failed", "log": log},
                                           {"name": "lint", "stage": "test", "status": "failed", "log": "x",
                                            "allow_failure": True},
                                           {"name": "build", "stage": "build", "status": "success"}])
    suite, checks = client.failed_checks(ref, repo.branch_sha("feature"))
    [pipeline] = gitlab.gitlab.pipelines.values()
    assert suite == pipeline.id and [c.name for c in checks] == ["unit"]
    assert checks[0].summary.startswith("stage test") and "AssertionError: 1 != 2" in checks[0].summary
    assert "step 10\n" not in checks[0].summary and "step 12\n" in checks[0].summary   # the last 30 lines
    assert checks[0].url.endswith(f"/-/jobs/{pipeline.jobs[0].id}")
    assert client.failed_checks(ref, "0" * 40) == (0, [])


def test_hooks_are_project_hooks_with_the_secret_as_token(gitlab):
    repo, ref = _project(gitlab)
    client = _client(gitlab)
    hook_id = client.create_hook(ref, url="https://bridge.example/webhooks/gitlab", secret="s1",
                                 events=("issues", "note", "merge_requests"))
    [hook] = client.list_hooks(ref)
    assert (hook.id, hook.url, hook.events, hook.active) == \
        (hook_id, "https://bridge.example/webhooks/gitlab", ("issues", "note", "merge_requests"), True)
    client.update_hook(ref, hook_id, url=hook.url, secret="s2", events=("issues", "note", "merge_requests", "pipeline"))
    assert repo.hooks[hook_id].secret == "s2" and client.list_hooks(ref)[0].events[-1] == "pipeline"
    assert "push_events" not in repo.hooks[hook_id].events


def test_git_takes_only_the_oauth2_header(gitlab, tmp_path):
    repo, ref = _project(gitlab)
    url = f"{gitlab.url}/team/sub/widgets.git"

    def clone(env: dict[str, str], where: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "clone", "--quiet", url, str(tmp_path / where)], env=env, capture_output=True,
                              text=True)

    assert clone(worktrees.git_env(url, gitlab.token, "oauth2"), "ok").returncode == 0
    assert clone(worktrees.git_env(url, gitlab.token), "other-user").returncode != 0     # x-access-token
    assert clone(worktrees.git_env(url, "wrong", "oauth2"), "wrong").returncode != 0
    assert gitlab.git_refusals >= 2
    config = (tmp_path / "ok" / ".git" / "config").read_text()
    assert gitlab.token not in config and "oauth2" not in config   # the token never lands in a file


def test_rate_limits_and_passing_outages_are_waited_out(gitlab):
    repo, ref = _project(gitlab)
    client = _client(gitlab)
    gitlab.fail_next(1, 429, path="/projects/", headers={"Retry-After": "1"}, body={"message": "429 Too Many Requests"})
    gitlab.fail_next(1, 503, path="/projects/")
    started = time.monotonic()
    assert client.get_repo(ref).default_branch == "main"
    assert time.monotonic() - started >= 1.0   # Retry-After was honoured
    gitlab.fail_next(20, 401, path="/projects/", body={"message": "401 Unauthorized"})
    with pytest.raises(ForgeError) as refused:
        client.get_repo(ref)
    assert refused.value.status == 401 and gitlab.token not in str(refused.value)


def test_the_bridge_s_own_login_is_the_token_s_user_when_bot_login_is_left_out(gitlab):
    from forge_bridge.forges.identity import with_bot_logins

    settings = settings_from_dict({"forges": [{"name": "gl", "kind": "gitlab", "url": gitlab.url, "token_env": "T"},
                                              {"name": "set", "kind": "gitlab", "url": gitlab.url, "token_env": "T",
                                               "bot_login": "named"}]},
                                  source="t", environ={"T": gitlab.token})
    filled = with_bot_logins(settings)
    assert filled.forge("gl").bot_login == gitlab.bot_login and filled.forge("set").bot_login == "named"


def test_the_ratelimit_headers_are_recorded_and_pace_calls_near_the_end(gitlab):
    repo, ref = _project(gitlab)
    client = _client(gitlab)
    gitlab.rate_limit_headers = {"RateLimit-Remaining": "1", "RateLimit-Limit": "600",
                                 "RateLimit-Reset": str(int(time.time()) + 2)}
    client.get_repo(ref)
    assert client.quota() == (1, 600)
    started = time.monotonic()
    client.get_repo(ref)   # one call left in the quota: it waits for (most of) the reset
    assert time.monotonic() - started >= 0.5
    gitlab.rate_limit_headers = {"RateLimit-Remaining": "599", "RateLimit-Limit": "600",
                                 "RateLimit-Reset": str(int(time.time()) + 60)}
    client.get_repo(ref)
    assert client.quota() == (599, 600)
