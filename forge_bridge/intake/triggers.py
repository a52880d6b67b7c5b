"""Decide what a ForgeEvent asks of the bridge — pure: no I/O, the same for webhooks and the poller.

What the deciding needs to know beyond the event (the issue's last known label set) is passed in."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

from forge_bridge.intake.commands import Command, NoCommand, Reply, Verb, mentions, parse_comment
from forge_bridge.config import Settings
from forge_bridge.models import EventKind, ForgeEvent


@dataclass(frozen=True)
class StartFromLabel:
    """A trigger label was added: start the issue's agent with its title and body (`plan`: for a plan only)."""
    label: str = ""
    mode: str = ""


@dataclass(frozen=True)
class Act:
    """Carry out a command; `on_pull` means the event names the bridge's pull request, not the issue."""

    command: Command
    on_pull: bool = False


@dataclass(frozen=True)
class Answer:
    """Reply with this text (help, or a mistake in a command) and do nothing else."""

    text: str


@dataclass(frozen=True)
class ReadReview:
    """A review on a pull request: read it whole, inline comments included, to know whether it asks for work
    (changes requested, or the bot mentioned anywhere in it); if so it is one `continue`."""


@dataclass(frozen=True)
class PullClosed:
    """A pull request closed, merged or not: if it is the bridge's, destroy its issue's worktree safely."""

    merged: bool


@dataclass(frozen=True)
class IssueClosed:
    """Cancel the issue's queued tasks; destroy its worktree when no open pull request remains."""


@dataclass(frozen=True)
class Skip:
    reason: str


Decision = StartFromLabel | Act | ReadReview | Answer | PullClosed | IssueClosed | Skip


def _sender_refused(event: ForgeEvent, settings: Settings) -> str:
    bot_login = settings.forge(event.forge).bot_login
    if bot_login and event.sender.lower() == bot_login.lower():
        return "the bridge's own account never triggers anything"
    if event.sender_is_bot and not settings.bot_allowed(event.forge, event.sender):
        return f"bot {event.sender!r} is not in allow_bots"
    return ""


def label_added(event: ForgeEvent, label: str, known: tuple[str, ...] | None) -> bool:
    """GitHub names the added label, GitLab lists them. Gitea sends only the set after the change, so "added"
    means: in the new set and not in the set the bridge last knew (an unknown issue counts as having had none)."""
    if event.label or event.added:
        return label == event.label or label in event.added
    return label in event.labels and (known is None or label not in known)


def start_labels(settings: Settings) -> tuple[tuple[str, str], ...]:
    """The labels that start a task, with the mode each starts it in, first first when several were added."""
    return (settings.label("todo"), ""), (settings.label("plan"), "plan")


def _labels(event: ForgeEvent, settings: Settings, known: tuple[str, ...] | None) -> Decision:
    if event.is_pull:
        return Skip("labels on pull requests start nothing")
    for label, mode in start_labels(settings):
        if label_added(event, label, known):
            return StartFromLabel(label, mode=mode)
    return Skip(f"no {' or '.join(label for label, _ in start_labels(settings))} label was added")


def _comment(event: ForgeEvent, settings: Settings) -> Decision:
    bot_login = settings.forge(event.forge).bot_login
    parsed = parse_comment(event.comment_body, command=settings.command, bot_login=bot_login)
    if isinstance(parsed, Reply):
        return Answer(parsed.text)
    if isinstance(parsed, Command):
        return Act(parsed, on_pull=event.is_pull)
    if event.is_pull and mentions(event.comment_body, bot_login):
        return Act(Command(Verb.CONTINUE, message=event.comment_body.strip(), mention=True), on_pull=True)
    assert isinstance(parsed, NoCommand)
    return Skip("no command in the comment")


def decide(event: ForgeEvent, settings: Settings, *, known_labels: tuple[str, ...] | None = None) -> Decision:
    if not settings.repo_allowed(event.forge, event.issue.repo.full_name):
        return Skip(f"repository {event.issue.repo.full_name} is not in the allowlist")
    # Closing is the forge's own decision, already authorized there, whoever (or whatever) did it.
    if event.kind is EventKind.PULL_CLOSED:
        return PullClosed(merged=event.merged)
    if event.kind is EventKind.ISSUE_CLOSED:
        return IssueClosed()
    refused = _sender_refused(event, settings)
    if refused:
        return Skip(refused)
    if event.kind is EventKind.LABELS_CHANGED:
        return _labels(event, settings, known_labels)
    if event.kind is EventKind.COMMENT:
        return _comment(event, settings)
    if event.kind is EventKind.REVIEW:
        return ReadReview()
    return Skip(f"{event.kind.value} events are not acted on")


def meaning_key(event: ForgeEvent) -> str:
    """What makes two deliveries the same event, whatever their delivery ids (a Gitea replay gets a new one,
    and the poller has none): the forge, the repository, the number, and the comment or the change."""
    where = f"{event.forge}:{event.issue}"
    if event.kind is EventKind.COMMENT:
        return f"comment:{event.forge}:{event.issue.repo}:{event.comment_id}"
    if event.kind is EventKind.LABELS_CHANGED:
        labels = event.label or ",".join(sorted(event.added or event.labels))
        return f"labels:{where}:{event.updated_at}:{labels}"
    digest = hashlib.sha256(event.comment_body.encode()).hexdigest()[:16]
    return f"{event.kind.value}:{where}:{event.comment_id}:{event.updated_at}:{digest}"
