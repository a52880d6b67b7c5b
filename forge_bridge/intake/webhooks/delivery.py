"""Read a delivery's headers (which forge, which event, which delivery) and check its HMAC-SHA256 signature."""
from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from forge_bridge.models import ForgeKind
from forge_bridge.intake.webhooks.errors import BadSignature, Malformed

# Events whose body we ever need to read; anything else is answered from the headers alone.
GITHUB_EVENTS = frozenset({"issues", "issue_comment", "pull_request", "pull_request_review",
                           "pull_request_review_comment", "installation", "installation_repositories", "check_suite",
                           "status"})
# Gitea names a review's webhook by its verdict (modules/webhook/type.go, HookEventType.Event).
GITEA_REVIEW_EVENTS = {"pull_request_rejected": "changes_requested", "pull_request_approved": "approved",
                       "pull_request_comment": "commented"}
GITEA_EVENTS = frozenset({"issues", "issue_comment", "pull_request", "status", *GITEA_REVIEW_EVENTS})
MAX_ID_LENGTH = 200


@dataclass(frozen=True)
class DeliveryHeaders:
    kind: ForgeKind
    event: str
    event_type: str
    delivery: str
    signature: str          # hex digest as sent, without any `sha256=` prefix; "" when unsigned

    @property
    def relevant(self) -> bool:
        events = GITHUB_EVENTS if self.kind is ForgeKind.GITHUB else GITEA_EVENTS
        return self.event in events


def _sender_kind(headers: Mapping[str, str]) -> ForgeKind:
    # Gitea and Forgejo also send X-GitHub-Event, so the Gitea-family headers decide first.
    if headers.get("X-Forgejo-Event"):
        return ForgeKind.FORGEJO
    if headers.get("X-Gitea-Event"):
        return ForgeKind.GITEA
    return ForgeKind.GITHUB


def _gitea_signature(headers: Mapping[str, str], kind: ForgeKind) -> str:
    own = headers.get("X-Forgejo-Signature") if kind is ForgeKind.FORGEJO else None
    return (own or headers.get("X-Gitea-Signature") or "").strip()


def read_headers(headers: Mapping[str, str], *, endpoint: ForgeKind) -> DeliveryHeaders:
    """Which forge sent this and what it is about; raises Malformed when the headers cannot say."""
    kind = _sender_kind(headers)
    endpoint_family = ForgeKind.GITHUB if endpoint is ForgeKind.GITHUB else ForgeKind.GITEA
    sender_family = ForgeKind.GITHUB if kind is ForgeKind.GITHUB else ForgeKind.GITEA
    if endpoint_family is not sender_family:
        raise Malformed(f"a {kind.value} delivery was sent to the {endpoint.value} endpoint; "
                        f"point the hook at /webhooks/{kind.value}")
    if kind is ForgeKind.GITHUB:
        event, event_type = headers.get("X-GitHub-Event", ""), ""
        delivery = headers.get("X-GitHub-Delivery", "")
        signature = headers.get("X-Hub-Signature-256", "").strip()
        signature = signature.removeprefix("sha256=")
    else:
        prefix = "X-Forgejo" if kind is ForgeKind.FORGEJO else "X-Gitea"
        event = headers.get(f"{prefix}-Event", "")
        event_type = headers.get(f"{prefix}-Event-Type", "")
        delivery = headers.get(f"{prefix}-Delivery", "") or headers.get("X-Gitea-Delivery", "")
        signature = _gitea_signature(headers, kind)
    if not event:
        raise Malformed("missing event header")
    if not delivery:
        raise Malformed("missing delivery id header")
    if len(delivery) > MAX_ID_LENGTH or len(event) > MAX_ID_LENGTH:
        raise Malformed("event or delivery header too long")
    return DeliveryHeaders(kind=kind, event=event, event_type=event_type, delivery=delivery, signature=signature)


def signature_matches(secret: bytes, body: bytes, signature: str) -> bool:
    """HMAC-SHA256 over the exact body bytes, compared in constant time."""
    if not secret or not signature or not signature.isascii():
        return False   # compare_digest refuses non-ASCII text: a forged header is a mismatch, not a crash
    expected = hmac.new(secret, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature.lower())


def verify_signature(secrets: Mapping[str, bytes], body: bytes, signature: str) -> str:
    """The name of the forge whose secret signed `body`; raises BadSignature when none did."""
    if not signature:
        raise BadSignature("missing signature")
    for name, secret in secrets.items():
        if signature_matches(secret, body, signature):
            return name
    raise BadSignature("signature does not match")
