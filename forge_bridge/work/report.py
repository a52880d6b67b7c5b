"""Render the one status comment from templates/ and keep exactly one state label on the issue."""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from importlib.resources import files

import jinja2

from forge_bridge.config import Settings
from forge_bridge.forges import ForgeClient, ForgeError
from forge_bridge.models import IssueRef, Session, Task, TaskState
from forge_bridge.store.sessions import Store

STATUS_MARKER = "<!-- forge-bridge:status -->"
# The labels the bridge keeps one of at a time: the two triggers (todo, plan), then the states.
STATES = ("todo", "plan", "queued", "running", "planned", "review", "failed", "done")
STATE_COLORS = {"todo": "c5def5", "plan": "c5def5", "queued": "fbca04", "running": "1d76db", "planned": "bfd4f2",
                "review": "0e8a16", "failed": "b60205", "done": "5319e7"}
SUMMARY_LIMIT = 3000     # characters of an agent's summary shown in a comment
SUMMARIES_SHOWN = 5      # the status comment shows the latest tasks' summaries
STATE_EMOJI = {"planned": "📝", "queued": "⏳", "running": "🏃", "review": "👀", "failed": "❌", "done": "✅"}


def _oneline(text: str, limit: int) -> str:
    flat = " ".join(str(text).split()).replace("|", "\\|")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(timestamp)) if timestamp else "—"


def _took(seconds: float) -> str:
    if not seconds:
        return "—"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def usage(task: Task) -> str:
    return usage_text(task.cost_usd, task.tokens, task.turns)


def usage_text(cost_usd: float, tokens: int, turns: int) -> str:
    """What the agent said a run cost: dollars, tokens and turns, each when known."""
    parts = []
    if cost_usd:
        parts.append(f"${cost_usd:.4f}".rstrip("0").rstrip(".") if cost_usd >= 0.0001 else "<$0.0001")
    if tokens:
        parts.append(f"{tokens / 1000:.1f}k tokens" if tokens >= 1000 else f"{tokens} tokens")
    if turns:
        parts.append(f"{turns} turn{'s' if turns != 1 else ''}")
    return " · ".join(parts) or "—"


def quote(text: str, limit: int = SUMMARY_LIMIT) -> str:
    """An agent's text as a Markdown block quote, so its formatting stays inside the quote; clipped, since a
    forge comment holds at most 65,536 characters."""
    text = text.strip()
    if len(text) > limit:
        text = text[:limit].rstrip() + " […]"
    return "\n".join(f"> {line}" if line.strip() else ">" for line in text.splitlines())


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(files("forge_bridge.templates"))),
                             autoescape=False, keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    env.filters.update(oneline=_oneline, when=_when, took=_took, usage=usage, quote=quote,
                       fence_safe=lambda text: text.replace("```", "ˋˋˋ"))
    return env


_ENV = _environment()


def issue_state(tasks: list[Task], session: Session) -> str:
    """The state label an issue should carry, from its newest task and its pull request."""
    if not tasks:
        return "queued"
    states = {task.state for task in tasks}
    for active in (TaskState.RUNNING, TaskState.QUEUED):  # a queued follow-up does not hide a running task
        if active in states:
            return active.value
    latest = tasks[-1].state
    if session.merged:
        return "done"
    if latest is TaskState.SUCCEEDED and tasks[-1].mode == "plan":
        return "planned"
    if latest is TaskState.SUCCEEDED and session.pull_request_url:
        return "review"
    return "failed"


def render_status(session: Session, tasks: list[Task], *, state: str, log_tail: str, waiting: str = "") -> str:
    return _ENV.get_template("status_comment.md.j2").render(
        marker=STATUS_MARKER, session=session, tasks=tasks, state=state, summaries_shown=SUMMARIES_SHOWN,
        emoji=STATE_EMOJI.get(state, ""), log_tail=log_tail.strip(), waiting=waiting)


def render_pull_comment(task: Task, *, number: int, subjects: list[str], status_url: str) -> str:
    return _ENV.get_template("pull_comment.md.j2").render(task=task, number=number, subjects=subjects,
                                                          status_url=status_url)


def status_url(forge_url: str, issue: IssueRef, comment_id: int, *, gitlab: bool = False) -> str:
    """The status comment's address on the forge (GitHub and Gitea anchor comments alike; GitLab its own way)."""
    if not comment_id:
        return ""
    if gitlab:
        return f"{forge_url}/{issue.repo.full_name}/-/issues/{issue.number}#note_{comment_id}"
    return f"{forge_url}/{issue.repo.full_name}/issues/{issue.number}#issuecomment-{comment_id}"


@dataclass
class Reporter:
    """Writes what the bridge knows about an issue back to the forge."""

    client: ForgeClient
    settings: Settings
    store: Store

    def report(self, issue: IssueRef, session: Session, tasks: list[Task], *, labels: tuple[str, ...],
               log_tail: str = "", force: bool = False, waiting: str = "") -> str:
        """Status comment first, label last: whoever sees the label change finds the comment current.
        `waiting`: where the issue's queued task stands (see line.Line.stands)."""
        state = issue_state(tasks, session)
        self.publish_status(issue, session, render_status(session, tasks, state=state, log_tail=log_tail,
                                                          waiting=waiting), force=force)
        self.set_state_label(issue, state, current=labels)
        return state

    def set_state_label(self, issue: IssueRef, state: str, *, current: tuple[str, ...]) -> None:
        wanted = self.settings.label(state)
        labels = set(current)
        if wanted not in labels:
            self.client.ensure_label(issue.repo, wanted, STATE_COLORS[state])
            self.client.add_label(issue, wanted)
            labels.add(wanted)
        for other in STATES:
            name = self.settings.label(other)
            if name != wanted and name in labels:
                self.client.remove_label(issue, name)
                labels.discard(name)
        # Labels a person set are kept; the bridge's own change must not read as theirs on the next event.
        self.store.remember_labels(issue, tuple(labels))

    def publish_status(self, issue: IssueRef, session: Session, body: str, *, force: bool = False) -> None:
        """Edit the status comment in place, only when its text changed (or when forced); find it by its
        marker when the id is unknown; write a new one when someone deleted it."""
        digest = hashlib.sha256(body.encode()).hexdigest()
        if digest == session.status_digest and session.status_comment_id and not force:
            return
        if not session.status_comment_id:   # only the bridge's own: anyone can paste the marker in a comment
            me = self.settings.forge_for_host(issue.repo.host).bot_login or self.client.whoami()
            mine = [c for c in self.client.list_comments(issue) if STATUS_MARKER in c.body and c.author == me]
            session.status_comment_id = mine[0].id if mine else 0
        try:
            if session.status_comment_id:
                self.client.edit_comment(issue, session.status_comment_id, body)
            else:
                session.status_comment_id = self.client.create_comment(issue, body)
        except ForgeError as error:
            if error.status != 404:
                raise
            session.status_comment_id = self.client.create_comment(issue, body)  # it was deleted
        session.status_digest = digest
