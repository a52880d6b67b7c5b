"""The fake forge's GitLab /api/v4 face, shaped after GitLab's REST documentation (doc/api/*.md), git over smart
HTTP that takes only `oauth2` Basic authentication, and webhook payloads shaped like the examples of GitLab's
webhook documentation (tests/fixtures/webhooks/gitlab/SOURCE.md). python-gitlab drives it in the tests."""
from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from flask import Flask, Response, jsonify, request

from fakeforge.state import Comment, Issue, Pull, Repo, RepoHook, now_iso

if TYPE_CHECKING:
    from fakeforge.server import FakeForge

PREFIX = "/api/v4"
EXTRA_OPERATIONS: set = set()
MERGE_REQUEST_NOTES = 1_000_000_000   # where this fake keeps a merge request's notes in the shared comment store
LEVELS = {"admin": 50, "maintain": 40, "write": 30, "read": 20, "guest": 10}
HOOK_FLAGS = ("push_events", "issues_events", "confidential_issues_events", "merge_requests_events", "note_events",
              "confidential_note_events", "pipeline_events", "job_events", "tag_push_events", "wiki_page_events")
HOOK_EVENTS = {"Issue Hook": "issues_events", "Note Hook": "note_events", "Merge Request Hook": "merge_requests_events",
               "Pipeline Hook": "pipeline_events"}
MAX_PER_PAGE = 100


@dataclass
class Note:
    """What GitLab keeps of a note beyond the shared comment: its type and, for an inline note, where it sits."""
    type: str | None = None
    position: dict | None = None
    system: bool = False
    awards: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Job:
    id: int
    name: str
    stage: str
    status: str
    log: str
    allow_failure: bool = False


@dataclass
class Pipeline:
    id: int
    iid: int
    sha: str
    ref: str
    status: str
    jobs: list[Job]
    repo: str = ""
    created_at: str = field(default_factory=now_iso)


@dataclass
class GitLabSide:
    """What only GitLab has: user ids, bots, note types and awards, pipelines, token scopes."""
    bots: set[str] = field(default_factory=set)
    scopes: list[str] = field(default_factory=lambda: ["api"])
    notes: dict[int, Note] = field(default_factory=dict)
    pipelines: dict[int, Pipeline] = field(default_factory=dict)
    user_ids: dict[str, int] = field(default_factory=dict)
    remove_source_branch: set[int] = field(default_factory=set)   # merge requests asked to remove it on merge

    def user_id(self, login: str) -> int:
        return self.user_ids.setdefault(login, 100 + len(self.user_ids))

    def login(self, user_id: int) -> str | None:
        return next((login for login, found in self.user_ids.items() if found == user_id), None)


def not_found(what: str = "Not found") -> tuple[Response, int]:
    return jsonify(message=f"404 {what}"), 404


def mr_number(iid: int) -> int:
    return MERGE_REQUEST_NOTES + iid


