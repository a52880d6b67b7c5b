"""Parse GitHub deliveries (issues, issue_comment, pull_request, pull_request_review) into ForgeEvents."""
from __future__ import annotations

from typing import Any

from forge_bridge.models import EventKind, ForgeEvent
from forge_bridge.webhooks.errors import Ignored
from forge_bridge.webhooks.payload import field, issue_ref, label_names, pull_fields, updated_at


def _common(payload: dict, *, forge: str, host: str, delivery: str, number_path: str) -> dict[str, Any]:
    sender = field(payload, "sender.login")
    return dict(
        forge=forge, delivery=delivery, action=field(payload, "action"),
        issue=issue_ref(payload, host=host, number_path=number_path), sender=sender,
        sender_is_bot=field(payload, "sender.type", default="") == "Bot" or sender.endswith("[bot]"),
        updated_at=updated_at(payload),
    )


def _issues(payload: dict, **ctx: str) -> ForgeEvent | Ignored:
    action = field(payload, "action")
    common = _common(payload, number_path="issue.number", **ctx)
    issue = dict(title=field(payload, "issue.title"), body=field(payload, "issue.body", default=""),
                 labels=label_names(payload, "issue.labels"),
                 is_pull=isinstance(payload["issue"].get("pull_request"), dict))
    if action == "labeled":
        return ForgeEvent(kind=EventKind.LABELS_CHANGED, label=field(payload, "label.name"), **common, **issue)
    if action == "closed" and not issue["is_pull"]:
        return ForgeEvent(kind=EventKind.ISSUE_CLOSED, **common, **issue)
    return Ignored(f"issues action {action!r} is not acted on")


def _issue_comment(payload: dict, **ctx: str) -> ForgeEvent | Ignored:
    action = field(payload, "action")
    if action != "created":
        return Ignored(f"issue_comment action {action!r} is not acted on")
    return ForgeEvent(
        kind=EventKind.COMMENT, **_common(payload, number_path="issue.number", **ctx),
        title=field(payload, "issue.title"), body=field(payload, "issue.body", default=""),
        labels=label_names(payload, "issue.labels"), is_pull=isinstance(payload["issue"].get("pull_request"), dict),
        comment_id=field(payload, "comment.id", int), comment_body=field(payload, "comment.body", default=""),
    )


def _pull_request(payload: dict, **ctx: str) -> ForgeEvent | Ignored:
    action = field(payload, "action")
    if action != "closed":
        return Ignored(f"pull_request action {action!r} is not acted on")
    return ForgeEvent(kind=EventKind.PULL_CLOSED, **_common(payload, number_path="pull_request.number", **ctx),
                      **pull_fields(payload), merged=field(payload, "pull_request.merged", bool, default=False))


def _review(payload: dict, **ctx: str) -> ForgeEvent | Ignored:
    action, state = field(payload, "action"), field(payload, "review.state", default="")
    if action != "submitted" or state.lower() != "changes_requested":
        return Ignored(f"review {action!r} with state {state!r} is not acted on")
    return ForgeEvent(
        kind=EventKind.REVIEW, **_common(payload, number_path="pull_request.number", **ctx),
        title=field(payload, "pull_request.title"), is_pull=True,
        comment_id=field(payload, "review.id", int), comment_body=field(payload, "review.body", default=""),
        head_branch=field(payload, "pull_request.head.ref"),
    )


PARSERS = {"issues": _issues, "issue_comment": _issue_comment, "pull_request": _pull_request,
           "pull_request_review": _review}

