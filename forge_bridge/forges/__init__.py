"""Build the ForgeClient for a configured forge; the only place that picks an implementation.

The forges layer: one client per forge family behind ForgeClient (GitHub, Gitea/Forgejo, GitLab), their pacing and
GitHub App reach and setup. Imports the shared vocabulary and store/ (its metrics) only."""
from redis import Redis

from forge_bridge.config import ForgeConfig
from forge_bridge.forges.base import (
    BOT_WITH_WRITE,
    WRITE_PERMISSIONS,
    CommentInfo,
    ForgeClient,
    ForgeError,
    HookInfo,
    IssueInfo,
    PullInfo,
    RepoComment,
    RepoInfo,
)
from forge_bridge.models import ForgeKind

__all__ = ["BOT_WITH_WRITE", "WRITE_PERMISSIONS", "CommentInfo", "ForgeClient", "ForgeError", "HookInfo", "IssueInfo", "PullInfo",
           "RepoComment", "RepoInfo", "make_client", "preload"]


def preload(forges: tuple[ForgeConfig, ...]) -> None:
    """Import the clients these forges need now, in a worker before it forks a work horse per job: otherwise
    every job would pay the import again (gitea-api-client takes seconds)."""
    for kind in {forge.kind for forge in forges}:
        if kind is ForgeKind.GITHUB:
            import forge_bridge.forges.github  # noqa: F401
        elif kind is ForgeKind.GITLAB:
            import forge_bridge.forges.gitlab  # noqa: F401
        else:
            import forge_bridge.forges.gitea  # noqa: F401


def make_client(forge: ForgeConfig, *, conn: Redis | None = None) -> ForgeClient:
    """With `conn`, every operation is counted for /metrics."""
    client = _client(forge)
    if conn is None:
        return client
    from forge_bridge.store.metrics import CountingClient

    return CountingClient(client, conn, forge.name)


def _client(forge: ForgeConfig) -> ForgeClient:
    if forge.kind is ForgeKind.GITHUB:
        from forge_bridge.forges.github import GitHubClient

        app = None
        if forge.is_app:
            from forge_bridge.forges.github_app import GitHubApp

            app = GitHubApp(forge.api_url, forge.app_id, forge.private_key, installation_id=forge.installation_id)
        return GitHubClient(forge.api_url, forge.token(), app=app, write_interval=forge.write_interval)
    if forge.kind is ForgeKind.GITLAB:
        from forge_bridge.forges.gitlab import GitLabClient

        return GitLabClient(forge.url, forge.token(), write_interval=forge.write_interval)
    # Imported lazily: gitea-api-client takes about 1.5 s to import, which only Gitea users should pay.
    from forge_bridge.forges.gitea import GiteaClient

    return GiteaClient(forge.api_url, forge.token())
