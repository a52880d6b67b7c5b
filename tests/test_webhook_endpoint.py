"""POST /webhooks/<forge> against a real Redis: the documented status for every kind of input, a JSON reason,
no task from bad input, and the next request still served."""
from __future__ import annotations

import hashlib
import hmac
import json

import pytest
from helpers import FIXTURES, SECRET, redated
from rq import Queue
from rq.job import Job
from rq.utils import utcparse

from forge_bridge.store import queue
from forge_bridge.config import ConfigError, settings_from_dict
from forge_bridge.store.sessions import Store
from forge_bridge.web import create_app

LABELED = redated(json.loads((FIXTURES / "github" / "issues.labeled.json").read_text()))
LABELED["label"]["name"] = "kugetsu:todo"
LABELED_BODY = json.dumps(LABELED).encode()
GITEA_LABELS = json.dumps(redated(json.loads((FIXTURES / "gitea" / "issues.label_updated.json").read_text()))).encode()


def _settings(redis_url: str, **top) -> object:
    raw = {"redis_url": redis_url, **top,
           "forges": [{"name": "gh", "kind": "github", "url": "https://github.com", "webhook_secret_env": "S"},
                      {"name": "tea", "kind": "gitea", "url": "https://git.example.com", "webhook_secret_env": "S"}],
           "repos": [{"forge": "gh", "name": "Codertocat/Hello-*"}, {"forge": "tea", "name": "alice/widgets"}]}
    return settings_from_dict(raw, source="test.toml", environ={"S": SECRET})


@pytest.fixture
def client(redis_url):
    return create_app(_settings(redis_url)).test_client()


