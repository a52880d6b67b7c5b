"""Sans-I/O webhook intake: read headers, check the signature, parse a delivery into a ForgeEvent or an Ignored."""
from forge_bridge.intake.webhooks.delivery import DeliveryHeaders, family, read_headers, verify_signature, verify_token
from forge_bridge.intake.webhooks.errors import BadSignature, Ignored, Malformed, WebhookError
from forge_bridge.intake.webhooks.parse import parse_delivery

__all__ = [
    "BadSignature", "DeliveryHeaders", "Ignored", "Malformed", "WebhookError",
    "family", "parse_delivery", "read_headers", "verify_signature", "verify_token",
]
