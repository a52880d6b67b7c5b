"""GitHub Apps against the fake GitHub's App side (real RS256 JWTs, installations, expiring installation tokens):
PyGithub's own App client agrees with the fake; the bridge's App mints, caches, renews and explains."""
from __future__ import annotations

import hashlib
import hmac
import html
import json
import os
import re
import subprocess
import sys
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from fakeforge.github_app import new_private_key
from github import Auth, Github, GithubException, GithubIntegration
from helpers import SECRET, wait_for

from forge_bridge.forges.github import GitHubClient
from forge_bridge.forges.github_app import RENEW_BEFORE, AppError, GitHubApp
from forge_bridge.models import IssueRef, RepoRef


def _repo_ref(github, repo) -> RepoRef:
    return RepoRef(f"127.0.0.1:{github.port}", repo.owner, repo.name)


@pytest.fixture
def installed(github):
    """An App installed on alice/widgets (not on alice/other)."""
    repo = github.create_repo("alice", "widgets")
    github.create_repo("alice", "other")
    app = github.apps.create_app("kugetsu")
    github.apps.install(app, "alice", [repo])
    return app, repo


def test_pygithubs_own_app_client_is_happy_with_the_fake(github, installed):
    app, repo = installed
    integration = GithubIntegration(auth=Auth.AppAuth(app.id, app.private_key), base_url=github.api)
    assert integration.get_app().slug == "kugetsu"
    installation = integration.get_repo_installation("alice", "widgets")
    token = integration.get_access_token(installation.id)
    assert token.token.startswith("ghs_") and token.expires_at is not None
    assert Github(auth=Auth.Token(token.token), base_url=github.api).get_repo("alice/widgets").name == "widgets"
    with pytest.raises(GithubException) as refused:   # an installation reaches only its repositories
        Github(auth=Auth.Token(token.token), base_url=github.api).get_repo("alice/other").name
    assert refused.value.status == 403
    github.apps.clock_offset = 7200   # two hours on: the token has expired
    with pytest.raises(GithubException) as expired:
        Github(auth=Auth.Token(token.token), base_url=github.api).get_repo("alice/widgets").name
    assert expired.value.status == 401


def test_tokens_are_cached_per_installation_and_renewed_before_they_expire(github, installed):
    app, repo = installed
    ours = GitHubApp(github.api, app.id, lambda: app.private_key)
    ref = _repo_ref(github, repo)
    assert ours.login() == "kugetsu[bot]"
    first = ours.token_for(ref)
    assert ours.token_for(ref) == first and github.apps.minted == 1   # cached
    app.token_life = RENEW_BEFORE - 10                                # tokens now too short-lived to keep
    ours.forget_tokens()
    second = ours.token_for(ref)
    assert ours.token_for(ref) != second and github.apps.minted == 3  # renewed on every use


def test_the_api_client_renews_a_token_github_no_longer_takes(github, installed):
    app, repo = installed
    issue = github.create_issue(repo, "Fix it")
    client = GitHubClient(github.api, app=GitHubApp(github.api, app.id, lambda: app.private_key), write_interval=0)
    ref = IssueRef(_repo_ref(github, repo), issue.number)
    assert client.get_issue(ref).title == "Fix it"
    github.apps.tokens.clear()   # revoked (or expired early) on GitHub's side
    assert client.get_issue(ref).title == "Fix it"
    assert github.apps.minted == 2
    assert client.whoami() == "kugetsu[bot]"


@pytest.mark.parametrize("case, expected", [
    ("bad key", "refused the App's signed token"),
    ("wrong app id", "refused the App's signed token"),
    ("clock behind", "clock"),
    ("not a pem", "not a PEM file"),
    ("no key", "no private key"),
])
def test_each_app_misconfiguration_is_one_clear_error(github, installed, case, expected):
    app, _ = installed
    key, app_id = app.private_key, app.id
    if case == "bad key":
        key = new_private_key()
    elif case == "wrong app id":
        app_id = 999_999
    elif case == "clock behind":
        github.apps.clock_offset = -3600   # GitHub's clock an hour behind ours: our JWT is "issued in the future"
    elif case == "not a pem":
        key = "ghp_this-is-a-token-not-a-key"
    elif case == "no key":
        key = ""
    with pytest.raises(AppError) as error:
        GitHubApp(github.api, app_id, lambda: key).login()
    assert expected in str(error.value)
    assert len(key) < 80 or key[40:80] not in str(error.value)   # never a piece of the key


