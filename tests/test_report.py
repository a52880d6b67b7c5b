"""The status comment's text, rendered from its template: usage, summaries, and limits that keep it inside a
forge comment."""
from __future__ import annotations

from forge_bridge.models import Session, Task, TaskAction, TaskState
from forge_bridge.work.report import SUMMARIES_SHOWN, SUMMARY_LIMIT, render_status


def _task(n: int, summary: str) -> Task:
    return Task(id=f"t{n}", issue="h/o/r#1", forge="g", action=TaskAction.CONTINUE, message=f"step {n}",
                requested_by="alice, @bob", state=TaskState.SUCCEEDED, summary=summary, cost_usd=0.5, tokens=800,
                turns=1, session_note="new session: it lives on host b" if n == 2 else "")


def test_the_status_comment_tells_usage_sessions_and_the_latest_summaries_clipped():
    tasks = [_task(n, f"summary {n} " + "x" * (SUMMARY_LIMIT if n == 9 else 10)) for n in range(1, 10)]
    body = render_status(Session(issue="h/o/r#1", forge="g"), tasks, state="review", log_tail="")
    assert "| @alice, @bob |" in body and "| $0.5 · 800 tokens · 1 turn |" in body
    assert "(new session: it lives on host b)" in body
    shown = [n for n in range(1, 10) if f"> summary {n} " in body]
    assert shown == list(range(10 - SUMMARIES_SHOWN, 10))
    assert "<details open><summary>Task 9: what the agent says it did" in body
    assert "x" * SUMMARY_LIMIT not in body and "[…]" in body
