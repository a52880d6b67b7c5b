"""Read what an agent printed — its session id, summary, usage, and whether it says it failed — per CLI. Pure.

Success is decided from the final event, the exit code and the timeout together: an agent whose stream ends
without its final event has failed, whatever its exit code. The events follow each CLI's documentation, for the
versions named in the README: Claude Code's `-p --output-format stream-json` (a final `result` event), Codex's
`exec --json` (`thread.started`, then `turn.completed` or `turn.failed`), opencode's `run --format json`
(`sessionID` on every line, `step_finish` with tokens and cost, `error`), aider's plain output (`Cost:` lines)."""
from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from forge_bridge.config import AgentConfig

# aider: "Tokens: 2.1k sent, 1.0k cache write, 1.0k cache hit, 150 received. Cost: $0.0012 message, $0.0034 session."
_AIDER_COST = re.compile(r"Cost: \$([0-9]+(?:\.[0-9]+)?) message")
_AIDER_TOKENS = re.compile(r"Tokens: ([0-9.]+)(k?) sent,(?: [0-9.]+k? cache (?:write|hit),)* ([0-9.]+)(k?) received")
# aider reports a model's error (litellm's exception) and still exits 0
_AIDER_ERROR = re.compile(r"(litellm\.[A-Za-z]*Error: .*)")
# A CLI refusing the preset's arguments (clap, commander, yargs, argparse wordings)
_REJECTED_ARGUMENTS = re.compile(r"(unexpected argument|unknown option|unrecognized arguments?|unknown arguments?"
                                 r"|invalid option)", re.IGNORECASE)
# Claude Code reports the session's running cost (total_cost_usd) on a resume in versions after this one
CLAUDE_PER_RUN_COST_UNTIL = (2, 1, 197)


@dataclass(frozen=True)
class Verdict:
    session_id: str = ""    # the session the stream names ("" when it names none)
    summary: str = ""
    failure: str = ""       # why the agent's own output says it failed ("" when it does not)
    cost_usd: float = 0.0
    tokens: int = 0
    turns: int = 0
    running: frozenset[str] = frozenset()   # which of cost and tokens are the session's running totals
    rejected_arguments: str = ""            # the CLI's own words when it refused the preset's arguments


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


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def _last_value(events: list[dict[str, Any]], key: str) -> str:
    found = ""
    for event in events:
        if isinstance(event.get(key), (str, int)) and not isinstance(event.get(key), bool) and event[key] != "":
            found = str(event[key])
    return found


def _spec_value(lines: list[str], spec: str) -> str:
    """`json:<key>`: the last value of that key among the JSON lines; any other spec reads nothing."""
    return _last_value(list(json_events(lines)), spec.removeprefix("json:")) if spec.startswith("json:") else ""


def _last_number(lines: list[str], spec: str) -> float:
    """`json:<key>`: the last number that key held among the JSON lines (the run's total so far); else 0."""
    if not spec.startswith("json:"):
        return 0.0
    key, found = spec.removeprefix("json:"), 0.0
    for event in json_events(lines):
        if key in event and _number(event[key]) >= 0:
            found = _number(event[key])
    return found


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"[0-9]+", text)[:3])


def _claude(lines: list[str]) -> Verdict:
    events = list(json_events(lines))
    # A session is named by the events of a run that began; a resume of an unknown session ends with a lone
    # `result` that echoes the id asked for, which names nothing.
    session = _last_value([e for e in events if e.get("type") != "result"], "session_id")
    init = next((e for e in events if e.get("type") == "system" and e.get("subtype") == "init"), {})
    running = frozenset({"cost"}) if _version(str(init.get("claude_code_version", ""))) > \
        CLAUDE_PER_RUN_COST_UNTIL else frozenset()
    results = [e for e in events if e.get("type") == "result"]
    if not results:
        return Verdict(session, "", "the agent ended without its final result event")
    final = results[-1]
    usage = final.get("usage") if isinstance(final.get("usage"), dict) else {}
    verdict = Verdict(session, str(final.get("result") or ""), "", _number(final.get("total_cost_usd")),
                      int(_number(usage.get("input_tokens")) + _number(usage.get("output_tokens"))),
                      int(_number(final.get("num_turns"))), running)
    if final.get("is_error") or final.get("subtype") != "success":
        errors = [str(e) for e in final.get("errors") or [] if e] if isinstance(final.get("errors"), list) else []
        said = errors[0] if errors else str(final.get("result") or "") or str(final.get("subtype") or "error")
        return _failed(verdict, f"the agent reported: {said}")
    return verdict


