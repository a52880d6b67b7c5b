"""The real agent CLIs for the conformance suite: pinned versions in one place (the newest each preset was tested
with, from forge_bridge.agents.presets.TESTED_VERSIONS), installed from their registries into a cache reused between runs
($FORGE_BRIDGE_CLI_CACHE, else ~/.cache/forge-bridge/clis), one installer at a time across test processes."""
from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

from forge_bridge.agents.presets import TESTED_VERSIONS

PACKAGES = {"claude": ("npm", "@anthropic-ai/claude-code"), "codex": ("npm", "@openai/codex"),
            "opencode": ("npm", "opencode-ai"), "aider": ("pypi", "aider-chat")}
PINS = {preset: (registry, package, TESTED_VERSIONS[preset][2]) for preset, (registry, package) in PACKAGES.items()}
INSTALL_TIMEOUT = 900


def cache_root() -> Path:
    return Path(os.environ.get("FORGE_BRIDGE_CLI_CACHE") or Path.home() / ".cache" / "forge-bridge" / "clis")


def install(preset: str) -> Path:
    """The folder holding the pinned CLI's program, installed on first use."""
    registry, package, version = PINS[preset]
    folder = cache_root() / f"{preset}-{version}"
    bin_dir = folder / ("node_modules/.bin" if registry == "npm" else "venv/bin")
    done = folder / ".installed"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            _install(registry, package, version, folder)
            done.write_text(version)
    return bin_dir


def _install(registry: str, package: str, version: str, folder: Path) -> None:
    if registry == "npm":
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError("npm is not installed (Debian: apt-get install npm)")
        command = [npm, "install", "--no-audit", "--no-fund", "--prefix", str(folder), f"{package}@{version}"]
    else:
        subprocess.run([sys.executable, "-m", "venv", str(folder / "venv")], check=True, timeout=INSTALL_TIMEOUT)
        command = [str(folder / "venv" / "bin" / "pip"), "install", "-q", f"{package}=={version}"]
    subprocess.run(command, check=True, timeout=INSTALL_TIMEOUT, capture_output=True)