def test_an_app_not_installed_on_a_repository_says_so(github, installed):
    app, _ = installed
    other = RepoRef(f"127.0.0.1:{github.port}", "alice", "other")
    with pytest.raises(AppError) as error:
        GitHubApp(github.api, app.id, lambda: app.private_key).token_for(other)
    assert error.value.status == 404
    assert str(error.value).startswith(f"GitHub App {app.id} is not installed on alice/other")


def _app_forge(github, *, token_life: float = 3600.0):
    """The fake GitHub serving git over HTTP, with an App installed on alice/widgets that the bridge acts as."""
    github.git_http, github.bot_login = True, "kugetsu[bot]"
    repo = github.create_repo("alice", "widgets")
    app = github.apps.create_app("kugetsu", token_life=token_life)
    github.apps.install(app, "alice", [repo])
    github.bridge_app = app
    return app, repo


def test_serve_as_a_github_app_fetches_pushes_and_opens_the_pull_request(github, start_bridge, tmp_path):
    """Tokens minted for the installation carry the API and git over HTTP; one revoked while the agent works is
    renewed when the push is refused, and the work lands."""
    _, repo = _app_forge(github)
    issue = github.create_issue(repo, "Fix the emoji names")
    record = tmp_path / "agent.record"
    bridge = start_bridge([github], agent_args=["--record", str(record), "--sleep", "2"])
    [answer] = github.add_label(repo, issue, "kugetsu:todo")
    assert answer.status_code == 202
    wait_for(lambda: record.exists() and "start" in record.read_text(), timeout=60, what="the agent to start")
    github.apps.tokens.clear()   # GitHub revokes every token while the agent works
    wait_for(lambda: repo.pulls, timeout=60, what="the pull request")
    [pull] = repo.pulls.values()
    assert pull.head == "kugetsu/1-fix-the-emoji-names"
    assert github.apps.minted >= 2   # renewed, by git's refusal or an API call's, whichever came first
    pushed = subprocess.run(["git", "show", f"{pull.head}:AGENT_WORK.md"], cwd=repo.bare, capture_output=True,
                            text=True, check=True).stdout
    assert pushed.startswith("Fix the emoji names")
    wait_for(lambda: "kugetsu:review" in github.labels_of(repo, issue), timeout=30, what="the review label")
    # The App's own comment never triggers it (its login comes from GET /app, no bot_login configured).
    github.comment(repo, issue, "/kugetsu start again", author="kugetsu[bot]")
    github.comment(repo, issue, "/kugetsu status", author="alice")
    wait_for(lambda: any("/kugetsu status" == c for c in github.comments_of(repo, issue)) and
             bridge.redis.llen("rq:queue:forge-bridge-events") == 0, timeout=30, what="intake to settle")
    assert len(bridge.redis.keys("fb:task:*")) == 1
    token_free = bridge.data_dir.rglob("*")
    pem = github.bridge_app.private_key.splitlines()[1]
    assert not any(pem in path.read_text(errors="ignore") for path in token_free
                   if path.is_file() and path.stat().st_size < 2_000_000)


def test_installation_events_and_a_missing_installation_show_on_the_page_and_in_check(github, start_bridge):
    app, repo = _app_forge(github)
    github.create_repo("alice", "elsewhere")   # configured below, but the App is not installed there
    bridge = start_bridge([github], settings={"workers": "1"})
    bridge.stop()   # again, with concrete repositories, which the worker asks GitHub about at start
    config = bridge.config.read_text().replace('name = "alice/*"', 'name = "alice/widgets"')
    bridge.config.write_text(config + '\n[[repos]]\nforge = "github"\nname = "alice/elsewhere"\n')
    bridge.start()
    checked = subprocess.run([sys.executable, "-m", "forge_bridge", "--config", str(bridge.config), "check"],
                             capture_output=True, text=True, env={**os.environ})
    lines = checked.stdout.splitlines()
    assert any("acting as kugetsu[bot]" in line for line in lines), checked.stdout
    assert any("alice/widgets: the App is installed" in line for line in lines), checked.stdout
    assert any(f"alice/elsewhere: GitHub App {app.id} is not installed on alice/elsewhere" in line
               for line in lines), checked.stdout
    assert checked.returncode != 0
    hooks = subprocess.run([sys.executable, "-m", "forge_bridge", "--config", str(bridge.config), "hooks", "install",
                            "--url", "https://bridge.example.com"], capture_output=True, text=True,
                           env={**os.environ, "FAKE_WEBHOOK_SECRET": SECRET})
    assert f"GitHub App {app.id}: events come through the App's webhook; none installed" in hooks.stdout, hooks.stdout
    assert not repo.hooks and "kugetsu:todo" in repo.labels   # no repository hook; the labels are made
    body = json.dumps({"action": "added", "installation": {"id": 5001, "account": {"login": "alice"}},
                       "repository_selection": "selected",
                       "repositories_added": [{"id": 1, "name": "extra", "full_name": "alice/extra", "private": False}],
                       "repositories_removed": [], "sender": {"login": "alice", "type": "User"}}).encode()
    answer = requests.post(f"{bridge.url}/webhooks/github", data=body, headers={
        "X-GitHub-Event": "installation_repositories", "X-GitHub-Delivery": "inst-1",
        "Content-Type": "application/json", "X-Hub-Signature-256": "sha256=" + hmac.new(
            SECRET.encode(), body, hashlib.sha256).hexdigest()}, timeout=10)
    assert answer.status_code == 200 and answer.json()["status"] == "recorded"
    def shown() -> str | None:
        page = requests.get(bridge.url, timeout=10).text
        return page if "alice/extra" in page and 'class="reach">alice/widgets' in page else None

    page = wait_for(shown, timeout=30, what="the App's reach on the status page")
    assert f"alice/elsewhere: GitHub App {app.id} is not installed on alice/elsewhere" in page