def _codex(lines: list[str]) -> Verdict:
    events = list(json_events(lines))
    thread = next((str(e["thread_id"]) for e in events if e.get("type") == "thread.started" and e.get("thread_id")),
                  "")
    messages = [str((e.get("item") or {}).get("text") or "") for e in events
                if e.get("type") == "item.completed" and (e.get("item") or {}).get("type") == "agent_message"]
    turns = [e for e in events if e.get("type") == "turn.completed"]
    # Each turn.completed carries the thread's running total, so the last one counts.
    last = (turns[-1].get("usage") or {}) if turns else {}
    tokens = sum(int(_number(last.get(k))) for k in ("input_tokens", "output_tokens"))
    verdict = Verdict(thread, messages[-1] if messages else "", "", 0.0, tokens, len(turns), frozenset({"tokens"}))
    ends = [e for e in events if e.get("type") in ("turn.completed", "turn.failed", "error")]
    if not ends:
        return _failed(verdict, "the agent ended without finishing its turn")
    if ends[-1]["type"] != "turn.completed":
        message = (ends[-1].get("error") or {}).get("message") or ends[-1].get("message") or "failed"
        return _failed(verdict, f"the agent reported: {message}")
    return verdict


def _opencode(lines: list[str]) -> Verdict:
    events = list(json_events(lines))
    session = _last_value(events, "sessionID")
    steps = [e.get("part") or {} for e in events if e.get("type") == "step_finish"]
    tokens = sum(int(_number((p.get("tokens") or {}).get(k))) for p in steps for k in ("input", "output", "reasoning"))
    texts, summary = [], ""
    for event in events:   # the answer is the text of the last step
        if event.get("type") == "step_start":
            texts = []
        elif event.get("type") == "text":
            texts.append(str((event.get("part") or {}).get("text") or ""))
        elif event.get("type") == "step_finish":
            summary = "".join(texts).strip() or summary
    verdict = Verdict(session, summary, "", sum(_number(p.get("cost")) for p in steps), tokens, len(steps))
    errors = [e for e in events if e.get("type") == "error"]
    if errors:   # an error event is a failure whatever the exit code
        error = errors[-1].get("error") or {}
        message = (error.get("data") or {}).get("message") or error.get("name") or "error"
        return _failed(verdict, f"the agent reported: {message}")
    if not steps or (steps[-1].get("reason") == "tool-calls"):
        return _failed(verdict, "the agent ended without finishing its step")
    return verdict


def _aider(lines: list[str]) -> Verdict:
    """aider prints no events: success is judged by the commits it leaves; cost and tokens from its report lines."""
    cost, tokens, error = 0.0, 0, ""
    for line in lines:
        if match := _AIDER_COST.search(line):
            cost += float(match[1])
        if match := _AIDER_TOKENS.search(line):
            tokens += _kilo(match[1], match[2]) + _kilo(match[3], match[4])
        if match := _AIDER_ERROR.search(line):
            error = match[1].strip()
    return Verdict(summary=_aider_answer(lines), cost_usd=cost, tokens=tokens,
                   failure=f"the agent reported: {error}" if error else "")


# Lines aider prints around the model's answer: its start-up report, and its accounting after each reply.
_AIDER_FRAME = re.compile(r"^(Aider v|Model: |Git repo: |Repo-map: |Restored |Added |Tokens: |Applied edit |Commit |"
                          r"Warning: |Analytics )")


def _aider_answer(lines: list[str]) -> str:
    """The model's last answer: the text between aider's last frame line before its final `Tokens:` report and
    that report (in ask mode, the plan)."""
    ends = [i for i, line in enumerate(lines) if line.startswith("Tokens: ")]
    if not ends:
        return ""
    start = max((i for i in range(ends[-1]) if _AIDER_FRAME.match(lines[i])), default=-1)
    return "\n".join(lines[start + 1:ends[-1]]).strip()


