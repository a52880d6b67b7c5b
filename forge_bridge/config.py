"""Load forge-bridge.toml and FORGE_BRIDGE_* environment overrides into one validated Settings object."""
from __future__ import annotations

import functools
import os
import re
import socket
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from forge_bridge.models import ForgeKind, RepoRef
from forge_bridge.refs import host_of_url

CONFIG_ENV = "FORGE_BRIDGE_CONFIG"
DEFAULT_CONFIG_FILE = "forge-bridge.toml"
ENV_PREFIX = "FORGE_BRIDGE_"
DURATION_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([smh]?)\s*$")
DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600}
PRESETS = ("kugetsu", "opencode", "claude", "codex", "aider", "command")


class ConfigError(ValueError):
    """A configuration mistake, with the file and key named."""


NETWORKS = ("open", "allowlist", "none")
HOST_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# agent.allow_hosts: `host`, `*.domain`, `[v6]`, each with an optional `:port` (agents/allowlist.py reads them).
HOST_PATTERN = re.compile(r"^(\*\.)?([A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9a-fA-F:]+\])"
                          r"(:([1-9][0-9]{0,4}))?$")


def parse_duration(value: Any, *, where: str) -> float:
    """`90s`, `5m`, `1h` or a number of seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    match = DURATION_RE.match(str(value)) if isinstance(value, str) else None
    if not match:
        raise ConfigError(f"{where}: expected a duration like 90s, 5m, 1h or seconds, got {value!r}")
    return float(match[1]) * DURATION_UNITS[match[2]]


def check_http_url(url: str, *, where: str) -> str:
    """An http(s) base URL without query or fragment, returned without its trailing slash."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ConfigError(f"{where} must look like https://bridge.example.com, got {url!r}")
    return url.rstrip("/")


@dataclass(frozen=True)
class ForgeConfig:
    name: str
    kind: ForgeKind
    url: str
    token_env: str = ""
    webhook_secret_env: str = ""
    bot_login: str = ""
    api_url: str = ""
    write_interval: float = 1.0   # GitHub asks for about a second between writes (secondary rate limits)
    # A GitHub App instead of token_env: its id, its private key (the PEM in a variable, or a file), and
    # optionally the installation (found per repository otherwise).
    app_id: int = 0
    private_key_env: str = ""
    private_key_file: str = ""
    installation_id: int = 0
    # Read from the environment variables named above when the configuration is loaded; never shown.
    token_value: str = field(default="", repr=False, compare=False)
    secret_value: str = field(default="", repr=False, compare=False)
    private_key_value: str = field(default="", repr=False, compare=False)

    @property
    def host(self) -> str:
        return host_of_url(self.url)

    def token(self) -> str:
        return self.token_value

    @property
    def is_app(self) -> bool:
        return bool(self.app_id)

    def private_key(self) -> str:
        """The App's PEM: from its variable, or read from its file now (a key file can be rotated in place)."""
        if self.private_key_value or not self.private_key_file:
            return self.private_key_value
        try:
            return Path(self.private_key_file).read_text()
        except OSError as error:
            raise ConfigError(f"forge {self.name!r}: cannot read private_key_file {self.private_key_file}: "
                              f"{error.strerror}") from None

    def webhook_secret(self) -> bytes:
        return self.secret_value.encode()



@dataclass(frozen=True)
class RepoConfig:
    forge: str
    name: str            # a pattern: owner/repo, owner/*, or !owner/secret to exclude
    poll: bool = False

    @property
    def excludes(self) -> bool:
        return self.name.startswith("!")

    def matches(self, forge: str, full_name: str) -> bool:
        """`*` and `?` stay within one path segment; `**` spans any depth (`group/**`: every project below)."""
        return forge == self.forge and _pattern(self.name.lstrip("!").lower()).fullmatch(full_name.lower()) is not None


@functools.lru_cache(maxsize=256)
def _pattern(pattern: str) -> re.Pattern:
    parts = []
    for piece in re.split(r"(\*\*|\*|\?)", pattern):
        parts.append({"**": ".+", "*": "[^/]*", "?": "[^/]"}.get(piece, re.escape(piece)))
    return re.compile("".join(parts))


