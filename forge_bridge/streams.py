"""Read what an agent printed — its session id, its summary, and whether it says it failed — per CLI. Pure.

Success is decided from the final event, the exit code and the timeout together: an agent whose stream ends
without its final event has failed, whatever its exit code. Flags and events follow the CLIs' documentation:
Claude Code's `-p --output-format stream-json` (a final `result` event) and Codex's `exec --json`
(`thread.started`, then `turn.completed` or `turn.failed`)."""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from forge_bridge.config import AgentConfig


@dataclass(frozen=True)
class Verdict:
    session_id: str = ""
    summary: str = ""
    failure: str = ""       # why the agent's own output says it failed ("" when it does not)


def json_events(lines: list[str]) -> Iterator[dict[str, Any]]:
    """The JSON objects among the lines; anything else (garbage, plain text) is passed over."""
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            yield event


def _last_value(lines: list[str], spec: str) -> str:
    """`json:<key>`: the last value of that key among the JSON lines."""
    if not spec.startswith("json:"):
        return ""
    key, found = spec.removeprefix("json:"), ""
    for event in json_events(lines):
        if isinstance(event.get(key), (str, int)):
            found = str(event[key])
    return found


def _claude(lines: list[str]) -> Verdict:
    events = list(json_events(lines))
    session = next((str(e["session_id"]) for e in reversed(events) if e.get("session_id")), "")
    results = [e for e in events if e.get("type") == "result"]
    if not results:
        return Verdict(session, "", "the agent ended without its final result event")
    final = results[-1]
    summary = str(final.get("result") or "")
    if final.get("is_error") or final.get("subtype") != "success":
        return Verdict(session, summary, f"the agent reported an error ({final.get('subtype', 'error')})")
    return Verdict(session, summary)


def _codex(lines: list[str]) -> Verdict:
    events = list(json_events(lines))
    thread = next((str(e["thread_id"]) for e in events if e.get("type") == "thread.started" and e.get("thread_id")),
                  "")
    messages = [str((e.get("item") or {}).get("text") or "") for e in events
                if e.get("type") == "item.completed" and (e.get("item") or {}).get("type") == "agent_message"]
    summary = messages[-1] if messages else ""
    ends = [e for e in events if e.get("type") in ("turn.completed", "turn.failed", "error")]
    if not ends:
        return Verdict(thread, summary, "the agent ended without finishing its turn")
    if ends[-1]["type"] != "turn.completed":
        message = (ends[-1].get("error") or {}).get("message") or ends[-1].get("message") or "failed"
        return Verdict(thread, summary, f"the agent reported: {message}")
    return Verdict(thread, summary)


JUDGES = {"claude": _claude, "codex": _codex}


def judge(agent: AgentConfig, lines: list[str]) -> Verdict:
    if agent.preset in JUDGES:
        return JUDGES[agent.preset](lines)
    return Verdict(_last_value(lines, agent.session_id), _last_value(lines, agent.summary))