def test_a_task_whose_app_key_stops_working_fails_saying_why(github, start_bridge, tmp_path):
    app, repo = _app_forge(github)
    issue = github.create_issue(repo, "Fix the emoji names")
    record = tmp_path / "agent.record"
    bridge = start_bridge([github], agent_args=["--record", str(record), "--sleep", "2"])
    github.add_label(repo, issue, "kugetsu:todo")
    wait_for(lambda: record.exists() and "start" in record.read_text(), timeout=60, what="the agent to start")
    app.private_key = new_private_key()   # the App's key rotated on GitHub: the bridge's no longer signs for it
    github.apps.tokens.clear()

    def outcome() -> str:
        for key in bridge.redis.keys("fb:task:*"):
            task = json.loads(bridge.redis.get(key))
            if task["state"] == "failed":
                return task["outcome"]
        return ""

    said = wait_for(outcome, timeout=60, what="the task to fail")
    assert f"GitHub App {app.id}: GitHub refused the App's signed token" in said and "private key" in said
    assert not repo.pulls


@pytest.mark.parametrize("org", ["", "acme"])
def test_github_app_create_runs_githubs_manifest_flow(github, tmp_path, org):
    from conftest import free_port

    port, data = free_port(), tmp_path / "data"
    public = f"http://127.0.0.1:{port}"
    config = tmp_path / "forge-bridge.toml"
    config.write_text(f'data_dir = "{data}"\n[[forges]]\nname = "ghe"\nkind = "github"\nurl = "{github.url}"\n'
                      'token_env = "UNSET_TOKEN"\n')
    command = [sys.executable, "-m", "forge_bridge", "--config", str(config), "github-app", "create", "--url", public,
               "--bind", f"127.0.0.1:{port}", "--name", "fb-test", *(["--org", org] if org else [])]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def page() -> str | None:
            try:
                return requests.get(f"{public}/setup/github-app", timeout=5).text
            except requests.ConnectionError:
                return None

        form = wait_for(page, timeout=30, what="the setup page")
        action = html.unescape(re.search(r'<form method="post" action="([^"]+)"', form)[1])
        manifest = json.loads(html.unescape(re.search(r'name="manifest" value="([^"]+)"', form)[1]))
        where = f"organizations/{org}/settings/apps/new" if org else "settings/apps/new"
        assert action.startswith(f"{github.url}/{where}?state=")
        assert manifest["name"] == "fb-test" and manifest["url"] == public
        assert manifest["hook_attributes"]["url"] == f"{public}/webhooks/github"
        assert manifest["redirect_url"] == f"{public}/setup/github-app/callback"
        assert manifest["default_permissions"] == {"contents": "write", "issues": "write", "pull_requests": "write",
                                                   "metadata": "read", "checks": "read", "statuses": "read"}
        assert set(manifest["default_events"]) == {"issues", "issue_comment", "pull_request", "pull_request_review",
                                                   "pull_request_review_comment", "check_suite", "status"}
        state = parse_qs(urlsplit(action).query)["state"][0]
        forged = requests.get(f"{public}/setup/github-app/callback", params={"code": "x", "state": "forged"},
                              timeout=10)
        assert forged.status_code == 400   # an answer not for this page is turned away; the command waits on
        created = github.apps.expect_manifest("code-123", "fb-test")   # the user pressed "Create" on GitHub
        done = requests.get(f"{public}/setup/github-app/callback", params={"code": "code-123", "state": state},
                            timeout=10)
        assert done.status_code == 200 and "fb-test" in done.text
        out, _ = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0, out
    folder = data / "github-app"
    key, secret = folder / "private-key.pem", folder / "webhook-secret"
    assert key.read_text() == created.private_key and secret.read_text() == created.webhook_secret
    assert (key.stat().st_mode & 0o777, secret.stat().st_mode & 0o777) == (0o600, 0o600)
    assert created.private_key.splitlines()[1] not in out   # the key itself is never printed
    with pytest.raises(requests.ConnectionError):          # the setup routes are gone with the command
        requests.get(f"{public}/setup/github-app", timeout=5)
    # The printed lines are a working configuration once the App is installed.
    repo = github.create_repo("alice", "widgets")
    github.apps.install(created, "alice", [repo])
    lines = out[out.index("[[forges]]"):]
    working = tmp_path / "app.toml"
    working.write_text(f'data_dir = "{data}"\n{lines}\n[[repos]]\nforge = "ghe"\nname = "alice/widgets"\n')
    checked = subprocess.run([sys.executable, "-m", "forge_bridge", "--config", str(working), "check"],
                             capture_output=True, text=True, env={**os.environ, "GITHUB_WEBHOOK_SECRET": "s" * 20})
    assert "acting as fb-test[bot]" in checked.stdout and "alice/widgets: the App is installed" in checked.stdout, \
        checked.stdout + checked.stderr


