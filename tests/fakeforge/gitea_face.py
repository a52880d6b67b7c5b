"""The fake forge's Gitea /api/v1 face (as gitea-api-client calls it), and Gitea-shaped webhook payloads."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flask import Flask, jsonify, request

from fakeforge.openapi import SPECS, overlay
from fakeforge.common import issue_or_404, register_shared, repo_or_404
from fakeforge.state import Comment, Issue, Label, Pull, Repo

if TYPE_CHECKING:
    from fakeforge.server import FakeForge

SPEC = SPECS["gitea"]
PREFIX = "/api/v1"
PAGE_CAP = 50


def _from_schema(name: str, values: dict[str, Any]) -> dict[str, Any]:
    return overlay(SPEC.skeleton(SPEC.doc["definitions"][name]), values)


def _page(items: list) -> list:
    limit = min(int(request.args.get("limit", 30)), PAGE_CAP)
    page = max(int(request.args.get("page", 1)), 1)
    return items[(page - 1) * limit: page * limit]


class GiteaShapes:
    def __init__(self, forge: FakeForge) -> None:
        self.forge = forge

    def user(self, login: str) -> dict:
        return _from_schema("User", {"id": abs(hash(login)) % 10**6, "login": login, "username": login,
                                     "html_url": f"{self.forge.url}/{login}"})

    def label(self, label: Label) -> dict:
        return _from_schema("Label", {"id": label.id, "name": label.name, "color": label.color,
                                      "url": f"{self.forge.api}/labels/{label.id}"})

    def repo(self, repo: Repo) -> dict:
        return _from_schema("Repository", {
            "id": repo.id, "name": repo.name, "full_name": repo.full_name, "owner": self.user(repo.owner),
            "clone_url": str(repo.bare), "default_branch": repo.default_branch,
            "html_url": f"{self.forge.url}/{repo.full_name}"})

    def issue(self, repo: Repo, issue: Issue) -> dict:
        kind = "pulls" if issue.is_pull else "issues"
        html_url = f"{self.forge.url}/{repo.full_name}/{kind}/{issue.number}"
        pull = repo.pulls.get(issue.number)
        return _from_schema("Issue", {
            "id": issue.id, "number": issue.number, "title": issue.title, "body": issue.body, "state": issue.state,
            "user": self.user(issue.author), "labels": [self.label(repo.labels[n]) for n in issue.labels],
            "html_url": html_url, "url": f"{self.forge.api}/repos/{repo.full_name}/issues/{issue.number}",
            "pull_request": {"merged": pull.merged, "html_url": html_url, "draft": False} if pull else None,
            "repository": {"id": repo.id, "name": repo.name, "owner": repo.owner, "full_name": repo.full_name},
            "comments": len(self.forge.state.issue_comments(repo, issue.number))})

    def comment(self, repo: Repo, comment: Comment) -> dict:
        return _from_schema("Comment", {
            "id": comment.id, "body": comment.body, "user": self.user(comment.author),
            "html_url": f"{self.forge.url}/{repo.full_name}/issues/{comment.number}#issuecomment-{comment.id}",
            "issue_url": f"{self.forge.url}/{repo.full_name}/issues/{comment.number}"})

    def pull(self, repo: Repo, pull: Pull) -> dict:
        def branch(ref: str) -> dict:
            return {"ref": ref, "label": ref, "sha": repo.branch_sha(ref) or "0" * 40, "repo_id": repo.id}

        html_url = f"{self.forge.url}/{repo.full_name}/pulls/{pull.number}"
        return _from_schema("PullRequest", {
            "id": pull.id, "number": pull.number, "title": pull.title, "body": pull.body, "state": pull.state,
            "merged": pull.merged, "user": self.user(pull.author), "head": branch(pull.head), "base": branch(pull.base),
            "html_url": html_url, "url": html_url})


def register(app: Flask, forge: FakeForge) -> None:
    shapes, state = GiteaShapes(forge), forge.state
    register_shared(app, forge, shapes, prefix=PREFIX, number="index",
                    no_head=({"message": "head branch does not exist"}, 404),
                    exists=({"message": "pull request already exists for these targets"}, 409))

    @app.get(f"{PREFIX}/repos/<owner>/<name>/issues")
    def list_issues(owner, name):
        repo = repo_or_404(state, owner, name)
        wanted = {w for w in request.args.get("labels", "").split(",") if w}
        kind = request.args.get("type", "")
        state_filter = request.args.get("state", "open")
        issues = [i for i in sorted(repo.issues.values(), key=lambda i: -i.number)
                  if (state_filter == "all" or i.state == state_filter)
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
        with state.lock:
            for item in request.get_json().get("labels", []):
                label_name = by_id.get(item) if isinstance(item, int) else item
                if label_name not in repo.labels:
                    return jsonify(message=f"label {item!r} does not exist"), 422
                if label_name not in issue.labels:
                    issue.labels.append(label_name)
        return jsonify([shapes.label(repo.labels[n]) for n in issue.labels])

    @app.delete(f"{PREFIX}/repos/<owner>/<name>/issues/<int:number>/labels/<int:label_id>")
    def remove_label(owner, name, number, label_id):
        repo = repo_or_404(state, owner, name)
        issue = issue_or_404(repo, number)
        with state.lock:
            names = [n for n in issue.labels if repo.labels[n].id == label_id]
            if not names:
                return jsonify(message="label not found"), 404
            issue.labels.remove(names[0])
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


def label_payload(forge: FakeForge, repo: Repo, issue: Issue, label: str, sender: str) -> tuple[str, str, dict]:
    shapes = GiteaShapes(forge)
    return "issues", "issue_label", {"action": "label_updated", "number": issue.number,
                                     "issue": shapes.issue(repo, issue), "repository": shapes.repo(repo),
                                     "sender": shapes.user(sender), "commit_id": ""}