def sign(body: bytes, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def github_headers(body: bytes, *, event: str = "issues", delivery: str = "d-1", **extra) -> dict:
    return {"X-GitHub-Event": event, "X-GitHub-Delivery": delivery, "X-Hub-Signature-256": f"sha256={sign(body)}",
            "Content-Type": "application/json", **extra}


def events_queued(conn) -> int:
    return Queue(queue.EVENTS_QUEUE, connection=conn).count


def test_trigger_label_is_queued_once_and_redelivery_is_duplicate(client, conn):
    first = client.post("/webhooks/github", data=LABELED_BODY, headers=github_headers(LABELED_BODY))
    again = client.post("/webhooks/github", data=LABELED_BODY, headers=github_headers(LABELED_BODY))
    assert (first.status_code, first.json["status"], first.json["delivery"]) == (202, "queued", "d-1")
    assert (again.status_code, again.json["status"]) == (200, "duplicate")
    assert events_queued(conn) == 1


@pytest.mark.parametrize("func", [queue.EVENT_JOB, queue.CI_JOB])
def test_the_job_the_endpoint_writes_is_the_one_rq_itself_saves(conn, func):
    """The hot path lays out its jobs itself (RQ's Job objects were half its cost): what it writes must be
    what RQ's own enqueue writes, but for the id and the times, and RQ must read it back as the same call."""
    event = json.dumps({"forge": "gh", "text": "x" * 300})
    theirs = Queue(queue.EVENTS_QUEUE, connection=conn).enqueue(
        func, event, job_timeout=queue.EVENT_JOB_TIMEOUT, failure_ttl=queue.FAILURE_TTL, retry=queue.EVENT_RETRY)
    ours = queue.prepare_event_job(conn, event, func=func)
    assert Store(conn).admit_event([f"test:{func}"], "gh/a/b#1", None, job=ours) == (True, None, True)

    saved = {job_id: conn.hgetall(Job.key_for(job_id)) for job_id in (theirs.id, ours.id)}
    stamps = {job_id: [fields.pop(name) for name in (b"created_at", b"enqueued_at")] for job_id, fields in saved.items()}
    assert saved[ours.id] == saved[theirs.id]
    assert all(utcparse(stamp.decode()) for stamp in stamps[ours.id])
    again = Job.fetch(ours.id, connection=conn)
    assert (again.func_name, again.args, again.origin, again.retries_left) == (func, (event,), queue.EVENTS_QUEUE, 3)
    assert Queue(queue.EVENTS_QUEUE, connection=conn).job_ids == [theirs.id, ours.id]


def test_gitea_label_set_with_the_trigger_is_queued(client, conn):
    body = GITEA_LABELS.replace(b'"priority/high"', b'"kugetsu:todo"')
    headers = {"X-Gitea-Event": "issues", "X-Gitea-Event-Type": "issue_label", "X-Gitea-Delivery": "u-1",
               "X-Gitea-Signature": sign(body), "X-GitHub-Event": "issues", "Content-Type": "application/json"}
    answer = client.post("/webhooks/gitea", data=body, headers=headers)
    assert (answer.status_code, answer.json["status"]) == (202, "queued")
    assert events_queued(conn) == 1


BAD_INPUT = [
    # name, body, header changes, status, answer
    ("wrong signature", LABELED_BODY, {"X-Hub-Signature-256": "sha256=" + sign(LABELED_BODY, "nope")}, 401, "unauthorized"),
    ("missing signature", LABELED_BODY, {"X-Hub-Signature-256": None}, 401, "unauthorized"),
    ("signature of another body", LABELED_BODY, {"X-Hub-Signature-256": "sha256=" + sign(b"{}")}, 401, "unauthorized"),
    ("malformed JSON", b"{not json", {}, 400, "malformed"),
    ("invalid UTF-8", b'{"a": "\xff"}', {}, 400, "malformed"),
    ("JSON that is not an object", b"[1, 2]", {}, 400, "malformed"),
    ("form-encoded", b"payload=%7B%7D", {"Content-Type": "application/x-www-form-urlencoded"}, 400, "malformed"),
    ("missing event header", LABELED_BODY, {"X-GitHub-Event": None}, 400, "malformed"),
    ("missing delivery header", LABELED_BODY, {"X-GitHub-Delivery": None}, 400, "malformed"),
    ("unknown event", LABELED_BODY, {"X-GitHub-Event": "star"}, 200, "ignored"),
    ("ping", LABELED_BODY, {"X-GitHub-Event": "ping"}, 200, "ignored"),
    ("unknown action", LABELED_BODY.replace(b'"labeled"', b'"transferred"'), {}, 200, "ignored"),
    ("repository outside the allowlist", LABELED_BODY.replace(b'"Codertocat/Hello-World"', b'"Codertocat/x"')
     .replace(b'"name": "Hello-World"', b'"name": "Other"'), {}, 200, "ignored"),
    ("path escape in the repository name", LABELED_BODY.replace(b'"name": "Hello-World"', b'"name": "../../etc"'),
     {}, 400, "malformed"),
    ("missing fields", b'{"action": "labeled"}', {}, 400, "malformed"),
]
COMMENT = redated(json.loads((FIXTURES / "github" / "issue_comment.created.json").read_text()))


def _comment_body(text: str) -> bytes:
    return json.dumps({**COMMENT, "comment": {**COMMENT["comment"], "body": text}}).encode()


BAD_INPUT += [
    ("comment of 1 MiB", _comment_body("x" * (1024 * 1024)), {"X-GitHub-Event": "issue_comment"}, 200, "ignored"),
    ("quoted command", _comment_body("> /kugetsu start"), {"X-GitHub-Event": "issue_comment"}, 200, "ignored"),
    ("shell metacharacters without a command", _comment_body("$(rm -rf ~); `id` | sh"),
     {"X-GitHub-Event": "issue_comment"}, 200, "ignored"),
]


@pytest.mark.parametrize(("name", "body", "changes", "status", "answer"), BAD_INPUT, ids=[r[0] for r in BAD_INPUT])
def test_bad_input_gets_its_status_and_no_task(name, body, changes, status, answer, client, conn):
    headers = github_headers(body)
    for key, value in changes.items():
        if value is None:
            headers.pop(key)
        else:
            headers[key] = value
    if "X-Hub-Signature-256" not in changes and headers.get("X-Hub-Signature-256"):
        headers["X-Hub-Signature-256"] = f"sha256={sign(body)}"
    response = client.post("/webhooks/github", data=body, headers=headers)
    assert (response.status_code, response.json["status"]) == (status, answer)
    assert response.json["reason"]
    assert events_queued(conn) == 0
    # ...and the next request is still served.
    good = client.post("/webhooks/github", data=LABELED_BODY, headers=github_headers(LABELED_BODY, delivery="next"))
    assert good.status_code == 202


def test_body_over_25_mib_is_refused_before_reading(client, conn):
    body = b" " * (25 * 1024 * 1024 + 1)
    response = client.post("/webhooks/github", data=body, headers=github_headers(b""))
    assert (response.status_code, response.json["status"]) == (413, "too_large")
    assert events_queued(conn) == 0


def test_forgejo_delivery_is_read_with_its_own_headers(redis_url, conn):
    settings = settings_from_dict({"redis_url": redis_url, "forges": [
        {"name": "fj", "kind": "forgejo", "url": "https://codeberg.org", "webhook_secret_env": "S"}],
        "repos": [{"forge": "fj", "name": "alice/*"}]}, source="t", environ={"S": SECRET})
    body = GITEA_LABELS.replace(b'"priority/high"', b'"kugetsu:todo"')
    headers = {"X-Forgejo-Event": "issues", "X-Forgejo-Event-Type": "issue_label", "X-Forgejo-Delivery": "f-1",
               "X-Forgejo-Signature": sign(body), "X-Gitea-Event": "issues", "X-Gitea-Delivery": "f-1",
               "X-Gitea-Signature": "0" * 64, "Content-Type": "application/json"}
    answer = create_app(settings).test_client().post("/webhooks/forgejo", data=body, headers=headers)
    assert (answer.status_code, answer.json["status"]) == (202, "queued")
    assert events_queued(conn) == 1


def test_unknown_forge_endpoint_is_404(client):
    assert client.post("/webhooks/bitbucket", data=b"{}").status_code == 404


def test_the_endpoint_takes_only_post_and_leaves_other_paths_to_the_app(client, conn):
    got = client.get("/webhooks/github")
    assert (got.status_code, got.json["status"], got.headers["Allow"]) == (405, "method_not_allowed", "POST")
    assert client.post("/webhooks/github/extra", data=LABELED_BODY, headers=github_headers(LABELED_BODY)).status_code == 404
    assert client.get("/healthz").status_code == 200
    assert events_queued(conn) == 0


def test_an_ignored_delivery_whose_client_leaves_before_its_body_ends_is_still_answered(client, conn):
    with client.post("/webhooks/github", data=b"{", environ_overrides={"CONTENT_LENGTH": "100000"}, headers={
            "X-GitHub-Event": "push", "X-GitHub-Delivery": "gone", "Content-Type": "application/json"}) as got:
        assert (got.status_code, got.json["status"], got.json["delivery"]) == (200, "ignored", "gone")
    # ...its body, dropped once the answer is out, ends early without an error


def test_a_failure_of_the_bridge_itself_answers_500_and_is_logged(client, conn, monkeypatch, caplog):
    from forge_bridge.web import webhooks

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")
    monkeypatch.setattr(webhooks, "parse_delivery", broken)
    failed = client.post("/webhooks/github", data=LABELED_BODY, headers=github_headers(LABELED_BODY))
    assert (failed.status_code, failed.json["status"]) == (500, "error")
    assert "a bug" not in failed.get_data(as_text=True)   # the reason says where to look, not what broke
    assert any("RuntimeError: a bug" in (record.exc_text or "") for record in caplog.records)
    monkeypatch.undo()
    again = client.post("/webhooks/github", data=LABELED_BODY, headers=github_headers(LABELED_BODY, delivery="d-2"))
    assert (again.status_code, events_queued(conn)) == (202, 1)


def test_bridge_refuses_to_start_without_a_webhook_secret(redis_url):
    settings = settings_from_dict({"redis_url": redis_url, "forges": [
        {"name": "gh", "kind": "github", "url": "https://github.com", "webhook_secret_env": "UNSET_SECRET"}]},
        source="test.toml", environ={})
    with pytest.raises(ConfigError, match="UNSET_SECRET"):
        create_app(settings)
    insecure = settings_from_dict({"redis_url": redis_url, "insecure_no_signature": True, "forges": [
        {"name": "gh", "kind": "github", "url": "https://github.com"}]}, source="test.toml", environ={})
    assert create_app(insecure) is not None


def test_health_answers_503_when_redis_is_gone(tmp_path):
    app = create_app(_settings(f"unix://{tmp_path}/nothing.sock"))
    assert app.test_client().get("/healthz").status_code == 503


def test_webhook_answers_503_when_the_queue_is_gone(tmp_path):
    app = create_app(_settings(f"unix://{tmp_path}/nothing.sock"))
    response = app.test_client().post("/webhooks/github", data=LABELED_BODY, headers=github_headers(LABELED_BODY))
    assert (response.status_code, response.json["status"]) == (503, "unavailable")


def _polling_only(redis_url: str, *, insecure: bool = False):
    """GitHub with a secret, a second GitHub forge and a Gitea without one (polling only)."""
    return settings_from_dict({"redis_url": redis_url, "insecure_no_signature": insecure, "forges": [
        {"name": "gh", "kind": "github", "url": "https://github.com", "webhook_secret_env": "S"},
        {"name": "ghe", "kind": "github", "url": "https://ghe.example.com"},
        {"name": "tea", "kind": "gitea", "url": "https://git.example.com"}],
        "repos": [{"forge": "gh", "name": "Codertocat/Hello-*"}, {"forge": "ghe", "name": "Codertocat/Hello-*"},
                  {"forge": "tea", "name": "alice/*", "poll": True}]}, source="t", environ={"S": SECRET})


def test_a_forge_without_a_webhook_secret_starts_and_refuses_webhooks(redis_url, conn):
    client = create_app(_polling_only(redis_url)).test_client()
    body = GITEA_LABELS.replace(b'"priority/high"', b'"kugetsu:todo"')
    headers = {"X-Gitea-Event": "issues", "X-Gitea-Event-Type": "issue_label", "X-Gitea-Delivery": "u-1",
               "X-Gitea-Signature": sign(body), "Content-Type": "application/json"}
    refused = client.post("/webhooks/gitea", data=body, headers=headers)
    assert (refused.status_code, refused.json["status"]) == (401, "unauthorized")
    assert refused.json["reason"] == "webhooks are not enabled for forge tea (no webhook_secret_env)"
    # The forge with a secret still takes signed deliveries; an unsigned one is not waived onto the other forge.
    signed = client.post("/webhooks/github", data=LABELED_BODY, headers=github_headers(LABELED_BODY))
    unsigned = client.post("/webhooks/github", data=LABELED_BODY,
                           headers={**github_headers(LABELED_BODY, delivery="d-2"), "X-Hub-Signature-256": ""})
    assert (signed.status_code, unsigned.status_code) == (202, 401)
    assert events_queued(conn) == 1


def test_insecure_no_signature_waives_only_forges_without_a_secret(redis_url, conn):
    client = create_app(_polling_only(redis_url, insecure=True)).test_client()
    unsigned = client.post("/webhooks/github", data=LABELED_BODY,
                           headers={**github_headers(LABELED_BODY), "X-Hub-Signature-256": ""})
    assert unsigned.status_code == 202   # taken as the secretless forge's (ghe), never as gh's
    job = Queue(queue.EVENTS_QUEUE, connection=conn).jobs[0]
    assert json.loads(job.args[0])["forge"] == "ghe"
    signed = client.post("/webhooks/github", data=LABELED_BODY, headers=github_headers(LABELED_BODY, delivery="d-9"))
    assert signed.status_code == 202 and json.loads(Queue(queue.EVENTS_QUEUE, connection=conn).jobs[1].args[0])[
        "forge"] == "gh"


def test_a_non_ascii_signature_is_refused_not_a_crash(client, conn):
    headers = {**github_headers(LABELED_BODY), "X-Hub-Signature-256": "sha256=" + "é" * 64}
    response = client.post("/webhooks/github", data=LABELED_BODY, headers=headers)
    assert (response.status_code, response.json["status"]) == (401, "unauthorized")


def test_a_signed_body_nested_too_deeply_is_a_400(client, conn):
    body = b'{"a":' * 200_000 + b"1" + b"}" * 200_000
    response = client.post("/webhooks/github", data=body, headers=github_headers(body))
    assert (response.status_code, response.json["status"]) == (400, "malformed")
    assert response.json["reason"] == "body is nested too deeply" and events_queued(conn) == 0


def test_a_redis_that_never_answers_gives_503_within_five_seconds(conn):
    import socket
    import time

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)   # accepts connections, never answers a command
    try:
        client = create_app(_settings(f"redis://127.0.0.1:{silent.getsockname()[1]}")).test_client()
        for path, body, headers in (("/webhooks/github", LABELED_BODY, github_headers(LABELED_BODY)),
                                    ("/healthz", None, {})):
            began = time.monotonic()
            answer = client.post(path, data=body, headers=headers) if body else client.get(path)
            assert answer.status_code == 503 and time.monotonic() - began < 5, path
    finally:
        silent.close()


