"""Decide what a ForgeEvent asks of the bridge — pure: no I/O, the same for webhooks and the poller."""
from __future__ import annotations

from dataclasses import dataclass

from forge_bridge.config import Settings
from forge_bridge.models import EventKind, ForgeEvent


@dataclass(frozen=True)
class StartFromLabel:
    """The trigger label was added: start the issue's agent with its title and body."""


@dataclass(frozen=True)
class Skip:
    reason: str


Decision = StartFromLabel | Skip


def _sender_refused(event: ForgeEvent, settings: Settings) -> str:
    bot_login = settings.forge(event.forge).bot_login
    if bot_login and event.sender.lower() == bot_login.lower():
        return "the bridge's own account never triggers anything"
    if event.sender_is_bot and event.sender not in settings.allow_bots:
        return f"bot {event.sender!r} is not in allow_bots"
    return ""


def label_added(event: ForgeEvent, label: str) -> bool:
    """GitHub names the added label; Gitea sends only the new set, so membership is the claim to check."""
    return event.label == label if event.label else label in event.labels


def decide(event: ForgeEvent, settings: Settings) -> Decision:
    if not settings.repo_allowed(event.forge, event.issue.repo.full_name):
        return Skip(f"repository {event.issue.repo.full_name} is not in the allowlist")
    refused = _sender_refused(event, settings)
    if refused:
        return Skip(refused)
    if event.kind is EventKind.LABELS_CHANGED:
        if event.is_pull:
            return Skip("labels on pull requests start nothing")
        if label_added(event, settings.label("todo")):
            return StartFromLabel()
        return Skip(f"no {settings.label('todo')} label was added")
    return Skip(f"{event.kind.value} events are not acted on yet")
