"""The small exception tree of webhook intake; the web layer maps each to its HTTP status."""
from dataclasses import dataclass


class WebhookError(Exception):
    status = 400
    answer = "malformed"


class Malformed(WebhookError):
    """A delivery we cannot read: bad JSON, missing headers or fields, an unsafe repository name."""


class BadSignature(WebhookError):
    status = 401
    answer = "unauthorized"


@dataclass(frozen=True)
class Ignored:
    """A well-formed delivery we do not act on, and why."""

    reason: str
