"""The fake forge's GitHub REST face (as PyGithub calls it through base_url), and GitHub-shaped webhook payloads."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flask import Flask, abort, jsonify, make_response, request

from fakeforge.common import (
    issue_or_404,
    pull_or_404,
    react_as_the_bot,
    register_hooks,
    register_shared,
    repo_or_404,
)
from fakeforge.openapi import SPECS, overlay
from fakeforge.state import Comment, Issue, Label, Pull, Repo, RepoHook, Review, ReviewComment

if TYPE_CHECKING:
    from fakeforge.server import FakeForge

SPEC = SPECS["github"]
PREFIX = "/api/v3"
# GitHub's GraphQL endpoint is outside the REST description; the bridge uses one mutation of it.
EXTRA_OPERATIONS: set[tuple[str, str]] = {("POST", "/api/graphql")}
GITHUB_PERMISSION = {"admin": "admin", "maintain": "write", "write": "write", "triage": "read", "read": "read"}


def _from_schema(name: str, values: dict[str, Any]) -> dict[str, Any]:
    return overlay(SPEC.skeleton(SPEC.doc["components"]["schemas"][name]), values)


class GitHubShapes:
    def __init__(self, forge: FakeForge) -> None:
        self.forge = forge

    def reaction(self, content: str) -> dict:
        return _from_schema("reaction", {"id": 1, "content": content, "user": self.user(self.forge.bot_login)})

    def me(self) -> dict:
        return _from_schema("private-user", {"login": self.forge.bot_login, "id": 7, "type": "User"})

    def user(self, login: str) -> dict:
        return _from_schema("simple-user", {"login": login, "id": abs(hash(login)) % 10**6,
                                            "type": "Bot" if login.endswith("[bot]") else "User",
                                            "html_url": f"{self.forge.url}/{login}"})

    def label(self, label: Label) -> dict:
        return _from_schema("label", {"id": label.id, "name": label.name, "color": label.color,
                                      "url": f"{self.forge.api}/labels/{label.name}"})

    def repo(self, repo: Repo) -> dict:
        return _from_schema("full-repository", {
            "id": repo.id, "name": repo.name, "full_name": repo.full_name, "owner": self.user(repo.owner),
            "clone_url": self.forge.clone_url(repo), "default_branch": repo.default_branch,
            "html_url": f"{self.forge.url}/{repo.full_name}", "url": f"{self.forge.api}/repos/{repo.full_name}"})

    def issue(self, repo: Repo, issue: Issue) -> dict:
        kind = "pull" if issue.is_pull else "issues"
        values = {"id": issue.id, "number": issue.number, "title": issue.title, "body": issue.body,
                  "state": issue.state, "user": self.user(issue.author), "updated_at": issue.updated_at,
                  "labels": [self.label(repo.labels[name]) for name in issue.labels],
                  "html_url": f"{self.forge.url}/{repo.full_name}/{kind}/{issue.number}",
                  "url": f"{self.forge.api}/repos/{repo.full_name}/issues/{issue.number}",
                  "comments": len(self.forge.state.issue_comments(repo, issue.number))}
        if issue.is_pull:
            values["pull_request"] = {"url": f"{self.forge.api}/repos/{repo.full_name}/pulls/{issue.number}",
                                      "html_url": values["html_url"], "diff_url": None, "patch_url": None}
        return _from_schema("issue", values)

    def comment(self, repo: Repo, comment: Comment) -> dict:
        kind = "pull" if comment.number in repo.pulls else "issues"
        return _from_schema("issue-comment", {
            "id": comment.id, "body": comment.body, "user": self.user(comment.author),
            "html_url": f"{self.forge.url}/{repo.full_name}/{kind}/{comment.number}#issuecomment-{comment.id}",
            "issue_url": f"{self.forge.api}/repos/{repo.full_name}/issues/{comment.number}",
            "created_at": comment.created_at, "updated_at": comment.created_at,
            "url": f"{self.forge.api}/repos/{repo.full_name}/issues/comments/{comment.id}"})

    def hook(self, repo: Repo, hook: RepoHook) -> dict:
        url = f"{self.forge.api}/repos/{repo.full_name}/hooks/{hook.id}"
        config = {"url": hook.url, "content_type": hook.content_type, "insecure_ssl": "0"}
        if hook.secret:
            config["secret"] = "********"   # GitHub never shows a hook's secret
        return _from_schema("hook", {"type": "Repository", "id": hook.id, "name": "web", "active": hook.active,
                                     "events": hook.events, "config": config, "created_at": hook.created_at,
                                     "updated_at": hook.created_at, "url": url, "test_url": f"{url}/test",
                                     "ping_url": f"{url}/pings", "deliveries_url": f"{url}/deliveries"})

    def pull(self, repo: Repo, pull: Pull, schema: str = "pull-request") -> dict:
        branch = {"ref": pull.head, "sha": repo.branch_sha(pull.head) or "0" * 40, "label": f"{repo.owner}:{pull.head}",
                  "user": self.user(repo.owner),
                  "repo": _from_schema("repository", {"id": repo.id, "name": repo.name, "full_name": repo.full_name,
                                                      "owner": self.user(repo.owner)})}
        return _from_schema(schema, {
            "id": pull.id, "number": pull.number, "title": pull.title, "body": pull.body, "state": pull.state,
            "merged": pull.merged, "user": self.user(pull.author), "head": branch, "draft": pull.draft,
            "node_id": f"PR_{pull.id}",
            "updated_at": repo.issues[pull.number].updated_at,
            "base": {**branch, "ref": pull.base, "label": f"{repo.owner}:{pull.base}",
                     "sha": repo.branch_sha(pull.base) or "0" * 40},
            "html_url": f"{self.forge.url}/{repo.full_name}/pull/{pull.number}",
            "url": f"{self.forge.api}/repos/{repo.full_name}/pulls/{pull.number}"})


    def review(self, repo: Repo, pull: Pull, review: Review) -> dict:
        return _from_schema("pull-request-review", {
            "id": review.id, "node_id": f"PRR_{review.id}", "user": self.user(review.author), "body": review.body,
            "state": review.state, "commit_id": repo.branch_sha(pull.head) or "0" * 40,
            "submitted_at": review.submitted_at, "author_association": "OWNER",
            "html_url": f"{self.forge.url}/{repo.full_name}/pull/{pull.number}#pullrequestreview-{review.id}",
            "pull_request_url": f"{self.forge.api}/repos/{repo.full_name}/pulls/{pull.number}",
            "_links": {"html": {"href": f"{self.forge.url}/{repo.full_name}/pull/{pull.number}"},
                       "pull_request": {"href": f"{self.forge.api}/repos/{repo.full_name}/pulls/{pull.number}"}}})

    def review_comment(self, repo: Repo, pull: Pull, comment: ReviewComment) -> dict:
        url = f"{self.forge.api}/repos/{repo.full_name}/pulls/comments/{comment.id}"
        html = f"{self.forge.url}/{repo.full_name}/pull/{pull.number}#discussion_r{comment.id}"
        return _from_schema("review-comment", {
            "id": comment.id, "node_id": f"PRRC_{comment.id}", "pull_request_review_id": comment.review_id,
            "path": comment.path, "line": comment.line, "original_line": comment.line,
            "start_line": comment.start_line, "original_start_line": comment.start_line, "side": "RIGHT",
            "diff_hunk": comment.diff_hunk, "body": comment.body, "user": self.user(comment.author),
            "position": 1, "original_position": 1, "commit_id": repo.branch_sha(pull.head) or "0" * 40,
            "original_commit_id": repo.branch_sha(pull.head) or "0" * 40, "author_association": "OWNER",
            "created_at": comment.created_at, "updated_at": comment.created_at, "url": url, "html_url": html,
            "pull_request_url": f"{self.forge.api}/repos/{repo.full_name}/pulls/{pull.number}",
            "_links": {"self": {"href": url}, "html": {"href": html},
                       "pull_request": {"href": f"{self.forge.api}/repos/{repo.full_name}/pulls/{pull.number}"}}})


def _graphql(forge: FakeForge):
    """The one GraphQL mutation the bridge sends (PyGithub's mark_ready_for_review), answered as GitHub does."""
    data = request.get_json()
    query, variables = data.get("query", ""), data.get("variables") or {}
    if "markPullRequestReadyForReview(input: $input)" not in query:
        return jsonify(errors=[{"message": "the fake GitHub knows only markPullRequestReadyForReview"}]), 200
    node = (variables.get("input") or {}).get("pullRequestId", "")
    for repo in forge.state.repos.values():
        for pull in repo.pulls.values():
            if f"PR_{pull.id}" == node:
                pull.draft = False
                return jsonify(data={"markPullRequestReadyForReview": {
                    "clientMutationId": None, "pullRequest": {"isDraft": False}}})
    return jsonify(data=None, errors=[{"type": "NOT_FOUND", "message": f"Could not resolve to a node with the "
                                                                       f"global id of '{node}'"}]), 200


NOT_COLLABORATOR = ("Reviews may only be requested from collaborators. One or more of the users or teams you "
                    "specified is not a collaborator of the {repo} repository.")


def register(app: Flask, forge: FakeForge) -> None:
    app.add_url_rule("/api/graphql", "graphql", lambda: _graphql(forge), methods=["POST"])

    @app.get(f"{PREFIX}/users/<login>")
    def get_user(login):
        user = GitHubShapes(forge).user(login)
        return jsonify(_from_schema("public-user", {**user, "name": forge.user_names.get(login)}))

    @app.get(f"{PREFIX}/repos/<owner>/<name>/commits/<ref>/check-suites")
    def commit_check_suites(owner, name, ref):
        repo = repo_or_404(forge.state, owner, name)
        app_shape = _example("check_suite.completed.json")["check_suite"]["app"]
        suites = [_from_schema("check-suite", {
            "id": suite["id"], "head_sha": suite["sha"], "head_branch": suite["branch"], "status": "completed",
            "conclusion": suite["conclusion"], "app": app_shape, "pull_requests": [], "latest_check_runs_count":
                len(suite["runs"]), "check_runs_url": f"{forge.api}/repos/{repo.full_name}/check-suites/{suite['id']}"
                                                      "/check-runs"})
            for suite in forge.check_suites.values() if suite["repo"] == repo.full_name and suite["sha"] == ref]
        return jsonify(total_count=len(suites), check_suites=suites)

    @app.get(f"{PREFIX}/repos/<owner>/<name>/commits/<ref>/status")
    def combined_status(owner, name, ref):
        repo = repo_or_404(forge.state, owner, name)
        latest: dict[str, dict] = {}
        for status in forge.statuses.get((repo.full_name, ref), []):
            latest.setdefault(status["context"], status)
        shown = [_from_schema("simple-commit-status", {
            "id": st["id"], "node_id": f"S_{st['id']}", "state": st["state"], "context": st["context"],
            "description": st["description"] or None, "target_url": st["target_url"] or None,
            "url": f"{forge.api}/repos/{repo.full_name}/statuses/{ref}", "avatar_url": None, "required": False,
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"}) for st in latest.values()]
        states = {st["state"] for st in shown}
        overall = "failure" if states & {"failure", "error"} else "pending" if "pending" in states or not shown \
            else "success"
        return jsonify(_from_schema("combined-commit-status", {
            "state": overall, "statuses": shown, "sha": ref, "total_count": len(shown),
            "repository": _from_schema("minimal-repository", {"id": repo.id, "name": repo.name,
                                                              "full_name": repo.full_name,
                                                              "owner": GitHubShapes(forge).user(repo.owner)}),
            "commit_url": f"{forge.api}/repos/{repo.full_name}/commits/{ref}",
            "url": f"{forge.api}/repos/{repo.full_name}/commits/{ref}/status"}))

    @app.get(f"{PREFIX}/repos/<owner>/<name>/check-suites/<int:suite_id>/check-runs")
    def check_runs(owner, name, suite_id):
        repo = repo_or_404(forge.state, owner, name)
        suite = forge.check_suites.get(suite_id)
        if suite is None or suite["repo"] != repo.full_name:
            return jsonify(message="Not Found"), 404
        runs = [_from_schema("check-run", {
            "id": suite_id * 100 + n, "name": run["name"], "head_sha": suite["sha"], "status": "completed",
            "conclusion": run["conclusion"], "html_url": run["url"], "details_url": run["url"],
            "output": {"title": run["name"], "summary": run["summary"], "text": None, "annotations_count": 0,
                       "annotations_url": ""}}) for n, run in enumerate(suite["runs"])]
        return jsonify(total_count=len(runs), check_runs=runs)

    @app.post(f"{PREFIX}/repos/<owner>/<name>/pulls/<int:pull_number>/requested_reviewers")
    def request_reviewers(owner, name, pull_number):
        repo, pull = pull_or_404(forge.state, owner, name, pull_number)
        wanted = request.get_json().get("reviewers") or []
        if any(login not in repo.permissions or login == pull.author for login in wanted):
            return jsonify(message=NOT_COLLABORATOR.format(repo=repo.full_name)), 422
        pull.reviewers += [login for login in wanted if login not in pull.reviewers]
        return jsonify(GitHubShapes(forge).pull(repo, pull, schema="pull-request-simple")), 201
    shapes, state = GitHubShapes(forge), forge.state
    _register_scans(app, forge, shapes)
    _register_reviews(app, forge, shapes)
    register_shared(app, forge, shapes, prefix=PREFIX, pull_number="pull_number", number="issue_number",
                    comment="comment_id",
                    no_head=({"message": "Validation Failed", "errors": [{"field": "head", "code": "invalid"}]}, 422),
                    exists=({"message": "Validation Failed", "errors": [
                        {"code": "custom", "message": "A pull request already exists."}]}, 422))
    register_hooks(app, forge, shapes, prefix=PREFIX, hook="hook_id", events_of=list,
                   not_admin=({"message": "Not Found", "documentation_url": "https://docs.github.com/rest"}, 404))

    @app.get(f"{PREFIX}/repos/<owner>/<name>/issues")
    def list_issues(owner, name):
        repo = repo_or_404(state, owner, name)
        wanted = [w for w in request.args.get("labels", "").split(",") if w]
        state_filter = request.args.get("state", "open")
        issues = [i for i in repo.issues.values()
                  if (state_filter == "all" or i.state == state_filter) and all(w in i.labels for w in wanted)]
        return jsonify([shapes.issue(repo, i) for i in sorted(issues, key=lambda i: -i.number)])

    @app.post(f"{PREFIX}/repos/<owner>/<name>/issues/<int:number>/labels")
    def add_labels(owner, name, number):
        repo = repo_or_404(state, owner, name)
        issue = issue_or_404(repo, number)
        data = request.get_json()
        names = data.get("labels", []) if isinstance(data, dict) else data
        for label_name in names:
            state.set_label(repo, issue, label_name, actor=forge.bot_login, added=True)
        return jsonify([shapes.label(repo.labels[n]) for n in issue.labels])

    @app.delete(f"{PREFIX}/repos/<owner>/<name>/issues/<int:number>/labels/<label_name>")
    def remove_label(owner, name, number, label_name):
        repo = repo_or_404(state, owner, name)
        issue = issue_or_404(repo, number)
        if not state.set_label(repo, issue, label_name, actor=forge.bot_login, added=False):
            return jsonify(message="Label does not exist"), 404
        return jsonify([shapes.label(repo.labels[n]) for n in issue.labels])

    @app.get(f"{PREFIX}/repos/<owner>/<name>/labels/<label_name>")
    def get_label(owner, name, label_name):
        repo = repo_or_404(state, owner, name)
        if label_name not in repo.labels:
            return jsonify(message="Not Found"), 404
        return jsonify(shapes.label(repo.labels[label_name]))

    @app.post(f"{PREFIX}/repos/<owner>/<name>/labels")
    def create_label(owner, name):
        repo = repo_or_404(state, owner, name)
        data = request.get_json()
        with state.lock:
            if data["name"] in repo.labels:
                return jsonify(message="Validation Failed", errors=[{"code": "already_exists"}]), 422
            label = state.label(repo, data["name"])
            label.color = data.get("color", label.color)
        return jsonify(shapes.label(label)), 201

    @app.get(f"{PREFIX}/repos/<owner>/<name>/pulls")
    def list_pulls(owner, name):
        repo = repo_or_404(state, owner, name)
        head = request.args.get("head", "")
        wanted_state = request.args.get("state", "open")
        pulls = [p for p in repo.pulls.values() if (wanted_state == "all" or p.state == wanted_state)
                 and (not head or f"{(p.head_repo or repo.full_name).split('/')[0]}:{p.head}" == head)]
        return jsonify([shapes.pull(repo, p, "pull-request-simple") for p in pulls])


def _register_reviews(app: Flask, forge: FakeForge, shapes: GitHubShapes) -> None:
    state = forge.state

    def review_or_404(owner, name, pull_number, review_id):
        repo, pull = pull_or_404(state, owner, name, pull_number)
        review = next((r for r in pull.reviews if r.id == review_id), None)
        if review is None:
            abort(make_response(jsonify(message="Not Found"), 404))
        return repo, pull, review

    @app.get(f"{PREFIX}/repos/<owner>/<name>/pulls/<int:pull_number>/reviews/<int:review_id>")
    def get_review(owner, name, pull_number, review_id):
        repo, pull, review = review_or_404(owner, name, pull_number, review_id)
        return jsonify(shapes.review(repo, pull, review))

    @app.get(f"{PREFIX}/repos/<owner>/<name>/pulls/<int:pull_number>/reviews/<int:review_id>/comments")
    def review_comments(owner, name, pull_number, review_id):
        repo, pull, review = review_or_404(owner, name, pull_number, review_id)
        per_page, page = int(request.args.get("per_page", 30)), int(request.args.get("page", 1))
        shown = review.comments[(page - 1) * per_page: page * per_page]
        return jsonify([_from_schema("review-comment", {
            k: v for k, v in shapes.review_comment(repo, pull, c).items()
            if k not in ("line", "original_line", "start_line", "original_start_line", "side")}) for c in shown])

    @app.post(f"{PREFIX}/repos/<owner>/<name>/pulls/comments/<int:comment_id>/reactions")
    def react_to_review_comment(owner, name, comment_id):
        repo = repo_or_404(state, owner, name)
        found = state.review_comments.get(comment_id)
        return react_as_the_bot(forge, shapes, found if found is not None and found.number in repo.pulls else None)


def _register_scans(app: Flask, forge: FakeForge, shapes: GitHubShapes) -> None:
    state = forge.state

    @app.get(f"{PREFIX}/repos/<owner>/<name>/collaborators/<user>/permission")
    def permission(owner, name, user):
        repo = repo_or_404(state, owner, name)
        role = repo.permissions.get(user)
        if role is None:
            return jsonify(message="Not Found"), 404
        return jsonify(permission=GITHUB_PERMISSION[role], role_name=role,
                       user=_from_schema("nullable-collaborator", {"login": user, "id": 1}))

    @app.get(f"{PREFIX}/repos/<owner>/<name>/issues/events")
    def issue_events(owner, name):
        repo = repo_or_404(state, owner, name)
        return jsonify([_from_schema("issue-event", {
            "id": e.id, "event": "labeled" if e.added else "unlabeled", "actor": shapes.user(e.actor),
            "label": {"name": e.label, "color": repo.labels[e.label].color}, "created_at": e.created_at,
            "issue": shapes.issue(repo, repo.issues[e.number])}) for e in reversed(repo.label_events)])

    @app.delete(f"{PREFIX}/repos/<owner>/<name>/git/refs/heads/<path:branch>")
    def delete_branch(owner, name, branch):
        repo = repo_or_404(state, owner, name)
        if not state.delete_branch(repo, branch):
            return jsonify(message="Reference does not exist"), 422
        return "", 204

    @app.get(f"{PREFIX}/repos/<owner>/<name>/issues/comments")
    def repo_comments(owner, name):
        repo = repo_or_404(state, owner, name)
        return jsonify([shapes.comment(repo, c) for c in state.comments_since(repo, request.args.get("since"))])


def comment_payload(forge: FakeForge, repo: Repo, issue: Issue, comment: Comment) -> tuple[str, str, dict]:
    shapes = GitHubShapes(forge)
    return "issue_comment", "", {"action": "created", "issue": shapes.issue(repo, issue),
                                 "comment": shapes.comment(repo, comment), "repository": shapes.repo(repo),
                                 "sender": shapes.user(comment.author)}


def label_payload(forge: FakeForge, repo: Repo, issue: Issue, label: str, sender: str) -> tuple[str, str, dict]:
    shapes = GitHubShapes(forge)
    return "issues", "", {"action": "labeled", "issue": shapes.issue(repo, issue),
                          "label": shapes.label(repo.labels[label]), "repository": shapes.repo(repo),
                          "sender": shapes.user(sender)}


def review_payloads(forge: FakeForge, repo: Repo, pull: Pull, review: Review) -> list[tuple[str, str, dict]]:
    """What GitHub delivers for a submitted review: `pull_request_review_comment` for each inline comment, then
    `pull_request_review` (submitted)."""
    shapes = GitHubShapes(forge)
    common = {"pull_request": shapes.pull(repo, pull, "pull-request-simple"), "repository": shapes.repo(repo),
              "sender": shapes.user(review.author)}
    return [*(("pull_request_review_comment", "", {"action": "created", "comment": shapes.review_comment(repo, pull, c),
                                                     **common}) for c in review.comments),
            ("pull_request_review", "", {"action": "submitted", "review": shapes.review(repo, pull, review),
                                         **common})]


def pull_closed_payload(forge: FakeForge, repo: Repo, pull: Pull, sender: str) -> tuple[str, str, dict]:
    shapes = GitHubShapes(forge)
    return "pull_request", "", {"action": "closed", "number": pull.number, "pull_request": shapes.pull(repo, pull),
                                "repository": shapes.repo(repo), "sender": shapes.user(sender)}


def issue_closed_payload(forge: FakeForge, repo: Repo, issue: Issue, sender: str) -> tuple[str, str, dict]:
    shapes = GitHubShapes(forge)
    return "issues", "", {"action": "closed", "issue": shapes.issue(repo, issue), "repository": shapes.repo(repo),
                          "sender": shapes.user(sender)}


def _example(name: str) -> dict:
    """GitHub's own example payload (tests/fixtures/webhooks/github), for fields the fake does not model."""
    import json
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "fixtures" / "webhooks" / "github"
    return json.loads((folder / name).read_text())


def check_suite_payload(forge: FakeForge, repo: Repo, suite: dict, sender: str) -> tuple[str, str, dict]:
    """`check_suite` completed, from GitHub's example with this suite's head, conclusion and pull requests."""
    shapes, payload = GitHubShapes(forge), _example("check_suite.completed.json")
    pulls = [{"url": f"{forge.api}/repos/{repo.full_name}/pulls/{p.number}", "id": p.id, "number": p.number,
              "head": {"ref": p.head, "sha": suite["sha"], "repo": {"id": repo.id, "url": "", "name": repo.name}},
              "base": {"ref": p.base, "sha": repo.branch_sha(p.base) or "", "repo": {"id": repo.id, "url": "",
                                                                                     "name": repo.name}}}
             for p in repo.pulls.values() if p.head == suite["branch"] and p.state == "open"]
    payload["check_suite"].update(id=suite["id"], head_sha=suite["sha"], head_branch=suite["branch"],
                                  conclusion=suite["conclusion"], status="completed", pull_requests=pulls)
    payload.update(repository=shapes.repo(repo), sender=shapes.user(sender))
    return "check_suite", "", payload


def status_payload(forge: FakeForge, repo: Repo, status: dict, sender: str) -> tuple[str, str, dict]:
    shapes, payload = GitHubShapes(forge), _example("status.json")
    payload.update(sha=status["sha"], state=status["state"], context=status["context"],
                   description=status["description"], target_url=status["target_url"],
                   repository=shapes.repo(repo), sender=shapes.user(sender), branches=[])
    return "status", "", payload
