"""ForgeClient for GitLab (GitLab.com and self-managed 16.0+), through python-gitlab.

GitLab numbers merge requests apart from issues; inside the bridge a merge request is `MERGE_REQUEST_BASE + iid`
(models.bridge_number), so every method that takes a number first asks which of the two it names. Notes (comments) live
under their issue or merge request, which is why the protocol names a comment by its issue too. python-gitlab
waits out 429s itself (Retry-After, else RateLimit-Reset) and retries transient 5xx answers."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any, TypeVar

import gitlab
import requests
from gitlab.exceptions import GitlabError

from forge_bridge.forges.base import (
    BOT_WITH_WRITE,
    CommentInfo,
    ForgeError,
    HookInfo,
    IssueInfo,
    PullInfo,
    RepoComment,
    RepoInfo,
    ReviewCommentInfo,
    ReviewInfo,
)
from forge_bridge.forges.pacing import WriteBucket, quota_pause
from forge_bridge.models import FailedCheck, IssueRef, RepoRef, bridge_number, forge_number, is_merge_request

log = logging.getLogger(__name__)
T = TypeVar("T")
DRAFT_PREFIX = "Draft: "
DRAFT_PREFIXES = ("Draft:", "[Draft]", "(Draft)")   # what GitLab reads as a draft title
MAX_RETRIES = 6
TIMEOUT = 30.0
# Access levels (GitLab's Gitlab::Access) in the words the bridge's permission checks use.
DEVELOPER = 30
ROLES = ((50, "admin"), (40, "maintain"), (DEVELOPER, "write"), (10, "read"))
# The reactions the bridge adds, by GitLab's award emoji names.
EMOJI = {"eyes": "eyes", "+1": "thumbsup", "-1": "thumbsdown", "rocket": "rocket", "confused": "confused"}
# A review's inline notes are published together; notes of one author further apart than this are two reviews.
REVIEW_GAP = timedelta(seconds=30)
# Project hook events by the names `hooks install` asks for.
HOOK_EVENTS = {"issues": "issues_events", "confidential_issues": "confidential_issues_events",
               "note": "note_events", "confidential_note": "confidential_note_events",
               "merge_requests": "merge_requests_events", "pipeline": "pipeline_events"}
TRACE_LINES = 30


def _state(state: str) -> str:
    """GitLab's `opened` in the words of the other forges."""
    return "open" if state == "opened" else state


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _username(user: dict | None) -> str:
    return (user or {}).get("username", "")


