"""What the fake agent CLIs in bin/ share: a session store on disk (as each real CLI keeps one on its host), the
mode a test asks for, and the work itself (a line in a file of the worktree, committed or left uncommitted).

The mode is a word `mode:<name>` anywhere in the prompt: `error` (the CLI reports an error, exit 0), `nofinal` (no
final event, exit 0), `nosession` (no session id printed), `garbage` (non-JSON lines among the events), `nocommit`
(no change at all). Sessions live in $FAKE_AGENT_STATE/<cli>/<id>.jsonl, one line per prompt, so a test can read
what each session was asked and remove them to play another host."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

MODE_RE = re.compile(r"\bmode:([a-z]+)")


def mode_of(prompt: str) -> str:
    match = MODE_RE.search(prompt)
    return match[1] if match else "ok"


def emit(event: dict) -> None:
    print(json.dumps(event), flush=True)


class Sessions:
    def __init__(self, cli: str) -> None:
        root = os.environ.get("FAKE_AGENT_STATE") or os.path.join(os.environ.get("HOME", "/tmp"), ".fake-agents")
        self.folder = Path(root) / cli
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, session: str) -> Path:
        return self.folder / f"{session}.jsonl"

    def exists(self, session: str) -> bool:
        return self.path(session).exists()

    def record(self, session: str, prompt: str, **extra) -> None:
        with open(self.path(session), "a") as out:
            out.write(json.dumps({"prompt": prompt, "argv": sys.argv[1:], "at": time.time(), **extra}) + "\n")


def new_id(prefix: str = "") -> str:
    return prefix + uuid.uuid4().hex if prefix else str(uuid.uuid4())


def unknown_session(message: str) -> None:
    """What the real CLIs do on a resume of a session they do not have: a line on stderr, exit 1, no events."""
    print(message, file=sys.stderr, flush=True)
    sys.exit(1)


READ_ONLY = (("--permission-mode", "plan"), ("--sandbox", "read-only"), ("--agent", "plan"), ("--chat-mode", "ask"))


def read_only() -> bool:
    """Whether the CLI was started in its read-only (plan) mode, as each real one is asked to."""
    args = sys.argv[1:]
    return any(flag in args and args.index(flag) + 1 < len(args) and args[args.index(flag) + 1] == value
               for flag, value in READ_ONLY)


def work(cli: str, session: str, prompt: str, *, commit: bool) -> None:
    """One line per run in <CLI>_WORK.md: the session and the prompt's last line (what was asked now). Nothing in
    read-only mode (the real CLIs refuse their edit tools there)."""
    if mode_of(prompt) == "nocommit" or read_only():
        return
    asked = (prompt.strip().splitlines() or ["(empty)"])[-1]
    name = f"{cli.upper()}_WORK.md"
    with open(name, "a") as out:
        out.write(f"{session}: {asked}\n")
    if commit:
        subprocess.run(["git", "add", name], check=True)
        subprocess.run(["git", "-c", f"user.name={cli}", "-c", "user.email=agent@example.invalid", "commit", "-qm",
                        f"{cli}: {asked[:50]}"], check=True)
