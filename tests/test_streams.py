"""Reading what each CLI prints: session ids, summaries, and failure from the final event whatever the exit code."""
from __future__ import annotations

import json

import pytest

from forge_bridge.config import AgentConfig
from forge_bridge.agents.streams import judge

CLAUDE, CODEX = AgentConfig(preset="claude"), AgentConfig(preset="codex")


def lines(*events) -> list[str]:
    return [e if isinstance(e, str) else json.dumps(e) for e in events]


def test_claude_success_reads_the_result_event():
    verdict = judge(CLAUDE, lines({"type": "system", "subtype": "init", "session_id": "s-1"}, "garbage {",
                                  {"type": "result", "subtype": "success", "is_error": False, "result": "did it",
                                   "session_id": "s-1"}))
    assert (verdict.session_id, verdict.summary, verdict.failure) == ("s-1", "did it", "")


@pytest.mark.parametrize(("final", "why"), [
    ({"type": "result", "subtype": "error_max_turns", "is_error": True, "session_id": "s"}, "error_max_turns"),
    ({"type": "result", "subtype": "error_during_execution", "is_error": False, "session_id": "s"}, "error"),
    ({"type": "assistant", "session_id": "s"}, "without its final result event"),
])
def test_claude_failures_are_failures_even_on_exit_zero(final, why):
    verdict = judge(CLAUDE, lines({"type": "system", "session_id": "s"}, final))
    assert why in verdict.failure and verdict.session_id == "s"


def test_codex_thread_summary_and_failures():
    started = {"type": "thread.started", "thread_id": "t-9"}
    message = {"type": "item.completed", "item": {"type": "agent_message", "text": "changed two files"}}
    ok = judge(CODEX, lines(started, {"type": "turn.started"}, message, {"type": "turn.completed", "usage": {}}))
    assert (ok.session_id, ok.summary, ok.failure) == ("t-9", "changed two files", "")
    failed = judge(CODEX, lines(started, {"type": "turn.failed", "error": {"message": "model refused"}}))
    assert failed.failure == "the agent reported: model refused"
    assert "without finishing" in judge(CODEX, lines(started, message)).failure
    assert judge(CODEX, lines("no json at all")).session_id == ""


def test_command_preset_reads_configured_keys():
    agent = AgentConfig(preset="command", argv=("x",), session_id="json:sid", summary="json:sum")
    verdict = judge(agent, lines({"sid": 1}, "noise", {"sid": "two", "sum": "done"}))
    assert (verdict.session_id, verdict.summary, verdict.failure) == ("two", "done", "")


@pytest.mark.parametrize(("key", "events", "failure"), [
    ("done", [{"done": True}], ""),
    ("status", [{"status": "x"}, {"status": "success"}], ""),
    ("status", [{"status": "success"}, {"status": "error"}], "the agent reported failure (status: 'error')"),
    ("status", [{"status": False}], "the agent reported failure (status: False)"),
    ("status", ["plain text only"], "the agent ended without its final event (a JSON line with 'status')"),
])
def test_command_success_can_be_read_from_its_final_json_line(key, events, failure):
    agent = AgentConfig(preset="command", argv=("x",), success=f"json:{key}")
    assert judge(agent, lines(*events)).failure == failure


def test_command_success_defaults_to_the_exit_code():
    assert judge(AgentConfig(preset="command", argv=("x",)), lines("no events")).failure == ""


def test_opencode_sums_every_step_and_a_last_tool_call_step_is_unfinished():
    opencode = AgentConfig(preset="opencode")
    step = lambda reason, cost: {"type": "step_finish", "sessionID": "ses_1",  # noqa: E731
                                 "part": {"reason": reason, "cost": cost, "tokens": {"input": 100, "output": 20}}}
    done = judge(opencode, lines(step("tool-calls", 0.01), {"type": "text", "part": {"text": "all done"}},
                                 step("stop", 0.02)))
    assert (done.session_id, done.summary, done.failure, done.tokens, done.turns) == ("ses_1", "all done", "", 240, 2)
    assert abs(done.cost_usd - 0.03) < 1e-9
    assert "without finishing its step" in judge(opencode, lines(step("stop", 0.01), step("tool-calls", 0))).failure


AIDER = AgentConfig(preset="aider")


def test_aider_counts_tokens_with_cache_reports_as_aider_0_86_prints_them():
    verdict = judge(AIDER, ["Tokens: 1.2k sent, 1.0k cache hit, 80 received. Cost: $0.0010 message, $0.0010 session.",
                            "Tokens: 2.3k sent, 2.0k cache write, 1.0k cache hit, 120 received. Cost: $0.0020 message,"
                            " $0.0030 session."])
    assert (verdict.tokens, verdict.cost_usd, verdict.failure) == (1200 + 80 + 2300 + 120, 0.003, "")


def test_aider_model_error_is_a_failure_though_it_exits_zero():
    verdict = judge(AIDER, ["Aider v0.86.2", "litellm.BadRequestError: OpenAIException - model 'gpt-nope' not found",
                            "The API provider has rejected the request."])
    assert verdict.failure == "the agent reported: litellm.BadRequestError: OpenAIException - model 'gpt-nope' not found"


def test_claude_running_cost_is_marked_from_its_version():
    init = {"type": "system", "subtype": "init", "session_id": "s", "claude_code_version": "2.1.332"}
    final = {"type": "result", "subtype": "success", "is_error": False, "result": "ok", "total_cost_usd": 0.2,
             "usage": {"input_tokens": 10, "output_tokens": 5}}
    assert judge(CLAUDE, lines(init, final)).running == {"cost"}
    assert judge(CLAUDE, lines({**init, "claude_code_version": "2.1.197"}, final)).running == frozenset()
