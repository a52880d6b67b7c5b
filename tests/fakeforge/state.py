"""The fake forge's memory: repositories backed by real bare git repositories, issues, labels, comments,
pull requests and collaborator permissions — the same model serves the GitHub and the Gitea face."""
from __future__ import annotations

import subprocess
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

LABEL_COLOR = "ededed"


@dataclass
class Label:
    id: int
    name: str
    color: str = LABEL_COLOR


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Comment:
    id: int
    repo: str
    number: int
    body: str
    author: str
    created_at: str = field(default_factory=now_iso)
    reactions: list[tuple[str, str]] = field(default_factory=list)   # (user, content)


@dataclass
class LabelEvent:
    id: int
    number: int
    label: str
    actor: str
    added: bool
    created_at: str = field(default_factory=now_iso)


@dataclass
class Issue:
    id: int
    number: int
    title: str
    body: str
    author: str
    labels: list[str] = field(default_factory=list)
    state: str = "open"
    is_pull: bool = False
    updated_at: str = field(default_factory=now_iso)   # moved by every label and comment, as on the forges


@dataclass
class Pull:
    id: int
    number: int
    title: str
    body: str
    head: str
    base: str
    author: str
    state: str = "open"
    merged: bool = False
    head_repo: str = ""      # owner/name of the fork the head branch lives in ("": the repository itself)
    draft: bool = False
    reviewers: list[str] = field(default_factory=list)   # review requested from
    reviews: list[Review] = field(default_factory=list)


@dataclass
class ReviewComment:
    """An inline comment of a review: on `line` (and from `start_line`) of `path`, under the hunk shown."""

    id: int
    review_id: int
    number: int
    path: str
    line: int
    diff_hunk: str
    body: str
    author: str
    start_line: int | None = None
    created_at: str = field(default_factory=now_iso)
    reactions: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Review:
    id: int
    number: int
    author: str
    state: str             # GitHub's words: APPROVED | CHANGES_REQUESTED | COMMENTED
    body: str
    comments: list[ReviewComment] = field(default_factory=list)
    submitted_at: str = field(default_factory=now_iso)


@dataclass
class RepoHook:
    """A webhook set on a repository through the API; the forge delivers subscribed events to it."""

    id: int
    url: str
    secret: str
    events: list[str]
    content_type: str = "json"
    active: bool = True
    created_at: str = field(default_factory=now_iso)


@dataclass
class Repo:
    id: int
    owner: str
    name: str
    bare: Path
    default_branch: str = "main"
    labels: dict[str, Label] = field(default_factory=dict)
    label_events: list[LabelEvent] = field(default_factory=list)
    issues: dict[int, Issue] = field(default_factory=dict)
    pulls: dict[int, Pull] = field(default_factory=dict)
    permissions: dict[str, str] = field(default_factory=dict)
    hooks: dict[int, RepoHook] = field(default_factory=dict)

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"

    def branch_sha(self, branch: str) -> str | None:
        done = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}"],
                              cwd=self.bare, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else None


