"""ForgeClient for GitHub and GitHub Enterprise, through PyGithub."""
from __future__ import annotations

import logging
import re
import time
from datetime import datetime, timezone
from urllib.parse import quote

import requests
from github import Auth, Github, GithubException, GithubRetry
from github.PullRequest import PullRequest
from github.Repository import Repository

from forge_bridge.forges.base import (
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
    line_from_hunk,
    number_from_url,
)
from forge_bridge.forges.github_app import GitHubApp
from forge_bridge.models import FAILING_CONCLUSIONS, FailedCheck, IssueRef, RepoRef
from forge_bridge.forges.pacing import WriteBucket, quota_pause

log = logging.getLogger(__name__)
REVIEW_PAGE = 100   # GitHub's largest page
EVENT_SCAN_LIMIT = 300
RETRIES = 4          # 0.25 + 0.5 + 1 + 2 s; longer outages are the job-level retry's (queue.EVENT_RETRY)
BACKOFF = 0.25
MAX_RATE_LIMIT_WAIT = 900
TIMEOUT = 30


def _error(error: GithubException, doing: str) -> ForgeError:
    message = error.data.get("message", "") if isinstance(error.data, dict) else ""
    return ForgeError(f"GitHub: {doing} failed with {error.status} {message}".strip(), status=error.status)


