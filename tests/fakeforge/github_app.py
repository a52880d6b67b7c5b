"""The fake GitHub's App side: Apps with real RSA keys, JWTs verified as GitHub does (RS256 against the App's
public key, `iss` = the App's id, at most ten minutes of life, a minute of clock skew), installations,
installation tokens that expire (in seconds, for tests), the manifest conversion, and git over smart HTTP
(`git http-backend`) that takes only live installation tokens (or the forge's own token)."""
from __future__ import annotations

import base64
import os
import secrets
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask, Response, g, jsonify, request

from fakeforge.common import repo_or_404

if TYPE_CHECKING:
    from fakeforge.server import FakeForge
    from fakeforge.state import Repo

PREFIX = "/api/v3"
MAX_JWT_LIFE = 600
CLOCK_SKEW = 60
APP_PATHS = ("/app", "/app/")   # authenticated as the App (a JWT), not as an installation


def new_private_key() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption()).decode()


def public_of(private_pem: str) -> str:
    key = serialization.load_pem_private_key(private_pem.encode(), password=None)
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


@dataclass
class FakeApp:
    id: int
    slug: str
    private_key: str
    webhook_secret: str = field(default_factory=lambda: secrets.token_hex(16))
    token_life: float = 3600.0           # seconds an installation token lives
    manifest: dict = field(default_factory=dict)

    @property
    def public_key(self) -> str:
        return public_of(self.private_key)


@dataclass
class Installation:
    id: int
    app: FakeApp
    account: str
    repos: set[str]                       # full names


@dataclass
class Minted:
    installation: Installation
    expires: float


@dataclass
class AppSide:
    """What the fake GitHub knows of Apps; `clock_offset` makes its clock differ from the bridge's."""
    apps: dict[int, FakeApp] = field(default_factory=dict)
    installations: dict[int, Installation] = field(default_factory=dict)
    tokens: dict[str, Minted] = field(default_factory=dict)
    codes: dict[str, FakeApp] = field(default_factory=dict)   # manifest codes waiting to be converted
    clock_offset: float = 0.0
    minted: int = 0

    def now(self) -> float:
        return time.time() + self.clock_offset

    def create_app(self, slug: str, *, token_life: float = 3600.0) -> FakeApp:
        app = FakeApp(id=1000 + len(self.apps) + 1, slug=slug, private_key=new_private_key(), token_life=token_life)
        self.apps[app.id] = app
        return app

    def install(self, app: FakeApp, account: str, repos: list[Repo]) -> Installation:
        installation = Installation(id=5000 + len(self.installations) + 1, app=app, account=account,
                                    repos={repo.full_name for repo in repos})
        self.installations[installation.id] = installation
        return installation

    def expect_manifest(self, code: str, slug: str) -> FakeApp:
        """What GitHub does when the user creates the App from a posted manifest: a code to convert once."""
        app = self.create_app(slug)
        self.codes[code] = app
        return app


def _unauthorized(message: str):
    return jsonify(message=message, documentation_url="https://docs.github.com/rest"), 401


def _verify_jwt(side: AppSide, header: str) -> FakeApp | tuple:
    token = header.removeprefix("Bearer ").strip()
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
        app = side.apps.get(int(claims.get("iss", 0)))
    except (jwt.PyJWTError, ValueError, TypeError):
        return _unauthorized("A JSON web token could not be decoded")
    if app is None:
        return _unauthorized("Integration not found")
    try:
        claims = jwt.decode(token, app.public_key, algorithms=["RS256"],
                            options={"verify_exp": False, "verify_iat": False, "require": ["iat", "exp", "iss"]})
    except jwt.PyJWTError:
        return _unauthorized("A JSON web token could not be decoded")
    now, iat, exp = side.now(), claims["iat"], claims["exp"]
    if not isinstance(iat, int) or iat > now + CLOCK_SKEW:
        return _unauthorized("'Issued at' claim ('iat') must be an Integer representing the time that the "
                             "assertion was issued.")
    if not isinstance(exp, int) or exp <= now:
        return _unauthorized("'Expiration time' claim ('exp') must be a numeric value representing the future "
                             "time at which the assertion expires.")
    if exp - iat > MAX_JWT_LIFE:
        return _unauthorized("'Expiration time' claim ('exp') is too far in the future.")
    return app


def _repo_in_path(path: str) -> str:
    parts = path.removeprefix(PREFIX).split("/")
    return f"{parts[2]}/{parts[3]}" if len(parts) > 3 and parts[1] == "repos" else ""


def authorize(forge: FakeForge):
    """None to go on, or the answer GitHub would give. Sets g.app for JWT-authenticated requests."""
    side, path, header = forge.apps, request.path, request.headers.get("Authorization", "")
    api_path = path.removeprefix(PREFIX)
    if api_path.startswith("/app-manifests/"):
        return None   # the manifest conversion needs no authentication: the one-time code is the secret
    if api_path in APP_PATHS or api_path.startswith("/app/") or api_path.endswith("/installation"):
        if not header.startswith("Bearer "):
            return _unauthorized("A JSON web token could not be decoded")
        found = _verify_jwt(side, header)
        if isinstance(found, tuple):
            return found
        g.app = found
        return None
    if header == f"token {forge.token}":
        return None
    minted = side.tokens.get(header.removeprefix("token ").removeprefix("Bearer ").strip())
    if minted is None or minted.expires <= side.now():
        return _unauthorized("Bad credentials")
    repo = _repo_in_path(path)
    if repo and repo not in minted.installation.repos:
        return jsonify(message="Resource not accessible by integration",
                       documentation_url="https://docs.github.com/rest"), 403
    g.installation = minted.installation
    return None


