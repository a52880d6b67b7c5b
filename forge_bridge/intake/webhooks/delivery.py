"""Read a delivery's headers (which forge, which event, which delivery) and check its HMAC-SHA256 signature, or
GitLab's secret token."""
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
GITLAB_EVENTS = frozenset({"Issue Hook", "Confidential Issue Hook", "Note Hook", "Confidential Note Hook",
                           "Merge Request Hook", "Pipeline Hook"})
EVENTS = {ForgeKind.GITHUB: GITHUB_EVENTS, ForgeKind.GITEA: GITEA_EVENTS, ForgeKind.GITLAB: GITLAB_EVENTS}
MAX_ID_LENGTH = 200


@dataclass(frozen=True)
class DeliveryHeaders:
    kind: ForgeKind
    event: str
    event_type: str
    delivery: str
    signature: str          # hex digest as sent, without any `sha256=` prefix; "" when unsigned; GitLab: its token
    keyed: bool = True      # the delivery header names this one delivery (GitLab's Event-UUID alone does not)

    @property
    def relevant(self) -> bool:
        return self.event in EVENTS[family(self.kind)]


def family(kind: ForgeKind) -> ForgeKind:
    """Forgejo speaks Gitea's webhooks; the others their own."""
    return ForgeKind.GITEA if kind is ForgeKind.FORGEJO else kind


def _sender_kind(headers: Mapping[str, str]) -> ForgeKind:
    # Gitea and Forgejo also send X-GitHub-Event, so the Gitea-family headers decide first.
    if headers.get("X-Gitlab-Event"):
        return ForgeKind.GITLAB
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
    if family(endpoint) is not family(kind):
        raise Malformed(f"a {kind.value} delivery was sent to the {endpoint.value} endpoint; "
                        f"point the hook at /webhooks/{kind.value}")
    keyed = True
    if kind is ForgeKind.GITLAB:
        # Idempotency-Key (GitLab 17.4+) is the same on every retry; the event's UUID is shared by the hooks
        # of one event, so the parser adds the object and its updated_at to it.
        event, event_type, signature = headers.get("X-Gitlab-Event", ""), "", headers.get("X-Gitlab-Token", "")
        delivery = headers.get("Idempotency-Key", "")
        keyed = bool(delivery)
        delivery = delivery or headers.get("X-Gitlab-Event-UUID", "")
    elif kind is ForgeKind.GITHUB:
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
    return DeliveryHeaders(kind=kind, event=event, event_type=event_type, delivery=delivery, signature=signature,
                           keyed=keyed)


def signature_matches(secret: bytes, body: bytes, signature: str) -> bool:
    """HMAC-SHA256 over the exact body bytes, compared in constant time."""
    if not secret or not signature or not signature.isascii():
        return False   # compare_digest refuses non-ASCII text: a forged header is a mismatch, not a crash
    expected = hmac.new(secret, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature.lower())


def token_matches(secret: bytes, token: str) -> bool:
    """GitLab sends the secret itself: compared in constant time, by digest so its length shows nothing."""
    if not secret or not token:
        return False
    sent = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
    return hmac.compare_digest(hashlib.sha256(secret).digest(), sent)


def verify_token(secrets: Mapping[str, bytes], token: str) -> str:
    """The name of the forge whose secret `token` is; raises BadSignature when none."""
    if not token:
        raise BadSignature("missing X-Gitlab-Token")
    for name, secret in secrets.items():
        if token_matches(secret, token):
            return name
    raise BadSignature("X-Gitlab-Token does not match")


def verify_signature(secrets: Mapping[str, bytes], body: bytes, signature: str) -> str:
    """The name of the forge whose secret signed `body`; raises BadSignature when none did."""
    if not signature:
        raise BadSignature("missing signature")
    for name, secret in secrets.items():
        if signature_matches(secret, body, signature):
            return name
    raise BadSignature("signature does not match")
