"""The fake forge's Gitea /api/v1 face (as gitea-api-client calls it), and Gitea-shaped webhook payloads."""
from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from flask import Flask, jsonify, request

from fakeforge.common import issue_or_404, pull_or_404, register_hooks, register_shared, repo_or_404
from fakeforge.openapi import SPECS, overlay
from fakeforge.state import Comment, Issue, Label, Pull, Repo, RepoHook, Review, ReviewComment

if TYPE_CHECKING:
    from fakeforge.server import FakeForge

SPEC = SPECS["gitea"]
PREFIX = "/api/v1"
# The issue timeline is Gitea's only record of who added a label (no repository-wide event list); it is not in
# the shared subset of the description, so its answers are shaped after Gitea's TimelineComment by hand.
EXTRA_OPERATIONS = {("GET", f"{PREFIX}/repos/<owner>/<name>/issues/<int:index>/timeline")}
PAGE_CAP = 50
# Gitea stores a hook's events expanded: "issues" and "pull_request" stand for their whole families
# (routers/api/v1/utils/hook.go, issuesHook and pullHook), and a GET answers the expanded list.
ISSUE_EVENTS = ["issues", "issue_assign", "issue_label", "issue_milestone", "issue_comment"]
PULL_EVENTS = ["pull_request", "pull_request_assign", "pull_request_label", "pull_request_milestone",
               "pull_request_comment", "pull_request_review", "pull_request_review_request", "pull_request_sync"]


def _from_schema(name: str, values: dict[str, Any]) -> dict[str, Any]:
    return overlay(SPEC.skeleton(SPEC.doc["definitions"][name]), values)


def stored_events(asked: list[str]) -> list[str]:
    stored = [e for e in asked if e not in ("issues", "pull_request")]
    stored += ISSUE_EVENTS if "issues" in asked else []
    stored += PULL_EVENTS if "pull_request" in asked else []
    return list(dict.fromkeys(stored))


def _page(items: list) -> list:
    limit = min(int(request.args.get("limit", 30)), PAGE_CAP)
    page = max(int(request.args.get("page", 1)), 1)
    return items[(page - 1) * limit: page * limit]