class Shapes:
    def __init__(self, forge: FakeForge) -> None:
        self.forge, self.side = forge, forge.gitlab

    def user(self, login: str) -> dict:
        return {"id": self.side.user_id(login), "username": login, "name": self.forge.user_names.get(login, login),
                "state": "active", "locked": False, "avatar_url": None, "web_url": f"{self.forge.url}/{login}"}

    def full_user(self, login: str) -> dict:
        return {**self.user(login), "bot": login in self.side.bots, "public_email": self.forge.user_emails.get(login, ""),
                "created_at": "2026-01-01T00:00:00.000Z", "bio": "", "location": None, "job_title": ""}

    def project(self, repo: Repo) -> dict:
        namespace = repo.owner
        return {"id": repo.id, "name": repo.name, "path": repo.name, "description": None,
                "name_with_namespace": f"{namespace} / {repo.name}", "path_with_namespace": repo.full_name,
                "namespace": {"id": repo.id + 1, "name": namespace.rsplit("/", 1)[-1],
                              "path": namespace.rsplit("/", 1)[-1], "kind": "group", "full_path": namespace},
                "default_branch": repo.default_branch, "visibility": "private",
                "http_url_to_repo": f"{self.forge.url}/{repo.full_name}.git",
                "ssh_url_to_repo": f"git@127.0.0.1:{repo.full_name}.git",
                "web_url": f"{self.forge.url}/{repo.full_name}", "created_at": "2026-01-01T00:00:00.000Z",
                "last_activity_at": now_iso()}

    def hook_project(self, repo: Repo) -> dict:
        """The project as webhook payloads show it."""
        url = f"{self.forge.url}/{repo.full_name}"
        return {"id": repo.id, "name": repo.name, "description": "", "web_url": url, "avatar_url": None,
                "git_ssh_url": f"git@127.0.0.1:{repo.full_name}.git", "git_http_url": f"{url}.git",
                "namespace": repo.owner, "visibility_level": 0, "path_with_namespace": repo.full_name,
                "default_branch": repo.default_branch, "homepage": url, "url": f"{url}.git",
                "ssh_url": f"git@127.0.0.1:{repo.full_name}.git", "http_url": f"{url}.git"}

    def label(self, repo: Repo, name: str) -> dict:
        label = repo.labels[name]
        return {"id": label.id, "name": label.name, "color": f"#{label.color.lstrip('#')}", "description": None,
                "text_color": "#333333", "priority": None, "is_project_label": True}

    def hook_label(self, repo: Repo, name: str) -> dict:
        label = repo.labels[name]
        return {"id": label.id, "title": label.name, "color": f"#{label.color.lstrip('#')}", "project_id": repo.id,
                "created_at": "2026-01-01 00:00:00 UTC", "updated_at": "2026-01-01 00:00:00 UTC", "template": False,
                "description": None, "type": "ProjectLabel", "group_id": None}

    def issue(self, repo: Repo, issue: Issue) -> dict:
        return {"id": issue.id, "iid": issue.number, "project_id": repo.id, "title": issue.title,
                "description": issue.body, "state": "opened" if issue.state == "open" else "closed",
                "labels": list(issue.labels), "author": self.user(issue.author), "assignees": [],
                "created_at": issue.updated_at, "updated_at": issue.updated_at, "closed_at": None,
                "web_url": f"{self.forge.url}/{repo.full_name}/-/issues/{issue.number}",
                "references": {"short": f"#{issue.number}", "relative": f"#{issue.number}",
                               "full": f"{repo.full_name}#{issue.number}"},
                "user_notes_count": len(self.forge.state.issue_comments(repo, issue.number)), "confidential": False,
                "type": "ISSUE", "issue_type": "issue"}

    def merge_request(self, repo: Repo, pull: Pull) -> dict:
        state = "merged" if pull.merged else ("opened" if pull.state == "open" else "closed")
        source = repo.id if not pull.head_repo else repo.id + 1000
        return {"id": pull.id, "iid": pull.number, "project_id": repo.id, "title": pull.title,
                "description": pull.body, "state": state, "source_branch": pull.head, "target_branch": pull.base,
                "source_project_id": source, "target_project_id": repo.id, "author": self.user(pull.author),
                "reviewers": [self.user(login) for login in pull.reviewers], "assignees": [], "labels": [],
                "draft": pull.title.startswith(("Draft:", "[Draft]", "(Draft)")),
                "work_in_progress": pull.title.startswith(("Draft:", "[Draft]", "(Draft)")),
                "sha": repo.branch_sha(pull.head) or "0" * 40, "merge_status": "can_be_merged",
                "detailed_merge_status": "mergeable", "created_at": now_iso(), "updated_at": now_iso(),
                "web_url": f"{self.forge.url}/{repo.full_name}/-/merge_requests/{pull.number}",
                "references": {"short": f"!{pull.number}", "relative": f"!{pull.number}",
                               "full": f"{repo.full_name}!{pull.number}"}}

    def note(self, repo: Repo, comment: Comment) -> dict:
        extra = self.side.notes.get(comment.id, Note())
        on_merge_request = comment.number > MERGE_REQUEST_NOTES
        iid = comment.number - MERGE_REQUEST_NOTES if on_merge_request else comment.number
        shape = {"id": comment.id, "type": extra.type, "body": comment.body, "attachment": None,
                 "author": self.user(comment.author), "created_at": comment.created_at,
                 "updated_at": comment.created_at, "system": extra.system, "noteable_id": iid + 7000,
                 "noteable_type": "MergeRequest" if on_merge_request else "Issue", "noteable_iid": iid,
                 "project_id": repo.id, "resolvable": extra.type == "DiffNote", "confidential": False,
                 "internal": False}
        if extra.position is not None:
            shape["position"] = extra.position
        return shape

    def hook(self, repo: Repo, hook: RepoHook) -> dict:
        flags = {flag: flag in hook.events for flag in HOOK_FLAGS}
        return {"id": hook.id, "url": hook.url, "project_id": repo.id, **flags, "enable_ssl_verification": True,
                "created_at": hook.created_at, "alert_status": "executable", "disabled_until": None,
                "push_events_branch_filter": None, "branch_filter_strategy": "wildcard", "custom_webhook_template": ""}