def test_a_delivery_older_than_the_claims_it_is_checked_against_is_refused(client, conn):
    old = json.loads((FIXTURES / "github" / "issues.labeled.json").read_text())   # recorded in 2019
    old["label"]["name"] = "kugetsu:todo"
    body = json.dumps(old).encode()
    response = client.post("/webhooks/github", data=body, headers=github_headers(body, delivery="new-id"))
    assert (response.status_code, response.json["status"]) == (200, "ignored")
    assert "older than a delivery is remembered (7 days): a replayed delivery is refused" in response.json["reason"]
    assert events_queued(conn) == 0


@pytest.mark.parametrize("extra", [b'"big": 12345678901234567890123,', b'"ratio": NaN,'])
def test_json_that_only_the_standard_library_reads_is_still_read(client, conn, extra):
    """orjson reads bodies fast but refuses integers over 64 bits and NaN; a forge's delivery with them is read
    as Python's json reads it."""
    body = LABELED_BODY.replace(b"{", b"{" + extra, 1)
    response = client.post("/webhooks/github", data=body, headers=github_headers(body))
    assert (response.status_code, response.json["status"]) == (202, "queued")
    assert events_queued(conn) == 1


def _gitlab_settings(redis_url: str):
    raw = {"redis_url": redis_url,
           "forges": [{"name": "work", "kind": "gitlab", "url": "https://gitlab.example", "webhook_secret_env": "A"},
                      {"name": "home", "kind": "gitlab", "url": "https://gitlab.home.example",
                       "webhook_secret_env": "B"}],
           "repos": [{"forge": "work", "name": "gitlabhq/**"}, {"forge": "home", "name": "gitlabhq/**"}]}
    return settings_from_dict(raw, source="test.toml", environ={"A": "secret-a", "B": "secret-b"})


