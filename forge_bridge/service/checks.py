"""`forge-bridge check`: what is wrong before anything runs — the agent's program, each forge reached with its
token (or as its GitHub App; on GitLab with its scopes), the bot's permission on each repository, and how each
forge takes events (the bridge's hook present on each repository)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator

from redis import Redis
from redis.exceptions import RedisError

from forge_bridge.agents import allowlist, presets, sandbox, streams
from forge_bridge.config import ForgeConfig, Settings
from forge_bridge.forges import BOT_WITH_WRITE, WRITE_PERMISSIONS, ForgeError, make_client
from forge_bridge.models import ForgeKind
from forge_bridge.store import embedded, queue

VERSION_RE = re.compile(r"\b[0-9]+\.[0-9]+\.[0-9]+\b")
VERSION_TIMEOUT = 20


def run_checks(settings: Settings) -> Iterator[tuple[bool, str]]:
    """(ok, line) for each check, in the order a user fixes them."""
    if not settings.forges:
        yield False, "no forge is configured"
    yield check_agent(settings)
    yield check_sandbox(settings)
    yield from check_network(settings)
    if exposure := sandbox.redis_exposure(settings):
        yield False, f"redis: {exposure}"
    if sandbox.mode(settings.agent)[0] == "bwrap" and not settings.ui_token:
        yield None, (f"ui: without ${settings.ui_token_env} the status page and API answer any local process, "
                     "confined agents included (other issues' titles and agent logs)")
    if settings.budget.any:
        yield check_budget(settings)
    yield check_workers(settings)
    for forge in settings.forges:
        yield check_webhook_secret(settings, forge)
        yield from check_forge(settings, forge)


def check_agent(settings: Settings) -> tuple[bool, str]:
    preset, program = settings.agent.preset, presets.executable(settings.agent)
    found = shutil.which(program)
    if not found:
        return False, f"agent {preset}: {program} is not on PATH"
    return True, f"agent {preset}: {program} is {found}" + _version_note(preset, found)


def _version_note(preset: str, program: str) -> str:
    """The installed version, and whether the preset was tested with it."""
    if preset not in presets.TESTED_VERSIONS:
        return ""
    name, low, high = presets.TESTED_VERSIONS[preset]
    try:
        said = subprocess.run([program, "--version"], capture_output=True, text=True, timeout=VERSION_TIMEOUT,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return f"; its version could not be read (tested with {name} {low} to {high})"
    found = VERSION_RE.search(said.stdout + said.stderr)
    if not found:
        return f"; its version could not be read (tested with {name} {low} to {high})"
    version = found[0]
    if _parts(low) <= _parts(version) <= _parts(high):
        return f", version {version} (tested: {low} to {high})"
    return (f", version {version}: outside the tested range {low} to {high}; if its tasks fail with rejected "
            "arguments, install a tested version")


def _parts(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def check_network(settings: Settings) -> Iterator[tuple[bool | None, str]]:
    """The network policy can be held here, and the agent's program is one the sandbox lets it run."""
    if refusal := sandbox.network_refusal(settings):
        yield False, f"network: {refusal}"
    elif settings.agent.network == "allowlist":
        allowed = allowlist.allowed_hosts(settings.agent.preset, settings.agent.allow_hosts, os.environ)
        yield True, "network: agents reach only " + ", ".join(
            f"{'*.' if a.wildcard else ''}{a.host}:{a.port}" for a in allowed)
    elif settings.agent.network == "none":
        yield True, "network: agents have none"
    if sandbox.mode(settings.agent)[0] == "bwrap":
        if hidden := sandbox.hidden_program(settings, os.environ.get("PATH", "")):
            yield False, f"agent {settings.agent.preset}: {hidden}"