def _kilo(number: str, suffix: str) -> int:
    return int(float(number) * (1000 if suffix else 1))


def _failed(verdict: Verdict, why: str) -> Verdict:
    return replace(verdict, failure=why)


JUDGES = {"claude": _claude, "codex": _codex, "opencode": _opencode, "aider": _aider}
# presets whose stream names the session it runs in: a resume that fails before naming one did not resume
NAMES_SESSIONS = {"claude", "codex", "opencode"}


SUCCESS_WORDS = {"true", "ok", "success", "succeeded", "done"}


def _command(agent: AgentConfig, lines: list[str]) -> Verdict:
    """A command agent: what its configuration says to read, and — with `success = "json:<key>"` — its final JSON
    line carrying that key decides, so a missing final line is a failure too."""
    verdict = Verdict(_spec_value(lines, agent.session_id), _spec_value(lines, agent.summary),
                      cost_usd=_last_number(lines, agent.cost), tokens=int(_last_number(lines, agent.tokens)))
    if not agent.success.startswith("json:"):
        return verdict
    key = agent.success.removeprefix("json:")
    finals = [event[key] for event in json_events(lines) if key in event]
    if not finals:
        return _failed(verdict, f"the agent ended without its final event (a JSON line with {key!r})")
    if finals[-1] is not True and str(finals[-1]).lower() not in SUCCESS_WORDS:
        return _failed(verdict, f"the agent reported failure ({key}: {finals[-1]!r})")
    return verdict


def judge(agent: AgentConfig, lines: list[str]) -> Verdict:
    verdict = JUDGES[agent.preset](lines) if agent.preset in JUDGES else _command(agent, lines)
    if agent.preset != "command" and not any(json_events(lines)):
        refused = next((line.strip() for line in lines if _REJECTED_ARGUMENTS.search(line)), "")
        verdict = replace(verdict, rejected_arguments=refused)
    return verdict


def reports_sessions(agent: AgentConfig) -> bool:
    """Whether the agent's output names its session (so it can be stored while the agent still runs)."""
    return agent.preset in NAMES_SESSIONS or (agent.preset == "command" and agent.session_id.startswith("json:"))


def usage_so_far(agent: AgentConfig, lines: list[str]) -> tuple[float, int, frozenset[str]]:
    """(cost in USD, tokens, which are the session's running totals) that a still-running agent's output has
    reported: what its final verdict would say, except that Claude Code's tokens are summed from its
    messages until its final result names the run's totals."""
    verdict = judge(agent, lines)
    if agent.preset != "claude" or verdict.tokens:
        return verdict.cost_usd, verdict.tokens, verdict.running
    tokens = 0
    for event in json_events(lines):
        message = event.get("message") if event.get("type") == "assistant" else None
        usage = message.get("usage") if isinstance(message, dict) else None
        if isinstance(usage, dict):
            tokens += int(_number(usage.get("input_tokens")) + _number(usage.get("output_tokens")))
    return verdict.cost_usd, tokens, verdict.running


REPORTS_COST = {"claude", "opencode", "aider"}            # Codex reports tokens only
REPORTS_TOKENS = {"claude", "codex", "opencode", "aider"}


def reports_cost(agent: AgentConfig) -> bool:
    """Whether the agent's output says what it costs in dollars (`command`: only when configured to)."""
    return agent.cost.startswith("json:") if agent.preset == "command" else agent.preset in REPORTS_COST


def reports_tokens(agent: AgentConfig) -> bool:
    return agent.tokens.startswith("json:") if agent.preset == "command" else agent.preset in REPORTS_TOKENS


def per_run(cost: float, tokens: float, running: frozenset[str], before: dict[str, float]) -> tuple[float, int]:
    """What one run spent: a CLI that reports its session's running totals on a resume (`running`) is counted as
    the difference from the totals it reported at the end of the session's last run (`before`)."""
    cost = max(0.0, cost - before.get("cost", 0.0)) if "cost" in running else cost
    tokens = max(0.0, tokens - before.get("tokens", 0.0)) if "tokens" in running else tokens
    return cost, int(tokens)
