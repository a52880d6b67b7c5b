"""A GitHub App's credentials: its JWT (signed by PyGithub's AppAuth), each repository's installation, and
installation tokens minted, cached per installation and renewed before they expire — for the API and for git."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from github import Auth, GithubException, GithubIntegration

from forge_bridge.forges.base import ForgeError
from forge_bridge.models import RepoRef

RENEW_BEFORE = 300.0   # seconds: a token with less life left is renewed first (a push may follow a long run)
TIMEOUT = 30


class AppError(ForgeError):
    """The App could not act for a repository: a bad key, a wrong id, not installed, GitHub's refusal."""


@dataclass
class _Minted:
    token: str
    expires: float     # epoch seconds, by this machine's clock


def _refused(app_id: int, error: GithubException, doing: str) -> AppError:
    message = error.data.get("message", "") if isinstance(error.data, dict) else ""
    if error.status == 401:
        return AppError(f"GitHub App {app_id}: GitHub refused the App's signed token while trying to {doing} "
                        f"(401 {message}). Check app_id, that the private key is this App's, and this machine's "
                        "clock (the token is valid for minutes only)", status=401)
    return AppError(f"GitHub App {app_id}: {doing} failed with {error.status} {message}".strip(), status=error.status)


class GitHubApp:
    """One App on one GitHub (or GitHub Enterprise) API. Safe to share between threads."""

    def __init__(self, api_url: str, app_id: int, private_key: Callable[[], str], *, installation_id: int = 0,
                 clock: Callable[[], float] = time.time) -> None:
        """`private_key` is read on first use, so a missing or bad key is the first task's clear error (and
        `check`'s), not a crash wherever a client is made."""
        self.app_id, self.installation_id, self.clock = app_id, installation_id, clock
        self._api_url, self._private_key = api_url, private_key
        self._made: GithubIntegration | None = None
        self._installations: dict[str, int] = {}
        self._tokens: dict[int, _Minted] = {}
        self._lock = threading.Lock()
        self._slug = ""

    @property
    def _integration(self) -> GithubIntegration:
        if self._made is None:
            try:
                pem = self._private_key()
            except ValueError as error:   # ConfigError: an unreadable key file
                raise AppError(f"GitHub App {self.app_id}: {error}") from None
            if not pem.strip():
                raise AppError(f"GitHub App {self.app_id}: no private key (private_key_env is empty or unset)")
            if "PRIVATE KEY-----" not in pem:
                raise AppError(f"GitHub App {self.app_id}: the private key is not a PEM file (one that starts with "
                               "-----BEGIN RSA PRIVATE KEY-----, as downloaded from the App's settings page)")
            self._made = GithubIntegration(auth=Auth.AppAuth(self.app_id, pem), base_url=self._api_url,
                                           timeout=TIMEOUT)
        return self._made

    def _ask(self, doing: str, call):
        try:
            return call()
        except GithubException as error:
            raise _refused(self.app_id, error, doing) from None
        except ValueError as error:   # PyJWT / cryptography: a key that cannot sign
            raise AppError(f"GitHub App {self.app_id}: the private key cannot sign ({error})") from None
        except OSError as error:
            raise AppError(f"GitHub App {self.app_id}: {doing} failed: {type(error).__name__}") from None

    def slug(self) -> str:
        if not self._slug:
            self._slug = self._ask("read the App (GET /app)", lambda: self._integration.get_app().slug)
        return self._slug

    def login(self) -> str:
        """The name its comments and labels carry on GitHub."""
        return f"{self.slug()}[bot]"

    def installation_for(self, repo: RepoRef) -> int:
        """The configured installation, or the one GitHub says covers `repo` (asked once per repository)."""
        if self.installation_id:
            return self.installation_id
        with self._lock:
            known = self._installations.get(repo.full_name)
        if known:
            return known
        found = self.find_installation(repo)
        with self._lock:
            self._installations[repo.full_name] = found
        return found

    def find_installation(self, repo: RepoRef) -> int:
        """Ask GitHub which installation covers `repo` (`GET /repos/{owner}/{repo}/installation`)."""
        def find() -> int:
            try:
                return self._integration.get_repo_installation(repo.owner, repo.name).id
            except GithubException as error:
                if error.status != 404:
                    raise
                raise AppError(f"GitHub App {self.app_id} is not installed on {repo.full_name}: install it there "
                               "(the App's page, Install App) or take the repository out of [[repos]]",
                               status=404) from None

        return self._ask(f"find its installation on {repo.full_name}", find)

    def token(self, installation: int) -> str:
        """A token of the installation with at least RENEW_BEFORE seconds left, minted when needed."""
        with self._lock:
            minted = self._tokens.get(installation)
        if minted is None or minted.expires - self.clock() < RENEW_BEFORE:
            minted = self._mint(installation)
        return minted.token

    def token_for(self, repo: RepoRef) -> str:
        return self.token(self.installation_for(repo))

    def _mint(self, installation: int) -> _Minted:
        began = self.clock()
        answer = self._ask(f"mint a token for installation {installation}",
                           lambda: self._integration.get_access_token(installation))
        # The lifetime as GitHub states it, counted on this machine's clock from the moment we asked: a skewed
        # clock then renews neither too late nor on every call.
        life = (answer.expires_at.timestamp() - time.time()) if answer.expires_at else 3600.0
        minted = _Minted(answer.token, began + max(0.0, life))
        with self._lock:
            self._tokens[installation] = minted
        return minted

    def forget_tokens(self) -> None:
        """GitHub refused a cached token (revoked, or expired early): the next call mints a new one."""
        with self._lock:
            self._tokens.clear()

    def auth(self, installation: int) -> InstallationToken:
        return InstallationToken(self, installation)


class InstallationToken(Auth.Auth):
    """PyGithub authentication that asks the App for a live token on every request (renewed when due)."""

    def __init__(self, app: GitHubApp, installation: int) -> None:
        self._app, self._installation = app, installation

    @property
    def token_type(self) -> str:
        return "token"

    @property
    def token(self) -> str:
        return self._app.token(self._installation)

    @property
    def _masked_token(self) -> str:
        return "token (installation token removed)"