class GiteaShapes:
    def __init__(self, forge: FakeForge) -> None:
        self.forge = forge

    def reaction(self, content: str) -> dict:
        return _from_schema("Reaction", {"content": content, "user": self.user(self.forge.bot_login)})

    def me(self) -> dict:
        return self.user(self.forge.bot_login)

    def user(self, login: str) -> dict:
        return _from_schema("User", {"id": abs(hash(login)) % 10**6, "login": login, "username": login,
                                     "html_url": f"{self.forge.url}/{login}"})

    def label(self, label: Label) -> dict:
        return _from_schema("Label", {"id": label.id, "name": label.name, "color": label.color,
                                      "url": f"{self.forge.api}/labels/{label.id}"})

    def hook(self, repo: Repo, hook: RepoHook) -> dict:
        # Gitea's ToHook: the config holds url and content_type only, never the secret.
        return _from_schema("Hook", {"id": hook.id, "type": "gitea", "active": hook.active, "events": hook.events,
                                     "config": {"url": hook.url, "content_type": hook.content_type},
                                     "branch_filter": "*", "created_at": hook.created_at,
                                     "updated_at": hook.created_at})

    def repo(self, repo: Repo) -> dict:
        return _from_schema("Repository", {
            "id": repo.id, "name": repo.name, "full_name": repo.full_name, "owner": self.user(repo.owner),
            "clone_url": self.forge.clone_url(repo), "default_branch": repo.default_branch,
            "html_url": f"{self.forge.url}/{repo.full_name}"})

    def issue(self, repo: Repo, issue: Issue) -> dict:
        kind = "pulls" if issue.is_pull else "issues"
        html_url = f"{self.forge.url}/{repo.full_name}/{kind}/{issue.number}"
        pull = repo.pulls.get(issue.number)
        return _from_schema("Issue", {
            "id": issue.id, "number": issue.number, "title": issue.title, "body": issue.body, "state": issue.state,
            "user": self.user(issue.author), "labels": [self.label(repo.labels[n]) for n in issue.labels],
            "updated_at": issue.updated_at, "html_url": html_url, "url": f"{self.forge.api}/repos/{repo.full_name}/issues/{issue.number}",
            "pull_request": {"merged": pull.merged, "html_url": html_url, "draft": False} if pull else None,
            "repository": {"id": repo.id, "name": repo.name, "owner": repo.owner, "full_name": repo.full_name},
            "comments": len(self.forge.state.issue_comments(repo, issue.number))})

    def comment(self, repo: Repo, comment: Comment) -> dict:
        kind = "pulls" if comment.number in repo.pulls else "issues"
        return _from_schema("Comment", {
            "id": comment.id, "body": comment.body, "user": self.user(comment.author),
            "html_url": f"{self.forge.url}/{repo.full_name}/{kind}/{comment.number}#issuecomment-{comment.id}",
            "issue_url": f"{self.forge.url}/{repo.full_name}/issues/{comment.number}",
            "created_at": comment.created_at, "updated_at": comment.created_at})

    def review(self, repo: Repo, pull: Pull, review: Review) -> dict:
        return _from_schema("PullReview", {
            "id": review.id, "user": self.user(review.author), "state": GITEA_STATE[review.state], "body": review.body,
            "comments_count": len(review.comments), "commit_id": repo.branch_sha(pull.head) or "0" * 40,
            "submitted_at": review.submitted_at, "updated_at": review.submitted_at, "official": True,
            "html_url": f"{self.forge.url}/{repo.full_name}/pulls/{pull.number}#issuecomment-{review.id}",
            "pull_request_url": f"{self.forge.url}/{repo.full_name}/pulls/{pull.number}"})

    def review_comment(self, repo: Repo, pull: Pull, comment: ReviewComment) -> dict:
        return _from_schema("PullReviewComment", {
            "id": comment.id, "body": comment.body, "user": self.user(comment.author), "path": comment.path,
            "position": comment.line, "original_position": comment.line, "diff_hunk": comment.diff_hunk,
            "pull_request_review_id": comment.review_id, "commit_id": repo.branch_sha(pull.head) or "0" * 40,
            "original_commit_id": repo.branch_sha(pull.head) or "0" * 40, "created_at": comment.created_at,
            "updated_at": comment.created_at,
            "html_url": f"{self.forge.url}/{repo.full_name}/pulls/{pull.number}/files#issuecomment-{comment.id}",
            "pull_request_url": f"{self.forge.url}/{repo.full_name}/pulls/{pull.number}"})

    def pull(self, repo: Repo, pull: Pull) -> dict:
        def branch(ref: str, full_name: str) -> dict:
            owner, name = full_name.split("/")
            where = _from_schema("Repository", {"id": repo.id if full_name == repo.full_name else repo.id + 1,
                                                "name": name, "full_name": full_name, "owner": self.user(owner)})
            return {"ref": ref, "label": ref, "sha": repo.branch_sha(ref) or "0" * 40, "repo_id": where["id"],
                    "repo": where}

        html_url = f"{self.forge.url}/{repo.full_name}/pulls/{pull.number}"
        return _from_schema("PullRequest", {
            "id": pull.id, "number": pull.number, "title": pull.title, "body": pull.body, "state": pull.state,
            "merged": pull.merged, "user": self.user(pull.author), "updated_at": repo.issues[pull.number].updated_at,
            "head": branch(pull.head, pull.head_repo or repo.full_name),
            "base": branch(pull.base, repo.full_name),
            "html_url": html_url, "url": html_url})


