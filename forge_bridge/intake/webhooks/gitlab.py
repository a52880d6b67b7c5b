"""Parse GitLab deliveries (Issue, Note, Merge Request and Pipeline Hooks) into ForgeEvents and CheckFailed.

GitLab's payloads name the project by `path_with_namespace` (groups nest), the person by `user.username`, and a
merge request by its iid, which the bridge keeps above models.MERGE_REQUEST_BASE (models.bridge_number)."""
from __future__ import annotations

from typing import Any

from forge_bridge.models import (
    CheckFailed,
    EventKind,
    FailedCheck,
    ForgeEvent,
    InvalidRef,
    IssueRef,
    RepoRef,
    bridge_number,
)
from forge_bridge.intake.webhooks.errors import Ignored, Malformed
from forge_bridge.intake.webhooks.payload import field


def project_ref(payload: dict, *, host: str) -> RepoRef:
    path = field(payload, "project.path_with_namespace")
    owner, _, name = path.rpartition("/")
    try:
        return RepoRef(host, owner, name)
    except InvalidRef as error:
        raise Malformed(str(error)) from None


def _ref(payload: dict, host: str, iid: int, *, merge_request: bool = False) -> IssueRef:
    try:
        return IssueRef(project_ref(payload, host=host), bridge_number(iid, merge_request=merge_request))
    except InvalidRef as error:
        raise Malformed(str(error)) from None


def _titles(payload: Any, path: str) -> tuple[str, ...]:
    return tuple(field(label, "title") for label in field(payload, path, list, default=[]))


def delivery_key(payload: dict, headers_delivery: str, keyed: bool) -> str:
    """Idempotency-Key as sent; else the event's UUID with the object's id and its updated_at."""
    if keyed:
        return headers_delivery
    attributes = field(payload, "object_attributes", dict, default={})
    return f"{headers_delivery}:{attributes.get('id', '')}:{attributes.get('updated_at', '')}"


def _iso(when: str) -> str:
    """GitLab writes some times as `2015-05-17 18:08:09 UTC`: in ISO 8601, as the other forges write them."""
    return when.replace(" UTC", "+00:00") if when.endswith(" UTC") else when


def _common(payload: dict, *, forge: str, delivery: str) -> dict[str, Any]:
    return dict(forge=forge, delivery=delivery, action=field(payload, "object_attributes.action", default=""),
                sender=field(payload, "user.username"),
                updated_at=_iso(str(field(payload, "object_attributes.updated_at", default=""))))


def _issue(payload: dict, *, forge: str, host: str, delivery: str) -> ForgeEvent | Ignored:
    action = field(payload, "object_attributes.action", default="")
    event = dict(**_common(payload, forge=forge, delivery=delivery),
                 issue=_ref(payload, host, field(payload, "object_attributes.iid", int)),
                 title=field(payload, "object_attributes.title", default=""),
                 body=field(payload, "object_attributes.description", default=""))
    if action == "close":
        return ForgeEvent(kind=EventKind.ISSUE_CLOSED, **event)
    current = _titles(payload, "labels")
    changes = field(payload, "changes", dict, default={})
    if "labels" in changes:
        previous = _titles(payload, "changes.labels.previous")
        current = _titles(payload, "changes.labels.current")
    elif action == "open":
        previous = ()     # opened with labels: each of them was just added
    else:
        return Ignored(f"issue {action or 'change'} without a label change is not acted on")
    added = tuple(label for label in current if label not in previous)
    if not added:
        return Ignored("no label was added")
    return ForgeEvent(kind=EventKind.LABELS_CHANGED, labels=current, added=added, **event)


def _note(payload: dict, *, forge: str, host: str, delivery: str) -> ForgeEvent | Ignored:
    action = field(payload, "object_attributes.action", default="create")
    if action != "create":
        return Ignored(f"note action {action!r} is not acted on")
    if field(payload, "object_attributes.system", bool, default=False):
        return Ignored("system notes are GitLab's own record of a change")
    noteable = field(payload, "object_attributes.noteable_type")
    note = dict(**_common(payload, forge=forge, delivery=delivery),
                comment_id=field(payload, "object_attributes.id", int),
                comment_body=field(payload, "object_attributes.note", default=""))
    if noteable == "Issue":
        return ForgeEvent(kind=EventKind.COMMENT, issue=_ref(payload, host, field(payload, "issue.iid", int)), **note,
                          title=field(payload, "issue.title", default=""),
                          body=field(payload, "issue.description", default=""), labels=_titles(payload, "issue.labels"))
    if noteable != "MergeRequest":
        return Ignored(f"notes on a {noteable} are not acted on")
    merge_request = dict(issue=_ref(payload, host, field(payload, "merge_request.iid", int), merge_request=True),
                         title=field(payload, "merge_request.title", default=""), is_pull=True,
                         head_branch=field(payload, "merge_request.source_branch", default=""))
    if field(payload, "object_attributes.type", default="") == "DiffNote":
        # One inline note of a review: the job finds the notes published with it and reads them as one.
        return ForgeEvent(kind=EventKind.REVIEW, review_state="commented", **merge_request, **note)
    return ForgeEvent(kind=EventKind.COMMENT, **merge_request, **note)


def _merge_request(payload: dict, *, forge: str, host: str, delivery: str) -> ForgeEvent | Ignored:
    action = field(payload, "object_attributes.action", default="")
    if action not in ("merge", "close"):
        return Ignored(f"merge request action {action!r} is not acted on")
    return ForgeEvent(kind=EventKind.PULL_CLOSED, **_common(payload, forge=forge, delivery=delivery),
                      issue=_ref(payload, host, field(payload, "object_attributes.iid", int), merge_request=True),
                      title=field(payload, "object_attributes.title", default=""), is_pull=True,
                      head_branch=field(payload, "object_attributes.source_branch"), merged=action == "merge")


def _pipeline(payload: dict, *, forge: str, host: str, delivery: str) -> CheckFailed | Ignored:
    status = field(payload, "object_attributes.status")
    if status != "failed":
        return Ignored(f"pipeline {status!r} is not a failure")
    failed = tuple(FailedCheck(name=field(build, "name"), conclusion="failed",
                               summary=f"stage {field(build, 'stage', default='')}")
                   for build in field(payload, "builds", list, default=[])
                   if field(build, "status", default="") == "failed" and not field(build, "allow_failure", bool,
                                                                                   default=False))
    return CheckFailed(forge=forge, repo=str(project_ref(payload, host=host)),
                       sha=field(payload, "object_attributes.sha"), delivery=delivery,
                       branch=field(payload, "object_attributes.ref", default=""),
                       suite_id=field(payload, "object_attributes.id", int), checks=failed,
                       updated_at=_iso(str(field(payload, "object_attributes.finished_at", default=""))))


PARSERS = {"Issue Hook": _issue, "Confidential Issue Hook": _issue, "Note Hook": _note,
           "Confidential Note Hook": _note, "Merge Request Hook": _merge_request, "Pipeline Hook": _pipeline}