def _body() -> dict:
    """A write's parameters: python-gitlab sends JSON; GitLab takes form fields too."""
    return request.get_json(silent=True) or request.form.to_dict()


def _split(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    return [part.strip() for part in str(value or "").split(",") if part.strip()]


def _paged(items: list, path: str) -> Response:
    """GitLab's offset pagination: page, per_page (100 at most), X-Next-Page and a Link header."""
    per_page = min(int(request.args.get("per_page", 20)), MAX_PER_PAGE)
    page = max(int(request.args.get("page", 1)), 1)
    response = jsonify(items[(page - 1) * per_page: page * per_page])
    more = page * per_page < len(items)
    response.headers.update({"X-Page": str(page), "X-Per-Page": str(per_page), "X-Total": str(len(items)),
                             "X-Next-Page": str(page + 1) if more else ""})
    if more:
        query = {**request.args.to_dict(), "page": page + 1, "per_page": per_page}
        response.headers["Link"] = f'<{request.host_url.rstrip("/")}{path}?{urlencode(query)}>; rel="next"'
    return response


def _after(when: str, floor: str | None) -> bool:
    from datetime import datetime

    if not floor:
        return True
    parse = lambda text: datetime.fromisoformat(text.replace("Z", "+00:00").replace(" ", "+"))   # noqa: E731
    return parse(when) >= parse(floor)


class Routes:
    """`/projects/:id/…`: the id is a number or the URL-encoded path (werkzeug decodes %2F before routing, so the
    path is read back by matching the known projects, longest first)."""

    def __init__(self, forge: FakeForge) -> None:
        self.forge, self.state, self.side, self.shapes = forge, forge.state, forge.gitlab, Shapes(forge)
        self.table: list[tuple[str, re.Pattern, Callable]] = []

    def route(self, method: str, pattern: str):
        def add(handler: Callable) -> Callable:
            self.table.append((method, re.compile(pattern + "$"), handler))
            return handler
        return add

    def project(self, rest: str) -> tuple[Repo, str] | None:
        head, _, tail = rest.partition("/")
        if head.isdigit():
            found = next((r for r in self.state.repos.values() if r.id == int(head)), None)
            return (found, "/" + tail if tail else "") if found else None
        for full_name in sorted(self.state.repos, key=len, reverse=True):
            if rest == full_name or rest.startswith(full_name + "/"):
                return self.state.repos[full_name], rest[len(full_name):]
        return None

    def dispatch(self, rest: str):
        found = self.project(rest)
        if found is None:
            return not_found("Project Not Found")
        repo, tail = found
        for method, pattern, handler in self.table:
            match = pattern.match(tail)
            if match and method == request.method:
                return handler(repo, *match.groups())
        self.forge.violations.append(f"{request.method} /projects/:id{tail}: not an operation this fake knows")
        return not_found()


def register(app: Flask, forge: FakeForge) -> None:
    routes, state, side, shapes = Routes(forge), forge.state, forge.gitlab, Shapes(forge)

    @app.get(f"{PREFIX}/user")
    def current_user():
        return jsonify({**shapes.full_user(forge.bot_login), "email": f"{forge.bot_login}@example.invalid"})

    @app.get(f"{PREFIX}/personal_access_tokens/self")
    def token_self():
        return jsonify({"id": 1, "name": "forge-bridge", "revoked": False, "created_at": "2026-01-01T00:00:00.000Z",
                        "scopes": side.scopes, "user_id": side.user_id(forge.bot_login), "active": True,
                        "expires_at": None, "last_used_at": now_iso()})

    @app.get(f"{PREFIX}/users")
    def find_users():
        login = request.args.get("username", "")
        known = login in side.user_ids or any(login in r.permissions for r in state.repos.values())
        return _paged([shapes.user(login)] if login and known else [], f"{PREFIX}/users")

    @app.get(f"{PREFIX}/users/<int:user_id>")
    def get_user(user_id):
        login = side.login(user_id)
        return jsonify(shapes.full_user(login)) if login else not_found("User Not Found")

    @app.route(f"{PREFIX}/projects/<path:rest>", methods=["GET", "POST", "PUT", "DELETE"])
    def project_api(rest):
        return routes.dispatch(rest)

    _register_projects(routes, forge)
    _register_notes(routes, forge)
    _register_merge_requests(routes, forge)
    _register_ci_and_hooks(routes, forge)

    @app.route("/<path:project>.git/<path:rest>", methods=["GET", "POST"])
    def git_http(project, rest):
        owner, _, name = project.rpartition("/")
        return git_backend(forge, owner, name, rest)


def _register_projects(routes: Routes, forge: FakeForge) -> None:
    state, shapes = forge.state, routes.shapes

    @routes.route("GET", r"")
    def get_project(repo):
        return jsonify(shapes.project(repo))

    @routes.route("GET", r"/issues")
    def list_issues(repo):
        wanted = set(_split(request.args.get("labels")))
        state_filter = {"opened": "open", "closed": "closed"}.get(request.args.get("state", "all"))
        found = [shapes.issue(repo, i) for i in sorted(repo.issues.values(), key=lambda i: -i.number)
                 if (state_filter is None or i.state == state_filter) and wanted <= set(i.labels)   # all of them
                 and _after(i.updated_at, request.args.get("updated_after"))]
        return _paged(found, request.path)

    @routes.route("GET", r"/issues/(\d+)")
    def get_issue(repo, iid):
        issue = repo.issues.get(int(iid))
        return jsonify(shapes.issue(repo, issue)) if issue else not_found()

    @routes.route("PUT", r"/issues/(\d+)")
    def update_issue(repo, iid):
        issue = repo.issues.get(int(iid))
        if issue is None:
            return not_found()
        body = _body()
        for name in _split(body.get("add_labels")):
            state.set_label(repo, issue, name, actor=forge.bot_login, added=True)
        for name in _split(body.get("remove_labels")):
            if name in issue.labels:
                state.set_label(repo, issue, name, actor=forge.bot_login, added=False)
        return jsonify(shapes.issue(repo, issue))

    @routes.route("GET", r"/issues/(\d+)/resource_label_events")
    def label_events(repo, iid):
        events = [{"id": e.id, "user": shapes.user(e.actor), "created_at": e.created_at, "resource_type": "Issue",
                   "resource_id": int(iid) + 7000, "label": shapes.label(repo, e.label),
                   "action": "add" if e.added else "remove"}
                  for e in repo.label_events if e.number == int(iid)]
        return _paged(events, request.path)

    @routes.route("GET", r"/labels")
    def list_labels(repo):
        search = request.args.get("search", "").lower()
        return _paged([shapes.label(repo, n) for n in repo.labels if search in n.lower()], request.path)

    @routes.route("POST", r"/labels")
    def create_label(repo):
        body = _body()
        if body.get("name") in repo.labels:
            return jsonify(message="Label already exists"), 409
        if not re.fullmatch(r"#[0-9a-fA-F]{6}", body.get("color", "")):
            return jsonify(message={"color": ["must be a valid color code"]}), 400
        label = state.label(repo, body["name"])
        label.color = body["color"].lstrip("#")
        return jsonify(shapes.label(repo, label.name)), 201

    @routes.route("GET", r"/members/all/(\d+)")
    def member(repo, user_id):
        login = forge.gitlab.login(int(user_id))
        level = LEVELS.get(repo.permissions.get(login or "", ""), 0)
        if not level:
            return not_found()
        return jsonify({**shapes.user(login), "access_level": level, "expires_at": None,
                        "created_at": "2026-01-01T00:00:00.000Z", "membership_state": "active"})

    @routes.route("DELETE", r"/repository/branches/(.+)")
    def delete_branch(repo, branch):
        return (Response(status=204) if state.delete_branch(repo, branch) else not_found("Branch Not Found"))


def _noteable(repo: Repo, kind: str, iid: str) -> int | None:
    """The comment-store number of an issue's or a merge request's notes; None when it does not exist."""
    if kind == "issues":
        return int(iid) if int(iid) in repo.issues else None
    return mr_number(int(iid)) if int(iid) in repo.pulls else None


def _register_notes(routes: Routes, forge: FakeForge) -> None:
    state, side, shapes = forge.state, forge.gitlab, routes.shapes
    where = r"/(issues|merge_requests)/(\d+)/notes"

    @routes.route("GET", where)
    def list_notes(repo, kind, iid):
        number = _noteable(repo, kind, iid)
        if number is None:
            return not_found()
        notes = [shapes.note(repo, c) for c in state.issue_comments(repo, number)]
        if request.args.get("sort", "desc") == "desc":
            notes.reverse()
        return _paged(notes, request.path)

    @routes.route("POST", where)
    def create_note(repo, kind, iid):
        number = _noteable(repo, kind, iid)
        if number is None:
            return not_found()
        comment = state.add_comment(repo, number, _body()["body"], forge.bot_login)
        return jsonify(shapes.note(repo, comment)), 201

    @routes.route("PUT", where + r"/(\d+)")
    def edit_note(repo, kind, iid, note_id):
        number, comment = _noteable(repo, kind, iid), state.comments.get(int(note_id))
        if number is None or comment is None or comment.number != number or comment.repo != repo.full_name:
            return not_found()
        if comment.author != forge.bot_login:
            return jsonify(message="403 Forbidden"), 403
        comment.body = _body()["body"]
        return jsonify(shapes.note(repo, comment))

    @routes.route("POST", where + r"/(\d+)/award_emoji")
    def award(repo, kind, iid, note_id):
        number, comment = _noteable(repo, kind, iid), state.comments.get(int(note_id))
        if number is None or comment is None or comment.number != number:
            return not_found()
        name = _body().get("name", "")
        if (forge.bot_login, name) in comment.reactions:
            return jsonify(message="404 Award Emoji Name has already been taken Not Found"), 404
        comment.reactions.append((forge.bot_login, name))
        return jsonify({"id": state.next_id(), "name": name, "user": shapes.user(forge.bot_login),
                        "created_at": now_iso(), "updated_at": now_iso(), "awardable_id": comment.id,
                        "awardable_type": "Note"}), 201


def _register_merge_requests(routes: Routes, forge: FakeForge) -> None:
    state, shapes = forge.state, routes.shapes

    @routes.route("GET", r"/merge_requests")
    def list_merge_requests(repo):
        wanted = {"opened": "open", "closed": "closed", "merged": "merged"}.get(request.args.get("state", "all"))
        branch = request.args.get("source_branch")
        found = [shapes.merge_request(repo, p) for p in sorted(repo.pulls.values(), key=lambda p: -p.number)
                 if (wanted is None or ("merged" if p.merged else p.state) == wanted)
                 and (branch is None or p.head == branch)
                 and _after(now_iso(), request.args.get("updated_after"))]
        return _paged(found, request.path)

    @routes.route("POST", r"/merge_requests")
    def create_merge_request(repo):
        body = _body()
        head, base = body.get("source_branch", ""), body.get("target_branch", "")
        if repo.branch_sha(head) is None or repo.branch_sha(base) is None:
            return jsonify(message=["Source branch does not exist" if repo.branch_sha(head) is None
                                    else "Target branch does not exist"]), 400
        taken = [p for p in repo.pulls.values() if p.head == head and p.state == "open"]
        if taken:
            return jsonify(message=[f"Another open merge request already exists for this source branch: "
                                    f"!{taken[0].number}"]), 409
        pull = state.create_pull(repo, title=body["title"], body=body.get("description", ""), head=head, base=base,
                                 author=forge.bot_login)
        if str(body.get("remove_source_branch", "")).lower() == "true":
            forge.gitlab.remove_source_branch.add(pull.id)
        return jsonify(shapes.merge_request(repo, pull)), 201

    @routes.route("GET", r"/merge_requests/(\d+)")
    def get_merge_request(repo, iid):
        pull = repo.pulls.get(int(iid))
        return jsonify(shapes.merge_request(repo, pull)) if pull else not_found()

    @routes.route("PUT", r"/merge_requests/(\d+)")
    def update_merge_request(repo, iid):
        pull = repo.pulls.get(int(iid))
        if pull is None:
            return not_found()
        body = _body()
        if "title" in body:
            pull.title = body["title"]
        for user_id in body.get("reviewer_ids", []) or []:
            login = forge.gitlab.login(int(user_id))
            if login and login not in pull.reviewers:
                pull.reviewers.append(login)
        return jsonify(shapes.merge_request(repo, pull))

    @routes.route("GET", r"/merge_requests/(\d+)/diffs")
    def merge_request_diffs(repo, iid):
        pull = repo.pulls.get(int(iid))
        if pull is None:
            return not_found()
        return _paged(file_diffs(repo, pull), request.path)


def file_diffs(repo: Repo, pull: Pull) -> list[dict]:
    """The merge request's changes per file, as `git diff base...head` gives them (GitLab's own diff)."""
    out = subprocess.run(["git", "diff", "--no-color", f"{pull.base}...{pull.head}"], cwd=repo.bare,
                         capture_output=True, text=True, check=True).stdout
    files = []
    for chunk in re.split(r"^diff --git ", out, flags=re.M)[1:]:
        header, _, diff = chunk.partition("\n@@")
        old = re.search(r"^--- (?:a/)?(.+)$", header, re.M)
        new = re.search(r"^\+\+\+ (?:b/)?(.+)$", header, re.M)
        new_path = new[1] if new and new[1] != "/dev/null" else (old[1] if old else "")
        old_path = old[1] if old and old[1] != "/dev/null" else new_path
        files.append({"old_path": old_path, "new_path": new_path, "a_mode": "100644", "b_mode": "100644",
                      "diff": "@@" + diff if diff else "", "new_file": "new file mode" in header,
                      "renamed_file": False, "deleted_file": "deleted file mode" in header,
                      "generated_file": False})
    return files


def _register_ci_and_hooks(routes: Routes, forge: FakeForge) -> None:
    state, side, shapes = forge.state, forge.gitlab, routes.shapes

    def pipeline_shape(repo: Repo, pipeline: Pipeline) -> dict:
        return {"id": pipeline.id, "iid": pipeline.iid, "project_id": repo.id, "sha": pipeline.sha,
                "ref": pipeline.ref, "status": pipeline.status, "source": "push", "created_at": pipeline.created_at,
                "updated_at": pipeline.created_at,
                "web_url": f"{forge.url}/{repo.full_name}/-/pipelines/{pipeline.id}"}

    def job_shape(repo: Repo, pipeline: Pipeline, job: Job) -> dict:
        return {"id": job.id, "name": job.name, "stage": job.stage, "status": job.status,
                "allow_failure": job.allow_failure, "ref": pipeline.ref, "tag": False, "coverage": None,
                "created_at": pipeline.created_at, "started_at": pipeline.created_at,
                "finished_at": pipeline.created_at, "duration": 1.0, "failure_reason": "script_failure",
                "web_url": f"{forge.url}/{repo.full_name}/-/jobs/{job.id}",
                "pipeline": pipeline_shape(repo, pipeline), "user": shapes.user("alice")}

    def pipelines_of(repo: Repo) -> list[Pipeline]:
        return [p for p in side.pipelines.values() if p.repo == repo.full_name]

    @routes.route("GET", r"/pipelines")
    def list_pipelines(repo):
        sha = request.args.get("sha")
        found = sorted((p for p in pipelines_of(repo) if sha is None or p.sha == sha), key=lambda p: -p.id)
        return _paged([pipeline_shape(repo, p) for p in found], request.path)

    @routes.route("GET", r"/pipelines/(\d+)/jobs")
    def list_jobs(repo, pipeline_id):
        pipeline = side.pipelines.get(int(pipeline_id))
        if pipeline is None or pipeline not in pipelines_of(repo):
            return not_found()
        scope = set(request.args.getlist("scope") or request.args.getlist("scope[]"))
        jobs = [job_shape(repo, pipeline, j) for j in pipeline.jobs if not scope or j.status in scope]
        return _paged(jobs, request.path)

    @routes.route("GET", r"/jobs/(\d+)/trace")
    def trace(repo, job_id):
        for pipeline in pipelines_of(repo):
            for job in pipeline.jobs:
                if job.id == int(job_id):
                    return Response(job.log, mimetype="text/plain")
        return not_found()

    def admin(repo: Repo):
        return None if repo.permissions.get(forge.bot_login) in ("admin", "maintain") else \
            (jsonify(message="403 Forbidden"), 403)

    @routes.route("GET", r"/hooks")
    def list_hooks(repo):
        return admin(repo) or _paged([shapes.hook(repo, h) for h in repo.hooks.values()], request.path)

    def hook_events(body: dict) -> list[str]:
        return [flag for flag in HOOK_FLAGS if str(body.get(flag, flag == "push_events")).lower() == "true"]

    @routes.route("POST", r"/hooks")
    def create_hook(repo):
        refused = admin(repo)
        if refused:
            return refused
        body = _body()
        hook = RepoHook(id=state.next_id(), url=body["url"], secret=body.get("token", ""), events=hook_events(body))
        repo.hooks[hook.id] = hook
        return jsonify(shapes.hook(repo, hook)), 201

    @routes.route("PUT", r"/hooks/(\d+)")
    def update_hook(repo, hook_id):
        refused = admin(repo)
        if refused:
            return refused
        hook = repo.hooks.get(int(hook_id))
        if hook is None:
            return not_found()
        body = _body()
        hook.url, hook.events = body.get("url", hook.url), hook_events(body)
        if "token" in body:
            hook.secret = body["token"]
        return jsonify(shapes.hook(repo, hook))


def git_authorized(forge: FakeForge) -> bool:
    """GitLab over HTTPS with a token: Basic authentication, user `oauth2`, the token as password."""
    from fakeforge.github_app import basic_credentials

    return basic_credentials() == ("oauth2", forge.token)


def git_backend(forge: FakeForge, owner: str, name: str, rest: str) -> Response:
    from fakeforge.github_app import run_http_backend

    repo = forge.state.repo(owner, name)
    if repo is None:
        return Response("The project you were looking for could not be found.\n", status=404)
    if not git_authorized(forge):
        forge.git_refusals += 1
        return Response("HTTP Basic: Access denied.\n", status=401,
                        headers={"WWW-Authenticate": 'Basic realm="GitLab"'})
    return run_http_backend(forge, repo, rest, user="oauth2")


# webhook payloads, shaped like the examples of GitLab's webhook documentation
def _user(forge: FakeForge, login: str) -> dict:
    return {"id": forge.gitlab.user_id(login), "name": login, "username": login, "avatar_url": None,
            "email": "[REDACTED]"}


def _hook_time() -> str:
    return now_iso().replace("T", " ").replace("Z", " UTC")


def issue_attributes(forge: FakeForge, repo: Repo, issue: Issue, action: str) -> dict:
    return {"id": issue.id, "iid": issue.number, "title": issue.title, "description": issue.body,
            "author_id": forge.gitlab.user_id(issue.author), "project_id": repo.id, "created_at": issue.updated_at,
            "updated_at": issue.updated_at, "state": "opened" if issue.state == "open" else "closed",
            "action": action, "url": f"{forge.url}/{repo.full_name}/-/issues/{issue.number}", "type": "Issue",
            "labels": [Shapes(forge).hook_label(repo, n) for n in issue.labels], "confidential": False}


def label_payload(forge: FakeForge, repo: Repo, issue: Issue, label: str, sender: str,
                  previous: list[str] | None = None) -> tuple[str, str, dict]:
    shapes = Shapes(forge)
    before = previous if previous is not None else [n for n in issue.labels if n != label]
    current = [shapes.hook_label(repo, n) for n in issue.labels]
    return "Issue Hook", "", {
        "object_kind": "issue", "event_type": "issue", "user": _user(forge, sender),
        "project": shapes.hook_project(repo), "object_attributes": issue_attributes(forge, repo, issue, "update"),
        "repository": {"name": repo.name, "url": f"{forge.url}/{repo.full_name}.git", "description": "",
                       "homepage": f"{forge.url}/{repo.full_name}"},
        "labels": current,
        "changes": {"updated_at": {"previous": issue.updated_at, "current": issue.updated_at},
                    "labels": {"previous": [shapes.hook_label(repo, n) for n in before], "current": current}}}


def issue_closed_payload(forge: FakeForge, repo: Repo, issue: Issue, sender: str) -> tuple[str, str, dict]:
    shapes = Shapes(forge)
    return "Issue Hook", "", {
        "object_kind": "issue", "event_type": "issue", "user": _user(forge, sender),
        "project": shapes.hook_project(repo), "object_attributes": issue_attributes(forge, repo, issue, "close"),
        "labels": [shapes.hook_label(repo, n) for n in issue.labels],
        "changes": {"state_id": {"previous": 1, "current": 2}}}


def _mr_hook(forge: FakeForge, repo: Repo, pull: Pull) -> dict:
    return {"id": pull.id, "iid": pull.number, "title": pull.title, "description": pull.body,
            "source_branch": pull.head, "target_branch": pull.base, "source_project_id": repo.id,
            "target_project_id": repo.id, "author_id": forge.gitlab.user_id(pull.author),
            "state": "merged" if pull.merged else ("opened" if pull.state == "open" else "closed"),
            "created_at": _hook_time(), "updated_at": _hook_time(),
            "url": f"{forge.url}/{repo.full_name}/-/merge_requests/{pull.number}", "draft": False,
            "work_in_progress": False, "merge_status": "can_be_merged", "detailed_merge_status": "mergeable",
            "labels": [], "last_commit": {"id": repo.branch_sha(pull.head) or "0" * 40}}


def note_payload(forge: FakeForge, repo: Repo, comment: Comment, *, issue: Issue | None = None,
                 pull: Pull | None = None) -> tuple[str, str, dict]:
    shapes, extra = Shapes(forge), forge.gitlab.notes.get(comment.id, Note())
    target = f"-/issues/{issue.number}" if issue else f"-/merge_requests/{pull.number}"
    attributes = {"id": comment.id, "note": comment.body, "noteable_type": "Issue" if issue else "MergeRequest",
                  "author_id": forge.gitlab.user_id(comment.author), "created_at": _hook_time(),
                  "updated_at": _hook_time(), "project_id": repo.id, "attachment": None, "line_code": None,
                  "commit_id": "", "noteable_id": (issue or pull).id, "system": extra.system, "st_diff": None,
                  "action": "create", "type": extra.type, "position": extra.position,
                  "url": f"{forge.url}/{repo.full_name}/{target}#note_{comment.id}"}
    payload = {"object_kind": "note", "event_type": "note", "user": _user(forge, comment.author),
               "project_id": repo.id, "project": shapes.hook_project(repo), "object_attributes": attributes,
               "repository": {"name": repo.name, "url": f"{forge.url}/{repo.full_name}.git", "description": "",
                              "homepage": f"{forge.url}/{repo.full_name}"}}
    if issue is not None:
        payload["issue"] = {**issue_attributes(forge, repo, issue, "update"), "position": 0, "branch_name": None,
                            "milestone_id": None}
        payload["issue"].pop("action")
    else:
        payload["merge_request"] = _mr_hook(forge, repo, pull)
    return "Note Hook", "", payload


def comment_payload(forge: FakeForge, repo: Repo, issue: Issue, comment: Comment) -> tuple[str, str, dict]:
    return note_payload(forge, repo, comment, issue=issue)


def pull_closed_payload(forge: FakeForge, repo: Repo, pull: Pull, sender: str) -> tuple[str, str, dict]:
    attributes = {**_mr_hook(forge, repo, pull), "action": "merge" if pull.merged else "close"}
    return "Merge Request Hook", "", {
        "object_kind": "merge_request", "event_type": "merge_request", "user": _user(forge, sender),
        "project": Shapes(forge).hook_project(repo), "object_attributes": attributes, "labels": [],
        "changes": {"state_id": {"previous": 1, "current": 3 if pull.merged else 2}}}


def pipeline_payload(forge: FakeForge, repo: Repo, pipeline: Pipeline, sender: str) -> tuple[str, str, dict]:
    builds = [{"id": job.id, "stage": job.stage, "name": job.name, "status": job.status,
               "created_at": _hook_time(), "started_at": _hook_time(), "finished_at": _hook_time(),
               "duration": 1.0, "queued_duration": 1.0, "failure_reason": "script_failure" if job.status == "failed"
               else None, "when": "on_success", "manual": False, "allow_failure": job.allow_failure,
               "user": _user(forge, sender), "runner": None, "artifacts_file": {"filename": None, "size": None},
               "environment": None} for job in pipeline.jobs]
    return "Pipeline Hook", "", {
        "object_kind": "pipeline",
        "object_attributes": {"id": pipeline.id, "iid": pipeline.iid, "name": None, "ref": pipeline.ref,
                              "tag": False, "sha": pipeline.sha, "before_sha": "0" * 40, "source": "push",
                              "status": pipeline.status, "detailed_status": pipeline.status,
                              "stages": sorted({job.stage for job in pipeline.jobs}), "created_at": _hook_time(),
                              "finished_at": _hook_time(), "duration": 1, "queued_duration": 1, "variables": [],
                              "url": f"{forge.url}/{repo.full_name}/-/pipelines/{pipeline.id}"},
        "merge_request": None, "user": _user(forge, sender), "project": Shapes(forge).hook_project(repo),
        "commit": {"id": pipeline.sha, "message": "", "title": "", "timestamp": now_iso(),
                   "url": f"{forge.url}/{repo.full_name}/-/commit/{pipeline.sha}",
                   "author": {"name": "Forge", "email": "forge@example.invalid"}},
        "builds": builds}
