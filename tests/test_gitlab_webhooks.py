"""GitLab's webhook payloads (the examples of its documentation, tests/fixtures/webhooks/gitlab) parse into the
events the bridge acts on, or are ignored with a reason; its headers and its token are read as GitLab sends them."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import FIXTURES

from forge_bridge.intake.webhooks import BadSignature, DeliveryHeaders, Ignored, Malformed, parse_delivery, read_headers
from forge_bridge.intake.webhooks.delivery import token_matches, verify_token
from forge_bridge.models import MERGE_REQUEST_BASE, CheckFailed, EventKind, ForgeEvent, ForgeKind

GITLAB = FIXTURES / "gitlab"
HEADER = {"issue": "Issue Hook", "note": "Note Hook", "merge_request": "Merge Request Hook", "pipeline": "Pipeline Hook"}


def _parse(path: Path, *, keyed: bool = True, body: bytes | None = None):
    event = HEADER[path.name.split(".")[0]]
    headers = DeliveryHeaders(kind=ForgeKind.GITLAB, event=event, event_type="", delivery="uuid-1", signature="",
                              keyed=keyed)
    return parse_delivery(headers, body if body is not None else path.read_bytes(), forge="gl", host="gitlab.example")


@pytest.mark.parametrize("path", sorted(GITLAB.rglob("*.json")), ids=lambda p: p.relative_to(GITLAB).as_posix())
def test_every_gitlab_example_parses_or_is_ignored_with_a_reason(path):
    parsed = _parse(path)
    assert isinstance(parsed, (ForgeEvent, CheckFailed, Ignored))
    if isinstance(parsed, Ignored):
        assert parsed.reason


def test_a_label_added_names_it_and_keeps_the_whole_set():
    event = _parse(GITLAB / "derived" / "issue.labeled.json")
    assert event.kind is EventKind.LABELS_CHANGED and event.added == ("kugetsu:todo",)
    assert event.labels == ("API", "kugetsu:todo") and str(event.issue) == "gitlab.example/gitlabhq/gitlab-test#23"
    assert event.sender == "root" and event.title == "New API: create/update/delete file"


def test_a_label_swapped_adds_only_the_new_one_and_an_update_without_labels_is_ignored():
    event = _parse(GITLAB / "issue.json")   # the documented example: API -> Platform, action "open"
    assert event.added == ("Platform",) and event.labels == ("Platform",)
    payload = json.loads((GITLAB / "issue.json").read_text())
    payload["object_attributes"]["action"] = "update"
    del payload["changes"]["labels"]
    ignored = _parse(GITLAB / "issue.json", body=json.dumps(payload).encode())
    assert isinstance(ignored, Ignored) and "label" in ignored.reason


def test_notes_on_issues_and_merge_requests_are_comments_in_their_own_number_spaces():
    on_issue = _parse(GITLAB / "note.issue.json")
    assert on_issue.kind is EventKind.COMMENT and on_issue.issue.number == 17 and not on_issue.is_pull
    assert (on_issue.comment_id, on_issue.comment_body, on_issue.labels) == (1241, "Hello world", ("Afterpod", "Element"))
    assert on_issue.updated_at == "2015-05-17 17:06:40+00:00"   # GitLab's "… UTC" read as ISO 8601
    on_merge_request = _parse(GITLAB / "note.merge_request.json")
    assert on_merge_request.is_pull and on_merge_request.issue.number == MERGE_REQUEST_BASE + 1
    assert str(on_merge_request.issue) == "gitlab.example/gitlab-org/gitlab-test!1"


def test_an_inline_note_is_a_review_and_notes_elsewhere_or_edited_are_ignored():
    review = _parse(GITLAB / "derived" / "note.diff_note.json")
    assert review.kind is EventKind.REVIEW and review.comment_id == 1244 and review.is_pull
    payload = json.loads((GITLAB / "note.issue.json").read_text())
    for change, why in (({"action": "update"}, "update"), ({"system": True}, "system"),
                        ({"noteable_type": "Snippet"}, "Snippet")):
        edited = json.loads(json.dumps(payload))
        edited["object_attributes"].update(change)
        ignored = _parse(GITLAB / "note.issue.json", body=json.dumps(edited).encode())
        assert isinstance(ignored, Ignored) and why in ignored.reason


def test_merge_and_close_of_a_merge_request_and_nothing_else():
    merged = _parse(GITLAB / "derived" / "merge_request.merge.json")
    assert merged.kind is EventKind.PULL_CLOSED and merged.merged and merged.head_branch == "ms-viewport"
    assert merged.issue.number == MERGE_REQUEST_BASE + 1
    assert isinstance(_parse(GITLAB / "merge_request.json"), Ignored)   # "open"
    closed = _parse(GITLAB / "derived" / "issue.closed.json")
    assert closed.kind is EventKind.ISSUE_CLOSED and closed.issue.number == 23


def test_a_failed_pipeline_names_its_failed_jobs_and_a_passing_one_is_ignored():
    failed = _parse(GITLAB / "derived" / "pipeline.failed.json")
    assert isinstance(failed, CheckFailed) and failed.suite_id == 31
    assert failed.sha == "bcbb5ec396a2c0f828686f14fac9b80b780504f2" and failed.repo == "gitlab.example/gitlab-org/gitlab-test"
    assert [(c.name, c.conclusion, c.summary) for c in failed.checks] == [("test-build", "failed", "stage test")]
    assert isinstance(_parse(GITLAB / "pipeline.json"), Ignored)


def test_without_an_idempotency_key_the_delivery_is_the_event_uuid_with_the_object_and_its_time():
    keyed = _parse(GITLAB / "note.issue.json")
    assert keyed.delivery == "uuid-1"
    unkeyed = _parse(GITLAB / "note.issue.json", keyed=False)
    assert unkeyed.delivery == "uuid-1:1241:2015-05-17 17:06:40 UTC"


def test_headers_say_gitlab_and_prefer_the_idempotency_key():
    base = {"X-Gitlab-Event": "Note Hook", "X-Gitlab-Token": "s3cret", "X-Gitlab-Event-UUID": "e-1"}
    headers = read_headers({**base, "Idempotency-Key": "k-1"}, endpoint=ForgeKind.GITLAB)
    assert (headers.kind, headers.delivery, headers.keyed, headers.signature) == (ForgeKind.GITLAB, "k-1", True, "s3cret")
    headers = read_headers(base, endpoint=ForgeKind.GITLAB)
    assert (headers.delivery, headers.keyed) == ("e-1", False)
    assert read_headers({**base, "X-Gitlab-Event": "Push Hook"}, endpoint=ForgeKind.GITLAB).relevant is False
    with pytest.raises(Malformed, match="gitlab delivery was sent to the github endpoint"):
        read_headers(base, endpoint=ForgeKind.GITHUB)
    with pytest.raises(Malformed, match="delivery id"):
        read_headers({"X-Gitlab-Event": "Note Hook"}, endpoint=ForgeKind.GITLAB)


def test_the_token_must_be_the_secret_itself():
    assert token_matches(b"s3cret", "s3cret")
    assert not token_matches(b"s3cret", "s3cret ") and not token_matches(b"s3cret", "") and not token_matches(b"", "")
    assert verify_token({"a": b"one", "b": b"two"}, "two") == "b"
    with pytest.raises(BadSignature, match="does not match"):
        verify_token({"a": b"one"}, "three")
    with pytest.raises(BadSignature, match="missing"):
        verify_token({"a": b"one"}, "")


@pytest.mark.parametrize("path", ["../../etc/passwd", "group/../project", "project", "group//project", ".hidden/p",
                                  "g/%2e%2e/p"])
def test_a_project_path_that_could_leave_data_dir_is_malformed(path):
    payload = json.loads((GITLAB / "note.issue.json").read_text())
    payload["project"]["path_with_namespace"] = path
    with pytest.raises(Malformed):
        _parse(GITLAB / "note.issue.json", body=json.dumps(payload).encode())
