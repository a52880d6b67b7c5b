"""The operator's JSON API on a real Redis: what it shows, its published OpenAPI document, and ui_token."""
from __future__ import annotations

import base64

import jsonschema
import pytest
from helpers import SECRET

from forge_bridge.config import settings_from_dict
from forge_bridge.models import IssueRef, RepoRef, Session, TaskAction, TaskState
from forge_bridge.store.sessions import Store
from forge_bridge.web import create_app
from forge_bridge.web.api import published_document

TOKEN = "op3rator-t0ken"


def _app(redis_url: str, token: str = ""):
    environ = {"S": SECRET, **({"FORGE_BRIDGE_UI_TOKEN": token} if token else {})}
    settings = settings_from_dict({"redis_url": redis_url, "forges": [
        {"name": "gh", "kind": "github", "url": "https://github.com", "webhook_secret_env": "S"}]},
        source="t", environ=environ)
    return create_app(settings).test_client()


def _valid(path: str, status: int, body) -> None:
    doc = published_document()
    response = doc["paths"][path]["get"]["responses"][str(status)]
    schema = response["content"]["application/json"]["schema"] if "content" in response else \
        doc["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]["content"]["application/json"]["schema"]
    jsonschema.Draft4Validator({"components": doc["components"], "allOf": [schema]}).validate(body)


@pytest.fixture
def seeded(conn):
    store = Store(conn)
    ref = IssueRef(RepoRef("github.com", "alice", "widgets"), 3)
    task = store.new_task(ref, forge="gh", action=TaskAction.START, message="do it", requested_by="alice")
    task.state, task.started_at, task.finished_at = TaskState.SUCCEEDED, task.queued_at + 1, task.queued_at + 4
    task.cost_usd, task.tokens, task.turns = 0.125, 2500, 3
    store.save_task(task)
    store.save_session(Session(issue=str(ref), forge="gh", branch="kugetsu/3-x", task_ids=[task.id]))
    return task


def test_tasks_sessions_and_one_task_match_the_published_document(redis_url, seeded):
    client = _app(redis_url)
    tasks = client.get("/api/tasks")
    assert tasks.status_code == 200 and [t["id"] for t in tasks.json["tasks"]] == [seeded.id]
    assert tasks.json["tasks"][0]["duration"] == 3.0 and tasks.json["slots"] == {"in_use": 0, "limit": 3}
    assert (tasks.json["tasks"][0]["cost_usd"], tasks.json["tasks"][0]["tokens"]) == (0.125, 2500)
    _valid("/api/tasks", 200, tasks.json)
    one = client.get(f"/api/tasks/{seeded.id}")
    assert one.json["state"] == "succeeded"
    _valid("/api/tasks/{id}", 200, one.json)
    sessions = client.get("/api/sessions")
    assert sessions.json["sessions"][0]["branch"] == "kugetsu/3-x"
    _valid("/api/sessions", 200, sessions.json)
    missing = client.get("/api/tasks/nope")
    assert missing.status_code == 404
    _valid("/api/tasks/{id}", 404, missing.json)
    assert client.get("/api/openapi.json").json["info"]["title"] == "forge-bridge operator API"


@pytest.mark.parametrize(("header", "status"), [
    (None, 401), ("Bearer wrong", 401), (f"Bearer {TOKEN}", 200),
    ("Basic " + base64.b64encode(f"me:{TOKEN}".encode()).decode(), 200),
    ("Basic " + base64.b64encode(b"me:nope").decode(), 401), ("Basic !!!", 401),
])
def test_ui_token_guards_the_api(redis_url, seeded, header, status):
    client = _app(redis_url, TOKEN)
    answer = client.get("/api/tasks", headers={"Authorization": header} if header else {})
    assert answer.status_code == status
    assert TOKEN not in answer.get_data(as_text=True)
    if status == 401:
        _valid("/api/tasks", 401, answer.json)


def test_health_and_webhooks_never_need_the_ui_token(redis_url):
    client = _app(redis_url, TOKEN)
    assert client.get("/healthz").status_code == 200
    assert client.post("/webhooks/github", data=b"{}", headers={"X-GitHub-Event": "star",
                                                                "X-GitHub-Delivery": "d"}).status_code == 200


def test_the_github_app_setup_routes_are_not_part_of_the_running_bridge(redis_url):
    client = _app(redis_url, "")   # only `forge-bridge github-app create` serves them, while it runs
    assert client.get("/setup/github-app").status_code == 404
    assert client.get("/setup/github-app/callback", query_string={"code": "c", "state": "s"}).status_code == 404


def test_metrics_in_prometheus_format(redis_url, seeded, conn):
    client = _app(redis_url)
    client.post("/webhooks/github", data=b"{}", headers={"X-GitHub-Event": "star", "X-GitHub-Delivery": "d"})
    client.post("/webhooks/github", data=b"{}", headers={"X-GitHub-Event": "issues", "X-GitHub-Delivery": "e"})
    text = client.get("/metrics").get_data(as_text=True)
    assert 'forge_bridge_deliveries_total{forge="github",outcome="ignored"} 1.0' in text
    assert 'forge_bridge_deliveries_total{forge="github",outcome="unauthorized"} 1.0' in text
    assert 'forge_bridge_tasks{state="succeeded"} 1.0' in text and 'forge_bridge_tasks{state="queued"} 0.0' in text
    assert 'forge_bridge_agent_run_seconds_bucket{le="10.0"} 1.0' in text and "forge_bridge_agent_run_seconds_sum 3.0" in text
    assert "forge_bridge_agent_slots_limit 3.0" in text and 'forge_bridge_queue_depth{queue="forge-bridge-events"}' in text


def test_metrics_and_the_page_follow_the_ui_token(redis_url):
    client = _app(redis_url, TOKEN)
    assert client.get("/metrics").status_code == 401 and client.get("/").status_code == 401
    assert client.get("/", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_the_page_shows_what_each_recent_run_cost(redis_url, seeded):
    html = _app(redis_url).get("/").get_data(as_text=True)
    assert "<td>$0.125 · 2.5k tokens · 3 turns</td>" in html


def test_a_worker_without_a_working_sandbox_is_a_warning_on_the_page(redis_url, conn, monkeypatch):
    from forge_bridge.agents import sandbox
    from forge_bridge.config import settings_from_dict

    settings = settings_from_dict({"agent": {"sandbox": "auto"}}, source="t", environ={})
    monkeypatch.setattr(sandbox, "bwrap_works", lambda: "bwrap is not installed (Debian: apt-get install bubblewrap)")
    sandbox.announce(settings, conn)
    page = _app(redis_url).get("/").get_data(as_text=True)
    assert 'class="warning"' in page and "agents run without a sandbox: bwrap is not installed" in page
    monkeypatch.setattr(sandbox, "bwrap_works", lambda: "")
    sandbox.announce(settings, conn)   # a worker that has one clears its host's warning
    assert "agents run without a sandbox" not in _app(redis_url).get("/").get_data(as_text=True)


def test_a_worker_whose_agents_could_write_to_its_redis_is_a_warning_on_the_page(redis_url, conn, monkeypatch):
    """Confined agents still share the host's network: a Redis there without a password takes their jobs."""
    from forge_bridge.agents import sandbox
    from forge_bridge.config import settings_from_dict

    monkeypatch.setattr(sandbox, "bwrap_works", lambda: "")
    for url in ("redis://127.0.0.1:6390/0", "redis://:pw@127.0.0.1:6390/0", "unix:///run/redis/redis.sock"):
        sandbox.announce(settings_from_dict({"redis_url": url}, source="t", environ={}), conn)
        page = _app(redis_url).get("/").get_data(as_text=True)
        exposed = "Redis at 127.0.0.1:6390 asks for no password: an agent could queue a job" in page
        assert exposed == (url == "redis://127.0.0.1:6390/0"), url


def test_hosts_are_served_as_the_document_describes(redis_url, conn):
    from forge_bridge.store import hosts

    hosts.beat(conn, "host-a", agent_workers=2)
    hosts.set_draining(conn, "host-b", True)
    answer = _app(redis_url).get("/api/hosts")
    assert answer.status_code == 200
    _valid("/api/hosts", 200, answer.json)
    assert [(h["id"], h["alive"], h["draining"]) for h in answer.json["hosts"]] == [("host-a", True, False),
                                                                                     ("host-b", False, True)]