def register(app: Flask, forge: FakeForge) -> None:
    shapes, state = GiteaShapes(forge), forge.state

    @app.get(f"{PREFIX}/users/<login>")
    def get_user(login):
        return jsonify(_from_schema("User", {**shapes.user(login), "email": forge.user_emails.get(login, ""),
                                             "full_name": forge.user_names.get(login, "")}))

    @app.get(f"{PREFIX}/repos/<owner>/<name>/statuses/<sha>")
    def list_statuses(owner, name, sha):
        repo = repo_or_404(state, owner, name)
        return jsonify([_from_schema("CommitStatus", {
            "id": st["id"], "status": st["state"], "context": st["context"], "description": st["description"],
            "target_url": st["target_url"], "url": f"{forge.api}/repos/{repo.full_name}/statuses/{sha}",
            "creator": shapes.user("ci-bot"), "created_at": "2026-01-01T00:00:00Z",
            "updated_at": "2026-01-01T00:00:00Z"}) for st in forge.statuses.get((repo.full_name, sha), [])])

    @app.post(f"{PREFIX}/repos/<owner>/<name>/pulls/<int:index>/requested_reviewers")
    def request_reviewers(owner, name, index):
        repo, pull = pull_or_404(state, owner, name, index)
        wanted = request.get_json().get("reviewers") or []
        if any(login not in repo.permissions or login == pull.author for login in wanted):
            return jsonify(message="reviewer is not a collaborator"), 422
        pull.reviewers += [login for login in wanted if login not in pull.reviewers]
        return jsonify([_from_schema("PullReview", {"id": state.next_id(), "state": "REQUEST_REVIEW",
                                                    "user": shapes.user(login), "pull_request_url": f"{forge.url}/"
                                                    f"{repo.full_name}/pulls/{pull.number}"}) for login in wanted]), 201
    _register_scans(app, forge, shapes)
    _register_reviews(app, forge, shapes)
    register_shared(app, forge, shapes, prefix=PREFIX, pull_number="index", number="index", comment="id",
                    no_head=({"message": "head branch does not exist"}, 404),
                    exists=({"message": "pull request already exists for these targets"}, 409),
                    reviews_are_comments=True)
    register_hooks(app, forge, shapes, prefix=PREFIX, hook="id", events_of=stored_events,
                   not_admin=({"message": "Forbidden", "url": "/api/swagger"}, 403))

    @app.get(f"{PREFIX}/repos/<owner>/<name>/issues")
    def list_issues(owner, name):
        repo = repo_or_404(state, owner, name)
        wanted = {w for w in request.args.get("labels", "").split(",") if w}
        kind = request.args.get("type", "")
        state_filter = request.args.get("state", "open")
        since = request.args.get("since")   # updated at or after (ISO 8601)
        issues = [i for i in sorted(repo.issues.values(), key=lambda i: -i.number)
                  if (state_filter == "all" or i.state == state_filter)
                  and (not since or datetime.fromisoformat(i.updated_at) >= datetime.fromisoformat(since.replace(" ", "+")))
                  and (not wanted or wanted & set(i.labels))   # Gitea: any of the labels
                  and (kind != "issues" or not i.is_pull) and (kind != "pulls" or i.is_pull)]
        return jsonify([shapes.issue(repo, i) for i in _page(issues)])

    @app.get(f"{PREFIX}/repos/<owner>/<name>/issues/<int:number>/labels")
    def issue_labels(owner, name, number):
        repo = repo_or_404(state, owner, name)
        return jsonify([shapes.label(repo.labels[n]) for n in issue_or_404(repo, number).labels])

    @app.post(f"{PREFIX}/repos/<owner>/<name>/issues/<int:number>/labels")
    def add_labels(owner, name, number):
        repo = repo_or_404(state, owner, name)
        issue = issue_or_404(repo, number)
        by_id = {label.id: label.name for label in repo.labels.values()}
        for item in request.get_json().get("labels", []):
            label_name = by_id.get(item) if isinstance(item, int) else item
            if label_name not in repo.labels:
                return jsonify(message=f"label {item!r} does not exist"), 422
            state.set_label(repo, issue, label_name, actor=forge.bot_login, added=True)
        return jsonify([shapes.label(repo.labels[n]) for n in issue.labels])

    @app.delete(f"{PREFIX}/repos/<owner>/<name>/issues/<int:number>/labels/<int:label_id>")
    def remove_label(owner, name, number, label_id):
        repo = repo_or_404(state, owner, name)
        issue = issue_or_404(repo, number)
        names = [n for n in issue.labels if repo.labels[n].id == label_id]
        if not names or not state.set_label(repo, issue, names[0], actor=forge.bot_login, added=False):
            return jsonify(message="label not found"), 404
        return "", 204

    @app.get(f"{PREFIX}/repos/<owner>/<name>/labels")
    def list_labels(owner, name):
        repo = repo_or_404(state, owner, name)
        return jsonify([shapes.label(label) for label in _page(list(repo.labels.values()))])

    @app.post(f"{PREFIX}/repos/<owner>/<name>/labels")
    def create_label(owner, name):
        repo = repo_or_404(state, owner, name)
        data = request.get_json()
        with state.lock:
            label = state.label(repo, data["name"])
            label.color = data.get("color", label.color).lstrip("#")
        return jsonify(shapes.label(label)), 201

    @app.get(f"{PREFIX}/repos/<owner>/<name>/pulls")
    def list_pulls(owner, name):
        repo = repo_or_404(state, owner, name)
        wanted_state = request.args.get("state", "open")
        pulls = [p for p in repo.pulls.values() if wanted_state == "all" or p.state == wanted_state]
        return jsonify([shapes.pull(repo, p) for p in _page(pulls)])


