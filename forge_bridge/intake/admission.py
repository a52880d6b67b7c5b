"""Admit a parsed event exactly once: claim its delivery id and its meaning, decide, queue it for intake.

Shared by the webhook endpoint and `forge-bridge replay`, so a replayed delivery is judged exactly like one
the forge sent."""
from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone

from forge_bridge.store import queue
from forge_bridge.config import Settings
from forge_bridge.models import CheckFailed, EventKind, ForgeEvent
from forge_bridge.store.sessions import CLAIM_TTL, Store
from forge_bridge.intake.triggers import Skip, StartFromLabel, decide, meaning_key, start_labels


REPLAY_PREFIX = "replay-"   # `forge-bridge replay`: an operator feeding a saved delivery, old by design


def _age(event: ForgeEvent) -> float:
    """Seconds since the change, by the forge's clock (0 when the delivery does not say)."""
    try:
        when = datetime.fromisoformat(event.updated_at.replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, time.time() - when.timestamp())


@dataclass(frozen=True)
class Admission:
    status: str          # queued | ignored | duplicate
    reason: str


def admit(settings: Settings, store: Store, event: ForgeEvent, *, endpoint: str) -> Admission:
    """Exactly once: the delivery id (GitHub keeps it on redelivery) and the event's meaning (a Gitea replay
    gets a new id; the poller has none) are claimed, and the intake job queued, in one atomic script, so a claim
    never stands without its job and a replay is a duplicate even when the first delivery changed what the
    bridge knows. RedisError propagates (nothing was written, or all of it)."""
    if not endpoint.startswith(REPLAY_PREFIX) and (age := _age(event)) > CLAIM_TTL:
        return Admission("ignored", f"the event is {age / 86400:.0f} days old, older than a delivery is remembered "
                                    f"({CLAIM_TTL // 86400} days): a replayed delivery is refused")
    claims = [f"delivery:{endpoint}:{event.delivery}", f"event:{meaning_key(event)}"]
    labels = event.labels if event.kind is EventKind.LABELS_CHANGED else None
    # Decided before the round trip, so the claims, the label memory and the job are written in one script.
    # Only one rule needs what Redis knows: a forge that sends label sets (Gitea) added the label only when it
    # was not in the set known before; the script applies that rule itself (`when`).
    decision = decide(event, settings, known_labels=None)
    job = None if isinstance(decision, Skip) else queue.prepare_event_job(store.conn, event.to_json())
    when = _labels_to_check(event, decision, settings)
    claimed, known, queued = store.admit_event(claims, event.issue, labels, job=job, when=when)
    if not claimed:
        return Admission("duplicate", "this event was already received")
    if not queued:
        return Admission("ignored", _reason(decide(event, settings, known_labels=known)))
    return Admission("queued", type(decision).__name__)


def _labels_to_check(event: ForgeEvent, decision: object, settings: Settings) -> str:
    """What the script checks was added, one label a line: "*" when the event says itself (GitHub names the
    label). A label set holding both start labels may have gained either: the script finds which."""
    if not isinstance(decision, StartFromLabel) or event.label or event.added:
        return "*"
    return "\n".join(label for label, _ in start_labels(settings) if label in event.labels)


def _reason(decision: object) -> str:
    return decision.reason if isinstance(decision, Skip) else "not acted on"


def admit_check(settings: Settings, store: Store, change: CheckFailed, *, endpoint: str) -> Admission:
    """A failed check: once per head commit (its delivery id and the commit, claimed like any event's), and only
    with `ci_feedback` on. Whether the bridge pushed that head is for the job to find out."""
    if not settings.ci_feedback:
        return Admission("ignored", "ci_feedback is off")
    claims = [f"delivery:{endpoint}:{change.delivery}", f"ci:{change.forge}:{change.repo}:{change.sha}"]
    job = queue.prepare_event_job(store.conn, change.to_json(), func=queue.CI_JOB)
    claimed, _, _ = store.admit_event(claims, f"{change.repo}@{change.sha}", None, job=job)
    if not claimed:
        return Admission("duplicate", "a failure of this commit was already received")
    return Admission("queued", "CheckFailed")
