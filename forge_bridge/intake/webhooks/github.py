"""Parse GitHub deliveries (issues, issue_comment, pull_request, pull_request_review) into ForgeEvents, and a GitHub
App's installation events into the repositories it gained or lost."""
from __future__ import annotations

from typing import Any

from forge_bridge.models import FAILING_CONCLUSIONS, CheckFailed, EventKind, FailedCheck, ForgeEvent, InstallationChange
from forge_bridge.intake.webhooks.errors import Ignored, Malformed
from forge_bridge.intake.webhooks.payload import (
    field,
    issue_ref,
    label_names,
    pull_fields,
    repo_ref,
    status_failure,
    updated_at,
)


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
    """A submitted review, whatever its verdict: whether its inline comments mention the bot is read in the job."""
    action = field(payload, "action")
    if action != "submitted":
        return Ignored(f"review {action!r} is not acted on")
    return _review_event(payload, ctx, review_id=field(payload, "review.id", int),
                         comment_body=field(payload, "review.body", default=""),
                         review_state=field(payload, "review.state").lower())


def _review_comment(payload: dict, **ctx: str) -> ForgeEvent | Ignored:
    """An inline comment: the review it belongs to (a lone comment is a review of one), read whole in the job."""
    action = field(payload, "action")
    if action != "created":
        return Ignored(f"pull_request_review_comment action {action!r} is not acted on")
    return _review_event(payload, ctx, review_id=field(payload, "comment.pull_request_review_id", int))


def _review_event(payload: dict, ctx: dict, *, review_id: int, **fields) -> ForgeEvent:
    """A REVIEW event names its review by id (comment_id), on the pull request the payload names."""
    return ForgeEvent(kind=EventKind.REVIEW, **_common(payload, number_path="pull_request.number", **ctx),
                      title=field(payload, "pull_request.title"), is_pull=True, comment_id=review_id,
                      head_branch=field(payload, "pull_request.head.ref"), **fields)



def _names(payload: dict, key: str) -> tuple[str, ...]:
    repos = payload.get(key) or []
    if not isinstance(repos, list):
        raise Malformed(f"{key} is not a list")
    return tuple(field(repo, "full_name") for repo in repos if isinstance(repo, dict))


def _installation(payload: dict, **ctx: str) -> InstallationChange | Ignored:
    action = field(payload, "action")
    common = dict(installation=field(payload, "installation.id", int),
                  account=field(payload, "installation.account.login", default=""))
    if action in ("deleted", "suspend"):
        return InstallationChange(**common, added=(), removed=_names(payload, "repositories"), gone=True)
    if action in ("created", "unsuspend", "new_permissions_accepted"):
        return InstallationChange(**common, added=_names(payload, "repositories"), removed=(), gone=False)
    return Ignored(f"installation action {action!r} is not acted on")


def _installation_repositories(payload: dict, **ctx: str) -> InstallationChange | Ignored:
    if field(payload, "action") not in ("added", "removed"):
        return Ignored(f"installation_repositories action {field(payload, 'action')!r} is not acted on")
    return InstallationChange(installation=field(payload, "installation.id", int),
                              account=field(payload, "installation.account.login", default=""),
                              added=_names(payload, "repositories_added"),
                              removed=_names(payload, "repositories_removed"), gone=False)


def _check_suite(payload: dict, **ctx: str) -> CheckFailed | Ignored:
    conclusion = field(payload, "check_suite.conclusion", default="") or ""
    if field(payload, "action") != "completed" or conclusion not in FAILING_CONCLUSIONS:
        return Ignored(f"check suite {field(payload, 'action')!r} with conclusion {conclusion!r} is not a failure")
    app = field(payload, "check_suite.app.name", default="") or "check suite"
    return CheckFailed(forge=ctx["forge"], repo=str(repo_ref(payload, host=ctx["host"])),
                       sha=field(payload, "check_suite.head_sha"), delivery=ctx["delivery"],
                       branch=field(payload, "check_suite.head_branch", default="") or "",
                       suite_id=field(payload, "check_suite.id", int), checks=(FailedCheck(app, conclusion),),
                       updated_at=field(payload, "check_suite.updated_at", default="") or "")


def _status(payload: dict, **ctx: str) -> CheckFailed | Ignored:
    return status_failure(payload, **ctx)


PARSERS = {"issues": _issues, "issue_comment": _issue_comment, "pull_request": _pull_request,
           "pull_request_review": _review, "pull_request_review_comment": _review_comment,
           "installation": _installation,
           "installation_repositories": _installation_repositories, "check_suite": _check_suite, "status": _status}