class GitLabClient:
    supports_reactions = True
    git_user = "oauth2"   # GitLab's user name for a token in git's Basic authentication

    def __init__(self, url: str, token: str, *, write_interval: float = 0.0) -> None:
        self._token = token
        self._gl = gitlab.Gitlab(url, private_token=token or None, timeout=TIMEOUT, retry_transient_errors=True,
                                 per_page=100, keep_base_url=True)
        self._writes = WriteBucket(write_interval)
        self._rate = (0, 0, 0.0)   # RateLimit-Remaining, -Limit and -Reset of the last answer that had them
        self._gl.session.hooks["response"].append(self._read_rate_limit)

    def _read_rate_limit(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        headers = response.headers
        try:
            self._rate = (int(headers["RateLimit-Remaining"]), int(headers["RateLimit-Limit"]),
                          float(headers.get("RateLimit-Reset", 0)))
        except (KeyError, ValueError):
            pass   # GitLab sends them only where rate limits are on

    def quota(self) -> tuple[int, int] | None:
        """(remaining, limit) from the last answer's RateLimit headers, when GitLab sent them (for /metrics)."""
        remaining, limit, _ = self._rate
        return (remaining, limit) if limit > 0 else None

    # plumbing
    def _call(self, doing: str, call: Callable[[], T], *, write: bool = False) -> T:
        """One call, paced near the end of the quota (429s themselves are waited out by python-gitlab)."""
        if write:
            self._writes.wait()
        remaining, limit, reset_at = self._rate
        if pause := quota_pause(remaining, limit, reset_at, time.time()):
            log.info("GitLab quota low (%d of %d left); pausing %.1fs", remaining, limit, pause)
            time.sleep(pause)
        try:
            return call()
        except GitlabError as error:
            status = error.response_code
            raise ForgeError(f"GitLab: {doing} failed with {status} {error.error_message}".strip(),
                             status=status) from None
        except requests.RequestException as error:
            raise ForgeError(f"GitLab: {doing} failed: {type(error).__name__}") from None

    def _project(self, repo: RepoRef) -> Any:
        return self._gl.projects.get(repo.full_name, lazy=True)   # no request: the path names it

    def _manager(self, issue: IssueRef) -> Any:
        """The project's issues or merge requests, whichever the number names."""
        project = self._project(issue.repo)
        return project.mergerequests if is_merge_request(issue.number) else project.issues

    def _noteable(self, issue: IssueRef) -> Any:
        """The issue or merge request a number names, without a request."""
        return self._manager(issue).get(forge_number(issue.number), lazy=True)

    def _user_id(self, login: str) -> int:
        users = self._call("find user", lambda: self._gl.users.list(username=login, get_all=False))
        if not users:
            raise ForgeError(f"GitLab: no user {login!r}", status=404)
        return users[0].id

    # who
    def whoami(self) -> str:
        def current() -> str:
            self._gl.auth()
            return self._gl.user.username
        return self._call("get the token's user", current)

    def token_scopes(self) -> tuple[str, ...]:
        """The scopes of the token itself (GET /personal_access_tokens/self, for `check`)."""
        answer = self._call("read the token", lambda: self._gl.http_get("/personal_access_tokens/self"))
        return tuple(answer.get("scopes", ()))

    def git_token(self, repo: RepoRef) -> str:
        return self._token

    def renew_git_token(self) -> None:
        """Nothing to renew: a GitLab access token lives until it expires or is revoked."""

    def coauthor(self, repo: RepoRef, login: str) -> str:
        user = self._call("get user", lambda: self._gl.users.get(self._user_id(login)))
        email = getattr(user, "public_email", "") or ""
        return f"{user.name or login} <{email}>" if email else ""

    def permission(self, repo: RepoRef, user: str) -> str:
        """The user's role on the project (members/all: inherited from groups too) in the other forges' words;
        `bot` for a bot user with write access (allowed only when listed in allow_bots)."""
        try:
            user_id = self._user_id(user)
            member = self._call("get member", lambda: self._project(repo).members_all.get(user_id))
        except ForgeError as error:
            if error.status in (403, 404):
                return "none"
            raise
        permission = next((word for level, word in ROLES if member.access_level >= level), "none")
        if permission in ("write", "maintain", "admin"):
            found = self._call("get user", lambda: self._gl.users.get(user_id))
            if getattr(found, "bot", False):
                return BOT_WITH_WRITE
        return permission

    # repositories and issues
    def get_repo(self, repo: RepoRef) -> RepoInfo:
        project = self._call("get project", lambda: self._gl.projects.get(repo.full_name))
        return RepoInfo(clone_url=project.http_url_to_repo, default_branch=project.default_branch or "main")

    @staticmethod
    def _issue(found: Any, *, merge_request: bool) -> IssueInfo:
        return IssueInfo(number=bridge_number(found.iid, merge_request=merge_request), title=found.title or "", body=found.description or "",
                         labels=tuple(found.labels or ()), state=_state(found.state), is_pull=merge_request,
                         author=_username(found.author))

    def get_issue(self, issue: IssueRef) -> IssueInfo:
        found = self._call("get issue", lambda: self._manager(issue).get(forge_number(issue.number)))
        return self._issue(found, merge_request=is_merge_request(issue.number))

    def list_labeled_issues(self, repo: RepoRef, label: str, *, since: datetime | None = None) -> list[IssueInfo]:
        query = {"labels": label, "state": "opened", "get_all": True}
        if since is not None:
            query["updated_after"] = since.isoformat()
        found = self._call("list issues", lambda: self._project(repo).issues.list(**query))
        return [self._issue(issue, merge_request=False) for issue in found if label in (issue.labels or ())]

    def ensure_label(self, repo: RepoRef, name: str, color: str) -> None:
        project = self._project(repo)
        labels = self._call("list labels", lambda: project.labels.list(search=name, get_all=True))
        if any(label.name == name for label in labels):
            return
        try:
            self._call("create label", lambda: project.labels.create({"name": name, "color": f"#{color}"}), write=True)
        except ForgeError as error:
            if error.status != 409:   # created by another worker a moment ago
                raise

    def _update(self, issue: IssueRef, doing: str, changes: dict) -> None:
        self._call(doing, lambda: self._manager(issue).update(forge_number(issue.number), changes), write=True)

    def add_label(self, issue: IssueRef, name: str) -> None:
        self._update(issue, "add label", {"add_labels": name})   # one request: no read-modify-write race

    def remove_label(self, issue: IssueRef, name: str) -> None:
        self._update(issue, "remove label", {"remove_labels": name})

    def label_actor(self, issue: IssueRef, label: str) -> str:
        """Who last added `label`, from the issue's resource label events."""
        events = self._call("list label events", lambda: self._noteable(issue).resourcelabelevents.list(get_all=True))
        for event in reversed(events):
            if event.action == "add" and (event.label or {}).get("name") == label:
                return _username(event.user)
        return ""

    # notes
    @staticmethod
    def _is_comment(note: Any) -> bool:
        return not getattr(note, "system", False)   # system notes record changes ("added label …")

    def list_comments(self, issue: IssueRef) -> list[CommentInfo]:
        notes = self._call("list notes", lambda: self._noteable(issue).notes.list(
            get_all=True, sort="asc", order_by="created_at"))
        return [CommentInfo(id=n.id, body=n.body or "", author=_username(n.author)) for n in notes
                if self._is_comment(n)]

    def create_comment(self, issue: IssueRef, body: str) -> int:
        note = self._call("create note", lambda: self._noteable(issue).notes.create({"body": body}), write=True)
        return note.id

    def edit_comment(self, issue: IssueRef, comment_id: int, body: str) -> None:
        self._call("edit note", lambda: self._noteable(issue).notes.update(comment_id, {"body": body}), write=True)

    def add_reaction(self, issue: IssueRef, comment_id: int, content: str) -> None:
        note = self._noteable(issue).notes.get(comment_id, lazy=True)
        try:
            self._call("award emoji", lambda: note.awardemojis.create({"name": EMOJI.get(content, content)}),
                       write=True)
        except ForgeError as error:
            if error.status != 404 or "already" not in str(error).lower():   # awarded before: as good as done
                raise

    def add_review_comment_reaction(self, pull: IssueRef, comment_id: int, content: str) -> None:
        """An inline note is a note of the merge request like any other: its award emoji are the same."""
        self.add_reaction(pull, comment_id, content)

    def comments_since(self, repo: RepoRef, since: datetime) -> list[RepoComment]:
        """GitLab lists notes per issue and merge request only: those updated since, then their new notes."""
        project, found = self._project(repo), []
        for merge_request, manager in ((False, project.issues), (True, project.mergerequests)):
            changed = self._call("list changed", lambda m=manager: m.list(updated_after=since.isoformat(),
                                                                          get_all=True))
            for item in changed:
                found += self._new_notes(item, since, merge_request=merge_request)
        return sorted(found, key=lambda c: (c.created_at, c.id))

    def _new_notes(self, item: Any, since: datetime, *, merge_request: bool) -> list[RepoComment]:
        number = bridge_number(item.iid, merge_request=merge_request)
        notes = self._call("list notes", lambda: item.notes.list(get_all=True, sort="asc", order_by="created_at"))
        return [RepoComment(id=n.id, number=number, is_pull=merge_request, body=n.body or "",
                            author=_username(n.author), created_at=_when(n.created_at),
                            author_is_bot=False)
                for n in notes if self._is_comment(n) and _when(n.created_at) >= since]

    # merge requests
    @staticmethod
    def _pull(found: Any) -> PullInfo:
        return PullInfo(number=bridge_number(found.iid, merge_request=True), url=found.web_url, state=_state(found.state)
                        if found.state != "merged" else "closed", head_branch=found.source_branch,
                        merged=found.state == "merged")

    def _merge_request(self, repo: RepoRef, number: int) -> Any:
        return self._call("get merge request", lambda: self._project(repo).mergerequests.get(forge_number(number)))

    def get_pull(self, repo: RepoRef, number: int) -> PullInfo:
        return self._pull(self._merge_request(repo, number))

    def find_open_pull(self, repo: RepoRef, branch: str) -> PullInfo | None:
        # Only a merge request from the project itself: anyone may open one from a fork whose branch has the
        # bridge's (predictable) name, and adopting it would hand them the status, the label and the destroy.
        found = self._call("list merge requests", lambda: self._project(repo).mergerequests.list(
            source_branch=branch, state="opened", get_all=True))
        own = [m for m in found if m.source_project_id == m.target_project_id]
        return self._pull(own[0]) if own else None

    def create_pull(self, repo: RepoRef, *, head: str, base: str, title: str, body: str,
                    draft: bool = False, delete_on_merge: bool = False) -> PullInfo:
        """A draft is a title starting `Draft:`; GitLab removes the branch itself on merge when asked."""
        title = f"{DRAFT_PREFIX}{title}" if draft and not title.startswith(DRAFT_PREFIXES) else title
        fields = {"source_branch": head, "target_branch": base, "title": title, "description": body,
                  "remove_source_branch": delete_on_merge}
        return self._pull(self._call("create merge request", lambda: self._project(repo).mergerequests.create(fields),
                                     write=True))

    def mark_ready(self, repo: RepoRef, number: int) -> None:
        """Drop the draft prefix of the title (nothing to do when someone already did)."""
        title = self._merge_request(repo, number).title or ""
        prefix = next((p for p in DRAFT_PREFIXES if title.startswith(p)), "")
        if prefix:
            self._update(IssueRef(repo, number), "mark ready", {"title": title.removeprefix(prefix).strip()})

    def request_review(self, repo: RepoRef, number: int, login: str) -> None:
        self._update(IssueRef(repo, number), "request a review", {"reviewer_ids": [self._user_id(login)]})

    def delete_branch(self, repo: RepoRef, branch: str) -> None:
        try:
            self._call("delete branch", lambda: self._project(repo).branches.delete(branch), write=True)
        except ForgeError as error:
            if error.status != 404:  # already gone
                raise

    # reviews: a merge request's inline notes (DiffNotes) an author published together
    def _diff_notes(self, repo: RepoRef, number: int) -> list[Any]:
        notes = self._call("list notes", lambda: self._noteable(IssueRef(repo, number)).notes.list(
            get_all=True, sort="asc", order_by="created_at"))
        return [n for n in notes if getattr(n, "type", None) == "DiffNote" and self._is_comment(n)]

    def _batch(self, notes: list[Any], note_id: int) -> list[Any]:
        """The notes published with `note_id`: the same author's, none further than REVIEW_GAP from the next."""
        mine = next((n for n in notes if n.id == note_id), None)
        if mine is None:
            return []
        theirs = sorted((n for n in notes if _username(n.author) == _username(mine.author)),
                        key=lambda n: (_when(n.created_at), n.id))
        batches: list[list[Any]] = []
        for note in theirs:
            if batches and _when(note.created_at) - _when(batches[-1][-1].created_at) <= REVIEW_GAP:
                batches[-1].append(note)
            else:
                batches.append([note])
        return next(batch for batch in batches if any(n.id == note_id for n in batch))

    def review(self, repo: RepoRef, number: int, review_id: int, *, author: str, state: str) -> ReviewInfo | None:
        """The review a DiffNote belongs to; its id is the first note's, the same whichever note asks."""
        batch = self._batch(self._diff_notes(repo, number), review_id)
        if not batch:
            return None
        return ReviewInfo(id=batch[0].id, author=_username(batch[0].author), state="commented", body="")

    def review_comments(self, repo: RepoRef, number: int, review_id: int) -> list[ReviewCommentInfo]:
        batch = self._batch(self._diff_notes(repo, number), review_id)
        diffs = self._diffs(repo, number) if batch else {}
        return [self._review_comment(note, diffs) for note in batch]

    def _diffs(self, repo: RepoRef, number: int) -> dict[str, str]:
        project_id = self._project(repo).encoded_id
        found = self._call("list diffs", lambda: self._gl.http_list(
            f"/projects/{project_id}/merge_requests/{forge_number(number)}/diffs", get_all=True))
        return {d.get("new_path", ""): d.get("diff", "") for d in found}

    @staticmethod
    def _review_comment(note: Any, diffs: dict[str, str]) -> ReviewCommentInfo:
        position = getattr(note, "position", None) or {}
        path = position.get("new_path") or position.get("old_path") or ""
        line = position.get("new_line") or position.get("old_line") or 0
        start = ((position.get("line_range") or {}).get("start") or {}).get("new_line") or 0
        return ReviewCommentInfo(id=note.id, path=path, line=line, start_line=start if start != line else 0,
                                 diff_hunk=hunk_up_to(diffs.get(path, ""), line), body=note.body or "")

    # CI: pipelines and their jobs
    def failed_checks(self, repo: RepoRef, sha: str) -> tuple[int, list[FailedCheck]]:
        """The newest pipeline on `sha`, when it failed: its id and its failed jobs (for the poller)."""
        pipelines = self._call("list pipelines", lambda: self._project(repo).pipelines.list(
            sha=sha, order_by="id", sort="desc", get_all=False))
        if not pipelines or pipelines[0].status != "failed":
            return 0, []
        return pipelines[0].id, self.failed_check_runs(repo, pipelines[0].id)

    def failed_check_runs(self, repo: RepoRef, suite_id: int) -> list[FailedCheck]:
        """A pipeline's failed jobs, each with its stage and the last lines of its log."""
        project = self._project(repo)
        pipeline = project.pipelines.get(suite_id, lazy=True)
        jobs = self._call("list jobs", lambda: pipeline.jobs.list(scope="failed", get_all=True))
        return [FailedCheck(name=job.name, conclusion="failed", url=job.web_url or "",
                            summary=f"stage {job.stage}" + self._trace_tail(project, job.id))
                for job in jobs if not getattr(job, "allow_failure", False)]

    def _trace_tail(self, project: Any, job_id: int) -> str:
        try:
            raw = self._call("read job log", lambda: project.jobs.get(job_id, lazy=True).trace())
        except ForgeError:
            return ""   # the log expired or is not ours to read: the job's name and stage still say enough
        text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
        lines = [line for line in text.replace("\r\n", "\n").split("\n") if line.strip()][-TRACE_LINES:]
        return ("; the log ends:\n\n```\n" + "\n".join(lines) + "\n```\n") if lines else ""

    # hooks
    def list_hooks(self, repo: RepoRef) -> list[HookInfo]:
        hooks = self._call("list hooks", lambda: self._project(repo).hooks.list(get_all=True))
        return [HookInfo(id=h.id, url=h.url, events=tuple(name for name, attribute in HOOK_EVENTS.items()
                                                          if getattr(h, attribute, False)),
                         content_type="json", active=not getattr(h, "disabled_until", None)) for h in hooks]

    @staticmethod
    def _hook_fields(url: str, secret: str, events: Iterable[str]) -> dict[str, Any]:
        wanted = set(events)
        fields: dict[str, Any] = {attribute: name in wanted for name, attribute in HOOK_EVENTS.items()}
        fields.update(url=url, token=secret, push_events=False, enable_ssl_verification=True)
        return fields

    def create_hook(self, repo: RepoRef, *, url: str, secret: str, events: tuple[str, ...]) -> int:
        hook = self._call("create hook", lambda: self._project(repo).hooks.create(
            self._hook_fields(url, secret, events)), write=True)
        return hook.id

    def update_hook(self, repo: RepoRef, hook_id: int, *, url: str, secret: str, events: tuple[str, ...]) -> None:
        self._call("update hook", lambda: self._project(repo).hooks.update(
            hook_id, self._hook_fields(url, secret, events)), write=True)


def hunk_up_to(diff: str, line: int) -> str:
    """The hunk of a file's unified diff that holds new line `line`, up to and including it (where an inline
    comment sits, as GitHub's diff_hunk shows it); "" when no hunk holds it."""
    hunk: list[str] = []
    current = 0
    for text in diff.splitlines():
        if text.startswith("@@"):
            hunk, current = [text], _hunk_start(text) - 1
            continue
        if not hunk:
            continue
        hunk.append(text)
        if not text.startswith("-"):
            current += 1
            if current == line:
                return "\n".join(hunk)
    return ""


def _hunk_start(header: str) -> int:
    plus = header.split("+", 1)[1].split(" ", 1)[0]
    return int(plus.split(",", 1)[0] or 0)
