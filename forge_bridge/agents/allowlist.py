"""Which hosts an agent may reach under `agent.network = "allowlist"` — pure: the patterns (`host`, `*.domain`,
`:port`, 443 by default), each preset's model API hosts, and the hosts of the base URLs handed to the agent."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from forge_bridge.config import HOST_PATTERN

DEFAULT_PORT = 443
# The model APIs each preset's CLI talks to by default (the README lists them).
PRESET_HOSTS = {
    "claude": ("api.anthropic.com",),
    "codex": ("api.openai.com", "chatgpt.com"),
    "opencode": ("api.anthropic.com", "api.openai.com", "models.dev"),
    "kugetsu": ("api.anthropic.com", "api.openai.com", "models.dev"),
    "aider": ("api.openai.com", "api.anthropic.com"),
    "command": (),
}
# Variables that point a CLI at another model server: the server they name is allowed too.
BASE_URL_VARIABLES = ("ANTHROPIC_BASE_URL", "OPENAI_BASE_URL", "OPENAI_API_BASE")
LOOPBACK = ("localhost", "127.0.0.1", "::1")


class BadPattern(ValueError):
    """An allow_hosts entry that names no host."""


@dataclass(frozen=True)
class Allowed:
    host: str            # lower case; a wildcard's domain without the "*."
    port: int
    wildcard: bool = False

    def admits(self, host: str, port: int) -> bool:
        host = host.lower().strip("[]")
        if port != self.port:
            return False
        return host.endswith("." + self.host) if self.wildcard else host == self.host


def parse(pattern: str) -> Allowed:
    match = HOST_PATTERN.match(pattern.strip()) if isinstance(pattern, str) else None
    if not match:
        raise BadPattern(f"{pattern!r} is not a host name, `*.domain` or either with `:port`")
    wildcard, host, _, port = match.groups()
    port = int(port) if port else DEFAULT_PORT
    if not 0 < port < 65536:
        raise BadPattern(f"{pattern!r} has no valid port")
    return Allowed(host.lower().strip("[]"), port, wildcard=bool(wildcard))


def allowed_hosts(preset: str, patterns: tuple[str, ...], env: Mapping[str, str]) -> tuple[Allowed, ...]:
    """The configured patterns, the preset's model API hosts and the servers of the base URLs in its env."""
    found = [parse(pattern) for pattern in patterns]
    found += [Allowed(host, DEFAULT_PORT) for host in PRESET_HOSTS.get(preset, ())]
    for name in BASE_URL_VARIABLES:
        address = urlsplit(env.get(name, ""))
        if address.hostname:
            port = address.port or (443 if address.scheme == "https" else 80)
            found.append(Allowed(address.hostname.lower(), port))
    return tuple(dict.fromkeys(found))


def admitted(allowed: tuple[Allowed, ...], host: str, port: int) -> bool:
    return any(entry.admits(host, port) for entry in allowed)


def no_proxy(allowed: tuple[Allowed, ...]) -> str:
    """NO_PROXY for the agent: its own loopback (a server it starts in the sandbox) goes direct — unless an
    allowed host is on loopback, which only the proxy reaches from inside the sandbox (the host's, not its own)."""
    if any(entry.host in LOOPBACK for entry in allowed):
        return ""
    return ",".join(LOOPBACK)
