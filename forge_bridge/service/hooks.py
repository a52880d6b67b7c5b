"""`forge-bridge hooks install|list`: the bridge's webhook on each configured repository, found by its URL and
created or brought up to date, and the state labels.

Forges never show a hook's secret, so whether a hook carries the current one cannot be read back: each run sends
it again (a secret changed by hand on the forge is put right). A second run changes nothing: no new hook, and the
same URL, events and secret."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from forge_bridge.config import ForgeConfig, Settings
from forge_bridge.forges import ForgeClient, ForgeError, HookInfo
from forge_bridge.models import ForgeKind, RepoRef
from forge_bridge.work.report import STATE_COLORS

# The events the bridge acts on. Gitea and Forgejo store "issues" and "pull_request" with their whole
# families (labels, comments, reviews), and answer the expanded list, so both checks below hold there too.
HOOK_EVENTS = {
    ForgeKind.GITHUB: ("issues", "issue_comment", "pull_request", "pull_request_review",
                       "pull_request_review_comment"),
    ForgeKind.GITEA: ("issues", "issue_comment", "pull_request", "pull_request_review"),
    ForgeKind.FORGEJO: ("issues", "issue_comment", "pull_request", "pull_request_review"),
    # GitLab's project hook flags, by the names forges/gitlab.py gives them (confidential issues and their
    # notes too: a confidential issue is still the team's).
    ForgeKind.GITLAB: ("issues", "confidential_issues", "note", "confidential_note", "merge_requests"),
}
CI_EVENTS = {ForgeKind.GITHUB: ("check_suite", "status"), ForgeKind.GITEA: ("status",),
             ForgeKind.FORGEJO: ("status",), ForgeKind.GITLAB: ("pipeline",)}   # subscribed too with ci_feedback
NO_ADMIN = (403, 404)   # GitHub hides hooks from non-admins with a 404; Gitea and GitLab refuse with a 403


@dataclass(frozen=True)
class HookPlan:
    action: str          # create | update
    hook_id: int | None
    why: str = ""


def hook_events(settings: Settings, forge: ForgeConfig) -> tuple[str, ...]:
    return HOOK_EVENTS[forge.kind] + (CI_EVENTS[forge.kind] if settings.ci_feedback else ())


def hook_url(public_url: str, forge: ForgeConfig) -> str:
    return f"{public_url.rstrip('/')}/webhooks/{forge.kind.value}"


def plan_hook(found: list[HookInfo], *, url: str, events: tuple[str, ...]) -> HookPlan:
    """What to do, from the repository's hooks. A hook of the bridge's is always updated: forges never show its
    secret, so the only way to know it is right (someone may have changed it by hand) is to send it again."""
    mine = [hook for hook in found if hook.url.rstrip("/") == url.rstrip("/")]
    if not mine:
        return HookPlan("create", None)
    hook = mine[0]
    wrong = [*(["inactive"] if not hook.active else []),
             *([f"content type {hook.content_type or 'unset'}"] if hook.content_type != "json" else []),
             *([f"events missing {', '.join(e for e in events if e not in hook.events)}"]
               if not set(events) <= set(hook.events) else [])]
    return HookPlan("update", hook.id, "; ".join(wrong) or "secret sent again")


def install(settings: Settings, forge: ForgeConfig, client: ForgeClient, *, public_url: str,
            dry_run: bool) -> Iterator[tuple[bool, str]]:
    """(ok, line) for each repository of the forge: its hook and its labels."""
    secret = forge.webhook_secret()
    if not secret:
        yield True, f"{forge.name}: no webhook secret (webhook_secret_env); polling only, no hooks installed"
        return
    repos, patterns = settings.concrete_repos(forge)
    if forge.is_app:   # the App's own webhook (set on the App) brings every installed repository's events
        yield True, f"{forge.name}: GitHub App {forge.app_id}: events come through the App's webhook; none installed"
        for repo in repos:
            try:
                yield from _ensure_labels(settings, forge, client, repo, dry_run=dry_run)
            except ForgeError as error:
                yield False, f"{forge.name}: {repo.full_name}: {_explain(error)}"
        return
    for pattern in patterns:
        yield True, f"{forge.name}: {pattern} is a pattern; name each repository to install its hook"
    url, events = hook_url(public_url, forge), hook_events(settings, forge)
    for repo in repos:
        try:
            yield from _install_one(forge, client, repo, url=url, events=events, secret=secret, dry_run=dry_run)
            yield from _ensure_labels(settings, forge, client, repo, dry_run=dry_run)
        except ForgeError as error:
            yield False, f"{forge.name}: {repo.full_name}: {_explain(error)}"


def _install_one(forge: ForgeConfig, client: ForgeClient, repo: RepoRef, *, url: str, events: tuple[str, ...],
                 secret: bytes, dry_run: bool) -> Iterator[tuple[bool, str]]:
    plan = plan_hook(client.list_hooks(repo), url=url, events=events)
    where = f"{forge.name}: {repo.full_name}"
    if dry_run:
        yield True, (f"{where}: would create a hook → {url} ({', '.join(events)})" if plan.action == "create"
                     else f"{where}: would update hook {plan.hook_id} → {url} ({plan.why})")
        return
    if plan.action == "create":
        hook_id = client.create_hook(repo, url=url, secret=secret.decode(), events=events)
        yield True, f"{where}: created hook {hook_id} → {url} ({', '.join(events)})"
        return
    client.update_hook(repo, plan.hook_id, url=url, secret=secret.decode(), events=events)
    yield True, f"{where}: updated hook {plan.hook_id} → {url} ({plan.why})"


def _ensure_labels(settings: Settings, forge: ForgeConfig, client: ForgeClient, repo: RepoRef, *,
                   dry_run: bool) -> Iterator[tuple[bool, str]]:
    names = [settings.label(state) for state in STATE_COLORS]
    if not dry_run:
        for state, color in STATE_COLORS.items():
            client.ensure_label(repo, settings.label(state), color)
    yield True, f"{forge.name}: {repo.full_name}: labels {'would be ' if dry_run else ''}in place: {', '.join(names)}"


def _explain(error: ForgeError) -> str:
    if error.status in NO_ADMIN:
        return (f"no admin right on the repository (the forge answered {error.status}); webhooks need an admin: "
                "ask one to run this, or add the hook by hand")
    return str(error)


def listing(settings: Settings, forge: ForgeConfig, client: ForgeClient, *,
            public_url: str) -> Iterator[tuple[bool, str]]:
    """(ok, line) for each hook on the forge's configured repositories; the bridge's own are marked."""
    ours = hook_url(public_url, forge) if public_url else ""
    repos, _ = settings.concrete_repos(forge)
    for repo in repos:
        try:
            found = client.list_hooks(repo)
        except ForgeError as error:
            yield False, f"{forge.name}: {repo.full_name}: {_explain(error)}"
            continue
        if not found:
            yield True, f"{forge.name}: {repo.full_name}: no hooks"
        for hook in found:
            mark = " (this bridge)" if ours and hook.url.rstrip("/") == ours else ""
            state = "active" if hook.active else "inactive"
            yield True, (f"{forge.name}: {repo.full_name}: hook {hook.id} → {hook.url}{mark}; {state}, "
                         f"{hook.content_type or '?'}, events: {', '.join(hook.events) or '-'}")
