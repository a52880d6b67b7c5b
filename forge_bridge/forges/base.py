"""The ForgeClient protocol and the program's own types for what forges return."""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from forge_bridge.models import IssueRef, RepoRef

WRITE_PERMISSIONS = frozenset({"write", "maintain", "admin", "owner"})
BOT_WITH_WRITE = "bot"   # permission()'s answer for a bot user with write access (GitLab tells bots apart)
_NUMBER_IN_URL = re.compile(r"/(issues|pulls|pull)/([0-9]+)")


def number_from_url(url: str) -> tuple[int, bool]:
    """`…/pull/7#issuecomment-1` -> (7, True): the issue or pull request a comment's URL points at."""
    match = _NUMBER_IN_URL.search(url)
    if not match:
        raise ValueError(f"no issue number in {url!r}")
    return int(match[2]), match[1] != "issues"


_HUNK_HEADER = re.compile(r"^@@ -[0-9]+(?:,[0-9]+)? \+([0-9]+)(?:,[0-9]+)? @@")


def line_from_hunk(hunk: str) -> int:
    """The new file's line number of a diff hunk's last line: where an inline comment sits (GitHub's list of a
    review's comments gives only the hunk and the comment's position in it); 0 when the hunk has no header."""
    lines = hunk.rstrip("\n").splitlines()
    header = _HUNK_HEADER.match(lines[0]) if lines else None
    if header is None:
        return 0
    line = int(header[1]) - 1
    for text in lines[1:]:
        if not text.startswith("-"):
            line += 1
    return max(line, 0)


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
class RepoComment:
    """A comment found by scanning a repository: which issue or pull request it is on, and when."""

    id: int
    number: int
    is_pull: bool
    body: str
    author: str
    created_at: datetime
    author_is_bot: bool = False


@dataclass(frozen=True)
class PullInfo:
    number: int
    url: str
    state: str
    head_branch: str
    merged: bool = False


@dataclass(frozen=True)
class ReviewInfo:
    """A submitted review of a pull request; `state` in the forges' common words."""

    id: int
    author: str
    state: str          # changes_requested | approved | commented | dismissed | pending
    body: str


@dataclass(frozen=True)
class ReviewCommentInfo:
    """One inline comment of a review: where in the code it sits and what it says."""

    id: int
    path: str
    line: int           # its (last) line in the changed file; 0 when the forge no longer places it (outdated)
    start_line: int     # the first line of a comment on several lines; 0 for one line
    diff_hunk: str      # the diff up to the commented line, as the forge shows it
    body: str


# The forges' review states in common words (GitHub's, and Gitea's and Forgejo's).
REVIEW_STATES = {"CHANGES_REQUESTED": "changes_requested", "REQUEST_CHANGES": "changes_requested",
                 "APPROVED": "approved", "COMMENTED": "commented", "COMMENT": "commented",
                 "DISMISSED": "dismissed", "PENDING": "pending"}


@dataclass(frozen=True)
class HookInfo:
    """A repository webhook as the forge shows it (never with its secret: forges do not return it)."""

    id: int
    url: str
    events: tuple[str, ...]
    content_type: str
    active: bool


class ForgeClient(Protocol):
    supports_reactions: bool
    git_user: str   # the user name git's Basic authentication carries with git_token's token

    def whoami(self) -> str: ...
    def git_token(self, repo: RepoRef) -> str: ...   # what git sends to fetch and push; live (App tokens expire)
    def renew_git_token(self) -> None: ...
    def get_repo(self, repo: RepoRef) -> RepoInfo: ...
    def get_issue(self, issue: IssueRef) -> IssueInfo: ...
    # since: only issues changed since then (a label added changes an issue), where the forge can say so cheaply
    def list_labeled_issues(self, repo: RepoRef, label: str, *, since: datetime | None = None) -> list[IssueInfo]: ...
    def ensure_label(self, repo: RepoRef, name: str, color: str) -> None: ...
    def add_label(self, issue: IssueRef, name: str) -> None: ...
    def remove_label(self, issue: IssueRef, name: str) -> None: ...
    def list_comments(self, issue: IssueRef) -> list[CommentInfo]: ...
    def create_comment(self, issue: IssueRef, body: str) -> int: ...
    # A comment is named by its issue (or pull request) too: GitLab's notes live under theirs.
    def edit_comment(self, issue: IssueRef, comment_id: int, body: str) -> None: ...
    def find_open_pull(self, repo: RepoRef, branch: str) -> PullInfo | None: ...
    # delete_on_merge: the forge removes the branch on merge when it can be asked to (GitLab); elsewhere the
    # bridge deletes it itself when it hears of the merge.
    def create_pull(self, repo: RepoRef, *, head: str, base: str, title: str, body: str,
                    draft: bool = False, delete_on_merge: bool = False) -> PullInfo: ...
    def mark_ready(self, repo: RepoRef, number: int) -> None: ...   # a draft pull request, ready for review
    def request_review(self, repo: RepoRef, number: int, login: str) -> None: ...
    def failed_check_runs(self, repo: RepoRef, suite_id: int) -> list: ...   # GitHub check suites' failed runs
    def failed_checks(self, repo: RepoRef, sha: str) -> tuple[int, list]: ...  # (a failed suite's id, checks)
    def coauthor(self, repo: RepoRef, login: str) -> str: ...   # "Name <email>" for a Co-authored-by trailer ("" when unknown)
    def get_pull(self, repo: RepoRef, number: int) -> PullInfo: ...
    def permission(self, repo: RepoRef, user: str) -> str: ...
    def delete_branch(self, repo: RepoRef, branch: str) -> None: ...
    def add_reaction(self, issue: IssueRef, comment_id: int, content: str) -> None: ...
    # A review: by its id (GitHub), or the newest of `author`'s in `state` (Gitea's review webhooks carry no id).
    def review(self, repo: RepoRef, number: int, review_id: int, *, author: str,
               state: str) -> ReviewInfo | None: ...
    def review_comments(self, repo: RepoRef, number: int, review_id: int) -> list[ReviewCommentInfo]: ...
    def add_review_comment_reaction(self, pull: IssueRef, comment_id: int, content: str) -> None: ...
    def label_actor(self, issue: IssueRef, label: str) -> str: ...
    def comments_since(self, repo: RepoRef, since: datetime) -> list[RepoComment]: ...
    def list_hooks(self, repo: RepoRef) -> list[HookInfo]: ...
    def create_hook(self, repo: RepoRef, *, url: str, secret: str, events: tuple[str, ...]) -> int: ...
    def update_hook(self, repo: RepoRef, hook_id: int, *, url: str, secret: str, events: tuple[str, ...]) -> None: ...
