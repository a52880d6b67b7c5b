"""Routes both faces of the fake forge serve alike (repository, issue, comments, creating a pull request);
only the shapes of the answers and the forge's own error statuses differ."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flask import Flask, abort, jsonify, request

from fakeforge.state import Issue, Repo, State

if TYPE_CHECKING:
    from fakeforge.server import FakeForge


def repo_or_404(state: State, owner: str, name: str) -> Repo:
    repo = state.repo(owner, name)
    if repo is None:
        abort(404)
    return repo


def issue_or_404(repo: Repo, number: int) -> Issue:
    if number not in repo.issues:
        abort(404)
    return repo.issues[number]


def register_shared(app: Flask, forge: FakeForge, shapes: Any, *, prefix: str, number: str, pull_number: str,
                    comment: str,
                    no_head: tuple[dict, int], exists: tuple[dict, int]) -> None:
    """`number`, `pull_number`: the path parameters' names in the API description (issue_number or index)."""
    state = forge.state

    @app.get(f"{prefix}/user")
    def whoami():
        return jsonify(shapes.me())

    @app.get(f"{prefix}/repos/<owner>/<name>")
    def get_repo(owner, name):
        return jsonify(shapes.repo(repo_or_404(state, owner, name)))

    @app.get(f"{prefix}/repos/<owner>/<name>/issues/<int:{number}>")
    def get_issue(owner, name, **path):
        repo = repo_or_404(state, owner, name)
        return jsonify(shapes.issue(repo, issue_or_404(repo, path[number])))

    @app.get(f"{prefix}/repos/<owner>/<name>/issues/<int:{number}>/comments")
    def list_comments(owner, name, **path):
        repo = repo_or_404(state, owner, name)
        issue_or_404(repo, path[number])
        return jsonify([shapes.comment(repo, c) for c in state.issue_comments(repo, path[number])])

    @app.post(f"{prefix}/repos/<owner>/<name>/issues/<int:{number}>/comments")
    def create_comment(owner, name, **path):
        repo = repo_or_404(state, owner, name)
        issue_or_404(repo, path[number])
        comment = state.add_comment(repo, path[number], request.get_json()["body"], forge.bot_login)
        return jsonify(shapes.comment(repo, comment)), 201

    @app.patch(f"{prefix}/repos/<owner>/<name>/issues/comments/<int:comment_id>")
    def edit_comment(owner, name, comment_id):
        repo = repo_or_404(state, owner, name)
        comment = state.comments.get(comment_id)
        if comment is None or comment.repo != repo.full_name:
            return jsonify(message="Not Found"), 404
        comment.body = request.get_json()["body"]
        return jsonify(shapes.comment(repo, comment))

    @app.get(f"{prefix}/repos/<owner>/<name>/pulls/<int:{pull_number}>")
    def get_pull(owner, name, **path):
        repo = repo_or_404(state, owner, name)
        pull = repo.pulls.get(path[pull_number])
        if pull is None:
            return jsonify(message="Not Found"), 404
        return jsonify(shapes.pull(repo, pull))

    @app.post(f"{prefix}/repos/<owner>/<name>/issues/comments/<int:{comment}>/reactions")
    def react(owner, name, **path):
        repo = repo_or_404(state, owner, name)
        found = state.comments.get(path[comment])
        if found is None or found.repo != repo.full_name:
            return jsonify(message="Not Found"), 404
        content = request.get_json()["content"]
        again = (forge.bot_login, content) in found.reactions
        if not again:
            found.reactions.append((forge.bot_login, content))
        return jsonify(shapes.reaction(content)), 200 if again else 201

    @app.post(f"{prefix}/repos/<owner>/<name>/pulls")
    def create_pull(owner, name):
        repo = repo_or_404(state, owner, name)
        data = request.get_json()
        with state.lock:
            if repo.branch_sha(data["head"]) is None:
                return jsonify(no_head[0]), no_head[1]
            if any(p.head == data["head"] and p.state == "open" for p in repo.pulls.values()):
                return jsonify(exists[0]), exists[1]
            pull = state.create_pull(repo, title=data["title"], body=data.get("body") or "", head=data["head"],
                                     base=data["base"], author=forge.bot_login)
        return jsonify(shapes.pull(repo, pull)), 201
