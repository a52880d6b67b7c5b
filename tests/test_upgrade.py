"""An upgrade strands no queued work: a job the previous version put on the queue — by the dotted name it used,
with the arguments it wrote — runs on this version's `serve` to its pull request."""
from __future__ import annotations

import json

from rq import Queue
from test_end_to_end import BODY, TITLE, _assert_reviewed

# Exactly what the version before the package moved into folders wrote: RQ's function name and the event's JSON.
PREVIOUS_EVENT_JOB = "jobs.tasks.handle_event"
PREVIOUS_EVENTS_QUEUE = "forge-bridge-events"


def test_an_event_job_queued_by_the_previous_version_runs(github, start_bridge):
    repo = github.create_repo("alice", "widgets")
    issue = github.create_issue(repo, TITLE, BODY)
    github.state.set_label(repo, issue, "kugetsu:todo", actor="alice", added=True)   # labelled, no webhook sent
    bridge = start_bridge([github])
    event = {"forge": "github", "kind": "labels_changed", "issue": f"127.0.0.1:{github.port}/alice/widgets#1",
             "sender": "alice", "delivery": "d-before-upgrade", "source": "webhook", "action": "labeled",
             "sender_is_bot": False, "labels": ["kugetsu:todo"], "label": "kugetsu:todo", "title": TITLE,
             "body": BODY, "comment_id": 0, "comment_body": "", "is_pull": False, "merged": False,
             "head_branch": "", "updated_at": ""}

    Queue(PREVIOUS_EVENTS_QUEUE, connection=bridge.redis).enqueue(PREVIOUS_EVENT_JOB, json.dumps(event))

    _assert_reviewed(github, repo, issue, bridge)   # the event job ran, and the agent job it queued ran too
    assert bridge.stop() == 0
