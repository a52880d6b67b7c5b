"""Secrets never reach the forge or the page: every forge token, webhook secret, the UI token and each value the
agent was handed through `agent.pass_env` is replaced by `[redacted]` in what the bridge shows."""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from forge_bridge.config import Settings

MARK = "[redacted]"
TAIL_LINES = 20   # the lines of an agent's log a status comment or failure quotes
MIN_LENGTH = 6   # shorter values ("1", "true") would blank ordinary words; no real secret is that short


def secret_values(settings: Settings, environ: Mapping[str, str] | None = None) -> list[str]:
    environ = os.environ if environ is None else environ
    values = [settings.ui_token, *(f.token() for f in settings.forges),
              *(f.webhook_secret().decode() for f in settings.forges),
              *(line for f in settings.forges if f.is_app for line in _key_lines(f)),
              *(environ.get(name, "") for name in settings.agent.pass_env)]
    # Longest first, so a secret that contains another is replaced whole.
    return sorted({v for v in values if len(v) >= MIN_LENGTH}, key=len, reverse=True)


def _key_lines(forge) -> list[str]:
    """A GitHub App key's body lines: a key is seldom printed whole, but any line of it gives it away."""
    try:
        pem = forge.private_key()
    except ValueError:   # an unreadable key file: nothing of it can leak either
        return []
    return [line.strip() for line in pem.splitlines() if line.strip() and not line.startswith("-----")]


def redact(text: str, values: list[str]) -> str:
    for value in values:
        text = text.replace(value, MARK)
    return text


def log_tail(settings: Settings, log: Path, lines: int = TAIL_LINES) -> str:
    """The last lines of an agent's log, as they may be shown."""
    return redact(tail(log, lines), secret_values(settings))


def tail(log: Path, lines: int = TAIL_LINES) -> str:
    """The last lines of a log, read from its last 64 KiB (a log can be large)."""
    if not log.exists():
        return ""
    with open(log, "rb") as handle:
        handle.seek(max(0, log.stat().st_size - 64 * 1024))
        return "\n".join(handle.read().decode(errors="replace").splitlines()[-lines:])