def _iso(when: float) -> str:
    return datetime.fromtimestamp(when, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def register(app: Flask, forge: FakeForge) -> None:
    from fakeforge.github_face import GitHubShapes, _from_schema

    side, shapes = forge.apps, GitHubShapes(forge)

    def integration(found: FakeApp) -> dict:
        return _from_schema("integration", {
            "id": found.id, "slug": found.slug, "name": found.slug, "node_id": f"A_{found.id}",
            "owner": shapes.user("alice"), "html_url": f"{forge.url}/apps/{found.slug}",
            "external_url": forge.url, "created_at": _iso(side.now()), "updated_at": _iso(side.now()),
            "permissions": {"contents": "write", "issues": "write", "pull_requests": "write", "metadata": "read"},
            "events": ["issues", "issue_comment"]})

    @app.get(f"{PREFIX}/app")
    def get_app():
        return jsonify(integration(g.app))

    @app.get(f"{PREFIX}/repos/<owner>/<name>/installation")
    def repo_installation(owner, name):
        repo = repo_or_404(forge.state, owner, name)
        for installation in side.installations.values():
            if installation.app is g.app and repo.full_name in installation.repos:
                return jsonify(_from_schema("installation", {
                    "id": installation.id, "app_id": g.app.id, "app_slug": g.app.slug,
                    "account": shapes.user(installation.account), "target_id": 1,
                    "target_type": "Organization", "repository_selection": "selected",
                    "access_tokens_url": f"{forge.api}/app/installations/{installation.id}/access_tokens",
                    "repositories_url": f"{forge.api}/installation/repositories",
                    "html_url": f"{forge.url}/settings/installations/{installation.id}",
                    "created_at": _iso(side.now()), "updated_at": _iso(side.now()),
                    "permissions": {"issues": "write"}, "events": ["issues"]}))
        return jsonify(message="Not Found", documentation_url="https://docs.github.com/rest"), 404

    @app.post(f"{PREFIX}/app/installations/<int:installation_id>/access_tokens")
    def access_token(installation_id):
        installation = side.installations.get(installation_id)
        if installation is None or installation.app is not g.app:
            return jsonify(message="Not Found", documentation_url="https://docs.github.com/rest"), 404
        token, expires = f"ghs_{secrets.token_hex(18)}", side.now() + installation.app.token_life
        side.tokens[token] = Minted(installation, expires)
        side.minted += 1
        return jsonify(_from_schema("installation-token", {
            "token": token, "expires_at": _iso(expires), "repository_selection": "selected",
            "permissions": {"issues": "write", "contents": "write", "pull_requests": "write"}})), 201

    @app.post(f"{PREFIX}/app-manifests/<code>/conversions")
    def convert(code):
        found = side.codes.pop(code, None)
        if found is None:
            return jsonify(message="Not Found", documentation_url="https://docs.github.com/rest"), 404
        answer = integration(found)
        answer.update(client_id=f"Iv1.{found.id}", client_secret=secrets.token_hex(20),
                      webhook_secret=found.webhook_secret, pem=found.private_key)
        return jsonify(answer), 201

    @app.route("/<owner>/<name>.git/<path:rest>", methods=["GET", "POST"])
    def git_http(owner, name, rest):
        return _git_backend(forge, owner, name, rest)


def basic_credentials() -> tuple[str, str] | None:
    """The request's Basic authentication as (user, password); None without a readable one."""
    header = request.headers.get("Authorization", "")
    if not header.startswith("Basic "):
        return None
    try:
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    return user, password


def git_authorized(forge: FakeForge, repo: str) -> bool:
    """What GitHub takes for git over HTTPS: Basic auth whose password is a live token covering the repo."""
    _, password = basic_credentials() or ("", "")
    if not password:
        return False
    if password == forge.token:
        return True
    minted = forge.apps.tokens.get(password)
    return minted is not None and minted.expires > forge.apps.now() and repo in minted.installation.repos


def _git_backend(forge: FakeForge, owner: str, name: str, rest: str) -> Response:
    repo = forge.state.repo(owner, name)
    if repo is None:
        return Response("Repository not found.\n", status=404)
    if not git_authorized(forge, repo.full_name):
        forge.git_refusals += 1
        return Response("Invalid username or token.\n", status=401,
                        headers={"WWW-Authenticate": 'Basic realm="GitHub"'})
    return run_http_backend(forge, repo, rest, user="x-access-token")


def run_http_backend(forge: FakeForge, repo, rest: str, *, user: str) -> Response:
    """git's own smart HTTP server (`git http-backend`) on the repository's bare copy, pushes allowed."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GIT_PROJECT_ROOT": str(repo.bare.parent),
           "GIT_HTTP_EXPORT_ALL": "1", "PATH_INFO": f"/{repo.bare.name}/{rest}",
           "REQUEST_METHOD": request.method, "QUERY_STRING": request.query_string.decode(),
           "CONTENT_TYPE": request.headers.get("Content-Type", ""), "REMOTE_USER": user,
           "REMOTE_ADDR": "127.0.0.1", "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(forge.root)}
    if request.headers.get("Content-Encoding"):
        env["HTTP_CONTENT_ENCODING"] = request.headers["Content-Encoding"]
    done = subprocess.run(["git", "-c", "http.receivepack=true", "http-backend"], input=request.get_data(),
                          env=env, capture_output=True, timeout=60)
    head, _, body = done.stdout.partition(b"\r\n\r\n")
    status, headers = 200, {}
    for line in head.decode("latin-1").split("\r\n"):
        key, _, value = line.partition(":")
        if key.lower() == "status":
            status = int(value.strip().split()[0])
        elif key:
            headers[key] = value.strip()
    return Response(body, status=status, headers=headers)
