"""FakeForge: a real HTTP server with a GitHub, a Gitea or a GitLab face, in-memory state, answers checked against
the official API descriptions (GitLab publishes none for v4: its face follows the REST docs, and python-gitlab
drives it in the tests), and webhooks signed (or, GitLab, carrying the token) the way the real forge sends them."""
from __future__ import annotations

import hashlib
import hmac
import json
import threading
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import requests
from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.serving import make_server

from fakeforge import gitea_face, github_app, github_face, gitlab_face
from fakeforge.openapi import SPECS
from fakeforge.state import Issue, Repo, RepoHook, State


HOLD_LIMIT = 60.0   # a held request goes on by itself after this, so a failing test never hangs the server


@dataclass
class Hook:
    url: str
    secret: str


@dataclass
class Fault:
    """The next `count` requests whose path contains `path` get this answer instead."""

    count: int
    status: int
    path: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    body: dict | list = field(default_factory=lambda: {"message": "Service Unavailable"})
    method: str = ""


@dataclass
class Hold:
    """Requests matching `method` and containing `path` wait until `release()` (a forge slow to write)."""

    method: str
    path: str
    released: threading.Event = field(default_factory=threading.Event)
    held: int = 0

    def release(self) -> None:
        self.released.set()


@dataclass
class Exchange:
    method: str
    path: str
    status: int


