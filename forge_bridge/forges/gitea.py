"""ForgeClient for Gitea and Forgejo, through gitea-api-client (generated from Gitea's own API description).

py-gitea cannot open pull requests or write comments in the release that installs on Python 3.11, so the
generated client is used instead. It is async (httpx): each thread keeps one event loop and one API client.
"""
from __future__ import annotations

import asyncio
import threading
import time
import warnings
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

import httpx

from forge_bridge.forges import gitea_modules

# Only the operations called here (gitea_modules.OPERATIONS): the package's own __init__ loads all (~58 MB).
IssueApi, RepositoryApi, UserApi = (gitea_modules.load()[name] for name in ("IssueApi", "RepositoryApi", "UserApi"))
from gitea_api_client.api_client import ApiClient  # noqa: E402
from gitea_api_client.configuration import Configuration  # noqa: E402
from gitea_api_client.exceptions import ApiException  # noqa: E402
from gitea_api_client.models import (  # noqa: E402
    CreateHookOption,
    CreateIssueCommentOption,
    CreateLabelOption,
    CreatePullRequestOption,
    EditHookOption,
    EditPullRequestOption,
    EditIssueCommentOption,
    EditReactionOption,
    IssueLabelsOption,
    PullReviewRequestOptions,
)

from forge_bridge.forges.base import (  # noqa: E402
    CommentInfo,
    ForgeError,
    REVIEW_STATES,
    HookInfo,
    IssueInfo,
    PullInfo,
    RepoComment,
    RepoInfo,
    ReviewCommentInfo,
    ReviewInfo,
    number_from_url,
)
from forge_bridge.models import FailedCheck, IssueRef, RepoRef  # noqa: E402

WIP_PREFIX = "WIP: "   # how Gitea and Forgejo mark a pull request as a draft
PAGE_SIZE = 50  # Gitea's default cap on list responses
RETRIES = 4          # 0.25 + 0.5 + 1 + 2 s; longer outages are the job-level retry's (queue.EVENT_RETRY)
BACKOFF = 0.25
MAX_WAIT = 900.0
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


def _retry_after(headers, attempt: int) -> float:
    value = (headers or {}).get("Retry-After", "")
    if value.isdigit():
        return min(float(value), MAX_WAIT)
    return BACKOFF * 2 ** attempt
T = TypeVar("T")


class _Session(threading.local):
    runner: asyncio.Runner | None = None
    api: ApiClient | None = None