class GitHubClient:
    """With a token, one identity for every repository; with a GitHub App, each repository's installation (its
    tokens minted and renewed by `app`)."""
    supports_reactions = True
    git_user = "x-access-token"

    def __init__(self, api_url: str, token: str = "", *, app: GitHubApp | None = None,
                 write_interval: float = 1.0) -> None:
        self._api_url, self._app, self._token = api_url.rstrip("/"), app, token
        self._githubs: dict[int, Github] = {}   # per installation (App)
        self._github = self._build(Auth.Token(token) if token else None)
        self._last = self._github   # whose rate-limit headers were seen last
        self._writes = WriteBucket(write_interval)
        self._etags: dict[tuple, tuple[str, list[dict]]] = {}

    def _build(self, auth: Auth.Auth | None) -> Github:
        # GithubRetry retries 5xx with backoff and waits out rate limits (403/429 with reset or Retry-After).
        retry = GithubRetry(total=RETRIES, backoff_factor=BACKOFF, max_rate_limit_wait=MAX_RATE_LIMIT_WAIT,
                            status_forcelist=[*range(500, 600), 429])
        # Writes are spaced by our own bucket (a burst goes at once), not PyGithub's sleep before every write.
        return Github(auth=auth, base_url=self._api_url, retry=retry, seconds_between_writes=0,
                      seconds_between_requests=0, timeout=TIMEOUT)

    def _gh(self, repo: RepoRef) -> Github:
        """The client that acts on `repo`: the token's, or the App installation's that covers it."""
        if self._app is None:
            return self._github
        installation = self._app.installation_for(repo)
        if installation not in self._githubs:
            self._githubs[installation] = self._build(self._app.auth(installation))
        self._last = self._githubs[installation]
        return self._last

    def _requester(self, repo: RepoRef):
        return self._gh(repo).requester

    def git_token(self, repo: RepoRef) -> str:
        """What git sends for `repo` (fetch and push): the token, or a live installation token."""
        if self._app is None:
            return self._token
        try:
            return self._app.token_for(repo)
        except ForgeError:
            raise
        except Exception as error:   # PyGithub's own errors, so a task says what went wrong
            raise ForgeError(f"GitHub: cannot get a token for {repo.full_name}: {error}") from None

    def renew_git_token(self) -> None:
        """git was refused: the cached installation tokens may be revoked; the next one is minted anew."""
        if self._app is not None:
            self._app.forget_tokens()

    def _repo(self, repo: RepoRef) -> Repository:
        """A lazy repository: no GET until an attribute is read (what get_issue() does for issues)."""
        return Repository(self._requester(repo), url=f"{self._api_url}/repos/{repo.full_name}")

    def quota(self) -> tuple[int, int] | None:
        """(remaining, limit) from the last answer's rate-limit headers, when GitHub sent them."""
        remaining, limit = self._last.requester.rate_limiting
        return (remaining, limit) if limit > 0 else None

    def _pace(self) -> None:
        """Slow down before the limit: with little quota left, spread what remains until the reset."""
        remaining, limit = self._last.requester.rate_limiting
        wait = quota_pause(remaining, limit, self._last.requester.rate_limiting_resettime, time.time())
        if wait > 0:
            log.info("GitHub quota low (%d of %d left); pausing %.1fs", remaining, limit, wait)
            time.sleep(wait)

    def _conditional_list(self, doing: str, repo: RepoRef, path: str, params: dict) -> list[dict]:
        """GET with If-None-Match: an unchanged answer (304) costs no quota, and the last one is reused."""
        key = (path, tuple(sorted(params.items())))
        etag, cached = self._etags.get(key, ("", None))
        headers = {"If-None-Match": etag} if etag and cached is not None else {}
        answer_headers, data = self._call(doing, self._requester(repo).requestJsonAndCheck, "GET", path,
                                          parameters=params, headers=headers)
        if data is None and cached is not None:
            return cached
        self._etags[key] = (answer_headers.get("etag", ""), data or [])
        return data or []

    def _write(self, doing: str, fn, *args, **kwargs):
        self._writes.wait()
        return self._call(doing, fn, *args, **kwargs)

    def _call(self, doing: str, fn, *args, **kwargs):
        try:
            try:
                result = fn(*args, **kwargs)
            except GithubException as error:
                if error.status != 401 or self._app is None:
                    raise
                self._app.forget_tokens()   # a cached installation token GitHub no longer takes: renew it, once
                result = fn(*args, **kwargs)
            self._pace()
            return result
        except GithubException as error:
            raise _error(error, doing) from None
        except requests.exceptions.RetryError as error:  # the retries ran out on 5xx answers
            status = re.search(r"too many (\d{3}) error", str(error))
            raise ForgeError(f"GitHub: {doing} failed after retries", status=int(status[1]) if status else None) \
                from None
        except requests.exceptions.RequestException as error:
            raise ForgeError(f"GitHub: {doing} failed: {type(error).__name__}") from None

    def whoami(self) -> str:
        if self._app is not None:   # an installation token cannot read /user; the App's login is its slug's
            return self._app.login()
        _, data = self._call("get the token's user", self._github.requester.requestJsonAndCheck, "GET", "/user")
        return data["login"]

    def coauthor(self, repo: RepoRef, login: str) -> str:
        """`Name <ID+login@users.noreply.github.com>`: the address GitHub credits to the account."""
        _, data = self._call(f"get user {login}", self._requester(repo).requestJsonAndCheck, "GET",
                             f"/users/{quote(login)}")
        return f"{data.get('name') or login} <{data['id']}+{login}@users.noreply.github.com>"

    def failed_checks(self, repo: RepoRef, sha: str) -> tuple[int, list[FailedCheck]]:
        """What failed on a commit, for the poller: its failed check suites (the first one's id, to list its runs)
        and its failed statuses."""
        requester = self._requester(repo)
        _, suites = self._call("list check suites", requester.requestJsonAndCheck, "GET",
                               f"/repos/{repo.full_name}/commits/{sha}/check-suites", parameters={"per_page": 100})
        _, combined = self._call("get the combined status", requester.requestJsonAndCheck, "GET",
                                 f"/repos/{repo.full_name}/commits/{sha}/status")
        failing = [suite for suite in suites.get("check_suites", [])
                   if suite.get("status") == "completed" and suite.get("conclusion") in FAILING_CONCLUSIONS]
        checks = [FailedCheck(name=((suite.get("app") or {}).get("name") or "check suite"),
                              conclusion=suite["conclusion"]) for suite in failing]
        checks += [FailedCheck(name=status.get("context") or "status", conclusion=status["state"],
                               summary=status.get("description") or "", url=status.get("target_url") or "")
                   for status in combined.get("statuses", []) if status.get("state") in ("failure", "error")]
        return (failing[0]["id"] if failing else 0), checks

    def failed_check_runs(self, repo: RepoRef, suite_id: int) -> list[FailedCheck]:
        """The runs of a check suite that failed, each with its conclusion, summary and page."""
        _, data = self._call("list check runs", self._requester(repo).requestJsonAndCheck, "GET",
                             f"/repos/{repo.full_name}/check-suites/{suite_id}/check-runs",
                             parameters={"filter": "latest", "per_page": 100})
        return [FailedCheck(name=run.get("name") or "check", conclusion=run["conclusion"],
                            summary=((run.get("output") or {}).get("summary") or "").strip()[:500],
                            url=run.get("html_url") or "")
                for run in data.get("check_runs", []) if run.get("conclusion") in FAILING_CONCLUSIONS]

    def request_review(self, repo: RepoRef, number: int, login: str) -> None:
        self._write("request a review", self._requester(repo).requestJsonAndCheck, "POST",
                    f"/repos/{repo.full_name}/pulls/{number}/requested_reviewers", input={"reviewers": [login]})

    def get_repo(self, repo: RepoRef) -> RepoInfo:
        info = self._call("get repository", lambda: self._gh(repo).get_repo(repo.full_name))
        return RepoInfo(clone_url=info.clone_url, default_branch=info.default_branch)

    @staticmethod
    def _issue(issue) -> IssueInfo:
        return IssueInfo(number=issue.number, title=issue.title, body=issue.body or "",
                         labels=tuple(label.name for label in issue.labels), state=issue.state,
                         is_pull=issue.pull_request is not None, author=issue.user.login)

    def get_issue(self, issue: IssueRef) -> IssueInfo:
        return self._call("get issue", lambda: self._issue(self._repo(issue.repo).get_issue(issue.number)))

    def list_labeled_issues(self, repo: RepoRef, label: str, *, since: datetime | None = None) -> list[IssueInfo]:
        """The poller's question, asked conditionally: an unchanged repository costs no quota. `since` is not
        sent: a value that moves with every poll would make each answer new, and each cost quota."""
        raw = self._conditional_list("list issues", repo, f"/repos/{repo.full_name}/issues",
                                     {"state": "open", "labels": label, "per_page": 100})
        return [IssueInfo(number=i["number"], title=i["title"], body=i.get("body") or "",
                          labels=tuple(lab["name"] for lab in i.get("labels", [])), state=i["state"],
                          is_pull="pull_request" in i, author=(i.get("user") or {}).get("login", ""))
                for i in raw]

    def ensure_label(self, repo: RepoRef, name: str, color: str) -> None:
        try:
            self._repo(repo).get_label(name)
        except GithubException as error:
            if error.status != 404:
                raise _error(error, "get label") from None
            try:
                self._write("create label", self._repo(repo).create_label, name, color)
            except ForgeError as created:
                if created.status != 422:  # 422: another worker created it a moment ago, which is what we want
                    raise

    def add_label(self, issue: IssueRef, name: str) -> None:
        # PyGithub's add_to_labels posts a bare array; the documented body is {"labels": [...]}.
        self._write("add label", self._requester(issue.repo).requestJsonAndCheck, "POST",
                   f"/repos/{issue.repo.full_name}/issues/{issue.number}/labels", input={"labels": [name]})

    def _issue_lazy(self, issue: IssueRef):
        return self._repo(issue.repo).get_issue(issue.number)  # lazy: no GET until an attribute is read

    def remove_label(self, issue: IssueRef, name: str) -> None:
        self._writes.wait()
        try:
            self._issue_lazy(issue).remove_from_labels(name)
        except GithubException as error:
            if error.status != 404:  # already gone is what we wanted
                raise _error(error, "remove label") from None

    def list_comments(self, issue: IssueRef) -> list[CommentInfo]:
        comments = self._call("list comments", lambda: list(self._issue_lazy(issue).get_comments()))
        return [CommentInfo(id=c.id, body=c.body or "", author=c.user.login) for c in comments]

    def create_comment(self, issue: IssueRef, body: str) -> int:
        return self._write("create comment", self._issue_lazy(issue).create_comment, body).id

    def edit_comment(self, issue: IssueRef, comment_id: int, body: str) -> None:
        repo = issue.repo
        # PATCH /repos/{owner}/{repo}/issues/comments/{id} without fetching the comment first.
        self._write("edit comment", self._requester(repo).requestJsonAndCheck, "PATCH",
                   f"/repos/{repo.full_name}/issues/comments/{comment_id}", input={"body": body})

    @staticmethod
    def _pull(pull) -> PullInfo:
        return PullInfo(number=pull.number, url=pull.html_url, state=pull.state, head_branch=pull.head.ref,
                        merged=bool(getattr(pull, "merged", False)))

    def get_pull(self, repo: RepoRef, number: int) -> PullInfo:
        return self._pull(self._call("get pull request", self._repo(repo).get_pull, number))

    def find_open_pull(self, repo: RepoRef, branch: str) -> PullInfo | None:
        pulls = self._call("list pull requests",
                           lambda: list(self._repo(repo).get_pulls(state="open", head=f"{repo.owner}:{branch}")))
        return self._pull(pulls[0]) if pulls else None

    def create_pull(self, repo: RepoRef, *, head: str, base: str, title: str, body: str,
                    draft: bool = False, delete_on_merge: bool = False) -> PullInfo:
        pull = self._write("create pull request", self._repo(repo).create_pull, base=base, head=head,
                          title=title, body=body, draft=draft)
        return self._pull(pull)

    def mark_ready(self, repo: RepoRef, number: int) -> None:
        """GitHub's REST API cannot undo a draft; its GraphQL mutation markPullRequestReadyForReview can."""
        pull = self._call("get pull request", self._repo(repo).get_pull, number)
        if pull.draft:
            self._write("mark the pull request ready", pull.mark_ready_for_review)

    def permission(self, repo: RepoRef, user: str) -> str:
        try:
            _, data = self._requester(repo).requestJsonAndCheck(
                "GET", f"/repos/{repo.full_name}/collaborators/{user}/permission")
        except GithubException as error:
            if error.status in (403, 404):
                return "none"
            raise _error(error, "get permission") from None
        # `permission` folds maintain into write; role_name keeps it.
        return data.get("role_name") if data.get("role_name") == "maintain" else data.get("permission", "none")

    def label_actor(self, issue: IssueRef, label: str) -> str:
        """Who last added `label` to the issue, from the repository's issue events (newest first)."""
        def scan() -> str:
            for seen, event in enumerate(self._repo(issue.repo).get_issues_events()):
                if seen >= EVENT_SCAN_LIMIT:
                    break
                if event.event == "labeled" and event.issue.number == issue.number and event.label \
                        and event.label.name == label:
                    return event.actor.login if event.actor else ""
            return ""

        return self._call("list issue events", scan)

    def comments_since(self, repo: RepoRef, since: datetime) -> list[RepoComment]:
        raw = self._conditional_list("list repository comments", repo, f"/repos/{repo.full_name}/issues/comments", {
            "since": since.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "sort": "created",
            "direction": "asc", "per_page": 100})
        out = []
        for c in raw:
            number, is_pull = number_from_url(c["html_url"])
            user = c.get("user") or {}
            out.append(RepoComment(id=c["id"], number=number, is_pull=is_pull, body=c.get("body") or "",
                                   author=user.get("login", ""), author_is_bot=user.get("type") == "Bot",
                                   created_at=datetime.fromisoformat(c["created_at"].replace("Z", "+00:00"))))
        return out

    def delete_branch(self, repo: RepoRef, branch: str) -> None:
        self._writes.wait()
        try:
            self._requester(repo).requestJsonAndCheck(
                "DELETE", f"/repos/{repo.full_name}/git/refs/heads/{quote(branch, safe='/')}")
        except GithubException as error:
            if error.status not in (404, 422):  # already gone
                raise _error(error, "delete branch") from None

    def add_reaction(self, issue: IssueRef, comment_id: int, content: str) -> None:
        repo = issue.repo
        self._write("add reaction", self._requester(repo).requestJsonAndCheck, "POST",
                   f"/repos/{repo.full_name}/issues/comments/{comment_id}/reactions", input={"content": content})

    def _pull_lazy(self, repo: RepoRef, number: int) -> PullRequest:
        return PullRequest(self._requester(repo), url=f"{self._api_url}/repos/{repo.full_name}/pulls/{number}")

    def review(self, repo: RepoRef, number: int, review_id: int, *, author: str, state: str) -> ReviewInfo | None:
        try:
            found = self._pull_lazy(repo, number).get_review(review_id)
        except GithubException as error:
            if error.status == 404:
                return None
            raise _error(error, "get review") from None
        return ReviewInfo(id=found.id, author=found.user.login if found.user else "",
                          state=REVIEW_STATES.get(found.state or "", (found.state or "").lower()), body=found.body or "")

    def review_comments(self, repo: RepoRef, number: int, review_id: int) -> list[ReviewCommentInfo]:
        # Read as plain JSON: PyGithub would fetch each comment again for a field this list leaves out. The list
        # gives no line numbers (GitHub's own example has none): the hunk, which ends on the comment's line, does.
        path, found, page = f"/repos/{repo.full_name}/pulls/{number}/reviews/{review_id}/comments", [], 1
        while True:
            _, batch = self._call("list review comments", self._requester(repo).requestJsonAndCheck, "GET", path,
                                  parameters={"per_page": REVIEW_PAGE, "page": page})
            found += batch
            if len(batch) < REVIEW_PAGE:
                break
            page += 1
        return [ReviewCommentInfo(id=c["id"], path=c.get("path") or "",
                                  line=c.get("line") or line_from_hunk(c.get("diff_hunk") or ""),
                                  start_line=c.get("start_line") or 0, diff_hunk=c.get("diff_hunk") or "",
                                  body=c.get("body") or "") for c in found]

    def add_review_comment_reaction(self, pull: IssueRef, comment_id: int, content: str) -> None:
        repo = pull.repo
        self._write("add reaction", self._requester(repo).requestJsonAndCheck, "POST",
                   f"/repos/{repo.full_name}/pulls/comments/{comment_id}/reactions", input={"content": content})

    def list_hooks(self, repo: RepoRef) -> list[HookInfo]:
        hooks = self._call("list webhooks", lambda: list(self._repo(repo).get_hooks()))
        return [HookInfo(id=h.id, url=h.config.get("url", ""), events=tuple(h.events),
                         content_type=h.config.get("content_type", ""), active=h.active) for h in hooks]

    @staticmethod
    def _hook_config(url: str, secret: str) -> dict[str, str]:
        return {"url": url, "content_type": "json", "secret": secret, "insecure_ssl": "0"}

    def create_hook(self, repo: RepoRef, *, url: str, secret: str, events: tuple[str, ...]) -> int:
        hook = self._write("create webhook", self._repo(repo).create_hook, "web", self._hook_config(url, secret),
                          list(events), True)
        return hook.id

    def update_hook(self, repo: RepoRef, hook_id: int, *, url: str, secret: str, events: tuple[str, ...]) -> None:
        # PATCH without fetching the hook first; `events` replaces the list, `config` the settings.
        self._write("update webhook", self._requester(repo).requestJsonAndCheck, "PATCH",
                   f"/repos/{repo.full_name}/hooks/{hook_id}",
                   input={"config": self._hook_config(url, secret), "events": list(events), "active": True})
