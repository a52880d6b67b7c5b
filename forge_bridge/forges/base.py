"""The ForgeClient protocol and the program's own types for what forges return."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from forge_bridge.models import IssueRef, RepoRef


class ForgeError(RuntimeError):
    """A forge API call failed; `status` is the HTTP status when there was one."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class RepoInfo:
    clone_url: str
    default_branch: str


@dataclass(frozen=True)
class IssueInfo:
    number: int
    title: str
    body: str
    labels: tuple[str, ...]
    state: str
    is_pull: bool
    author: str


@dataclass(frozen=True)
class CommentInfo:
    id: int
    body: str
    author: str


@dataclass(frozen=True)
class PullInfo:
    number: int
    url: str
    state: str
    head_branch: str


class ForgeClient(Protocol):
    def get_repo(self, repo: RepoRef) -> RepoInfo: ...
    def get_issue(self, issue: IssueRef) -> IssueInfo: ...
    def list_labeled_issues(self, repo: RepoRef, label: str) -> list[IssueInfo]: ...
    def ensure_label(self, repo: RepoRef, name: str, color: str) -> None: ...
    def add_label(self, issue: IssueRef, name: str) -> None: ...
    def remove_label(self, issue: IssueRef, name: str) -> None: ...
    def list_comments(self, issue: IssueRef) -> list[CommentInfo]: ...
    def create_comment(self, issue: IssueRef, body: str) -> int: ...
    def edit_comment(self, repo: RepoRef, comment_id: int, body: str) -> None: ...
    def find_open_pull(self, repo: RepoRef, branch: str) -> PullInfo | None: ...
    def create_pull(self, repo: RepoRef, *, head: str, base: str, title: str, body: str) -> PullInfo: ...
