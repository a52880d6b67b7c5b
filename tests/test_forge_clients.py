"""Both forge clients against the fake forge: transient failures are retried with backoff, rate limits are
waited out, and a persistent failure ends as one ForgeError."""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from forge_bridge.config import settings_from_dict
from forge_bridge.forges import ForgeError, make_client
from forge_bridge.models import IssueRef, RepoRef


@pytest.fixture
def client_and_issue(forge):
    repo = forge.create_repo("alice", "widgets")
    issue = forge.create_issue(repo, "T", "B")
    settings = settings_from_dict({"forges": [{"name": "f", "kind": forge.kind, "url": forge.url, "token_env": "T",
                                               "write_interval": 0}]}, source="t", environ={"T": forge.token})
    ref = IssueRef(RepoRef(forge.host, "alice", "widgets"), issue.number)
    return forge, make_client(settings.forge("f")), ref


def _tries(forge, path_end: str) -> int:
    return sum(1 for e in forge.exchanges if e.path.endswith(path_end))


def test_server_errors_are_retried(client_and_issue):
    forge, client, ref = client_and_issue
    forge.fail_next(2, 502, path="/issues/1")
    assert client.get_issue(ref).title == "T"
    assert _tries(forge, "/issues/1") == 3


def test_a_rate_limit_is_waited_out(client_and_issue):
    forge, client, ref = client_and_issue
    reset = int(time.time()) + 2
    if forge.kind == "github":
        forge.fail_next(1, 403, path="/issues/1", body={"message": "API rate limit exceeded for user."},
                        headers={"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(reset)})
    else:
        forge.fail_next(1, 429, path="/issues/1", headers={"Retry-After": "1"})
    started = time.monotonic()
    assert client.get_issue(ref).title == "T"
    assert time.monotonic() - started >= 0.9 and _tries(forge, "/issues/1") == 2


def test_a_persistent_failure_is_one_forge_error(client_and_issue):
    forge, client, ref = client_and_issue
    forge.fail_next(100, 500, path="/issues/1")
    with pytest.raises(ForgeError) as raised:
        client.get_issue(ref)
    assert raised.value.status == 500 and 2 < _tries(forge, "/issues/1") <= 7


def test_client_errors_are_not_retried(client_and_issue):
    forge, client, ref = client_and_issue
    with pytest.raises(ForgeError) as raised:
        client.get_issue(IssueRef(ref.repo, 99))
    assert raised.value.status == 404 and _tries(forge, "/issues/99") == 1


def test_github_polls_conditionally_so_an_unchanged_repository_costs_no_quota(github):
    from datetime import datetime, timedelta, timezone

    repo = github.create_repo("alice", "widgets")
    issue = github.create_issue(repo, "T", "B")
    github.add_label(repo, issue, "kugetsu:todo")
    settings = settings_from_dict({"forges": [{"name": "f", "kind": "github", "url": github.url, "token_env": "T",
                                               "write_interval": 0}]}, source="t", environ={"T": github.token})
    client, where = make_client(settings.forge("f")), RepoRef(github.host, "alice", "widgets")
    since = datetime.now(timezone.utc) - timedelta(minutes=5)

    first = client.list_labeled_issues(where, "kugetsu:todo"), client.comments_since(where, since)
    again = client.list_labeled_issues(where, "kugetsu:todo"), client.comments_since(where, since)

    assert first == again and [i.number for i in first[0]] == [issue.number]
    assert [e.status for e in github.exchanges[-2:]] == [304, 304]
    github.state.add_comment(repo, issue.number, "news", "alice")
    assert len(client.comments_since(where, since)) == 1 and github.exchanges[-1].status == 200


def test_github_slows_down_before_the_rate_limit(github):
    repo = github.create_repo("alice", "widgets")
    github.create_issue(repo, "T", "B")
    settings = settings_from_dict({"forges": [{"name": "f", "kind": "github", "url": github.url, "token_env": "T",
                                               "write_interval": 0}]}, source="t", environ={"T": github.token})
    client = make_client(settings.forge("f"))
    github.rate_limit_headers = {"X-RateLimit-Limit": "5000", "X-RateLimit-Remaining": "2", "X-RateLimit-Used": "4998",
                                 "X-RateLimit-Reset": str(int(time.time()) + 3), "X-RateLimit-Resource": "core"}
    started = time.monotonic()
    client.get_issue(IssueRef(RepoRef(github.host, "alice", "widgets"), 1))
    assert time.monotonic() - started >= 0.8   # about (reset - now) / remaining


def test_forge_calls_and_quota_are_counted_for_metrics(github, conn):
    from forge_bridge.store.metrics import render

    repo = github.create_repo("alice", "widgets")
    github.create_issue(repo, "T", "B")
    github.rate_limit_headers = {"X-RateLimit-Limit": "5000", "X-RateLimit-Remaining": "4321",
                                 "X-RateLimit-Reset": str(int(time.time()) + 3600)}
    settings = settings_from_dict({"forges": [{"name": "f", "kind": "github", "url": github.url, "token_env": "T",
                                               "write_interval": 0}]}, source="t", environ={"T": github.token})
    client = make_client(settings.forge("f"), conn=conn)
    client.get_issue(IssueRef(RepoRef(github.host, "alice", "widgets"), 1))
    with pytest.raises(ForgeError):
        client.get_issue(IssueRef(RepoRef(github.host, "alice", "widgets"), 99))
    text = render(conn, settings).decode()
    assert 'forge_bridge_forge_api_calls_total{forge="f",operation="get_issue"} 2.0' in text
    assert 'forge_bridge_forge_quota{forge="f",kind="remaining"} 4321.0' in text


def test_a_pull_request_from_a_fork_with_the_bridge_branch_name_is_never_adopted(client_and_issue):
    forge, client, ref = client_and_issue
    repo = forge.state.repo("alice", "widgets")
    stranger = forge.state.create_pull(repo, title="mine now", body="", head="kugetsu/1-t", base="main",
                                       author="mallory")
    stranger.head_repo = "mallory/widgets"   # a read-only user's fork, with the predictable branch name
    assert client.find_open_pull(ref.repo, "kugetsu/1-t") is None
    stranger.head_repo = ""                  # the same branch in the repository itself is the bridge's
    assert client.find_open_pull(ref.repo, "kugetsu/1-t").number == stranger.number


def test_a_pasted_status_marker_is_not_taken_over(client_and_issue, conn):
    from forge_bridge.models import Session
    from forge_bridge.work.report import STATUS_MARKER, Reporter
    from forge_bridge.store.sessions import Store

    forge, client, ref = client_and_issue
    repo = forge.state.repo("alice", "widgets")
    pasted = forge.state.add_comment(repo, ref.number, f"{STATUS_MARKER}\nnot the bridge's", "mallory")
    settings = settings_from_dict({"forges": [{"name": "f", "kind": forge.kind, "url": forge.url, "token_env": "T",
                                               "bot_login": forge.bot_login, "write_interval": 0}]},
                                  source="t", environ={"T": forge.token})
    session = Session(issue=str(ref), forge="f")
    Reporter(client, settings, Store(conn)).publish_status(ref, session, f"{STATUS_MARKER}\nthe bridge's")
    assert pasted.body == f"{STATUS_MARKER}\nnot the bridge's" and session.status_comment_id != pasted.id
    assert forge.state.comments[session.status_comment_id].author == forge.bot_login


def test_the_gitea_client_loads_only_what_it_calls_and_the_whole_package_stays_importable():
    """gitea-api-client's own __init__ loads all its API classes and models (seconds, ~58 MB), and its three API
    modules the bridge uses hold some 400 operations: the bridge's client must load only the operations it calls,
    yet code that imports the package in full afterwards must get all of it."""
    probe = """
import asyncio
import sys
import forge_bridge.forges.gitea
from forge_bridge.forges.gitea import IssueApi
package = sys.modules["gitea_api_client"]
print("admin", "AdminApi" in vars(package), "admin_api" in sys.modules, "issue_api" in sys.modules)
print("operations", sorted(name for name in vars(IssueApi) if name.startswith("issue_"))[:3])
print("models", len([name for name in sys.modules if name.startswith("gitea_api_client.models.")]) < 60)
from pydantic import ValidationError
operation = IssueApi.issue_get_issue
[validator] = [c.cell_contents.__self__ for c in operation.__closure__ if hasattr(c.cell_contents, "__self__")]
built = validator.__pydantic_complete__
try:
    asyncio.run(operation(None, "owner", "repo", index="not a number"))   # validated all the same, when first used
except ValidationError:
    print("deferred", built, validator.__pydantic_complete__)
from gitea_api_client import AdminApi, Organization
from gitea_api_client.api.issue_api import IssueApi as WholeIssueApi
from gitea_api_client.models import Issue
print("full", AdminApi.__module__, Organization.__name__, Issue.__name__, hasattr(WholeIssueApi, "issue_delete"))
"""
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "admin False False False",
        "operations ['issue_add_label', 'issue_create_comment', 'issue_create_label']",
        "models True",
        "deferred False True",
        "full gitea_api_client.api.admin_api Organization Issue True"]


def test_every_gitea_operation_the_client_calls_is_loaded():
    """The client's calls are `i.issue_…`, `r.repo_…` and `UserApi(api).user_…`: each must be among the
    operations gitea_modules loads, or that call fails with AttributeError only when it is first made."""
    from forge_bridge.forges import gitea, gitea_modules

    source = Path(gitea.__file__).read_text()
    called = set(re.findall(r"\b(?:i|r|UserApi\(api\))\.((?:issue|repo|user)_\w+)\(", source))
    loaded = {name for _, operations in gitea_modules.OPERATIONS.values() for name in operations}
    assert len(called) > 20 and called <= loaded, called - loaded
    for name, operations in gitea_modules.OPERATIONS.values():
        assert all(callable(getattr(gitea_modules.load()[name], operation)) for operation in operations)


def test_a_gitea_client_without_an_operation_the_bridge_calls_is_refused_by_name():
    from forge_bridge.forges import gitea_modules

    with pytest.raises(ImportError, match="issue_api has no _issue_frobnicate_serialize, issue_frobnicate: "):
        gitea_modules._api_class("issue_api", "IssueApi", ("issue_get_issue", "issue_frobnicate"))


def test_a_gitea_client_installed_without_its_sources_is_loaded_whole(tmp_path):
    """Bytecode only (some packagers strip the .py files): nothing to take the operations from, so the
    generated modules load as they are, and the bridge's calls are all there."""
    import compileall
    import shutil

    from forge_bridge.forges import gitea_modules

    package = Path(importlib.util.find_spec(gitea_modules.PACKAGE).submodule_search_locations[0])
    stripped = tmp_path / gitea_modules.PACKAGE
    shutil.copytree(package, stripped, ignore=shutil.ignore_patterns("__pycache__"))
    compileall.compile_dir(stripped, legacy=True, quiet=1)   # foo.pyc beside where foo.py was
    for source in stripped.rglob("*.py"):
        source.unlink()
    probe = ("import sys\nfrom forge_bridge.forges import gitea_modules\nclasses = gitea_modules.load()\n"
             "print(classes['IssueApi'].__module__, hasattr(classes['IssueApi'], 'issue_delete'), "
             "all(hasattr(classes[n], o) for n, ops in gitea_modules.OPERATIONS.values() for o in ops))\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["gitea_api_client.api.issue_api", "True", "True"]
