"""Session and task records on the real embedded server: what concurrent writers must not undo."""
from __future__ import annotations

from forge_bridge.models import Session, TaskAction
from forge_bridge.refs import parse_issue_ref
from forge_bridge.store.sessions import Store

REF = parse_issue_ref("h.example/o/r#1")


def test_a_stale_copy_of_a_session_never_drops_a_task_queued_since_nor_a_merge(conn):
    store = Store(conn)
    store.save_session(Session(issue=str(REF), forge="g", task_ids=["a"]))
    runners_copy = store.session(REF)
    newer = store.session(REF)
    newer.task_ids.append("b")
    newer.merged = True
    store.save_session(newer)                       # intake queues a task, and sees the merge, while the runner works
    runners_copy.pull_request_url = "https://f/o/r/pull/2"
    store.save_session(runners_copy)                # the runner saves what it knew
    saved = store.session(REF)
    assert saved.task_ids == ["a", "b"] and saved.pull_request_url == "https://f/o/r/pull/2" and saved.merged


def test_a_report_saves_only_the_status_comment_and_never_undoes_what_the_runner_saved(conn):
    """The agent starts before the intake's report is written: the report's copy of the session can predate the
    pull request and the agent's session the runner saved meanwhile."""
    store = Store(conn)
    store.save_session(Session(issue=str(REF), forge="g", task_ids=["a"]))
    intakes_copy = store.session(REF)
    runners = store.session(REF)
    runners.pull_request_url, runners.pull_request_number, runners.agent_session_id = "https://f/o/r/pull/2", 2, "s-1"
    store.save_session(runners)
    intakes_copy.status_comment_id, intakes_copy.status_digest = 77, "d1"
    store.save_status(intakes_copy)
    saved = store.session(REF)
    assert (saved.pull_request_url, saved.pull_request_number, saved.agent_session_id) == ("https://f/o/r/pull/2", 2, "s-1")
    assert (saved.status_comment_id, saved.status_digest) == (77, "d1")
    fresh = Session(issue="h.example/o/r#9", forge="g", status_comment_id=5)
    store.save_status(fresh)   # nothing stored yet: the whole session
    assert store.session("h.example/o/r#9") == fresh


def test_a_task_is_added_to_the_stored_session_itself(conn):
    store = Store(conn)
    first = store.add_task_to_session(REF, "g", "a")   # no session yet: made
    assert (first.issue, first.forge, first.task_ids) == (str(REF), "g", ["a"])
    runners = store.session(REF)
    runners.pull_request_url, runners.archived = "https://f/o/r/pull/2", True
    store.save_session(runners)
    second = store.add_task_to_session(REF, "g", "b")
    assert second.task_ids == ["a", "b"] and second.pull_request_url == "https://f/o/r/pull/2"
    assert not second.archived and store.session(REF) == second   # a new task brings an archived session back


def test_a_message_merges_only_into_a_task_that_has_not_started(conn):
    store = Store(conn)
    task = store.new_task(REF, forge="g", action=TaskAction.CONTINUE, message="one", requested_by="alice")
    assert store.append_message(task.id, "two", requested_by="bob")
    assert store.append_message(task.id, "three", requested_by="alice")
    merged = store.task(task.id)
    assert (merged.message, merged.requested_by, merged.queued_at) == ("one\n\ntwo\n\nthree", "alice, @bob",
                                                                       task.queued_at)
    assert store.begin_task(task.id) is not None
    assert not store.append_message(task.id, "too late", requested_by="carol")
    assert store.task(task.id).message == "one\n\ntwo\n\nthree"


def test_an_issue_lock_outlives_its_ttl_while_held_and_a_dead_holder_frees_it(conn, monkeypatch):
    import time

    from helpers import wait_for

    from forge_bridge.store import sessions

    monkeypatch.setattr(sessions, "LOCK_TTL", 1)
    store, key = sessions.Store(conn), f"{sessions.PREFIX}:lock:h/o/r#1"
    began = time.monotonic()
    with store.issue_lock("h/o/r#1"):   # held past three lifetimes, as a forge's long rate-limit wait would
        wait_for(lambda: time.monotonic() - began > 3, timeout=10, what="three lock lifetimes")
        assert conn.exists(key)
    assert not conn.exists(key)
    conn.set(key, "a-dead-holder", px=1000)   # a holder that died never renews
    wait_for(lambda: not conn.exists(key), timeout=5, what="the dead holder's lock to lapse")