class State:
    def __init__(self, root: Path, *, separate_merge_requests: bool = False) -> None:
        self.root = root
        # GitLab numbers merge requests apart from issues (iids); GitHub and Gitea number both in one sequence.
        self.separate_merge_requests = separate_merge_requests
        self.repos: dict[str, Repo] = {}
        self.comments: dict[int, Comment] = {}
        self.review_comments: dict[int, ReviewComment] = {}
        self.lock = threading.RLock()
        self._next_id = 1000

    def next_id(self) -> int:
        with self.lock:
            self._next_id += 1
            return self._next_id

    def create_repo(self, owner: str, name: str) -> Repo:
        flat = owner.replace("/", "+")   # a GitLab group path
        bare = self.root / f"{flat}-{name}.git"
        seed = self.root / f"{flat}-{name}.seed"
        _git("init", "--quiet", "--initial-branch=main", str(seed))
        (seed / "README.md").write_text(f"# {name}\n")
        _git("add", "README.md", cwd=seed)
        _git("-c", "user.name=Forge", "-c", "user.email=forge@example.invalid", "commit", "--quiet", "-m", "init",
             cwd=seed)
        _git("clone", "--quiet", "--bare", str(seed), str(bare))
        repo = Repo(id=self.next_id(), owner=owner, name=name, bare=bare, permissions={owner: "admin"})
        self.repos[repo.full_name] = repo
        return repo

    def repo(self, owner: str, name: str) -> Repo | None:
        return self.repos.get(f"{owner}/{name}")

    def label(self, repo: Repo, name: str) -> Label:
        with self.lock:
            if name not in repo.labels:
                repo.labels[name] = Label(id=self.next_id(), name=name)
            return repo.labels[name]

    def set_label(self, repo: Repo, issue: Issue, name: str, *, actor: str, added: bool) -> bool:
        """Add or remove a label as `actor`, recording the event; False when nothing changed."""
        with self.lock:
            self.label(repo, name)
            if added == (name in issue.labels):
                return False
            if added:
                issue.labels.append(name)
            else:
                issue.labels.remove(name)
            issue.updated_at = now_iso()
            repo.label_events.append(LabelEvent(self.next_id(), issue.number, name, actor, added))
            return True

    def delete_branch(self, repo: Repo, branch: str) -> bool:
        if repo.branch_sha(branch) is None:
            return False
        _git("update-ref", "-d", f"refs/heads/{branch}", cwd=repo.bare)
        return True

    def merge(self, repo: Repo, pull: Pull) -> None:
        """Merge as the forge's merge button would: a merge commit of head into base, in the bare repository."""
        base, head = repo.branch_sha(pull.base), repo.branch_sha(pull.head)
        tree = subprocess.run(["git", "merge-tree", "--write-tree", base, head], cwd=repo.bare, capture_output=True,
                              text=True, check=True).stdout.split()[0]
        commit = subprocess.run(["git", "-c", "user.name=Forge", "-c", "user.email=forge@example.invalid",
                                 "commit-tree", tree, "-p", base, "-p", head, "-m", f"Merge pull request #{pull.number}"],
                                cwd=repo.bare, capture_output=True, text=True, check=True).stdout.strip()
        _git("update-ref", f"refs/heads/{pull.base}", commit, cwd=repo.bare)
        pull.merged, pull.state = True, "closed"
        if not self.separate_merge_requests:
            repo.issues[pull.number].state = "closed"

    def next_number(self, repo: Repo) -> int:
        return max([0, *repo.issues, *([] if self.separate_merge_requests else repo.pulls)]) + 1

    def create_issue(self, repo: Repo, *, title: str, body: str, author: str, labels: tuple[str, ...] = ()) -> Issue:
        with self.lock:
            issue = Issue(id=self.next_id(), number=self.next_number(repo), title=title, body=body, author=author)
            repo.issues[issue.number] = issue
            for name in labels:
                self.label(repo, name)
                issue.labels.append(name)
            return issue

    def create_pull(self, repo: Repo, *, title: str, body: str, head: str, base: str, author: str,
                    draft: bool = False) -> Pull:
        with self.lock:
            number = max([0, *repo.pulls]) + 1 if self.separate_merge_requests else self.next_number(repo)
            pull = Pull(id=self.next_id(), number=number, title=title, body=body, head=head,
                        base=base, author=author, draft=draft)
            repo.pulls[pull.number] = pull
            if not self.separate_merge_requests:
                # A pull request is an issue too: it has comments and labels under the same number.
                repo.issues[pull.number] = Issue(id=self.next_id(), number=pull.number, title=title, body=body,
                                                 author=author, is_pull=True)
            return pull

    def add_comment(self, repo: Repo, number: int, body: str, author: str) -> Comment:
        with self.lock:
            comment = Comment(id=self.next_id(), repo=repo.full_name, number=number, body=body, author=author)
            self.comments[comment.id] = comment
            if number in repo.issues:
                repo.issues[number].updated_at = comment.created_at
            return comment

    def add_review(self, pull: Pull, *, author: str, state: str, body: str, comments: list[dict]) -> Review:
        """A submitted review; `comments`: {path, line, hunk, body[, start_line]} each, in the order shown."""
        with self.lock:
            review = Review(id=self.next_id(), number=pull.number, author=author, state=state, body=body)
            for c in comments:
                inline = ReviewComment(id=self.next_id(), review_id=review.id, number=pull.number, path=c["path"],
                                       line=c["line"], start_line=c.get("start_line"), diff_hunk=c["hunk"],
                                       body=c["body"], author=author)
                review.comments.append(inline)
                self.review_comments[inline.id] = inline
            pull.reviews.append(review)
            return review

    def comments_since(self, repo: Repo, since: str | None) -> list[Comment]:
        """Comments of the repository at or after `since` (any ISO 8601 form), oldest first."""
        floor = datetime.fromisoformat(since.replace(" ", "+")) if since else None
        found = [c for c in self._all_comments() if c.repo == repo.full_name
                 and (floor is None or datetime.fromisoformat(c.created_at) >= floor)]
        return sorted(found, key=lambda c: (c.created_at, c.id))

    def issue_comments(self, repo: Repo, number: int) -> list[Comment]:
        return sorted((c for c in self._all_comments() if c.repo == repo.full_name and c.number == number),
                      key=lambda c: c.id)

    def _all_comments(self) -> list[Comment]:
        """A copy taken under the lock: the server answers on many threads, and another may be adding one."""
        with self.lock:
            return list(self.comments.values())


def _git(*args: str, cwd: Path | None = None) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)