@dataclass(frozen=True)
class AgentConfig:
    preset: str = "kugetsu"
    argv: tuple[str, ...] = ()
    session_id: str = "none"
    summary: str = "none"
    success: str = "exit"          # command: "exit" (exit code and commits) or "json:<key>" of its final JSON line
    cost: str = "none"             # command: "json:<key>" holding the run's cost so far in USD (latest counts)
    tokens: str = "none"           # command: "json:<key>" holding the run's tokens so far (latest counts)
    pass_env: tuple[str, ...] = ()
    extra_args: tuple[str, ...] = ()   # appended to a preset's argv (a model, a permission mode…)
    max_turns: int = 0             # claude: --max-turns (0: the CLI's own default)
    max_budget_usd: float = 0.0    # claude: --max-budget-usd (0: no limit)
    sandbox: str = "auto"          # auto | bwrap | none
    home: str = ""                 # the agent's HOME; empty: <data_dir>/agent-home
    home_per_issue: bool = False   # each issue's agent gets a HOME of its own, copied from `home` when first used
    sandbox_paths: tuple[str, ...] = ()   # more host paths a sandboxed agent may read
    setup_script: str = ".forge-bridge/setup.sh"   # in the repository: prepares the worktree before the agent
    setup_timeout: float = 600.0
    network: str = "open"          # open | allowlist | none: what the sandboxed agent may reach
    allow_hosts: tuple[str, ...] = ()   # with "allowlist": more hosts than its model API's

    @property
    def preassigned_session(self) -> bool:
        """Whether the bridge picks the session id (a uuid) before the first run."""
        return self.preset == "claude" or (self.preset == "command" and self.session_id == "uuid")


MAX_BUDGET = 1_000_000.0   # USD: more than any real limit; a larger one is a typo (1e308), not a budget
MAX_TOKENS = 10 ** 11      # tokens, likewise


@dataclass(frozen=True)
class BudgetConfig:
    """Spending limits; 0 means no limit."""
    task_usd: float = 0.0          # one task's runs together
    task_tokens: int = 0
    issue_usd: float = 0.0         # all tasks of one issue
    repo_daily_usd: float = 0.0    # all tasks of one repository in a UTC day

    @property
    def any(self) -> bool:
        return bool(self.task_usd or self.task_tokens or self.issue_usd or self.repo_daily_usd)