def gitea_body(payload: dict) -> bytes:
    """Go's MarshalIndent: two-space indent, raw UTF-8, `<>&` escaped, no trailing newline."""
    text = json.dumps(payload, indent=2, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()


@dataclass
class FakeForge:
    kind: str                      # github | gitea | forgejo | gitlab
    root: Path
    token: str = "fake-forge-token"
    bot_login: str = "kugetsu-bot"
    state: State = field(init=False)
    hooks: list[Hook] = field(default_factory=list)
    exchanges: list[Exchange] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    holds: list[Hold] = field(default_factory=list)
    rate_limit_headers: dict[str, str] = field(default_factory=dict)   # sent with every answer when set
    git_http: bool = False         # serve git over HTTP (as GitHub does) instead of handing out the bare path
    apps: github_app.AppSide = field(default_factory=github_app.AppSide)   # GitHub Apps (the github kind)
    git_refusals: int = 0
    user_names: dict[str, str] = field(default_factory=dict)    # a user's display name (GET /users/{login})
    check_suites: dict[int, dict] = field(default_factory=dict)  # GitHub check suites, with their runs
    statuses: dict[tuple[str, str], list[dict]] = field(default_factory=dict)   # (repo, sha) -> commit statuses
    user_emails: dict[str, str] = field(default_factory=dict)   # Gitea: the email a user lets the API show
    bridge_app: github_app.FakeApp | None = None   # set: tests' bridges authenticate as this App, not a token
    gitlab: gitlab_face.GitLabSide = field(default_factory=gitlab_face.GitLabSide)   # what only GitLab has
    idempotency_keys: bool = True   # GitLab 17.4+ sends Idempotency-Key; older ones only X-Gitlab-Event-UUID

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.state = State(self.root, separate_merge_requests=self.kind == "gitlab")
        self.spec = SPECS.get(self.kind if self.kind != "forgejo" else "gitea")
        self.face = {"github": github_face, "gitlab": gitlab_face}.get(self.kind, gitea_face)
        if self.kind == "gitlab":
            self.git_http = True   # GitLab's clone URL is always its own HTTPS
        self.app = self._build_app()
        self._server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # lifecycle
    def start(self) -> FakeForge:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def api(self) -> str:
        return self.url + self.face.PREFIX

    # the HTTP app
    def _build_app(self) -> Flask:
        app = Flask(f"fakeforge-{self.kind}")

        @app.before_request
        def authenticate():
            if self.is_git_request():
                return None   # git over HTTP checks its own credentials (Basic auth)
            if self.kind == "github":
                refused = github_app.authorize(self)
                if refused is not None:
                    return refused
            elif self.kind == "gitlab":
                if self.token not in (request.headers.get("PRIVATE-TOKEN"),
                                      request.headers.get("Authorization", "").removeprefix("Bearer ")):
                    return jsonify(message="401 Unauthorized"), 401
            elif request.headers.get("Authorization", "") != f"token {self.token}":
                return jsonify(message="Bad credentials"), 401
            return self._inject_fault()

        @app.after_request
        def check_against_spec(response: Response) -> Response:
            response = self._conditional(response)
            self._check(response)
            return response

        @app.errorhandler(Exception)
        def crashed(error: Exception):
            if isinstance(error, HTTPException):
                return error
            self.violations.append(f"the fake forge crashed on {request.method} {request.path}: "
                                   f"{''.join(traceback.format_exception(error))[-1500:]}")
            return jsonify(message="fake forge crashed"), 500

        self.face.register(app, self)
        if self.kind == "github":
            github_app.register(app, self)
        return app

    def _conditional(self, response: Response) -> Response:
        """GitHub's ETags: a GET whose answer has not changed since the client's copy is a bodiless 304."""
        if self.kind == "gitlab":   # GitLab's RateLimit-* headers come with every answer
            response.headers.update(self.rate_limit_headers)
            return response
        if self.kind != "github" or request.method != "GET" or response.status_code != 200 or not response.is_json:
            return response
        etag = '"' + hashlib.sha256(response.get_data()).hexdigest()[:32] + '"'
        if request.headers.get("If-None-Match") == etag:
            return Response(status=304, headers={"ETag": etag, **self.rate_limit_headers})
        response.headers["ETag"] = etag
        response.headers.update(self.rate_limit_headers)
        return response

    @staticmethod
    def is_git_request() -> bool:
        return ".git/" in request.path and not request.path.startswith(("/api/v3/", "/api/v1/", "/api/v4/"))

    def clone_url(self, repo) -> str:
        """Git over smart HTTP when `git_http` is set (credentials checked as GitHub does), else the bare path."""
        return f"{self.url}/{repo.full_name}.git" if self.git_http else str(repo.bare)

    def _check(self, response: Response) -> None:
        if self.is_git_request():
            return   # git's own protocol, not the REST API the description covers
        if self.spec is None:   # GitLab: its face reports the operations it does not know itself
            self.exchanges.append(Exchange(request.method, request.path, response.status_code))
            return
        path = request.path.removeprefix(self.face.PREFIX) if self.kind == "github" else request.path
        template = self.spec.template_for(path)
        self.exchanges.append(Exchange(request.method, path, response.status_code))
        if (request.method, request.url_rule.rule if request.url_rule else "") in self.face.EXTRA_OPERATIONS:
            return  # used by the bridge, real on the forge, but outside the shared description (see the face)
        if template is None or self.spec.operation(request.method, template) is None:
            self.violations.append(f"{request.method} {path}: not an operation of the API description")
            return
        where = f"{request.method} {template} -> {response.status_code}"
        body_schema = self.spec.request_schema(request.method, template)
        if body_schema and request.data:
            self.violations += [f"{where} request {e}" for e in self.spec.validate(body_schema, request.get_json())]
        schema = self.spec.response_schema(request.method, template, response.status_code)
        if response.status_code < 300 and schema and response.is_json:
            self.violations += [f"{where} response {e}" for e in self.spec.validate(schema, response.get_json())]

    def fail_next(self, count: int, status: int, *, path: str = "", headers: dict | None = None,
                  body: dict | list | None = None, method: str = "") -> None:
        body = {"message": "Service Unavailable"} if body is None else body
        self.faults.append(Fault(count, status, path, headers or {}, body, method))

    def hold(self, method: str, path: str) -> Hold:
        hold = Hold(method, path)
        self.holds.append(hold)
        return hold

    def _inject_fault(self):
        for hold in list(self.holds):
            if request.method == hold.method and hold.path in request.path and not hold.released.is_set():
                hold.held += 1
                hold.released.wait(HOLD_LIMIT)
        with self.state.lock:
            for fault in self.faults:
                if fault.count > 0 and fault.path in request.path and fault.method in ("", request.method):
                    fault.count -= 1
                    return jsonify(fault.body), fault.status, fault.headers
        return None

    # what a person does on the forge
    def create_repo(self, owner: str, name: str) -> Repo:
        return self.state.create_repo(owner, name)

    def create_issue(self, repo: Repo, title: str, body: str = "", *, author: str = "alice",
                     labels: tuple[str, ...] = ()) -> Issue:
        return self.state.create_issue(repo, title=title, body=body, author=author, labels=labels)

    def add_label(self, repo: Repo, issue: Issue, label: str, *, sender: str = "alice") -> list[requests.Response]:
        """Label an issue as a person would; the forge then delivers the webhook to every hook."""
        self.state.set_label(repo, issue, label, actor=sender, added=True)
        return self.deliver(*self.face.label_payload(self, repo, issue, label, sender))

    def comment(self, repo: Repo, issue: Issue, body: str, *, author: str = "alice") -> list[requests.Response]:
        """Comment as a person would; the forge then delivers the webhook."""
        comment = self.state.add_comment(repo, issue.number, body, author)
        return self.deliver(*self.face.comment_payload(self, repo, issue, comment))

    def review(self, repo: Repo, pull, *, author: str = "alice", state: str = "CHANGES_REQUESTED", body: str = "",
               comments: list[dict] = ()) -> list[requests.Response]:
        """Submit a review as a person would (`state` in GitHub's words); the forge delivers its webhooks: on
        GitHub one per inline comment and one for the review, on Gitea one named by the verdict."""
        review = self.state.add_review(pull, author=author, state=state, body=body, comments=list(comments))
        answers = []
        for event, event_type, payload in self.face.review_payloads(self, repo, pull, review):
            answers += self.deliver(event, event_type, payload)
        return answers

    # GitLab's own
    def comment_on_merge_request(self, repo: Repo, pull, body: str, *, author: str = "alice") -> list[requests.Response]:
        comment = self.state.add_comment(repo, gitlab_face.mr_number(pull.number), body, author)
        return self.deliver(*gitlab_face.note_payload(self, repo, comment, pull=pull))

    def review_merge_request(self, repo: Repo, pull, comments: list[dict], *, author: str = "alice") -> list[requests.Response]:
        """Submit a review as GitLab publishes one: each pending inline note becomes a DiffNote at once, and each
        is delivered as a Note Hook of its own. `comments`: {path, line, body[, start_line]} each."""
        notes = []
        for c in comments:
            comment = self.state.add_comment(repo, gitlab_face.mr_number(pull.number), c["body"], author)
            position = {"base_sha": repo.branch_sha(pull.base), "start_sha": repo.branch_sha(pull.base),
                        "head_sha": repo.branch_sha(pull.head), "position_type": "text", "old_path": c["path"],
                        "new_path": c["path"], "old_line": None, "new_line": c["line"]}
            if c.get("start_line"):
                position["line_range"] = {"start": {"type": "new", "new_line": c["start_line"]},
                                          "end": {"type": "new", "new_line": c["line"]}}
            self.gitlab.notes[comment.id] = gitlab_face.Note(type="DiffNote", position=position)
            notes.append(comment)
        answers = []
        for comment in notes:
            answers += self.deliver(*gitlab_face.note_payload(self, repo, comment, pull=pull))
        return answers

    def fail_pipeline(self, repo: Repo, branch: str, jobs: list[dict], *, sender: str = "alice") -> list[requests.Response]:
        """A pipeline on the branch's head fails; `jobs`: {name, stage, status, log[, allow_failure]} each."""
        pipeline = gitlab_face.Pipeline(
            id=self.state.next_id(), iid=len(self.gitlab.pipelines) + 1, sha=repo.branch_sha(branch), ref=branch,
            status="failed", repo=repo.full_name,
            jobs=[gitlab_face.Job(id=self.state.next_id(), name=j["name"], stage=j["stage"], status=j["status"],
                                  log=j.get("log", ""), allow_failure=j.get("allow_failure", False)) for j in jobs])
        self.gitlab.pipelines[pipeline.id] = pipeline
        return self.deliver(*gitlab_face.pipeline_payload(self, repo, pipeline, sender))

    def notes_of_merge_request(self, repo: Repo, pull) -> list[str]:
        return [c.body for c in self.state.issue_comments(repo, gitlab_face.mr_number(pull.number))]

    def merge_pull(self, repo: Repo, pull, *, sender: str = "alice") -> list[requests.Response]:
        self.state.merge(repo, pull)
        return self.deliver(*self.face.pull_closed_payload(self, repo, pull, sender))

    # what CI does on the forge
    def fail_check_suite(self, repo: Repo, branch: str, runs: list[dict], *, conclusion: str = "failure",
                         sender: str = "github-actions[bot]") -> list[requests.Response]:
        """GitHub: a check suite on the branch's head completes with `conclusion`; `runs` are its check runs
        ({name, conclusion, summary, url}), listed by the API."""
        suite = {"id": self.state.next_id(), "repo": repo.full_name, "sha": repo.branch_sha(branch), "branch": branch,
                 "conclusion": conclusion, "runs": runs}
        self.check_suites[suite["id"]] = suite
        return self.deliver(*self.face.check_suite_payload(self, repo, suite, sender))

    def set_status(self, repo: Repo, sha: str, state: str, *, context: str = "ci/build", description: str = "",
                   target_url: str = "", sender: str = "ci-bot") -> list[requests.Response]:
        """A commit status (both forges); its webhook follows."""
        status = {"sha": sha, "state": state, "context": context, "description": description,
                  "target_url": target_url, "id": self.state.next_id()}
        self.statuses.setdefault((repo.full_name, sha), []).insert(0, status)   # newest first, as both list them
        return self.deliver(*self.face.status_payload(self, repo, status, sender))

    def close_pull(self, repo: Repo, pull, *, sender: str = "alice") -> list[requests.Response]:
        pull.state = "closed"
        if not self.state.separate_merge_requests:
            repo.issues[pull.number].state = "closed"
        return self.deliver(*self.face.pull_closed_payload(self, repo, pull, sender))

    def close_issue(self, repo: Repo, issue: Issue, *, sender: str = "alice") -> list[requests.Response]:
        issue.state = "closed"
        return self.deliver(*self.face.issue_closed_payload(self, repo, issue, sender))

    # webhooks
    def add_hook(self, url: str, secret: str) -> None:
        self.hooks.append(Hook(url, secret))

    def headers_for(self, event: str, event_type: str, body: bytes, secret: str, delivery: str) -> dict[str, str]:
        if self.kind == "gitlab":   # the secret itself, as GitLab sends it (no signature)
            headers = {"Content-Type": "application/json", "User-Agent": "GitLab/17.11.1-ee", "X-Gitlab-Event": event,
                       "X-Gitlab-Token": secret, "X-Gitlab-Instance": self.url,
                       "X-Gitlab-Webhook-UUID": str(uuid.uuid5(uuid.NAMESPACE_URL, secret or "none")),
                       "X-Gitlab-Event-UUID": delivery}
            if self.idempotency_keys:
                headers["Idempotency-Key"] = str(uuid.uuid5(uuid.NAMESPACE_OID, delivery + secret))
            return headers
        digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest() if secret else ""
        if self.kind == "github":
            return {"X-GitHub-Event": event, "X-GitHub-Delivery": delivery, "X-Hub-Signature-256": f"sha256={digest}",
                    "User-Agent": "GitHub-Hookshot/fake", "Content-Type": "application/json"}
        headers = {"Content-Type": "application/json"}
        families = ("Gitea", "Gogs") + (("Forgejo",) if self.kind == "forgejo" else ())
        for family in families:
            headers.update({f"X-{family}-Event": event, f"X-{family}-Event-Type": event_type,
                            f"X-{family}-Delivery": delivery, f"X-{family}-Signature": digest})
        headers.update({"X-GitHub-Event": event, "X-GitHub-Event-Type": event_type, "X-GitHub-Delivery": delivery,
                        "X-Hub-Signature-256": f"sha256={digest}"})
        return headers

    def deliver(self, event: str, event_type: str, payload: dict, *, delivery: str | None = None) -> list[requests.Response]:
        body = json.dumps(payload).encode() if self.kind in ("github", "gitlab") else gitea_body(payload)
        delivery = delivery or str(uuid.uuid4())
        return [requests.post(hook.url, data=body, timeout=10,
                              headers=self.headers_for(event, event_type, body, hook.secret, delivery))
                for hook in [*self.hooks, *self._subscribed(payload, event_type or event)]]

    def _subscribed(self, payload: dict, event: str) -> list[RepoHook]:
        """The active hooks set through the API on the payload's repository that asked for this event (GitHub
        subscribes by event name, Gitea by its event type, GitLab by a flag per event)."""
        if self.kind == "gitlab":
            repo = self.state.repos.get(payload["project"]["path_with_namespace"])
            flag = gitlab_face.HOOK_EVENTS.get(event, "")
            return [h for h in (repo.hooks.values() if repo else ()) if flag in h.events]
        full_name = (payload.get("repository") or {}).get("full_name", "")
        repo = self.state.repos.get(full_name)
        # Gitea's "pull_request_review" subscribes to each review verdict's event type.
        family = "pull_request_review" if event.startswith("pull_request_review_") else event
        return [h for h in (repo.hooks.values() if repo else ()) if h.active and {event, family} & set(h.events)]

    # what tests read back
    def labels_of(self, repo: Repo, issue: Issue) -> list[str]:
        return list(repo.issues[issue.number].labels)

    def comments_of(self, repo: Repo, issue: Issue) -> list[str]:
        return [c.body for c in self.state.issue_comments(repo, issue.number)]
