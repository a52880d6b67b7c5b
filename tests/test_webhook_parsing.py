"""Every recorded delivery in tests/fixtures parses into a ForgeEvent or is ignored with a reason; the known
HMAC vectors verify; the sender is detected from the headers the way PROTOCOL.md describes."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers import FIXTURES, SECRET

from forge_bridge.models import EventKind, ForgeEvent, ForgeKind
from forge_bridge.intake.webhooks import BadSignature, DeliveryHeaders, Ignored, Malformed, parse_delivery, read_headers
from forge_bridge.intake.webhooks.delivery import signature_matches, verify_signature
from forge_bridge.intake.webhooks.github import InstallationChange

GITEA_EVENTS = {  # file -> (X-Gitea-Event, X-Gitea-Event-Type), from gitea/SOURCE.md
    "issues.opened.json": ("issues", "issues"), "issues.label_updated.json": ("issues", "issue_label"),
    "issue_comment.created.json": ("issue_comment", "issue_comment"),
    "pull_request.opened.json": ("pull_request", "pull_request"),
    "issue_comment.created.pr.json": ("issue_comment", "pull_request_comment"),
    "pull_request.closed.merged.json": ("pull_request", "pull_request"),
    "pull_request.closed.unmerged.json": ("pull_request", "pull_request"),
}


def _github_files() -> list[Path]:
    return sorted((FIXTURES / "github").rglob("*.json"))


def _parse(kind: ForgeKind, event: str, path: Path, event_type: str = "") -> ForgeEvent | Ignored:
    headers = DeliveryHeaders(kind=kind, event=event, event_type=event_type, delivery="d-1", signature="")
    return parse_delivery(headers, path.read_bytes(), forge="f", host="forge.example")


@pytest.mark.parametrize("path", _github_files(), ids=lambda p: p.name)
def test_every_github_fixture_parses_or_is_ignored_with_a_reason(path):
    parsed = _parse(ForgeKind.GITHUB, path.name.split(".")[0], path)
    assert isinstance(parsed, (ForgeEvent, Ignored, InstallationChange))
    if isinstance(parsed, Ignored):
        assert parsed.reason


@pytest.mark.parametrize("name", sorted(GITEA_EVENTS))
@pytest.mark.parametrize("kind", [ForgeKind.GITEA, ForgeKind.FORGEJO])
def test_every_gitea_fixture_parses_or_is_ignored_with_a_reason(name, kind):
    event, event_type = GITEA_EVENTS[name]
    parsed = _parse(kind, event, FIXTURES / "gitea" / name, event_type)
    assert isinstance(parsed, (ForgeEvent, Ignored))


@pytest.mark.parametrize(("path", "added", "removed", "gone"), [
    ("installation.created.json", ("Codertocat/Hello-World",), (), False),
    ("installation.deleted.json", (), ("octocat/Hello-World",), True),
    ("derived/installation_repositories.added.json", ("Codertocat/Spoon-Knife",), ("Codertocat/Hello-World",), False),
])
def test_a_github_app_installation_event_names_the_repositories_gained_and_lost(path, added, removed, gone):
    event = path.removeprefix("derived/").split(".")[0]
    parsed = _parse(ForgeKind.GITHUB, event, FIXTURES / "github" / path)
    assert isinstance(parsed, InstallationChange) and parsed.installation > 0
    assert (parsed.added, parsed.removed, parsed.gone) == (added, removed, gone)


def test_github_labeled_names_the_added_label():
    event = _parse(ForgeKind.GITHUB, "issues", FIXTURES / "github" / "issues.labeled.json")
    assert event.kind is EventKind.LABELS_CHANGED and event.label == "bug" and event.labels == ("bug",)
    assert str(event.issue) == "forge.example/Codertocat/Hello-World#1" and event.sender == "Codertocat"


def test_gitea_label_update_carries_the_whole_set_and_no_change():
    event = _parse(ForgeKind.GITEA, "issues", FIXTURES / "gitea" / "issues.label_updated.json", "issue_label")
    assert event.kind is EventKind.LABELS_CHANGED and event.label == ""
    assert event.labels == ("bug", "priority/high") and event.issue.number == 3


@pytest.mark.parametrize(("kind", "event", "path"), [
    (ForgeKind.GITHUB, "issue_comment", "github/derived/issue_comment.created.pr.json"),
    (ForgeKind.GITEA, "issue_comment", "gitea/issue_comment.created.pr.json"),
])
def test_comments_on_pull_requests_are_marked(kind, event, path):
    parsed = _parse(kind, event, FIXTURES / path)
    assert parsed.kind is EventKind.COMMENT and parsed.is_pull and parsed.comment_id > 0


@pytest.mark.parametrize(("kind", "path", "merged"), [
    (ForgeKind.GITHUB, "github/derived/pull_request.closed.merged.json", True),
    (ForgeKind.GITHUB, "github/pull_request.closed.unmerged.json", False),
    (ForgeKind.GITEA, "gitea/pull_request.closed.merged.json", True),
    (ForgeKind.GITEA, "gitea/pull_request.closed.unmerged.json", False),
])
def test_pull_request_close_says_whether_it_merged(kind, path, merged):
    parsed = _parse(kind, "pull_request", FIXTURES / path)
    assert parsed.kind is EventKind.PULL_CLOSED and parsed.merged is merged and parsed.head_branch


def test_github_closed_issue_and_requested_changes():
    closed = _parse(ForgeKind.GITHUB, "issues", FIXTURES / "github" / "derived" / "issues.closed.json")
    assert closed.kind is EventKind.ISSUE_CLOSED
    review = _parse(ForgeKind.GITHUB, "pull_request_review", FIXTURES / "github" / "pull_request_review.submitted.json")
    assert isinstance(review, Ignored) or review.kind is EventKind.REVIEW


def test_github_docs_hmac_vector():
    digest = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    assert signature_matches(SECRET.encode(), b"Hello, World!", digest)
    assert not signature_matches(SECRET.encode(), b"Hello, World?", digest)


def test_github_fixture_file_vector():
    body = (FIXTURES / "github" / "issues.opened.json").read_bytes()
    assert verify_signature({"gh": SECRET.encode()}, body,
                            "875f5b04149debbe128e0521dadfa4afc90d192439111d59096790feb11b64d5") == "gh"


def _gitea_vectors() -> list[tuple[str, str]]:
    text = (FIXTURES / "gitea" / "SOURCE.md").read_text()
    return re.findall(r"^\| ([\w.]+\.json) \|[^|]*\|[^|]*\|[^|]*\| `([0-9a-f]{64})` \|", text, re.M)


@pytest.mark.parametrize(("name", "digest"), _gitea_vectors())
def test_gitea_vectors(name, digest):
    assert len(_gitea_vectors()) == 7
    body = (FIXTURES / "gitea" / name).read_bytes()
    assert verify_signature({"other": b"wrong", "gitea": SECRET.encode()}, body, digest) == "gitea"
    with pytest.raises(BadSignature):
        verify_signature({"gitea": b"wrong"}, body, digest)


def test_sender_is_detected_by_the_gitea_family_headers_first():
    gitea_headers = {"X-Gitea-Event": "issues", "X-GitHub-Event": "issues", "X-Gitea-Delivery": "u1",
                     "X-Gitea-Signature": "ab"}
    assert read_headers(gitea_headers, endpoint=ForgeKind.GITEA).kind is ForgeKind.GITEA
    forgejo = {**gitea_headers, "X-Forgejo-Event": "issues", "X-Forgejo-Delivery": "u1", "X-Forgejo-Signature": "cd"}
    read = read_headers(forgejo, endpoint=ForgeKind.FORGEJO)
    assert read.kind is ForgeKind.FORGEJO and read.signature == "cd"
    with pytest.raises(Malformed, match="/webhooks/gitea"):
        read_headers(gitea_headers, endpoint=ForgeKind.GITHUB)


def test_unsafe_repository_names_are_malformed():
    payload = json.loads((FIXTURES / "github" / "issues.labeled.json").read_text())
    for bad in ("..", "../etc", "/abs", "a\x00b", ""):
        payload["repository"]["name"] = bad
        headers = DeliveryHeaders(kind=ForgeKind.GITHUB, event="issues", event_type="", delivery="d", signature="")
        with pytest.raises(Malformed):
            parse_delivery(headers, json.dumps(payload).encode(), forge="f", host="forge.example")


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                                      max_size=5), max_leaves=30)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([(ForgeKind.GITHUB, "issues"), (ForgeKind.GITHUB, "issue_comment"),
                        (ForgeKind.GITHUB, "pull_request"), (ForgeKind.GITHUB, "pull_request_review"),
                        (ForgeKind.GITEA, "issues"), (ForgeKind.GITEA, "issue_comment"),
                        (ForgeKind.GITEA, "pull_request"), (ForgeKind.GITEA, "pull_request_rejected")]),
       st.dictionaries(st.sampled_from(["action", "issue", "comment", "repository", "sender", "label",
                                        "pull_request", "review", "is_pull", "number"]), JSON_VALUES, max_size=8))
def test_parsers_answer_any_json_with_an_event_an_ignore_or_malformed(kind_event, payload):
    kind, event = kind_event
    headers = DeliveryHeaders(kind=kind, event=event, event_type="", delivery="d", signature="")
    try:
        parsed = parse_delivery(headers, json.dumps(payload).encode(), forge="f", host="h.example")
    except Malformed:
        return
    assert isinstance(parsed, (ForgeEvent, Ignored))


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300))
def test_parsers_answer_any_bytes_with_malformed_at_worst(body):
    headers = DeliveryHeaders(kind=ForgeKind.GITHUB, event="issues", event_type="", delivery="d", signature="")
    try:
        parse_delivery(headers, body, forge="f", host="h.example")
    except Malformed:
        pass