def check_workers(settings: Settings) -> tuple[bool | None, str]:
    """A warning when the running workers (or, with no Redis to ask, this host's) cannot fill every agent slot or
    would leave events waiting behind agents."""
    slots = settings.max_concurrent_agents
    conn = _running_redis(settings)
    if conn is not None:
        try:
            layout = queue.worker_layout(conn)
        except RedisError as error:
            return None, f"workers: redis not reached to count them ({error})"
        if problems := queue.layout_warnings(layout, slots):
            return None, "workers: " + "; ".join(problems)
        return True, (f"workers: {layout.agent_workers} for agents on {layout.hosts} host(s) fill the {slots} "
                      f"slot(s); {layout.event_only} read events alone")
    here = settings.agent_workers
    if here < slots:
        return None, (f"workers: this host runs {here} agent(s) at once for {slots} slot(s): "
                      f"{slots - here} fill only if other hosts run `forge-bridge worker` too")
    return True, f"workers: this host runs {here} agent(s) at once and {settings.event_workers} event worker(s)"


def _running_redis(settings: Settings) -> Redis | None:
    """The configured Redis, or the embedded server of a `serve` running on this data_dir; None when neither."""
    if settings.redis_url:
        return queue.connect(settings.redis_url)
    return queue.connect(embedded.url_for(settings.data_dir)) if embedded.answers(settings.data_dir) else None


def check_sandbox(settings: Settings) -> tuple[bool | None, str]:
    """None (a warning) when `auto` finds no working bubblewrap; a failure when `bwrap` was asked for."""
    chosen, warning = sandbox.mode(settings.agent)
    if settings.agent.sandbox == "bwrap" and sandbox.bwrap_works():
        return False, f"sandbox bwrap: {sandbox.bwrap_works()}"
    if warning:
        return None, f"sandbox auto: {warning}"
    if chosen == "none":
        return True, "sandbox none: agents run unconfined (the bridge's git is protected all the same)"
    return True, f"sandbox bwrap: agents run confined; their HOME is {sandbox.agent_home(settings)}"


def check_budget(settings: Settings) -> tuple[bool | None, str]:
    """None (a warning) when the agent's output cannot say what a budget needs to know."""
    limits, agent = settings.budget, settings.agent
    dollars = bool(limits.task_usd or limits.issue_usd or limits.repo_daily_usd)
    blind = []
    if dollars and not streams.reports_cost(agent):
        how = " (set agent.cost = \"json:<key>\")" if agent.preset == "command" else ""
        blind.append(f"its runs are not limited by dollars: {agent.preset} reports no cost{how}")
    if limits.task_tokens and not streams.reports_tokens(agent):
        how = " (set agent.tokens = \"json:<key>\")" if agent.preset == "command" else ""
        blind.append(f"task_tokens does not apply: {agent.preset} reports no tokens{how}")
    if blind:
        return None, "budget: " + "; ".join(blind)
    return True, "budget: the agent reports what the budget needs"


def check_webhook_secret(settings: Settings, forge: ForgeConfig) -> tuple[bool, str]:
    if not forge.webhook_secret_env:
        polled = any(repo.forge == forge.name for repo in settings.polled_repos())
        return True, (f"{forge.name}: webhooks off (no webhook_secret_env); "
                      + ("the poller finds labelled issues" if polled else "set poll = true on its repositories"))
    if forge.webhook_secret():
        return True, f"{forge.name}: webhook secret present"
    return settings.insecure_no_signature, f"{forge.name}: webhook secret missing (set ${forge.webhook_secret_env})"


def _identity_and_repos(settings: Settings, forge: ForgeConfig, login: str, *, who: str):
    """Whether the login matches bot_login, and which configured repositories can be checked by name."""
    if forge.bot_login and login != forge.bot_login:
        yield False, f"{forge.name}: {who} acts as {login}, but bot_login is {forge.bot_login}"
    repos, patterns = settings.concrete_repos(forge)
    for pattern in patterns:
        yield True, f"{forge.name}: {pattern} is a pattern; its repositories are not checked"
    return repos


