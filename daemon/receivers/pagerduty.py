"""The PagerDuty receivers: V3 webhook subscriptions (HMAC-signed) and legacy V2
extension webhooks, each turned into inbox events of one normalised shape.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Any

import structlog
from aiohttp import hdrs, web

from ..events import PAGERDUTY_V2_TO_V3, EncodedEvent, Event, normalise_pagerduty_type
from ..web import (
    Reject,
    accepted,
    challenge,
    check_credentials,
    ctx_of,
    parse_json_object,
    parse_json_object_text,
    read_body,
    require_object,
    require_string,
    secret_value,
    with_key,
)
from .common import ignored, store_event

log = structlog.get_logger("dutybridge.server")

# The V3 event types PagerDuty documents (webhooks/01-Overview.md, "Event Types").
# A subscription only sends what it lists, so anything else is a type PagerDuty added
# since: it is acknowledged (a 4xx would count towards disabling the subscription) and
# logged, but not stored, as no plugin can know what to do with it yet.
PAGERDUTY_V3_EVENT_TYPES: frozenset[str] = frozenset(
    {
        "incident.acknowledged",
        "incident.action_invocation.created",
        "incident.action_invocation.terminated",
        "incident.action_invocation.updated",
        "incident.annotated",
        "incident.conference_bridge.updated",
        "incident.custom_field_values.updated",
        "incident.delegated",
        "incident.escalated",
        "incident.incident_type.changed",
        "incident.priority_updated",
        "incident.reassigned",
        "incident.reopened",
        "incident.resolved",
        "incident.responder.added",
        "incident.responder.replied",
        "incident.role.assigned",
        "incident.service_updated",
        "incident.status_update_published",
        "incident.task.completed",
        "incident.task.created",
        "incident.task.updated",
        "incident.triggered",
        "incident.unacknowledged",
        "incident.workflow.completed",
        "incident.workflow.started",
        "service.created",
        "service.custom_field_values.updated",
        "service.deleted",
        "service.updated",
    }
)
PAGERDUTY_PING = "pagey.ping"

# The V2 extension webhook types (webhooks/09-V2-Overview.md, "Webhook Types"). They
# are stored under the V3 name each maps to (``dutybridge.events.PAGERDUTY_V2_TO_V3``).
PAGERDUTY_V2_EVENT_TYPES: frozenset[str] = frozenset(PAGERDUTY_V2_TO_V3)


_PD_ID = re.compile(r"[A-Za-z0-9_.\-]{1,128}")
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_MAX_WEBHOOK_ID = 256


def verify_pagerduty_signature(body: bytes, header: str, secrets: list[str]) -> bool:
    """True when any ``v1=<hex>`` in ``header`` is HMAC-SHA256(body) under any secret.

    Other versions are ignored, as PagerDuty asks; each comparison is constant-time.
    """
    offered: list[bytes] = []
    for part in header.split(","):
        version, sep, value = part.strip().partition("=")
        value = value.strip()
        if sep and version == "v1" and _HEX64.fullmatch(value):
            offered.append(value.lower().encode("ascii"))
    if not offered:
        return False
    ok = False
    for secret in secrets:
        expected = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest().encode("ascii")
        for candidate in offered:
            # No early exit: the time taken does not depend on which pair matched.
            ok |= hmac.compare_digest(expected, candidate)
    return ok


def pagerduty_subject(resource_type: str, data: dict[str, Any]) -> tuple[str, Any]:
    """The id of the incident (or service) a V3 event is about, and where it was found.

    ``data`` is the subject itself for ``incident``/``service`` data; notes, responders,
    tasks, status updates and the like carry a reference to it instead (``data.incident``,
    role assignments one level down), and their own ``data.id`` would break per-incident
    ordering.
    """
    if data.get("type") == resource_type:
        return "event.data.id", data.get("id")
    ref = data.get(resource_type)
    if isinstance(ref, dict):
        return f"event.data.{resource_type}.id", ref.get("id")
    nested = _nested_ref(resource_type, data)
    if nested is not None:
        return nested
    return "event.data.id", data.get("id")


def _nested_ref(resource_type: str, data: dict[str, Any]) -> tuple[str, Any] | None:
    for key, value in data.items():
        if isinstance(value, list):
            for item in value:
                if isinstance(item, dict) and isinstance(item.get(resource_type), dict):
                    return f"event.data.{key}[].{resource_type}.id", item[resource_type].get("id")
    return None


async def pagerduty_v3(request: web.Request) -> web.StreamResponse:
    """PagerDuty V3 webhook subscriptions, signed in ``X-PagerDuty-Signature``.

    Deduplication is on ``event.id`` (durable, in the store, shared by instances).
    ``X-Webhook-Id`` is kept in the payload for tracing but is no dedupe key of its
    own: it is constant across the retries of one delivery, which carry the same
    ``event.id`` anyway, it differs between two subscriptions delivering the same
    event (which must be acted on once), and it is not covered by the signature.
    """
    ctx = ctx_of(request)
    secrets = [s for s in (secret_value(v) for v in ctx.config.pagerduty.webhook_secrets) if s]
    if not secrets:
        # 503, not 2xx: an unsigned webhook could come from anyone. PagerDuty retries
        # a 5xx for 48 h, so nothing is lost while the operator adds the secret.
        raise Reject(
            503,
            "not_configured",
            "no PagerDuty webhook secret is configured ([pagerduty] webhook_secrets); unsigned webhooks are refused",
        )
    signature = request.headers.get("X-PagerDuty-Signature")
    if not signature:
        raise Reject(401, "no_signature", "missing X-PagerDuty-Signature header")
    body = await read_body(request, ctx.config.daemon.max_body_bytes)
    if not verify_pagerduty_signature(body, signature, secrets):
        raise Reject(401, "bad_signature", "X-PagerDuty-Signature does not match the body under any configured secret")

    doc, text = parse_json_object_text(body)
    event = require_object(doc, "event", "event")
    event_type = require_string(event, "event_type", "event.event_type")
    webhook_id = request.headers.get("X-Webhook-Id", "")[:_MAX_WEBHOOK_ID] or None
    if event_type == PAGERDUTY_PING:
        return ignored(ctx, "pagerduty", "pagerduty", event_type, "ping", webhook_id=webhook_id)
    event_id = require_string(event, "id", "event.id", _PD_ID, "a PagerDuty event id")
    resource_type = require_string(event, "resource_type", "event.resource_type", _PD_ID, "a resource type")
    data = require_object(event, "data", "event.data")
    if event_type not in PAGERDUTY_V3_EVENT_TYPES:
        return ignored(
            ctx,
            "pagerduty",
            "pagerduty",
            "unknown",
            "unknown event type",
            event_type=event_type[:100],
            event_id=event_id,
            webhook_id=webhook_id,
        )
    if event_type.split(".", 1)[0] != resource_type:
        raise Reject(
            400, "bad_envelope", f"event.resource_type: {resource_type!r} does not match event_type {event_type!r}"
        )
    path, subject = pagerduty_subject(resource_type, data)
    if not isinstance(subject, str) or not _PD_ID.fullmatch(subject):
        raise Reject(
            400,
            "bad_envelope",
            f"{path}: {'required field is missing' if subject is None else 'expected a PagerDuty id'}",
        )

    payload = dict(doc)
    payload["webhook_id"] = webhook_id
    # The body's own text, not the payload encoded again: the JSON is already there.
    row_id = await store_event(
        ctx,
        "pagerduty",
        EncodedEvent(
            source="pagerduty",
            type=event_type,
            event_id=event_id,
            resource=f"pagerduty:{resource_type}:{subject}",
            payload=payload,
            payload_text=with_key(text, doc, "webhook_id", webhook_id),
        ),
    )
    if row_id is None:
        return web.json_response({"status": "duplicate"}, status=202)
    return accepted(row_id)


async def pagerduty_v2(request: web.Request) -> web.StreamResponse:
    """Legacy V2 extension webhooks, for operators leaving PagerDuty's ServiceNow v7 app.

    V2 has no signature. The extension URL carries basic-auth credentials
    (``https://user:pass@host/webhooks/pagerduty/v2``, as the v7 app's URL did),
    which PagerDuty sends as an ``Authorization`` header, checked against
    ``[servicenow] doorbell_username``/``doorbell_password``. Not a ``?token=``: a
    query string ends up in access logs and proxy logs; a header does not.
    Each message becomes one event; one bad message refuses the whole delivery.
    """
    ctx = ctx_of(request)
    sn = ctx.config.servicenow
    username, password = sn.doorbell_username, secret_value(sn.doorbell_password)
    if not (username and password):
        raise Reject(
            503,
            "not_configured",
            "V2 webhooks need [servicenow] doorbell_username and doorbell_password (basic auth in the extension URL)",
        )
    if not check_credentials(request.headers.get(hdrs.AUTHORIZATION), username=username, password=password):
        raise Reject(401, "unauthorized", "missing or wrong credentials", headers=challenge(False, True))
    body = await read_body(request, ctx.config.daemon.max_body_bytes)
    doc = parse_json_object(body)
    messages = doc.get("messages")
    if messages is None:
        raise Reject(400, "bad_envelope", "messages: required field is missing")
    if not isinstance(messages, list):
        raise Reject(400, "bad_envelope", "messages: expected an array")
    webhook_id = request.headers.get("X-Webhook-Id", "")[:_MAX_WEBHOOK_ID] or None

    events: list[Event] = []
    ignored = 0
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise Reject(400, "bad_envelope", f"{where}: expected an object")
        # The docs' examples name the type `event`; the REST schema and V1 say `type`.
        key = "event" if "event" in message else "type"
        event_type = require_string(message, key, f"{where}.event")
        message_id = require_string(message, "id", f"{where}.id", _PD_ID, "a message id")
        if event_type not in PAGERDUTY_V2_EVENT_TYPES:
            ignored += 1
            if ctx.metrics is not None:
                ctx.metrics.event_ignored("pagerduty", "unknown")
            log.info(
                "webhook_ignored",
                route="pagerduty_v2",
                reason="unknown event type",
                event_type=event_type[:100],
                event_id=message_id,
            )
            continue
        incident = require_object(message, "incident", f"{where}.incident")
        incident_id = require_string(incident, "id", f"{where}.incident.id", _PD_ID, "a PagerDuty id")
        events.append(
            Event(
                # Stored under its V3 name: plugins see one event type, whichever version carried it.
                source="pagerduty",
                type=normalise_pagerduty_type(event_type),
                event_id=message_id,
                resource=f"pagerduty:incident:{incident_id}",
                payload={"message": message, "webhook_id": webhook_id, "webhook_version": 2},
            )
        )

    accepted: list[int] = []
    duplicates = 0
    for event in events:
        row_id = await store_event(ctx, "pagerduty_v2", event)
        if row_id is None:
            duplicates += 1
        else:
            accepted.append(row_id)
    return web.json_response(
        {"status": "accepted", "ids": accepted, "duplicates": duplicates, "ignored": ignored}, status=202
    )
