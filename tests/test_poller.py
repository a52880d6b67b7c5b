"""The poller against the fake forge: labelled issues authorized by whoever added the label, and comments
found after a stored cursor — handed to intake like webhook events."""
from __future__ import annotations

import pytest
from rq import Queue
from test_intake import make_intake

from forge_bridge.store import queue
from forge_bridge.config import settings_from_dict
from forge_bridge.forges import make_client
from forge_bridge.models import ForgeEvent
from forge_bridge.intake.poller import Poller


@pytest.fixture
def polling(forge, redis_url, tmp_path):
    repo = forge.create_repo("alice", "widgets")
    settings = settings_from_dict({"redis_url": redis_url, "data_dir": str(tmp_path), "forges": [
        {"name": forge.kind, "kind": forge.kind, "url": forge.url, "token_env": "T", "write_interval": 0,
         "bot_login": forge.bot_login}],
        "repos": [{"forge": forge.kind, "name": "alice/widgets", "poll": True}]}, source="t", environ={"T": forge.token})
    client = make_client(settings.forge(forge.kind))
    return forge, repo, Poller(settings, queue.connect(redis_url), lambda name: client), \
        make_intake(forge, redis_url, tmp_path)


def run_intake(poller: Poller, intake) -> list[str]:
    """What a worker would do with every event the poller queued."""
    events = Queue(queue.EVENTS_QUEUE, connection=poller.conn)
    outcomes = [intake.handle(ForgeEvent.from_json(job.args[0])) for job in events.get_jobs()]
    events.empty()
    return outcomes


def test_a_label_is_authorized_by_whoever_added_it(polling):
    forge, repo, poller, intake = polling
    mine = forge.create_issue(repo, "mine", "")
    theirs = forge.create_issue(repo, "theirs", "")
    forge.add_label(repo, mine, "kugetsu:todo", sender="alice")
    forge.add_label(repo, theirs, "kugetsu:todo", sender="mallory")

    assert poller.poll_once() == 2
    outcomes = sorted(run_intake(poller, intake))
    assert outcomes[0].startswith("denied: mallory") and outcomes[1].startswith("queued task")
    assert forge.labels_of(repo, mine) == ["kugetsu:queued"]


def test_a_sighting_is_handed_over_once_per_poll_interval(polling):
    forge, repo, poller, intake = polling
    forge.add_label(repo, forge.create_issue(repo, "t", ""), "kugetsu:todo")
    assert poller.poll_once() == 1
    assert poller.poll_once() == 0


def test_comments_after_the_cursor_are_found_once(polling):
    forge, repo, poller, intake = polling
    issue = forge.create_issue(repo, "t", "b")
    old = forge.state.add_comment(repo, issue.number, "/kugetsu start old request", "alice")
    old.created_at = "2026-01-01T00:00:00Z"
    assert poller.poll_once() == 0  # the first scan only sets the cursor: history is not replayed
    forge.state.add_comment(repo, issue.number, "/kugetsu start now please", "alice")
    forge.state.add_comment(repo, issue.number, "just chatting", "alice")
    assert poller.poll_once() == 1
    assert poller.poll_once() == 0
    [outcome] = run_intake(poller, intake)
    assert outcome.startswith("queued task")


def test_the_poller_backs_off_while_redis_is_away_and_stops_cleanly(gitea, tmp_path, caplog):
    import threading

    gitea.create_repo("a", "b")
    settings = settings_from_dict({"forges": [{"name": "g", "kind": "gitea", "url": gitea.url, "token_env": "T"}],
                                   "repos": [{"forge": "g", "name": "a/b", "poll": True}]}, source="t",
                                  environ={"T": gitea.token})
    client = make_client(settings.forge("g"))
    poller = Poller(settings, queue.connect(f"unix://{tmp_path}/gone.sock"), lambda name: client)
    stop = threading.Event()
    thread = threading.Thread(target=poller.run, args=(stop,))
    with caplog.at_level("WARNING"):
        thread.start()
        from helpers import wait_for
        wait_for(lambda: "poll failed" in caplog.text, timeout=10, what="the poller to report the outage")
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()


def test_a_bot_comment_found_by_polling_is_a_bot_as_it_is_by_webhook(polling):
    forge, repo, poller, intake = polling
    issue = forge.create_issue(repo, "mine", "")
    repo.permissions["renovate[bot]"] = "write"
    assert poller.poll_once() == 0   # the first scan sets the cursor
    forge.state.add_comment(repo, issue.number, "/kugetsu start now", "renovate[bot]")
    assert poller.poll_once() == 0 and run_intake(poller, intake) == []   # skipped, as its webhook would be
    forge.state.add_comment(repo, issue.number, "/kugetsu start now", "alice")
    assert poller.poll_once() == 1 and run_intake(poller, intake)[0].startswith("queued task")


def test_labelled_issues_are_asked_for_since_the_last_scan_and_all_of_them_now_and_then(polling):
    """Gitea and GitLab are asked only for issues changed since the last scan (GitHub answers an unchanged list
    for free); every FULL_LABEL_SCAN all of them, so a label whose intake job was lost is found again."""
    from datetime import datetime, timezone

    from forge_bridge.intake.poller import FULL_LABEL_SCAN

    forge, repo, poller, _ = polling
    issue = forge.create_issue(repo, "t", "")
    forge.add_label(repo, issue, "kugetsu:todo")
    issue.updated_at = "2026-01-01T00:00:00Z"   # labelled before the bridge first looked
    assert poller.poll_once() == 1
    Queue(queue.EVENTS_QUEUE, connection=poller.conn).empty()   # its job lost
    poller.conn.delete(f"fb:claim:poll:{forge.host}/alice/widgets#{issue.number}:kugetsu:todo")
    assert poller.poll_once() == (1 if forge.kind == "github" else 0)   # unchanged since: not asked again
    name = f"labels:{forge.kind}:{forge.host}/alice/widgets"
    long_ago = datetime.now(timezone.utc) - FULL_LABEL_SCAN
    poller.store.set_cursor(f"{name}:full", long_ago.replace(microsecond=0).isoformat())
    poller.conn.delete(f"fb:claim:poll:{forge.host}/alice/widgets#{issue.number}:kugetsu:todo")
    assert poller.poll_once() == 1   # the whole list again: the label is still there