# A review's state as Gitea words it (modules/structs/pull_review.go), and its webhook: the event and event type.
GITEA_STATE = {"CHANGES_REQUESTED": "REQUEST_CHANGES", "APPROVED": "APPROVED", "COMMENTED": "COMMENT"}
REVIEW_HOOKS = {"CHANGES_REQUESTED": ("pull_request_rejected", "pull_request_review_rejected"),
                "APPROVED": ("pull_request_approved", "pull_request_review_approved"),
                "COMMENTED": ("pull_request_comment", "pull_request_review_comment")}


def _register_reviews(app: Flask, forge: FakeForge, shapes: GiteaShapes) -> None:
    state = forge.state

    @app.get(f"{PREFIX}/repos/<owner>/<name>/pulls/<int:index>/reviews")
    def list_reviews(owner, name, index):
        repo, pull = pull_or_404(state, owner, name, index)
        return jsonify(_page([shapes.review(repo, pull, r) for r in pull.reviews]))

    @app.get(f"{PREFIX}/repos/<owner>/<name>/pulls/<int:index>/reviews/<int:id>/comments")
    def review_comments(owner, name, index, id):
        repo, pull = pull_or_404(state, owner, name, index)
        review = next((r for r in pull.reviews if r.id == id), None)
        if review is None:
            return jsonify(message="review not found"), 404
        return jsonify([shapes.review_comment(repo, pull, c) for c in review.comments])


def _register_scans(app: Flask, forge: FakeForge, shapes: GiteaShapes) -> None:
    state = forge.state

    @app.get(f"{PREFIX}/repos/<owner>/<name>/collaborators/<user>/permission")
    def permission(owner, name, user):
        repo = repo_or_404(state, owner, name)
        role = repo.permissions.get(user)
        if role is None:
            return jsonify(message="user is not a collaborator"), 403
        return jsonify(permission="write" if role == "maintain" else role, role_name=role, user=shapes.user(user))

    @app.get(f"{PREFIX}/repos/<owner>/<name>/issues/<int:index>/timeline")
    def timeline(owner, name, index):
        repo = repo_or_404(state, owner, name)
        issue_or_404(repo, index)
        return jsonify([{"id": e.id, "type": "label", "body": "1" if e.added else "", "created_at": e.created_at,
                         "label": shapes.label(repo.labels[e.label]), "user": shapes.user(e.actor)}
                        for e in repo.label_events if e.number == index])

    @app.delete(f"{PREFIX}/repos/<owner>/<name>/branches/<path:branch>")
    def delete_branch(owner, name, branch):
        repo = repo_or_404(state, owner, name)
        if not state.delete_branch(repo, branch):
            return jsonify(message="branch not found"), 404
        return "", 204

    @app.get(f"{PREFIX}/repos/<owner>/<name>/issues/comments")
    def repo_comments(owner, name):
        repo = repo_or_404(state, owner, name)
        return jsonify([shapes.comment(repo, c) for c in _page(state.comments_since(repo, request.args.get("since")))])