def test_git_over_http_takes_only_a_live_installation_token(github, installed):
    from forge_bridge.workspace import worktrees

    app, repo = installed
    github.git_http, app.token_life = True, 5   # tokens that live five seconds
    ours = GitHubApp(github.api, app.id, lambda: app.private_key)
    url = f"{github.url}/alice/widgets.git"

    def ls_remote(token: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "ls-remote", url], env=worktrees.git_env(url, token), capture_output=True,
                              text=True, timeout=30)

    token = ours.token_for(_repo_ref(github, repo))
    assert "refs/heads/main" in ls_remote(token).stdout
    github.apps.clock_offset = 10   # GitHub's clock passes the five seconds
    refused = ls_remote(token)
    assert refused.returncode != 0 and worktrees.refused_credentials(worktrees.GitError(refused.stderr))
    fresh = ours.token_for(_repo_ref(github, repo))   # a five-second token is never kept: a new one each time
    assert fresh != token and "refs/heads/main" in ls_remote(fresh).stdout


def test_a_git_step_refused_for_a_revoked_token_is_retried_once_with_a_new_one(github, installed, conn, tmp_path):
    from forge_bridge.workspace import worktrees
    from forge_bridge.config import Settings
    from forge_bridge.work.runner import Runner
    from forge_bridge.store.sessions import Store

    app, repo = installed
    github.git_http = True
    client = GitHubClient(github.api, app=GitHubApp(github.api, app.id, lambda: app.private_key), write_interval=0)
    runner = Runner(Settings(data_dir=tmp_path / "data"), Store(conn), client, scheduler=None)
    ref = IssueRef(_repo_ref(github, repo), 1)
    clone_url, mirror = f"{github.url}/alice/widgets.git", tmp_path / "mirror.git"
    client.git_token(ref.repo)           # a token is cached…
    github.apps.tokens.clear()           # …and GitHub revokes it
    runner.with_git_token(ref, lambda env: worktrees.sync_mirror(mirror, clone_url, env), clone_url)
    assert github.git_refusals == 1 and github.apps.minted == 2
    assert worktrees.git("rev-parse", "refs/remotes/origin/main", cwd=mirror) == repo.branch_sha("main")


def test_workers_starting_together_survey_the_apps_repositories_once(github, installed, conn):
    from forge_bridge.forges import app_reach
    from forge_bridge.config import settings_from_dict

    app, _ = installed
    def configured(*names: str):
        return settings_from_dict({"forges": [{"name": "gh", "kind": "github", "url": github.url, "app_id": app.id,
                                               "private_key_env": "K"}],
                                   "repos": [{"forge": "gh", "name": name} for name in names]},
                                  source="t", environ={"K": app.private_key})

    def asked() -> list[str]:
        return [e.path for e in github.exchanges if e.path.endswith("/installation")]

    first = configured("alice/widgets", "alice/other")
    app_reach.survey(first, conn)
    app_reach.survey(first, conn)   # the second worker of the same serve
    assert sorted(asked()) == ["/repos/alice/other/installation", "/repos/alice/widgets/installation"]
    [shown] = app_reach.reach(conn, first)
    assert list(shown["reaches"]) == ["alice/widgets"] and list(shown["missing"]) == ["alice/other"]
    app_reach.survey(configured("alice/widgets"), conn)   # other repositories configured: asked again
    assert len(asked()) == 3