def budget_amount(value: Any, *, where: str, whole: bool = False) -> float:
    """A limit as a user may write it: a finite, non-negative number no larger than MAX_BUDGET (MAX_TOKENS for a
    whole number of tokens)."""
    most = MAX_TOKENS if whole else MAX_BUDGET
    if isinstance(value, str):
        try:
            value = float(value.strip().lstrip("$"))
        except ValueError:
            raise ConfigError(f"{where} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where} must be a number, got {value!r}")
    if value != value or value in (float("inf"), float("-inf")) or not 0 <= value <= most \
            or (whole and value != int(value)):
        kind = "whole number" if whole else "number"
        raise ConfigError(f"{where} must be a {kind} from 0 (no limit) to {most:,.0f}, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("~/.local/share/forge-bridge").expanduser()
    redis_url: str = ""
    bind: str = "127.0.0.1:8080"
    host_id: str = ""                # this host among several on one Redis; empty: the machine's host name
    workers: int = 0                 # agent worker processes on this host; 0: one per agent slot
    event_workers: int = 1           # processes on this host that read only events, so none waits behind agents
    max_concurrent_agents: int = 3
    task_timeout: float = 3600.0
    poll_interval: float = 60.0
    label_prefix: str = "kugetsu"
    command: str = "/kugetsu"
    ui_token_env: str = "FORGE_BRIDGE_UI_TOKEN"
    allow_users: tuple[str, ...] = ()
    allow_bots: tuple[str, ...] = ()
    delete_branch_on_merge: bool = False
    keep_partial_work: bool = True   # a run that fails after changing files: commit WIP, push, open a draft
    ci_feedback: int = 0             # failing checks on the bridge's pull request: up to this many `continue`s
    insecure_no_signature: bool = False
    log_format: str = "text"
    public_url: str = ""             # where forges reach the web app; `hooks install` points webhooks there
    ui_public: bool = False          # listen beyond loopback without ui_token (the page and API open to all)
    agent: AgentConfig = field(default_factory=AgentConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    forges: tuple[ForgeConfig, ...] = ()
    repos: tuple[RepoConfig, ...] = ()
    source: str = "(defaults)"
    ui_token: str = field(default="", repr=False, compare=False)   # read from $ui_token_env; never shown

    def label(self, state: str) -> str:
        return f"{self.label_prefix}:{state}"

    @property
    def host(self) -> str:
        """This host's id: `host_id`, or the machine's host name."""
        return self.host_id or socket.gethostname()

    @property
    def agent_workers(self) -> int:
        """How many agents one host's `forge-bridge worker` (and so `serve`) can run at once."""
        return self.workers or self.max_concurrent_agents

    def forge(self, name: str) -> ForgeConfig:
        for forge in self.forges:
            if forge.name == name:
                return forge
        raise ConfigError(f"{self.source}: no forge named {name!r}")

    def forge_for_host(self, host: str) -> ForgeConfig | None:
        return next((f for f in self.forges if f.host == host), None)

    @property
    def default_forge(self) -> ForgeConfig | None:
        return self.forges[0] if self.forges else None

    def user_allowed(self, forge: str, login: str) -> bool:
        """Whether allow_users names this login on this forge (`forge:login`; a plain `login` only where one
        forge is configured, since a name on a public forge is anyone's)."""
        return _scoped_match(self.allow_users, forge, login)

    def bot_allowed(self, forge: str, login: str) -> bool:
        return _scoped_match(self.allow_bots, forge, login)

    def repo_allowed(self, forge: str, full_name: str) -> bool:
        """Allowed when a pattern includes it and no `!pattern` excludes it."""
        matching = [r for r in self.repos if r.matches(forge, full_name)]
        return any(not r.excludes for r in matching) and not any(r.excludes for r in matching)

    def concrete_repos(self, forge: ForgeConfig) -> tuple[list[RepoRef], list[str]]:
        """The forge's allowed repositories with a concrete owner/name, and the patterns that name none."""
        repos, patterns = [], []
        for repo in self.repos:
            if repo.forge != forge.name or repo.excludes:
                continue
            if any(ch in repo.name for ch in "*?["):
                patterns.append(repo.name)
                continue
            owner, name = repo.name.rsplit("/", 1)
            repos.append(RepoRef(forge.host, owner, name))
        return repos, patterns

    def polled_repos(self) -> list[RepoConfig]:
        return [r for r in self.repos if r.poll and not r.excludes]


def _scoped_match(entries: tuple[str, ...], forge: str, login: str) -> bool:
    for entry in entries:
        name, _, who = entry.rpartition(":")
        if who.lower() == login.lower() and name in ("", forge):
            return True
    return False


def _check_scoped(settings: Settings) -> None:
    names = {f.name for f in settings.forges}
    for key in ("allow_users", "allow_bots"):
        for entry in getattr(settings, key):
            forge, _, _ = entry.rpartition(":")
            if forge and forge not in names:
                raise ConfigError(f"{settings.source}: {key}: {entry!r} names no configured forge")
            if not forge and len(names) > 1:
                raise ConfigError(f"{settings.source}: {key}: {entry!r} must name its forge (e.g. "
                                  f"\"{sorted(names)[0]}:{entry}\") when several forges are configured")


_SCALAR_KEYS = {f.name for f in fields(Settings)} - {"agent", "budget", "forges", "repos", "source", "ui_token"}
_FORGE_KEYS = {f.name for f in fields(ForgeConfig) if not f.name.endswith("_value")}
_REPO_KEYS = {f.name for f in fields(RepoConfig)}
_AGENT_KEYS = {f.name for f in fields(AgentConfig)}


def _reject_unknown(table: dict, known: set[str], *, where: str, source: str) -> None:
    for key in table:
        if key not in known:
            raise ConfigError(f"{source}: unknown key {where}{key!r}")


def _env_overrides(environ: dict[str, str]) -> dict[str, str]:
    """FORGE_BRIDGE_<KEY> overrides a top-level key; FORGE_BRIDGE_CONFIG names the file."""
    out = {}
    for key in _SCALAR_KEYS:
        value = environ.get(ENV_PREFIX + key.upper())
        if value is not None:
            out[key] = value
    return out


AT_LEAST_ZERO = {"ci_feedback", "workers"}   # whole-number keys where 0 means "off" (workers: "as slots")


def _coerce_scalar(key: str, value: Any, *, source: str) -> Any:
    default = getattr(Settings(), key)
    where = f"{source}: {key}"
    if key in ("task_timeout", "poll_interval"):
        return parse_duration(value, where=where)
    if key == "data_dir":
        return Path(str(value)).expanduser().resolve()
    if isinstance(default, bool):
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if isinstance(default, int):
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a whole number, got {value!r}") from None
        least = 0 if key in AT_LEAST_ZERO else 1
        if number < least or number > 1_000_000:
            raise ConfigError(f"{where}: must be a whole number from {least} to 1,000,000, got {number}")
        return number
    if isinstance(default, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: expected a list of strings")
        return tuple(value)
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if key == "public_url" and value:
        return check_http_url(value, where=where)
    if key == "host_id" and value and not HOST_ID_RE.match(value):
        raise ConfigError(f"{where}: letters, digits, '.', '_' and '-' only (at most 64), got {value!r}")
    if key == "log_format" and value not in ("text", "json"):
        raise ConfigError(f"{where}: expected \"text\" or \"json\", got {value!r}")
    return value


def _forge(table: dict, index: int, source: str, environ: dict[str, str]) -> ForgeConfig:
    where = f"forges[{index}]."
    _reject_unknown(table, _FORGE_KEYS, where=where, source=source)
    for key in ("name", "kind", "url"):
        if not isinstance(table.get(key), str) or not table[key]:
            raise ConfigError(f"{source}: {where}{key} is required")
    try:
        kind = ForgeKind(table["kind"])
    except ValueError:
        raise ConfigError(f"{source}: {where}kind must be github, gitea, forgejo or gitlab, got {table['kind']!r}") from None
    url = table["url"].rstrip("/")
    try:
        host_of_url(url)
    except ValueError as error:
        raise ConfigError(f"{source}: {where}url: {error}") from None
    api_url = table.get("api_url", "").rstrip("/") or _default_api_url(kind, url)
    token_env, secret_env = table.get("token_env", ""), table.get("webhook_secret_env", "")
    default_interval = 1.0 if kind is ForgeKind.GITHUB else 0.0
    interval = parse_duration(table.get("write_interval", default_interval), where=f"{source}: {where}write_interval")
    app = _app_keys(table, kind, where=f"{source}: {where}", base=Path(source).parent)
    return ForgeConfig(
        name=table["name"], kind=kind, url=url, api_url=api_url, token_env=token_env, webhook_secret_env=secret_env,
        write_interval=interval,
        bot_login=table.get("bot_login", ""), token_value=environ.get(token_env, "") if token_env else "",
        secret_value=environ.get(secret_env, "") if secret_env else "",
        private_key_value=environ.get(app.get("private_key_env", ""), "") if app.get("private_key_env") else "",
        **app,
    )


def _app_keys(table: dict, kind: ForgeKind, *, where: str, base: Path) -> dict[str, Any]:
    """A GitHub App's keys, checked: an id, exactly one private key source, and no token beside them."""
    keys = ("app_id", "private_key_env", "private_key_file", "installation_id")
    if not any(key in table for key in keys):
        return {}
    if kind is not ForgeKind.GITHUB:
        raise ConfigError(f"{where}app_id: GitHub Apps are a GitHub feature; a {kind.value} forge uses token_env")
    for key in ("app_id", "installation_id"):
        value = table.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0 or (key == "app_id" and not value):
            raise ConfigError(f"{where}{key} must be a positive whole number (the App's settings page shows it), "
                              f"got {value!r}")
    if table.get("token_env"):
        raise ConfigError(f"{where}token_env and app_id: authenticate with one of them, not both")
    sources = [key for key in ("private_key_env", "private_key_file") if table.get(key)]
    if len(sources) != 1:
        raise ConfigError(f"{where}app_id needs exactly one of private_key_env (the PEM itself) or private_key_file")
    for key in sources:
        if not isinstance(table[key], str):
            raise ConfigError(f"{where}{key} must be a string")
    found = {key: table[key] for key in keys if key in table}
    if "private_key_file" in found:   # relative to the configuration file, like a path a user writes next to it
        found["private_key_file"] = str((base / found["private_key_file"]).expanduser())
    return found


def _default_api_url(kind: ForgeKind, url: str) -> str:
    if kind is ForgeKind.GITHUB:
        return "https://api.github.com" if url == "https://github.com" else f"{url}/api/v3"
    if kind is ForgeKind.GITLAB:
        return f"{url}/api/v4"
    return f"{url}/api/v1"


def _repo(table: dict, index: int, forge_names: set[str], source: str) -> RepoConfig:
    where = f"repos[{index}]."
    _reject_unknown(table, _REPO_KEYS, where=where, source=source)
    if table.get("forge") not in forge_names:
        raise ConfigError(f"{source}: {where}forge names no configured forge: {table.get('forge')!r}")
    if not isinstance(table.get("name"), str) or "/" not in table["name"]:
        raise ConfigError(f"{source}: {where}name must be a pattern like owner/repo or owner/*")
    return RepoConfig(forge=table["forge"], name=table["name"], poll=bool(table.get("poll", False)))


def _agent(table: dict, source: str) -> AgentConfig:
    _reject_unknown(table, _AGENT_KEYS, where="agent.", source=source)
    preset = table.get("preset", "kugetsu")
    if preset not in PRESETS:
        raise ConfigError(f"{source}: agent.preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    argv = table.get("argv", [])
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        raise ConfigError(f"{source}: agent.argv must be a list of strings (an argv, never a shell string)")
    if preset == "command" and not argv:
        raise ConfigError(f"{source}: agent.argv is required with preset \"command\"")
    session_id = _spec(table, "session_id", ("uuid", "none"), source)
    summary = _spec(table, "summary", ("none",), source)
    success = _spec(table, "success", ("exit",), source, default="exit")
    cost, tokens = _spec(table, "cost", ("none",), source), _spec(table, "tokens", ("none",), source)
    pass_env, extra_args = table.get("pass_env", []), table.get("extra_args", [])
    if not isinstance(pass_env, list) or not all(isinstance(name, str) for name in pass_env):
        raise ConfigError(f"{source}: agent.pass_env must be a list of variable names")
    if not isinstance(extra_args, list) or not all(isinstance(arg, str) for arg in extra_args):
        raise ConfigError(f"{source}: agent.extra_args must be a list of strings (an argv, never a shell string)")
    sandbox, home, paths = table.get("sandbox", "auto"), table.get("home", ""), table.get("sandbox_paths", [])
    if sandbox not in ("auto", "bwrap", "none"):
        raise ConfigError(f"{source}: agent.sandbox must be auto, bwrap or none, got {sandbox!r}")
    if not isinstance(home, str):
        raise ConfigError(f"{source}: agent.home must be a path, got {home!r}")
    per_issue = table.get("home_per_issue", False)
    if not isinstance(per_issue, bool):
        raise ConfigError(f"{source}: agent.home_per_issue must be true or false, got {per_issue!r}")
    if not isinstance(paths, list) or not all(isinstance(p, str) and Path(p).expanduser().is_absolute()
                                              for p in paths):
        raise ConfigError(f"{source}: agent.sandbox_paths must be a list of absolute paths")
    setup_script = table.get("setup_script", AgentConfig.setup_script)
    if not isinstance(setup_script, str) or not setup_script or Path(setup_script).is_absolute() \
            or ".." in Path(setup_script).parts:
        raise ConfigError(f"{source}: agent.setup_script must be a path inside the repository, got {setup_script!r}")
    setup_timeout = parse_duration(table.get("setup_timeout", "10m"), where=f"{source}: agent.setup_timeout")
    network, allow_hosts = table.get("network", "open"), table.get("allow_hosts", [])
    if network not in NETWORKS:
        raise ConfigError(f"{source}: agent.network must be open, allowlist or none, got {network!r}")
    if not isinstance(allow_hosts, list) or not all(isinstance(h, str) for h in allow_hosts):
        raise ConfigError(f"{source}: agent.allow_hosts must be a list of host names")
    for pattern in allow_hosts:
        match = HOST_PATTERN.match(pattern)
        if not match or (match[4] and int(match[4]) > 65535):
            raise ConfigError(f"{source}: agent.allow_hosts: {pattern!r} is not a host name, `*.domain` or either "
                              "with `:port`")
    return AgentConfig(
        setup_script=setup_script, setup_timeout=setup_timeout, network=network, allow_hosts=tuple(allow_hosts),
        preset=preset, argv=tuple(argv), session_id=session_id, summary=summary, success=success, cost=cost,
        tokens=tokens,
        pass_env=tuple(pass_env), extra_args=tuple(extra_args), sandbox=sandbox,
        home=str(Path(home).expanduser()) if home else "", home_per_issue=per_issue,
        sandbox_paths=tuple(str(Path(p).expanduser()) for p in paths),
        max_turns=_non_negative(table, "max_turns", int, source),
        max_budget_usd=_non_negative(table, "max_budget_usd", float, source),
    )


def _budget(table: Any, source: str) -> BudgetConfig:
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: budget must be a table ([budget])")
    _reject_unknown(table, {f.name for f in fields(BudgetConfig)}, where="budget.", source=source)
    amounts = {key: budget_amount(value, where=f"{source}: budget.{key}", whole=key == "task_tokens")
               for key, value in table.items()}
    if "task_tokens" in amounts:
        amounts["task_tokens"] = int(amounts["task_tokens"])
    return BudgetConfig(**amounts)


def _spec(table: dict, key: str, words: tuple[str, ...], source: str, *, default: str = "none") -> str:
    """Where the agent's output is read: `json:<key>` or one of the fixed words."""
    value = table.get(key, default)
    if not isinstance(value, str) or not (value in words or (value.startswith("json:") and len(value) > 5)):
        choices = " | ".join(("json:<key>", *words))
        raise ConfigError(f"{source}: agent.{key} must be {choices}, got {value!r}")
    return value


def _non_negative(table: dict, key: str, kind: type, source: str) -> Any:
    value = table.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or kind(value) != value:
        raise ConfigError(f"{source}: agent.{key} must be a non-negative {'whole ' if kind is int else ''}number, "
                          f"got {value!r}")
    return kind(value)


def settings_from_dict(raw: dict, *, source: str, environ: dict[str, str] | None = None) -> Settings:
    """Validate a parsed TOML document (plus environment overrides) into Settings."""
    environ = dict(os.environ) if environ is None else environ
    _reject_unknown(raw, _SCALAR_KEYS | {"agent", "budget", "forges", "repos"}, where="", source=source)
    scalars = {k: v for k, v in raw.items() if k in _SCALAR_KEYS}
    scalars.update(_env_overrides(environ))
    values = {k: _coerce_scalar(k, v, source=source) for k, v in scalars.items()}
    forges = tuple(_forge(t, i, source, environ) for i, t in enumerate(raw.get("forges", [])))
    names = [f.name for f in forges]
    if len(set(names)) != len(names):
        raise ConfigError(f"{source}: forges: two forges share a name")
    repos = tuple(_repo(t, i, set(names), source) for i, t in enumerate(raw.get("repos", [])))
    ui_token = environ.get(values.get("ui_token_env", Settings.ui_token_env), "")
    settings = Settings(**values, agent=_agent(raw.get("agent", {}), source), forges=forges, repos=repos,
                        source=source, ui_token=ui_token, budget=_budget(raw.get("budget", {}), source))
    _check_scoped(settings)
    return settings


def load_settings(path: str | Path | None = None, *, environ: dict[str, str] | None = None) -> Settings:
    """Read the configuration file: `path`, else $FORGE_BRIDGE_CONFIG, else ./forge-bridge.toml."""
    environ = dict(os.environ) if environ is None else environ
    path = Path(path or environ.get(CONFIG_ENV) or DEFAULT_CONFIG_FILE)
    if not path.exists():
        raise ConfigError(f"{path}: configuration file not found (set {CONFIG_ENV} or create {DEFAULT_CONFIG_FILE})")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    return settings_from_dict(raw, source=str(path), environ=environ)
