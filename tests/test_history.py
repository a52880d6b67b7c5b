"""When a session can be resumed, and the prompt of a new session that carries the issue's history. Pure."""
from __future__ import annotations

from forge_bridge.work.history import PROMPT_LIMIT, history_prompt, resume_obstacle
from forge_bridge.models import Session, Task, TaskAction, TaskState


def _session(**fields) -> Session:
    return Session(issue="h/o/r#1", forge="g", **fields)


def test_a_session_resumes_only_with_the_same_agent_on_the_same_host():
    mine = _session(agent_session_id="s1", agent="claude", agent_host="here")
    assert resume_obstacle(mine, preset="claude", host="here") == ""
    assert resume_obstacle(_session(), preset="claude", host="here") == "no agent session was recorded"
    assert "made by the claude agent, and the agent is now codex" in resume_obstacle(mine, preset="codex", host="here")
    assert resume_obstacle(mine, preset="claude", host="there") == "it lives on host here"
    assert "chat history file is gone" in resume_obstacle(mine, preset="claude", host="here", history_file_exists=False)
    # sessions recorded before the agent and host were kept resume as before
    assert resume_obstacle(_session(agent_session_id="old"), preset="codex", host="x") == ""


def _task(n: int, state=TaskState.SUCCEEDED, **fields) -> Task:
    return Task(id=f"t{n}", issue="h/o/r#1", forge="g", action=TaskAction.START if n == 1 else TaskAction.CONTINUE,
                message=f"prompt {n}", requested_by="alice", state=state, **fields)


def test_the_history_prompt_tells_earlier_prompts_summaries_and_the_pull_request():
    session = _session(branch="kugetsu/1-sort", pull_request_url="https://f/o/r/pull/2")
    earlier = [_task(1, summary="sorted it"), _task(2, TaskState.FAILED, outcome="the agent exited with code 1")]
    prompt = history_prompt(issue="h/o/r#1", title="Sort", session=session, earlier=earlier, message="now dedupe",
                            why="it lives on host b")
    assert prompt.index("prompt 1") < prompt.index("sorted it") < prompt.index("prompt 2") < prompt.index("now dedupe")
    assert "(it lives on host b)" in prompt and "failed (the agent exited with code 1)" in prompt
    assert "Pull request (open): https://f/o/r/pull/2" in prompt and "`kugetsu/1-sort`" in prompt
    assert prompt.rstrip().endswith("now dedupe")


def test_the_history_prompt_clips_long_prompts_and_says_when_there_is_no_pull_request():
    huge = _task(1)
    huge.message = "x" * (PROMPT_LIMIT * 3)
    prompt = history_prompt(issue="h/o/r#1", title="T", session=_session(), earlier=[huge], message="go", why="w")
    assert "x" * PROMPT_LIMIT + " […]" in prompt and "x" * (PROMPT_LIMIT + 1) not in prompt
    assert "No pull request has been opened yet." in prompt


def test_only_a_command_agent_without_sessions_has_none_to_resume():
    from forge_bridge.config import AgentConfig
    from forge_bridge.work.turns import resumable

    assert all(resumable(AgentConfig(preset=p)) for p in ("kugetsu", "claude", "codex", "opencode", "aider"))
    assert resumable(AgentConfig(preset="command", argv=("a",), session_id="uuid"))
    assert not resumable(AgentConfig(preset="command", argv=("a",), session_id="none"))
