"""Routes both faces of the fake forge serve alike (repository, issue, comments, creating a pull request);
only the shapes of the answers and the forge's own error statuses differ."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flask import Flask, abort, jsonify, make_response, request

from fakeforge.state import Issue, Pull, Repo, RepoHook, State

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


def pull_or_404(state: State, owner: str, name: str, number: int) -> tuple[Repo, Pull]:
    repo = repo_or_404(state, owner, name)
    if number not in repo.pulls:
        abort(make_response(jsonify(message="Not Found"), 404))
    return repo, repo.pulls[number]


def react_as_the_bot(forge: FakeForge, shapes: Any, found: Any):
    """The bot's reaction (the request's content) on a comment: 201 when new, 200 when it was there already."""
    if found is None:
        return jsonify(message="Not Found"), 404
    content = request.get_json()["content"]
    again = (forge.bot_login, content) in found.reactions
    if not again:
        found.reactions.append((forge.bot_login, content))
    return jsonify(shapes.reaction(content)), 200 if again else 201


def register_shared(app: Flask, forge: FakeForge, shapes: Any, *, prefix: str, number: str, pull_number: str,
                    comment: str,
                    no_head: tuple[dict, int], exists: tuple[dict, int], reviews_are_comments: bool = False) -> None:
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
        repo, pull = pull_or_404(state, owner, name, path[pull_number])
        return jsonify(shapes.pull(repo, pull))

    @app.post(f"{prefix}/repos/<owner>/<name>/issues/comments/<int:{comment}>/reactions")
    def react(owner, name, **path):
        repo = repo_or_404(state, owner, name)
        found = state.comments.get(path[comment])
        if found is None and reviews_are_comments:   # Gitea keeps a review's inline comments with the others
            found = state.review_comments.get(path[comment])
            found = found if found is not None and found.number in repo.pulls else None
        elif found is not None and found.repo != repo.full_name:
            found = None
        return react_as_the_bot(forge, shapes, found)

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
                                     base=data["base"], author=forge.bot_login, draft=bool(data.get("draft")))
        return jsonify(shapes.pull(repo, pull)), 201

    @app.patch(f"{prefix}/repos/<owner>/<name>/pulls/<int:{pull_number}>")
    def edit_pull(owner, name, **path):
        repo, pull = pull_or_404(state, owner, name, path[pull_number])
        data = request.get_json()
        with state.lock:
            if "title" in data:
                pull.title = repo.issues[pull.number].title = data["title"]
            if "body" in data:
                pull.body = data["body"] or ""
        return jsonify(shapes.pull(repo, pull)), 201 if forge.kind != "github" else 200


def register_hooks(app: Flask, forge: FakeForge, shapes: Any, *, prefix: str, hook: str, not_admin: tuple[dict, int],
                   events_of: Any) -> None:
    """Repository webhooks, which only an admin of the repository may see or change (GitHub hides them with a
    404, Gitea refuses with a 403). `hook`: the path parameter's name; `events_of`: how the forge stores the
    events it was asked for (Gitea expands its umbrella events)."""
    state = forge.state

    def admin_repo(owner: str, name: str) -> Repo:
        repo = repo_or_404(state, owner, name)
        if repo.permissions.get(forge.bot_login) != "admin":
            abort(make_response(jsonify(not_admin[0]), not_admin[1]))
        return repo

    def hook_or_404(repo: Repo, hook_id: int) -> RepoHook:
        if hook_id not in repo.hooks:
            abort(404)
        return repo.hooks[hook_id]

    @app.get(f"{prefix}/repos/<owner>/<name>/hooks")
    def list_hooks(owner, name):
        repo = admin_repo(owner, name)
        return jsonify([shapes.hook(repo, h) for h in repo.hooks.values()])

    @app.post(f"{prefix}/repos/<owner>/<name>/hooks")
    def create_hook(owner, name):
        repo = admin_repo(owner, name)
        data = request.get_json()
        config = data.get("config") or {}
        created = RepoHook(id=state.next_id(), url=config["url"], secret=config.get("secret", ""),
                           events=events_of(data.get("events") or ["push"]),
                           content_type=config.get("content_type", "form"), active=data.get("active", True))
        repo.hooks[created.id] = created
        return jsonify(shapes.hook(repo, created)), 201

    @app.get(f"{prefix}/repos/<owner>/<name>/hooks/<int:{hook}>")
    def get_hook(owner, name, **path):
        repo = admin_repo(owner, name)
        return jsonify(shapes.hook(repo, hook_or_404(repo, path[hook])))

    @app.patch(f"{prefix}/repos/<owner>/<name>/hooks/<int:{hook}>")
    def edit_hook(owner, name, **path):
        repo = admin_repo(owner, name)
        found, data = hook_or_404(repo, path[hook]), request.get_json()
        config = data.get("config") or {}
        found.url = config.get("url", found.url)
        found.secret = config.get("secret", found.secret)
        found.content_type = config.get("content_type", found.content_type)
        found.events = events_of(data["events"]) if data.get("events") else found.events
        found.active = data.get("active", found.active)
        return jsonify(shapes.hook(repo, found))
