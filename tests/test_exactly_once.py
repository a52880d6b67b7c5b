"""Exactly once, against a real `forge-bridge web` process on a real Redis: redeliveries, replays with new ids,
and what the poller sees again all yield one queued event, and the rest answer 200 duplicate."""
from __future__ import annotations

import hashlib
import hmac
import json
import multiprocessing
import os
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone

import pytest
import requests
from conftest import free_port
from helpers import FIXTURES, SECRET, healthy, redated, wait_for
from rq import Queue

from forge_bridge.store import queue
from forge_bridge.config import settings_from_dict
from forge_bridge.forges import RepoComment
from forge_bridge.models import RepoRef
from forge_bridge.intake.poller import Poller

GITHUB_COMMENT = redated(json.loads((FIXTURES / "github" / "issue_comment.created.json").read_text()))
GITHUB_COMMENT["comment"]["body"] = "/kugetsu start"
GITHUB_BODY = json.dumps(GITHUB_COMMENT).encode()
GITEA_LABELS = json.dumps(redated(json.loads((FIXTURES / "gitea" / "issues.label_updated.json").read_text()))).encode()


def sign(body: bytes) -> str:
    return hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()


@pytest.fixture
def web(tmp_path, redis_url):
    port = free_port()
    config = tmp_path / "forge-bridge.toml"
    config.write_text(
        f'data_dir = "{tmp_path}/data"\n'
        '[[forges]]\nname = "gh"\nkind = "github"\nurl = "https://github.com"\nwebhook_secret_env = "S"\n'
        'bot_login = "kugetsu-bot"\n'
        '[[forges]]\nname = "tea"\nkind = "gitea"\nurl = "https://git.example.com"\nwebhook_secret_env = "S"\n'
        '[[repos]]\nforge = "gh"\nname = "Codertocat/*"\n[[repos]]\nforge = "tea"\nname = "alice/*"\n')
    env = {**os.environ, "S": SECRET, "FORGE_BRIDGE_REDIS_URL": redis_url}
    process = subprocess.Popen([sys.executable, "-m", "forge_bridge", "--config", str(config), "web", "--bind",
                                f"127.0.0.1:{port}"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: healthy(url), timeout=30, what="forge-bridge web")
    yield url
    process.terminate()
    process.wait(timeout=30)


def post_github(url: str, delivery: str) -> tuple[int, str]:
    answer = requests.post(f"{url}/webhooks/github", data=GITHUB_BODY, timeout=10, headers={
        "X-GitHub-Event": "issue_comment", "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": f"sha256={sign(GITHUB_BODY)}", "Content-Type": "application/json"})
    return answer.status_code, answer.json()["status"]


def post_gitea(url: str, body: bytes, delivery: str) -> tuple[int, str]:
    answer = requests.post(f"{url}/webhooks/gitea", data=body, timeout=10, headers={
        "X-Gitea-Event": "issues", "X-Gitea-Event-Type": "issue_label", "X-Gitea-Delivery": delivery,
        "X-Gitea-Signature": sign(body), "X-GitHub-Event": "issues", "Content-Type": "application/json"})
    return answer.status_code, answer.json()["status"]


def _senders() -> ProcessPoolExecutor:
    # Spawned, not forked: this test process runs threads (the delivery counter's flusher among them), and a
    # fork taken while one of them holds a lock can hang the child.
    return ProcessPoolExecutor(max_workers=4, mp_context=multiprocessing.get_context("spawn"))


def events_queued(conn) -> int:
    return Queue(queue.EVENTS_QUEUE, connection=conn).count


def test_one_delivery_sent_100_times_concurrently_from_several_processes(web, conn):
    with _senders() as pool:
        answers = list(pool.map(post_github, [web] * 100, ["same-delivery"] * 100))
    assert answers.count((202, "queued")) == 1
    assert answers.count((200, "duplicate")) == 99
    assert events_queued(conn) == 1


def test_the_same_comment_under_many_delivery_ids_is_one_event(web, conn):
    with _senders() as pool:
        answers = list(pool.map(post_github, [web] * 40, [f"delivery-{i}" for i in range(40)]))
    assert answers.count((202, "queued")) == 1 and answers.count((200, "duplicate")) == 39
    assert events_queued(conn) == 1


def test_a_gitea_replay_with_a_new_delivery_id_is_a_duplicate(web, conn):
    body = GITEA_LABELS.replace(b'"priority/high"', b'"kugetsu:todo"')
    assert post_gitea(web, body, "uuid-1") == (202, "queued")
    assert post_gitea(web, body, "uuid-2-replayed") == (200, "duplicate")
    assert events_queued(conn) == 1


def test_an_unrelated_gitea_label_change_starts_nothing(web, conn):
    with_todo = GITEA_LABELS.replace(b'"priority/high"', b'"kugetsu:todo"')
    assert post_gitea(web, with_todo, "u-1") == (202, "queued")
    # Someone adds another label: Gitea sends the whole set again, todo included, and no change list.
    later = with_todo.replace(b'"label_updated"', b'"label_updated" ').replace(b'"bug"', b'"documentation"')
    later = later.replace(b'"updated_at": "', b'"updated_at": "1', 1)
    assert post_gitea(web, later, "u-2") == (200, "ignored")
    assert events_queued(conn) == 1


def test_a_gitea_todo_label_removed_and_added_again_starts_again(web, conn):
    """The "added" rule for label sets runs inside the admission script: against the set known before."""
    with_todo = GITEA_LABELS.replace(b'"priority/high"', b'"kugetsu:todo"')
    assert post_gitea(web, with_todo, "u-1") == (202, "queued")
    without = GITEA_LABELS.replace(b'"updated_at": "', b'"updated_at": "1', 1)
    assert post_gitea(web, without, "u-2") == (200, "ignored")
    again = with_todo.replace(b'"updated_at": "', b'"updated_at": "2', 1)
    assert post_gitea(web, again, "u-3") == (202, "queued")
    assert events_queued(conn) == 2


def test_the_poller_does_not_hand_over_a_comment_the_webhook_brought(web, conn, redis_url):
    assert post_github(web, "d-1") == (202, "queued")
    settings = settings_from_dict({"redis_url": redis_url, "forges": [
        {"name": "gh", "kind": "github", "url": "https://github.com", "bot_login": "kugetsu-bot"}],
        "repos": [{"forge": "gh", "name": "Codertocat/Hello-World", "poll": True}]}, source="t", environ={})
    poller = Poller(settings, queue.connect(redis_url), client_for=lambda name: None)
    seen = RepoComment(id=GITHUB_COMMENT["comment"]["id"], number=1, is_pull=False, body="/kugetsu start",
                       author="Codertocat", created_at=datetime.now(timezone.utc))
    from forge_bridge.intake.poller import _comment_event

    event = _comment_event("gh", RepoRef("github.com", "Codertocat", "Hello-World"), seen)
    assert poller.hand_over(event) == 0
    assert events_queued(conn) == 1