def test_gitlab_deliveries_by_kind_or_by_forge_name_and_token(redis_url, conn):
    client = create_app(_gitlab_settings(redis_url)).test_client()
    body = json.dumps(redated(json.loads((FIXTURES / "gitlab" / "derived" / "issue.labeled.json").read_text()))).encode()
    headers = {"X-Gitlab-Event": "Issue Hook", "X-Gitlab-Event-UUID": "e-1", "Content-Type": "application/json"}
    by_kind = client.post("/webhooks/gitlab", data=body, headers={**headers, "X-Gitlab-Token": "secret-b"})
    assert (by_kind.status_code, by_kind.json["status"]) == (202, "queued")
    [job] = Queue(queue.EVENTS_QUEUE, connection=conn).jobs
    assert json.loads(job.args[0])["forge"] == "home"   # the secret said which forge sent it
    # /webhooks/<forge name> takes only that forge's secret
    wrong_forge = client.post("/webhooks/work", data=body, headers={**headers, "X-Gitlab-Token": "secret-b",
                                                                      "X-Gitlab-Event-UUID": "e-2"})
    assert wrong_forge.status_code == 401
    named = client.post("/webhooks/work", data=body, headers={**headers, "X-Gitlab-Token": "secret-a",
                                                                "X-Gitlab-Event-UUID": "e-3"})
    assert (named.status_code, named.json["status"]) == (202, "queued")
    missing = client.post("/webhooks/gitlab", data=body, headers={**headers, "X-Gitlab-Event-UUID": "e-4"})
    assert missing.status_code == 401 and "X-Gitlab-Token" in missing.json["reason"]
    unknown = client.post("/webhooks/nowhere", data=body, headers=headers)
    assert unknown.status_code == 404
    github_body = client.post("/webhooks/github", data=body, headers={**headers, "X-Gitlab-Token": "secret-a"})
    assert github_body.status_code == 400 and "point the hook at /webhooks/gitlab" in github_body.json["reason"]
    assert events_queued(conn) == 2


