"""Typed field access into a delivery's JSON, raising Malformed with the path of what is missing."""
from __future__ import annotations

from typing import Any

from forge_bridge.models import CheckFailed, FailedCheck, InvalidRef, IssueRef, RepoRef
from forge_bridge.intake.webhooks.errors import Ignored, Malformed

_MISSING = object()


def field(payload: Any, path: str, kind: type | tuple[type, ...] = str, default: Any = _MISSING) -> Any:
    """`field(p, "issue.number", int)`: the value at a dotted path, checked for its type."""
    value = payload
    for part in path.split("."):
        value = value.get(part, _MISSING) if isinstance(value, dict) else _MISSING
        if value is _MISSING or (value is None and default is not _MISSING):
            if default is _MISSING:
                raise Malformed(f"missing field {path}")
            return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise Malformed(f"field {path} has the wrong type")
    return value


def label_names(payload: Any, path: str) -> tuple[str, ...]:
    labels = field(payload, path, list, default=[])
    return tuple(field(label, "name") for label in labels)


def repo_ref(payload: Any, *, host: str) -> RepoRef:
    try:
        return RepoRef(host, field(payload, "repository.owner.login"), field(payload, "repository.name"))
    except InvalidRef as error:
        raise Malformed(str(error)) from None


def issue_ref(payload: Any, *, host: str, number_path: str) -> IssueRef:
    try:
        return IssueRef(repo_ref(payload, host=host), field(payload, number_path, int))
    except InvalidRef as error:
        raise Malformed(str(error)) from None


def pull_fields(payload: Any) -> dict[str, Any]:
    """What both forges put alike in a pull_request event."""
    return dict(title=field(payload, "pull_request.title"), body=field(payload, "pull_request.body", default=""),
                is_pull=True, head_branch=field(payload, "pull_request.head.ref"))


def updated_at(payload: Any) -> str:
    """When the thing changed, by the forge's clock: a replayed delivery carries the same value."""
    for path in ("comment.updated_at", "review.submitted_at", "pull_request.updated_at", "issue.updated_at"):
        value = field(payload, path, str, default="")
        if value:
            return value
    return ""


FAILED_STATES = ("failure", "error")   # a commit status that failed (pending and success do not)


def status_failure(payload: dict, *, forge: str, host: str, delivery: str) -> CheckFailed | Ignored:
    """A commit status event (GitHub's and Gitea's share these fields): one failed check, or nothing to do."""
    state = field(payload, "state")
    if state not in FAILED_STATES:
        return Ignored(f"status {state!r} is not a failure")
    check = FailedCheck(name=field(payload, "context", default="") or "status", conclusion=state,
                        summary=field(payload, "description", default="") or "",
                        url=field(payload, "target_url", default="") or "")
    return CheckFailed(forge=forge, repo=str(repo_ref(payload, host=host)), sha=field(payload, "sha"),
                       delivery=delivery, checks=(check,), updated_at=field(payload, "updated_at", default=""))
