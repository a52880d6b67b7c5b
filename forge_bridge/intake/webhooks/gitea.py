"""Parse Gitea and Forgejo deliveries into ForgeEvents (label events carry the whole label set)."""
from __future__ import annotations

from typing import Any

from forge_bridge.models import EventKind, ForgeEvent
from forge_bridge.intake.webhooks.delivery import GITEA_REVIEW_EVENTS
from forge_bridge.intake.webhooks.errors import Ignored
from forge_bridge.intake.webhooks.payload import field, issue_ref, label_names, pull_fields, status_failure, updated_at


def _common(payload: dict, *, forge: str, host: str, delivery: str, number_path: str) -> dict[str, Any]:
    return dict(forge=forge, delivery=delivery, action=field(payload, "action"),
                issue=issue_ref(payload, host=host, number_path=number_path), sender=field(payload, "sender.login"),
                updated_at=updated_at(payload))


def _issue_fields(payload: dict) -> dict[str, Any]:
    return dict(title=field(payload, "issue.title"), body=field(payload, "issue.body", default=""),
                labels=label_names(payload, "issue.labels"),
                is_pull=isinstance(payload["issue"].get("pull_request"), dict))


def _issues(payload: dict, **ctx: str) -> ForgeEvent | Ignored:
    action = field(payload, "action")
    if action in ("label_updated", "label_cleared"):
        # Gitea sends the label set after the change, not the change: "added" is decided later.
        return ForgeEvent(kind=EventKind.LABELS_CHANGED, **_common(payload, number_path="issue.number", **ctx),
                          **_issue_fields(payload))
    if action == "closed":
        fields_ = _issue_fields(payload)
        if not fields_["is_pull"]:
            return ForgeEvent(kind=EventKind.ISSUE_CLOSED, **_common(payload, number_path="issue.number", **ctx),
                              **fields_)
    return Ignored(f"issues action {action!r} is not acted on")


def _issue_comment(payload: dict, **ctx: str) -> ForgeEvent | Ignored:
    action = field(payload, "action")
    if action != "created":
        return Ignored(f"issue_comment action {action!r} is not acted on")
    fields_ = _issue_fields(payload)
    fields_["is_pull"] = fields_["is_pull"] or field(payload, "is_pull", bool, default=False)
    return ForgeEvent(kind=EventKind.COMMENT, **_common(payload, number_path="issue.number", **ctx), **fields_,
                      comment_id=field(payload, "comment.id", int),
                      comment_body=field(payload, "comment.body", default=""))


def _pull_request(payload: dict, **ctx: str) -> ForgeEvent | Ignored:
    action = field(payload, "action")
    if action != "closed":
        return Ignored(f"pull_request action {action!r} is not acted on")
    return ForgeEvent(kind=EventKind.PULL_CLOSED, **_common(payload, number_path="pull_request.number", **ctx),
                      **pull_fields(payload), merged=field(payload, "pull_request.merged", bool, default=False))


def _review(verdict: str):
    """A review's webhook, named by its verdict; Gitea sends no review id, so the job finds the review."""
    def parse(payload: dict, **ctx: str) -> ForgeEvent | Ignored:
        return ForgeEvent(
            kind=EventKind.REVIEW, **_common(payload, number_path="pull_request.number", **ctx),
            title=field(payload, "pull_request.title"), is_pull=True,
            comment_body=field(payload, "review.content", default=""),
            head_branch=field(payload, "pull_request.head.ref"), review_state=verdict,
        )
    return parse


PARSERS = {"status": status_failure, "issues": _issues, "issue_comment": _issue_comment, "pull_request": _pull_request,
           **{event: _review(verdict) for event, verdict in GITEA_REVIEW_EVENTS.items()}}