def comment_payload(forge: FakeForge, repo: Repo, issue: Issue, comment: Comment) -> tuple[str, str, dict]:
    shapes = GiteaShapes(forge)
    event_type = "pull_request_comment" if issue.is_pull else "issue_comment"
    return "issue_comment", event_type, {"action": "created", "issue": shapes.issue(repo, issue),
                                         "comment": shapes.comment(repo, comment), "repository": shapes.repo(repo),
                                         "sender": shapes.user(comment.author), "is_pull": issue.is_pull}


def label_payload(forge: FakeForge, repo: Repo, issue: Issue, label: str, sender: str) -> tuple[str, str, dict]:
    shapes = GiteaShapes(forge)
    return "issues", "issue_label", {"action": "label_updated", "number": issue.number,
                                     "issue": shapes.issue(repo, issue), "repository": shapes.repo(repo),
                                     "sender": shapes.user(sender), "commit_id": ""}


def review_payloads(forge: FakeForge, repo: Repo, pull: Pull, review: Review) -> list[tuple[str, str, dict]]:
    """Gitea's one webhook for a submitted review (services/webhook/notifier.go): a PullRequestPayload with action
    "reviewed" and the review's type and content, no id and no inline comments."""
    shapes, (event, event_type) = GiteaShapes(forge), REVIEW_HOOKS[review.state]
    return [(event, event_type, {"action": "reviewed", "number": pull.number, "pull_request": shapes.pull(repo, pull),
                                 "requested_reviewer": None, "repository": shapes.repo(repo),
                                 "sender": shapes.user(review.author), "commit_id": "",
                                 "review": {"type": event_type, "content": review.body}})]


def pull_closed_payload(forge: FakeForge, repo: Repo, pull: Pull, sender: str) -> tuple[str, str, dict]:
    shapes = GiteaShapes(forge)
    return "pull_request", "pull_request", {"action": "closed", "number": pull.number,
                                            "pull_request": shapes.pull(repo, pull), "repository": shapes.repo(repo),
                                            "sender": shapes.user(sender)}


def issue_closed_payload(forge: FakeForge, repo: Repo, issue: Issue, sender: str) -> tuple[str, str, dict]:
    shapes = GiteaShapes(forge)
    return "issues", "issues", {"action": "closed", "number": issue.number, "issue": shapes.issue(repo, issue),
                                "repository": shapes.repo(repo), "sender": shapes.user(sender)}


def status_payload(forge: FakeForge, repo: Repo, status: dict, sender: str) -> tuple[str, str, dict]:
    """Gitea's CommitStatusPayload (modules/structs/hook.go): no branches, the commit and the status."""
    shapes = GiteaShapes(forge)
    return "status", "status", {
        "commit": {"id": status["sha"], "message": "", "url": f"{forge.url}/{repo.full_name}/commit/{status['sha']}"},
        "context": status["context"], "created_at": "2026-01-01T00:00:00Z", "description": status["description"],
        "id": forge.state.next_id(), "repository": shapes.repo(repo), "sender": shapes.user(sender),
        "sha": status["sha"], "state": status["state"], "target_url": status["target_url"],
        "updated_at": "2026-01-01T00:00:00Z"}