def _one_of_each_forge(kind: str) -> tuple[str, bytes, dict]:
    """A delivery that queues a task, from each forge family: (endpoint, body, headers)."""
    if kind == "github":
        return "github", LABELED_BODY, github_headers(LABELED_BODY, delivery="rt-1")
    if kind == "gitea":
        body = GITEA_LABELS.replace(b'"priority/high"', b'"kugetsu:todo"')
        return "gitea", body, {"X-Gitea-Event": "issues", "X-Gitea-Event-Type": "issue_label",
                               "X-Gitea-Delivery": "rt-1", "X-Gitea-Signature": sign(body),
                               "Content-Type": "application/json"}
    body = json.dumps(redated(json.loads((FIXTURES / "gitlab" / "derived" / "issue.labeled.json").read_text())))
    return "gitlab", body.encode(), {"X-Gitlab-Event": "Issue Hook", "X-Gitlab-Event-UUID": "rt-1",
                                     "X-Gitlab-Token": SECRET, "Content-Type": "application/json"}


@pytest.mark.parametrize("kind", ["github", "gitea", "gitlab"])
def test_a_queued_delivery_is_one_redis_round_trip_on_every_forge(kind, redis_url, conn, monkeypatch):
    """The hot path: verify, decide, and one script that claims and enqueues — whatever forge sent it. Counted
    at redis-py's socket writes from the request's own thread (delivery counts go in the background)."""
    import threading

    from redis.connection import AbstractConnection

    raw = {"redis_url": redis_url,
           "forges": [{"name": "gh", "kind": "github", "url": "https://github.com", "webhook_secret_env": "S"},
                      {"name": "tea", "kind": "gitea", "url": "https://git.example.com", "webhook_secret_env": "S"},
                      {"name": "gl", "kind": "gitlab", "url": "https://gitlab.example", "webhook_secret_env": "S"}],
           "repos": [{"forge": "gh", "name": "Codertocat/Hello-*"}, {"forge": "tea", "name": "alice/widgets"},
                     {"forge": "gl", "name": "gitlabhq/*"}]}
    client = create_app(settings_from_dict(raw, source="t", environ={"S": SECRET})).test_client()
    endpoint, body, headers = _one_of_each_forge(kind)
    # Once before, then forgotten: the connection is made and the script loaded (once per server, not per delivery).
    assert client.post(f"/webhooks/{endpoint}", data=body, headers=headers).json["status"] == "queued"
    conn.flushall()
    sent, here = [], threading.get_ident()
    real = AbstractConnection.send_packed_command

    def counted(self, command, check_health=True):
        if threading.get_ident() == here:
            sent.append(command)
        return real(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counted)
    answer = client.post(f"/webhooks/{endpoint}", data=body, headers=headers)
    assert (answer.status_code, answer.json["status"]) == (202, "queued"), answer.json
    assert len(sent) == 1, [bytes(b"".join(c) if isinstance(c, list) else c)[:40] for c in sent]
    assert events_queued(conn) == 1


def test_a_forge_s_own_endpoint_takes_no_other_forge_s_secret_even_with_a_name_inside_its_own(redis_url):
    raw = {"redis_url": redis_url,
           "forges": [{"name": "work", "kind": "gitlab", "url": "https://gitlab.example", "webhook_secret_env": "A"},
                      {"name": "wo", "kind": "gitlab", "url": "https://gitlab.wo.example", "webhook_secret_env": "B"}],
           "repos": [{"forge": "work", "name": "gitlabhq/*"}, {"forge": "wo", "name": "gitlabhq/*"}]}
    client = create_app(settings_from_dict(raw, source="t", environ={"A": "secret-a", "B": "secret-b"})).test_client()
    body = json.dumps(redated(json.loads((FIXTURES / "gitlab" / "derived" / "issue.labeled.json").read_text())))
    answer = client.post("/webhooks/work", data=body, headers={
        "X-Gitlab-Event": "Issue Hook", "X-Gitlab-Event-UUID": "e-1", "X-Gitlab-Token": "secret-b",
        "Content-Type": "application/json"})
    assert answer.status_code == 401