class GiteaClient:
    supports_reactions = True
    git_user = "x-access-token"
    def __init__(self, api_url: str, token: str) -> None:
        self._config, self._token = Configuration(host=api_url), token
        self._sessions = _Session()
        if token:
            self._config.api_key = {"AuthorizationHeaderToken": token}
            self._config.api_key_prefix = {"AuthorizationHeaderToken": "token"}

    def git_token(self, repo: RepoRef) -> str:
        return self._token

    def renew_git_token(self) -> None:
        """Nothing to renew: a Gitea token lives until its owner revokes it."""

    def _session(self) -> _Session:
        """This thread's event loop and API client, made once: a new ApiClient builds an SSL context, loading the
        system's CA certificates (about 27 ms, most of a call's time), and a kept loop keeps its connections."""
        session = self._sessions
        if session.api is None:
            session.runner, session.api = asyncio.Runner(), ApiClient(self._config)
        return session

    def _await(self, call: Callable[[ApiClient], Awaitable[T]]) -> T:
        session = self._session()
        return session.runner.run(call(session.api))

    def _run(self, doing: str, call: Callable[[IssueApi, RepositoryApi], Awaitable[T]]) -> T:
        """One call, retried with backoff on 429, 5xx and transport errors (honouring Retry-After)."""
        async def go(api: ApiClient) -> T:
            return await call(IssueApi(api), RepositoryApi(api))

        for attempt in range(RETRIES + 1):
            try:
                return self._await(go)
            except ApiException as error:
                if error.status not in RETRY_STATUSES or attempt == RETRIES:
                    raise ForgeError(f"Gitea: {doing} failed with {error.status} {error.reason or ''}".strip(),
                                     status=error.status) from None
                time.sleep(_retry_after(error.headers, attempt))
            except httpx.TransportError as error:
                if attempt == RETRIES:
                    raise ForgeError(f"Gitea: {doing} failed: {type(error).__name__}") from None
                time.sleep(BACKOFF * 2 ** attempt)
        raise AssertionError("unreachable")

    async def _all_pages(self, fetch: Callable[[int], Awaitable[list[Any]]]) -> list[Any]:
        items, page = [], 1
        while True:
            batch = await fetch(page)
            items.extend(batch)
            if len(batch) < PAGE_SIZE:
                return items
            page += 1

    def whoami(self) -> str:
        async def current(api: ApiClient) -> Any:
            return await UserApi(api).user_get_current()

        try:
            return self._await(current).login
        except ApiException as error:
            raise ForgeError(f"Gitea: get the token's user failed with {error.status}", status=error.status) from None
        except httpx.TransportError as error:
            raise ForgeError(f"Gitea: get the token's user failed: {type(error).__name__}") from None

    def coauthor(self, repo: RepoRef, login: str) -> str:
        """`Name <email>` for a Co-authored-by trailer: Gitea shows a user's email only when it may."""
        async def user(api: ApiClient) -> Any:
            return await UserApi(api).user_get(login)

        try:
            found = self._await(user)
        except (ApiException, httpx.TransportError) as error:
            raise ForgeError(f"Gitea: get user {login} failed: {getattr(error, 'status', type(error).__name__)}",
                             status=getattr(error, "status", None)) from None
        return f"{found.full_name or found.login} <{found.email}>" if found.email else ""

    def failed_checks(self, repo: RepoRef, sha: str) -> tuple[int, list[FailedCheck]]:
        """A commit's failed statuses (the latest of each context), for the poller."""
        statuses = self._run("list statuses", lambda _, r: r.repo_list_statuses(repo.owner, repo.name, sha,
                                                                                limit=PAGE_SIZE))
        latest: dict[str, Any] = {}
        for status in statuses:   # newest first, as Gitea lists them
            latest.setdefault(status.context or "status", status)
        return 0, [FailedCheck(name=context, conclusion=str(status.status), summary=status.description or "",
                               url=status.target_url or "")
                   for context, status in latest.items() if str(status.status) in ("failure", "error")]

    def failed_check_runs(self, repo: RepoRef, suite_id: int) -> list:
        """Gitea and Forgejo report checks as commit statuses, each event naming its own: no suites to list."""
        return []

    def request_review(self, repo: RepoRef, number: int, login: str) -> None:
        option = PullReviewRequestOptions(reviewers=[login])
        self._run("request a review", lambda _, r: r.repo_create_pull_review_requests(repo.owner, repo.name, number,
                                                                                       option))

    def get_repo(self, repo: RepoRef) -> RepoInfo:
        info = self._run("get repository", lambda i, r: r.repo_get(repo.owner, repo.name))
        return RepoInfo(clone_url=info.clone_url, default_branch=info.default_branch)

    @staticmethod
    def _issue(issue) -> IssueInfo:
        return IssueInfo(number=issue.number, title=issue.title or "", body=issue.body or "",
                         labels=tuple(label.name for label in issue.labels or []), state=issue.state or "",
                         is_pull=issue.pull_request is not None, author=issue.user.login if issue.user else "")

    def get_issue(self, issue: IssueRef) -> IssueInfo:
        r = issue.repo
        return self._issue(self._run("get issue", lambda i, _: i.issue_get_issue(r.owner, r.name, issue.number)))

    def list_labeled_issues(self, repo: RepoRef, label: str, *, since: datetime | None = None) -> list[IssueInfo]:
        async def fetch(i: IssueApi, _: RepositoryApi) -> list[Any]:
            return await self._all_pages(lambda page: i.issue_list_issues(
                repo.owner, repo.name, state="open", labels=label, type="issues", since=since, page=page,
                limit=PAGE_SIZE))

        return [self._issue(issue) for issue in self._run("list issues", fetch)
                if label in {lab.name for lab in issue.labels or []}]

    def ensure_label(self, repo: RepoRef, name: str, color: str) -> None:
        async def ensure(i: IssueApi, _: RepositoryApi) -> None:
            labels = await self._all_pages(
                lambda page: i.issue_list_labels(repo.owner, repo.name, page=page, limit=PAGE_SIZE))
            if not any(label.name == name for label in labels):
                try:
                    await i.issue_create_label(repo.owner, repo.name, CreateLabelOption(name=name, color=f"#{color}"))
                except ApiException as error:
                    if error.status not in (409, 422):  # created by another worker a moment ago
                        raise

        self._run("ensure label", ensure)

    def add_label(self, issue: IssueRef, name: str) -> None:
        r = issue.repo
        # Gitea takes label names here, but the generated model types the items as objects: build it
        # unvalidated, and silence pydantic's serializer warning about the same mismatch.
        option = IssueLabelsOption.model_construct(labels=[name])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            self._run("add label", lambda i, _: i.issue_add_label(r.owner, r.name, issue.number, option))

    def remove_label(self, issue: IssueRef, name: str) -> None:
        r = issue.repo

        async def remove(i: IssueApi, _: RepositoryApi) -> None:
            for label in await i.issue_get_labels(r.owner, r.name, issue.number):
                if label.name == name:
                    await i.issue_remove_label(r.owner, r.name, issue.number, label.id)

        self._run("remove label", remove)

    def list_comments(self, issue: IssueRef) -> list[CommentInfo]:
        r = issue.repo
        comments = self._run("list comments", lambda i, _: i.issue_get_comments(r.owner, r.name, issue.number))
        return [CommentInfo(id=c.id, body=c.body or "", author=c.user.login if c.user else "") for c in comments]

    def create_comment(self, issue: IssueRef, body: str) -> int:
        r = issue.repo
        comment = self._run("create comment", lambda i, _: i.issue_create_comment(
            r.owner, r.name, issue.number, CreateIssueCommentOption(body=body)))
        return comment.id

    def edit_comment(self, issue: IssueRef, comment_id: int, body: str) -> None:
        repo = issue.repo
        self._run("edit comment", lambda i, _: i.issue_edit_comment(
            repo.owner, repo.name, comment_id, EditIssueCommentOption(body=body)))

    @staticmethod
    def _pull(pull) -> PullInfo:
        return PullInfo(number=pull.number, url=pull.html_url, state=pull.state, head_branch=pull.head.ref,
                        merged=bool(pull.merged))

    def get_pull(self, repo: RepoRef, number: int) -> PullInfo:
        return self._pull(self._run("get pull request", lambda _, r: r.repo_get_pull_request(
            repo.owner, repo.name, number)))

    def find_open_pull(self, repo: RepoRef, branch: str) -> PullInfo | None:
        async def find(_: IssueApi, r: RepositoryApi) -> list[Any]:
            return await self._all_pages(lambda page: r.repo_list_pull_requests(
                repo.owner, repo.name, state="open", page=page, limit=PAGE_SIZE))

        # Only a pull request from the repository itself: anyone may open one from a fork whose branch has the
        # bridge's (predictable) name, and adopting it would hand them the status, the label and the destroy.
        pulls = [p for p in self._run("list pull requests", find)
                 if p.head and p.head.ref == branch and p.head.repo and p.base and p.base.repo
                 and p.head.repo.full_name == p.base.repo.full_name == repo.full_name]
        return self._pull(pulls[0]) if pulls else None

    def create_pull(self, repo: RepoRef, *, head: str, base: str, title: str, body: str,
                    draft: bool = False, delete_on_merge: bool = False) -> PullInfo:
        """A draft is Gitea's and Forgejo's way: the title starts with `WIP:`."""
        title = f"{WIP_PREFIX}{title}" if draft and not title.startswith(WIP_PREFIX) else title
        option = CreatePullRequestOption(head=head, base=base, title=title, body=body)
        return self._pull(self._run("create pull request",
                                    lambda _, r: r.repo_create_pull_request(repo.owner, repo.name, option)))

    def mark_ready(self, repo: RepoRef, number: int) -> None:
        """Drop the `WIP:` prefix of the title (nothing to do when someone already did)."""
        pull = self._run("get pull request", lambda _, r: r.repo_get_pull_request(repo.owner, repo.name, number))
        if not (pull.title or "").startswith(WIP_PREFIX):
            return
        option = EditPullRequestOption(title=pull.title.removeprefix(WIP_PREFIX).strip())
        self._run("edit pull request", lambda _, r: r.repo_edit_pull_request(repo.owner, repo.name, number, option))

    def permission(self, repo: RepoRef, user: str) -> str:
        try:
            answer = self._run("get permission", lambda _, r: r.repo_get_repo_permissions(repo.owner, repo.name, user))
        except ForgeError as error:
            if error.status in (403, 404):
                return "none"
            raise
        return answer.permission or "none"

    def label_actor(self, issue: IssueRef, label: str) -> str:
        """Who last added `label`, from the issue's timeline (Gitea has no repository-wide event list)."""
        r = issue.repo
        timeline = self._run("get timeline", lambda i, _: i.issue_get_comments_and_timeline(
            r.owner, r.name, issue.number))
        for item in reversed(timeline):
            if item.type == "label" and item.label and item.label.name == label and item.body == "1":
                return item.user.login if item.user else ""
        return ""

    def comments_since(self, repo: RepoRef, since: datetime) -> list[RepoComment]:
        async def fetch(i: IssueApi, _: RepositoryApi) -> list[Any]:
            return await self._all_pages(lambda page: i.issue_get_repo_comments(
                repo.owner, repo.name, since=since, page=page, limit=PAGE_SIZE))

        out = []
        for c in self._run("list repository comments", fetch):
            number, is_pull = number_from_url(c.html_url or "")
            out.append(RepoComment(id=c.id, number=number, is_pull=is_pull, body=c.body or "",
                                   author=c.user.login if c.user else "", created_at=c.created_at))
        return sorted(out, key=lambda c: (c.created_at, c.id))

    def delete_branch(self, repo: RepoRef, branch: str) -> None:
        try:
            self._run("delete branch", lambda _, r: r.repo_delete_branch(repo.owner, repo.name, branch))
        except ForgeError as error:
            if error.status != 404:  # already gone
                raise

    def add_reaction(self, issue: IssueRef, comment_id: int, content: str) -> None:
        repo = issue.repo
        self._run("add reaction", lambda i, _: i.issue_post_comment_reaction(
            repo.owner, repo.name, comment_id, EditReactionOption(content=content)))

    def review(self, repo: RepoRef, number: int, review_id: int, *, author: str, state: str) -> ReviewInfo | None:
        """Gitea's review webhooks name no review: the newest submitted one of `author`'s in `state`."""
        async def fetch(_: IssueApi, r: RepositoryApi) -> list[Any]:
            return await self._all_pages(lambda page: r.repo_list_pull_reviews(repo.owner, repo.name, number,
                                                                               page=page, limit=PAGE_SIZE))

        reviews = [ReviewInfo(id=r.id, author=r.user.login if r.user else "",
                              state=REVIEW_STATES.get(r.state or "", (r.state or "").lower()), body=r.body or "")
                   for r in self._run("list reviews", fetch)]
        if review_id:
            return next((r for r in reviews if r.id == review_id), None)
        theirs = [r for r in reviews if r.author.lower() == author.lower() and (not state or r.state == state)]
        return max(theirs, key=lambda r: r.id, default=None)

    def review_comments(self, repo: RepoRef, number: int, review_id: int) -> list[ReviewCommentInfo]:
        comments = self._run("list review comments", lambda _, r: r.repo_get_pull_review_comments(
            repo.owner, repo.name, number, review_id))
        return [ReviewCommentInfo(id=c.id, path=c.path or "", line=c.position or c.original_position or 0,
                                  start_line=0, diff_hunk=c.diff_hunk or "", body=c.body or "") for c in comments]

    def add_review_comment_reaction(self, pull: IssueRef, comment_id: int, content: str) -> None:
        """A review comment is a comment like any other on Gitea: its reactions are the same endpoint's."""
        self.add_reaction(pull, comment_id, content)

    def list_hooks(self, repo: RepoRef) -> list[HookInfo]:
        async def fetch(_: IssueApi, r: RepositoryApi) -> list[Any]:
            return await self._all_pages(lambda page: r.repo_list_hooks(repo.owner, repo.name, page=page,
                                                                        limit=PAGE_SIZE))

        return [HookInfo(id=h.id, url=(h.config or {}).get("url", ""), events=tuple(h.events or ()),
                         content_type=(h.config or {}).get("content_type", ""), active=bool(h.active))
                for h in self._run("list webhooks", fetch)]

    def create_hook(self, repo: RepoRef, *, url: str, secret: str, events: tuple[str, ...]) -> int:
        option = CreateHookOption(type="gitea", active=True, events=list(events),
                                  config={"url": url, "content_type": "json", "secret": secret})
        hook = self._run("create webhook", lambda _, r: r.repo_create_hook(repo.owner, repo.name, body=option))
        return hook.id

    def update_hook(self, repo: RepoRef, hook_id: int, *, url: str, secret: str, events: tuple[str, ...]) -> None:
        option = EditHookOption(active=True, events=list(events),
                                config={"url": url, "content_type": "json", "secret": secret})
        self._run("update webhook", lambda _, r: r.repo_edit_hook(repo.owner, repo.name, hook_id, body=option))
