"""The issue's history as a prompt, for an agent that cannot resume its session (kugetsu's "context dump"). Pure."""
from __future__ import annotations

from forge_bridge.models import Session, Task

PROMPT_LIMIT = 2000     # characters kept of each earlier prompt and summary
TASK_LIMIT = 20         # the most recent earlier tasks told


def _clip(text: str) -> str:
    text = text.strip()
    return text if len(text) <= PROMPT_LIMIT else text[:PROMPT_LIMIT] + " […]"


def _quoted(text: str) -> str:
    return "\n".join(f"   > {line}" for line in _clip(text).splitlines())


def _task_lines(number: int, task: Task) -> list[str]:
    lines = [f"{number}. {task.action.value}, asked by @{task.requested_by}: {task.state.value}"
             + (f" ({task.outcome})" if task.outcome else ""), "   Prompt:", _quoted(task.message)]
    if task.summary:
        lines += ["   The agent's summary:", _quoted(task.summary)]
    return lines


def resume_obstacle(session: Session, *, preset: str, host: str, history_file_exists: bool = True) -> str:
    """Why the issue's agent session cannot be resumed here ("" when it can): none was recorded, another agent
    made it, or it lives on another host (every preset keeps its sessions on the machine that ran it)."""
    if not session.agent_session_id:
        return "no agent session was recorded"
    if session.agent and session.agent != preset:
        return f"it was made by the {session.agent} agent, and the agent is now {preset}"
    if session.agent_host and session.agent_host != host:
        return f"it lives on host {session.agent_host}"
    if not history_file_exists:
        return "its chat history file is gone"
    return ""


def history_prompt(*, issue: str, title: str, session: Session, earlier: list[Task], message: str,
                   why: str) -> str:
    """The prompt of a new session that carries on where an earlier one left off: the earlier prompts, what the
    agents said they did, the branch and the pull request, then what is asked now."""
    parts = [f"You are continuing work on issue {issue}: {title}.",
             f"An earlier agent session worked on it but cannot be resumed ({why}), so this is a new session; "
             "here is what happened so far."]
    if earlier:
        parts += ["", "## Earlier tasks"]
        shown = earlier[-TASK_LIMIT:]
        for number, task in enumerate(shown, start=len(earlier) - len(shown) + 1):
            parts += _task_lines(number, task)
    parts += ["", "## The work so far"]
    if session.branch:
        parts.append(f"Branch `{session.branch}` is checked out in your working directory with the earlier commits.")
    if session.pull_request_url:
        state = "merged" if session.merged else "open"
        parts.append(f"Pull request ({state}): {session.pull_request_url}")
    else:
        parts.append("No pull request has been opened yet.")
    parts += ["", "## Now", message.strip()]
    return "\n".join(parts) + "\n"