def check_app(settings: Settings, forge: ForgeConfig) -> Iterator[tuple[bool, str]]:
    """A GitHub App: its signed token taken (`GET /app`), then each configured repository's installation and a
    token minted for it — every failure one line saying what to fix."""
    from forge_bridge.forges.github_app import GitHubApp

    app = GitHubApp(forge.api_url, forge.app_id, forge.private_key, installation_id=forge.installation_id)
    try:
        login = app.login()
    except ForgeError as error:
        yield False, f"{forge.name}: {error}"
        return
    yield True, f"{forge.name}: reached {forge.api_url} as GitHub App {forge.app_id}, acting as {login}"
    repos = yield from _identity_and_repos(settings, forge, login, who="the App")
    for repo in repos:
        try:
            installation = app.find_installation(repo)
            app.token(installation)
        except ForgeError as error:
            yield False, f"{forge.name}: {repo.full_name}: {error}"
            continue
        if forge.installation_id and installation != forge.installation_id:
            yield False, (f"{forge.name}: {repo.full_name}: installation_id is {forge.installation_id}, but the App "
                          f"reaches this repository through installation {installation}; leave installation_id "
                          "out to find each repository's own")
            continue
        yield True, f"{forge.name}: {repo.full_name}: the App is installed (installation {installation}); token minted"


def check_forge(settings: Settings, forge: ForgeConfig) -> Iterator[tuple[bool, str]]:
    if forge.is_app:
        yield from check_app(settings, forge)
        return
    client = make_client(forge)
    try:
        login = client.whoami()
    except ForgeError as error:
        why = "token rejected" if error.status in (401, 403) else f"not reached ({error})"
        yield False, f"{forge.name}: {forge.api_url}: {why}"
        return
    yield True, f"{forge.name}: reached {forge.api_url}; token valid, acting as {login}"
    if forge.kind is ForgeKind.GITLAB:
        yield check_gitlab_scopes(forge, client)
    repos = yield from _identity_and_repos(settings, forge, login, who="the token")
    hook_url = _hook_url(settings, forge)
    for repo in repos:
        permission = client.permission(repo, login)
        # The token's own user may be a bot (a GitLab project or group access token): its role is what counts.
        enough = permission in WRITE_PERMISSIONS or permission == BOT_WITH_WRITE
        role = GITLAB_ROLES.get(permission, permission) if forge.kind is ForgeKind.GITLAB else permission
        yield enough, f"{forge.name}: {repo.full_name}: {login} has {role} permission (needs write)"
        if hook_url:
            yield check_hook(forge, client, repo, hook_url)


GITLAB_ROLES = {"read": "Reporter or Guest", "write": "Developer", "maintain": "Maintainer", "admin": "Owner",
                BOT_WITH_WRITE: "Developer or higher (a bot user)"}


def check_gitlab_scopes(forge: ForgeConfig, client) -> tuple[bool | None, str]:
    """A GitLab token needs the `api` scope (issues, notes, merge requests, hooks) and git over HTTPS."""
    try:
        scopes = client.token_scopes()
    except ForgeError as error:
        return None, f"{forge.name}: the token's scopes could not be read ({error})"
    if "api" not in scopes:
        return False, f"{forge.name}: the token has scopes {', '.join(scopes) or 'none'}; it needs api"
    return True, f"{forge.name}: the token has the api scope"


def _hook_url(settings: Settings, forge: ForgeConfig) -> str:
    """The bridge's webhook URL on this forge, when there is one to look for."""
    if not (settings.public_url and forge.webhook_secret_env) or forge.is_app:
        return ""
    from forge_bridge.service.hooks import hook_url

    return hook_url(settings.public_url, forge)


def check_hook(forge: ForgeConfig, client, repo, url: str) -> tuple[bool | None, str]:
    where = f"{forge.name}: {repo.full_name}"
    try:
        hooks = client.list_hooks(repo)
    except ForgeError as error:
        return None, f"{where}: its hooks could not be read ({error.status or error}); they need an admin to see"
    if any(hook.url.rstrip("/") == url for hook in hooks):
        return True, f"{where}: the bridge's hook is there ({url})"
    return None, f"{where}: no hook → {url}; run `forge-bridge hooks install` (or poll it)"
