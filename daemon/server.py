"""The daemon's HTTP face: webhook receivers (PagerDuty V3 and V2, the ServiceNow doorbell),
health and readiness probes, and Prometheus metrics.

A receiver authenticates, bounds the body, validates it, writes one ``Event`` to the
inbox (committed) and only then answers 202; bad input gets a JSON 4xx and is never
stored. ``add_routes`` wires it into the application ``create_app`` builds.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import inspect
import itertools
import json
import os
import re
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import structlog
from aiohttp import hdrs, web
from multidict import CIMultiDict

from .context import Ctx
from .events import EncodedEvent, Event

log = structlog.get_logger("dutybridge.server")

CTX_KEY: web.AppKey[Ctx] = web.AppKey("dutybridge.ctx", Ctx)
"""Where handlers find ``ctx`` (looked up through ``request.config_dict``, so a sub-app works)."""

WAKE_WORKER = "wake_worker"
"""``ctx.extras[WAKE_WORKER]``: a no-argument callable (may be async) that tells the worker
new events are waiting. Optional: without it the worker finds them on its next poll.
It sits on ``ctx`` rather than an AppKey so that plugins' routes and poll jobs can ring too."""

# The V3 event types PagerDuty documents (webhooks/01-Overview.md, "Event Types").
# A subscription only sends what it lists, so anything else is a type PagerDuty added
# since: it is acknowledged (a 4xx would count towards disabling the subscription) and
# logged, but not stored, as no plugin can know what to do with it yet.
PAGERDUTY_V3_EVENT_TYPES: frozenset[str] = frozenset({
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
})
PAGERDUTY_PING = "pagey.ping"

# The V2 extension webhook types (webhooks/09-V2-Overview.md, "Webhook Types"). They
# are stored under their V2 names; plugins map them if they care.
PAGERDUTY_V2_EVENT_TYPES: frozenset[str] = frozenset({
    "incident.trigger",
    "incident.acknowledge",
    "incident.unacknowledge",
    "incident.resolve",
    "incident.assign",
    "incident.escalate",
    "incident.delegate",
    "incident.annotate",
})

SERVICENOW_OPERATIONS = frozenset({"insert", "update", "delete"})
DOORBELL_FIELDS = ("table", "sys_id", "operation", "sys_updated_on", "sys_mod_count")

_PD_ID = re.compile(r"[A-Za-z0-9_.\-]{1,128}")
_SN_TABLE = re.compile(r"[a-z0-9_]{1,80}")
_SN_SYS_ID = re.compile(r"[0-9a-f]{32}")
_SN_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")
_SN_MOD_COUNT = re.compile(r"\d{1,12}")
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_REQUEST_ID_BAD = re.compile(r"[^A-Za-z0-9._:\-]")
_MAX_WEBHOOK_ID = 256
_PROBE_TIMEOUT = 3.0
_REALM = 'realm="dutybridge"'


class Reject(Exception):
    """A request refused with ``status``; ``code`` is the metrics label, ``reason`` the answer."""

    def __init__(self, status: int, code: str, reason: str, headers: dict[str, str] | None = None):
        super().__init__(reason)
        self.status = status
        self.code = code
        self.reason = reason
        self.headers = headers or {}


def error_response(status: int, reason: str, headers: Any = None, **extra: Any) -> web.Response:
    """The one shape of every error answer: ``{"error": reason}``."""
    return web.json_response({"error": reason, **extra}, status=status, headers=headers)


def _accepted(row_id: int) -> web.Response:
    # What json_response({"status": "accepted", "id": row_id}, status=202) sends, byte for
    # byte, without a json.dumps per webhook.
    return web.Response(text=f'{{"status": "accepted", "id": {int(row_id)}}}', status=202,
                        content_type="application/json")


# -- middleware ----------------------------------------------------------------------
# A generated request id: this process's random prefix and a counter, 32 hex digits
# like a uuid4's. Unique (the prefix is fresh per process) and much cheaper than
# reading the OS's random source on every request; it needs to correlate, not be secret.
_REQUEST_ID_PREFIX = os.urandom(8).hex()
_request_counter = itertools.count(1)


def _request_id(value: str | None) -> str:
    if value:
        # Echoed in a header and written to every log line: keep it short and inert.
        clean = _REQUEST_ID_BAD.sub("", value)[:128]
        if clean:
            return clean
    return f"{_REQUEST_ID_PREFIX}{next(_request_counter):016x}"


@web.middleware
async def request_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Bind a request id to the logs, echo it, and turn every error into JSON.

    Covers aiohttp's own 404/405/413 as well as a handler's crash (500, logged with the
    traceback, answered without it).
    """
    request_id = _request_id(request.headers.get("X-Request-Id"))
    # Tokens rather than bound_contextvars(): the same, at a third of the cost. The reset
    # matters: a keep-alive connection serves its requests one after another in one task.
    tokens = structlog.contextvars.bind_contextvars(request_id=request_id)
    try:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400 or exc.content_type == "application/json":
                # Redirects, and errors a plugin route already shaped as JSON, pass as they are.
                exc.headers["X-Request-Id"] = request_id
                raise
            headers = CIMultiDict(exc.headers)
            for name in (hdrs.CONTENT_TYPE, hdrs.CONTENT_LENGTH):
                headers.popall(name, None)
            reason = (exc.reason or "error").lower()
            if exc.text and exc.text != f"{exc.status}: {exc.reason}":
                reason = exc.text  # a route's own words, e.g. HTTPBadRequest(text="...")
            if isinstance(exc, web.HTTPMethodNotAllowed):
                reason = f"method {exc.method} not allowed (allowed: {', '.join(sorted(exc.allowed_methods))})"
            elif isinstance(exc, web.HTTPNotFound):
                reason = f"not found: {request.path}"
            response = error_response(exc.status, reason, headers=headers)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("request failed", method=request.method, path=request.path)
            response = error_response(500, "internal error")
        if not response.prepared:
            response.headers["X-Request-Id"] = request_id
        return response
    finally:
        structlog.contextvars.reset_contextvars(**tokens)


# -- reading and checking requests -----------------------------------------------------
def _too_large(limit: int) -> Reject:
    return Reject(413, "too_large", f"body larger than {limit} bytes", headers={"Connection": "close"})


async def read_body(request: web.Request, limit: int) -> bytes:
    """The raw body, or Reject(413) having read at most ``limit`` + 1 bytes.

    Content-Length is checked first; a chunked body is counted as it streams. What the
    client still sends after a 413 is discarded by aiohttp (bounded lingering), never
    buffered, and the connection is closed.
    """
    length = request.content_length
    if length is not None and length > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    # With a Content-Length the parser passes exactly that many bytes: once they are
    # here, no read for the end of the stream is needed. Chunked: read to the end.
    while size != length:
        chunk = await request.content.read(limit + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
    return b"".join(chunks)


def parse_json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        # ValueError covers bad UTF-8 too; the decoder's message names the position only.
        raise Reject(400, "bad_json", "body: not valid JSON") from None
    if not isinstance(data, dict):
        raise Reject(400, "bad_json", "body: expected a JSON object")
    return data


def parse_json_object_text(body: bytes) -> tuple[dict[str, Any], str | None]:
    """``parse_json_object``, and the body as text when it is plain UTF-8 (else None:
    UTF-16 or UTF-32, a byte order mark, lone surrogates), so it can be stored as sent."""
    try:
        text = body.decode("utf-8")
        data = json.loads(text)
    except (ValueError, RecursionError):
        # json.loads(bytes) takes what the text path refuses (other encodings, a BOM).
        return parse_json_object(body), None
    if not isinstance(data, dict):
        raise Reject(400, "bad_json", "body: expected a JSON object")
    return data, text


def _with_key(text: str | None, doc: dict[str, Any], key: str, value: Any) -> str | None:
    """JSON text that ``json.loads`` reads as ``{**doc, key: value}`` (same keys, same
    order), made from ``text``, the JSON ``doc`` was read from, without encoding ``doc``
    again. None when ``text`` is None.

    The key goes in last; if the sender already used it, JSON's last-one-wins keeps its
    place and takes the new value, as a dict does.
    """
    if text is None:
        return None
    head = text.rstrip()
    if not head.endswith("}"):
        return None
    return f'{head[:-1]}{"," if doc else ""}{json.dumps(key)}:{json.dumps(value)}}}'


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


def check_credentials(header: str | None, *, token: str = "", username: str = "", password: str = "") -> bool:
    """True when ``Authorization`` carries the bearer ``token`` or basic ``username``/``password``.

    An empty ``token`` (or username/password) disables that scheme.
    """
    if not header:
        return False
    scheme, _, credentials = header.strip().partition(" ")
    scheme, credentials = scheme.lower(), credentials.strip()
    if scheme == "bearer" and token:
        return hmac.compare_digest(credentials.encode("utf-8", "replace"), token.encode("utf-8"))
    if scheme == "basic" and username and password:
        try:
            decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            return False
        user, sep, pw = decoded.partition(":")
        user_ok = hmac.compare_digest(user.encode("utf-8"), username.encode("utf-8"))
        pw_ok = hmac.compare_digest(pw.encode("utf-8"), password.encode("utf-8"))
        return bool(sep) and user_ok and pw_ok
    return False


def _challenge(token: bool, basic: bool) -> dict[str, str]:
    schemes = ([f"Bearer {_REALM}"] if token else []) + ([f'Basic {_REALM}, charset="UTF-8"'] if basic else [])
    return {"WWW-Authenticate": ", ".join(schemes)}


def _secret(value: Any) -> str:
    return value.get_secret_value() if value is not None else ""


def _string(obj: dict[str, Any], key: str, path: str, pattern: re.Pattern[str] | None = None,
            what: str = "a non-empty string") -> str:
    value = obj.get(key)
    if value is None:
        raise Reject(400, "bad_envelope", f"{path}: required field is missing")
    if not isinstance(value, str) or not value or (pattern is not None and not pattern.fullmatch(value)):
        raise Reject(400, "bad_envelope", f"{path}: expected {what}")
    return value


def _object(obj: dict[str, Any], key: str, path: str) -> dict[str, Any]:
    value = obj.get(key)
    if value is None:
        raise Reject(400, "bad_envelope", f"{path}: required field is missing")
    if not isinstance(value, dict):
        raise Reject(400, "bad_envelope", f"{path}: expected an object")
    return value


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


def _valid_datetime(value: str) -> bool:
    try:
        datetime.strptime(value, "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return False
    return True


# -- the routes ----------------------------------------------------------------------
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Receivers:
    """The handlers; each finds ``ctx`` at request time, so a reload that swaps
    ``ctx.config`` (secrets, limits) applies to the next request."""

    def __init__(self, ctx_key: web.AppKey[Ctx]) -> None:
        self.ctx_key = ctx_key

    def ctx(self, request: web.Request) -> Ctx:
        return request.config_dict[self.ctx_key]

    def guarded(self, route: str, handler: Handler) -> Handler:
        """Answer a Reject as JSON, count it, and log it (never headers or secrets)."""

        async def guarded_handler(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(request)
            except Reject as rej:
                ctx = request.config_dict.get(self.ctx_key)
                if ctx is not None and ctx.metrics is not None:
                    ctx.metrics.webhook_rejected(route, rej.code)
                level = log.error if rej.status >= 500 else log.warning
                level("webhook rejected", route=route, status=rej.status, reason=rej.code, detail=rej.reason)
                response = error_response(rej.status, rej.reason, headers=rej.headers)
                if rej.status == 413:
                    response.force_close()
                return response

        return guarded_handler

    async def store(self, ctx: Ctx, route: str, event: Event) -> int | None:
        """Enqueue; the row id, or None for a duplicate. A store failure is a 503 so the
        sender retries (PagerDuty does for 48 h) rather than drops."""
        if ctx.store is None:
            raise Reject(503, "store_unavailable", "the inbox is not open; retry later")
        try:
            stored = await ctx.enqueue(event)
        except Exception:
            log.exception("inbox write failed", route=route, event_id=event.event_id)
            raise Reject(503, "store_unavailable", "the inbox is unavailable; retry later") from None
        if stored is None:
            if ctx.metrics is not None:
                ctx.metrics.event_duplicate(event.source, event.type)
            log.info("webhook duplicate", route=route, event_type=event.type, event_id=event.event_id,
                     resource=event.resource)
            return None
        log.info("webhook accepted", route=route, event_type=event.type, event_id=event.event_id,
                 resource=event.resource, id=stored.id)
        return stored.id


    def ignored(self, ctx: Ctx, route: str, source: str, label: str, reason: str, **kw: Any) -> web.Response:
        if ctx.metrics is not None:
            ctx.metrics.event_ignored(source, label)
        log.info("webhook ignored", route=route, reason=reason, **kw)
        return web.json_response({"status": "ignored", "reason": reason}, status=202)

    # -- POST /webhooks/pagerduty -------------------------------------------------------
    async def pagerduty_v3(self, request: web.Request) -> web.StreamResponse:
        """PagerDuty V3 webhook subscriptions, signed in ``X-PagerDuty-Signature``.

        Deduplication is on ``event.id`` (durable, in the store, shared by instances).
        ``X-Webhook-Id`` is kept in the payload for tracing but is no dedupe key of its
        own: it is constant across the retries of one delivery, which carry the same
        ``event.id`` anyway, it differs between two subscriptions delivering the same
        event (which must be acted on once), and it is not covered by the signature.
        """
        ctx = self.ctx(request)
        secrets = [s for s in (_secret(v) for v in ctx.config.pagerduty.webhook_secrets) if s]
        if not secrets:
            # 503, not 2xx: an unsigned webhook could come from anyone. PagerDuty retries
            # a 5xx for 48 h, so nothing is lost while the operator adds the secret.
            raise Reject(503, "not_configured",
                         "no PagerDuty webhook secret is configured ([pagerduty] webhook_secrets); unsigned webhooks are refused")
        signature = request.headers.get("X-PagerDuty-Signature")
        if not signature:
            raise Reject(401, "no_signature", "missing X-PagerDuty-Signature header")
        body = await read_body(request, ctx.config.daemon.max_body_bytes)
        if not verify_pagerduty_signature(body, signature, secrets):
            raise Reject(401, "bad_signature", "X-PagerDuty-Signature does not match the body under any configured secret")

        doc, text = parse_json_object_text(body)
        event = _object(doc, "event", "event")
        event_type = _string(event, "event_type", "event.event_type")
        webhook_id = request.headers.get("X-Webhook-Id", "")[:_MAX_WEBHOOK_ID] or None
        if event_type == PAGERDUTY_PING:
            return self.ignored(ctx, "pagerduty", "pagerduty", event_type, "ping", webhook_id=webhook_id)
        event_id = _string(event, "id", "event.id", _PD_ID, "a PagerDuty event id")
        resource_type = _string(event, "resource_type", "event.resource_type", _PD_ID, "a resource type")
        data = _object(event, "data", "event.data")
        if event_type not in PAGERDUTY_V3_EVENT_TYPES:
            return self.ignored(ctx, "pagerduty", "pagerduty", "unknown", "unknown event type",
                                event_type=event_type[:100], event_id=event_id, webhook_id=webhook_id)
        if event_type.split(".", 1)[0] != resource_type:
            raise Reject(400, "bad_envelope", f"event.resource_type: {resource_type!r} does not match event_type {event_type!r}")
        path, subject = pagerduty_subject(resource_type, data)
        if not isinstance(subject, str) or not _PD_ID.fullmatch(subject):
            raise Reject(400, "bad_envelope", f"{path}: {'required field is missing' if subject is None else 'expected a PagerDuty id'}")

        payload = dict(doc)
        payload["webhook_id"] = webhook_id
        # The body's own text, not the payload encoded again: the JSON is already there.
        row_id = await self.store(ctx, "pagerduty", EncodedEvent(
            source="pagerduty", type=event_type, event_id=event_id,
            resource=f"pagerduty:{resource_type}:{subject}", payload=payload,
            payload_text=_with_key(text, doc, "webhook_id", webhook_id),
        ))
        if row_id is None:
            return web.json_response({"status": "duplicate"}, status=202)
        return _accepted(row_id)

    # -- POST /webhooks/pagerduty/v2 ----------------------------------------------------
    async def pagerduty_v2(self, request: web.Request) -> web.StreamResponse:
        """Legacy V2 extension webhooks, for operators leaving PagerDuty's ServiceNow v7 app.

        V2 has no signature. The extension URL carries basic-auth credentials
        (``https://user:pass@host/webhooks/pagerduty/v2``, as the v7 app's URL did),
        which PagerDuty sends as an ``Authorization`` header, checked against
        ``[servicenow] doorbell_username``/``doorbell_password``. Not a ``?token=``: a
        query string ends up in access logs and proxy logs; a header does not.
        Each message becomes one event; one bad message refuses the whole delivery.
        """
        ctx = self.ctx(request)
        sn = ctx.config.servicenow
        username, password = sn.doorbell_username, _secret(sn.doorbell_password)
        if not (username and password):
            raise Reject(503, "not_configured",
                         "V2 webhooks need [servicenow] doorbell_username and doorbell_password (basic auth in the extension URL)")
        if not check_credentials(request.headers.get(hdrs.AUTHORIZATION), username=username, password=password):
            raise Reject(401, "unauthorized", "missing or wrong credentials", headers=_challenge(False, True))
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
            event_type = _string(message, key, f"{where}.event")
            message_id = _string(message, "id", f"{where}.id", _PD_ID, "a message id")
            if event_type not in PAGERDUTY_V2_EVENT_TYPES:
                ignored += 1
                if ctx.metrics is not None:
                    ctx.metrics.event_ignored("pagerduty", "unknown")
                log.info("webhook ignored", route="pagerduty_v2", reason="unknown event type",
                         event_type=event_type[:100], event_id=message_id)
                continue
            incident = _object(message, "incident", f"{where}.incident")
            incident_id = _string(incident, "id", f"{where}.incident.id", _PD_ID, "a PagerDuty id")
            events.append(Event(
                source="pagerduty", type=event_type, event_id=message_id,
                resource=f"pagerduty:incident:{incident_id}",
                payload={"message": message, "webhook_id": webhook_id, "webhook_version": 2},
            ))

        accepted: list[int] = []
        duplicates = 0
        for event in events:
            row_id = await self.store(ctx, "pagerduty_v2", event)
            if row_id is None:
                duplicates += 1
            else:
                accepted.append(row_id)
        return web.json_response(
            {"status": "accepted", "ids": accepted, "duplicates": duplicates, "ignored": ignored}, status=202)

    # -- POST /webhooks/servicenow ------------------------------------------------------
    async def servicenow(self, request: web.Request) -> web.StreamResponse:
        """The doorbell a ServiceNow business rule rings when a record changes.

        It only says which record changed: the worker re-reads the record through the
        Table API, so a forged doorbell can make the daemon look, never inject data.
        """
        ctx = self.ctx(request)
        sn = ctx.config.servicenow
        token = _secret(sn.doorbell_token)
        username, password = sn.doorbell_username, _secret(sn.doorbell_password)
        basic = bool(username and password)
        if not (token or basic):
            raise Reject(503, "not_configured",
                         "no doorbell credential is configured ([servicenow] doorbell_token, or doorbell_username and doorbell_password)")
        if not check_credentials(request.headers.get(hdrs.AUTHORIZATION), token=token,
                                 username=username if basic else "", password=password if basic else ""):
            raise Reject(401, "unauthorized", "missing or wrong credentials", headers=_challenge(bool(token), basic))
        body = await read_body(request, ctx.config.daemon.max_body_bytes)
        doc = parse_json_object(body)
        for key in doc:
            if key not in DOORBELL_FIELDS:
                raise Reject(400, "bad_envelope", f"{key[:60]}: unknown field (expected {', '.join(DOORBELL_FIELDS)})")
        table = _string(doc, "table", "table", _SN_TABLE, "a table name (lowercase letters, digits, _)")
        sys_id = _string(doc, "sys_id", "sys_id", _SN_SYS_ID, "32 lowercase hex characters")
        operation = _string(doc, "operation", "operation", None, "insert, update or delete")
        if operation not in SERVICENOW_OPERATIONS:
            raise Reject(400, "bad_envelope", "operation: expected insert, update or delete")
        updated = _string(doc, "sys_updated_on", "sys_updated_on", _SN_DATETIME, "YYYY-MM-DD HH:MM:SS")
        if not _valid_datetime(updated):
            raise Reject(400, "bad_envelope", "sys_updated_on: not a valid date and time")

        payload = {"table": table, "sys_id": sys_id, "operation": operation, "sys_updated_on": updated}
        # sys_updated_on has one-second resolution: two changes within a second would
        # share an id and the second would be dropped as a duplicate. sys_mod_count
        # (sent by the shipped business rule; optional for older ones) is unique per change.
        version = updated
        if "sys_mod_count" in doc:
            mod_count = doc["sys_mod_count"]
            if isinstance(mod_count, int) and not isinstance(mod_count, bool) and mod_count >= 0:
                mod_count = str(mod_count)
            if not isinstance(mod_count, str) or not _SN_MOD_COUNT.fullmatch(mod_count):
                raise Reject(400, "bad_envelope", "sys_mod_count: expected a non-negative whole number")
            payload["sys_mod_count"] = mod_count
            version = f"m{mod_count}"
        row_id = await self.store(ctx, "servicenow", Event(
            source="servicenow", type=f"{table}.{operation}",
            event_id=f"{table}:{sys_id}:{version}:{operation}",
            resource=f"servicenow:{table}:{sys_id}",
            payload=payload,
        ))
        if row_id is None:
            return web.json_response({"status": "duplicate"}, status=202)
        return web.json_response({"status": "accepted", "id": row_id}, status=202)

    # -- probes and metrics -------------------------------------------------------------
    async def healthz(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.StreamResponse:
        ctx = self.ctx(request)
        checks: dict[str, str] = {}
        if ctx.store is None:
            checks["store"] = "not open"
        else:
            try:
                up = await asyncio.wait_for(ctx.store.ping(), _PROBE_TIMEOUT)
                checks["store"] = "ok" if up else "ping failed"
            except asyncio.TimeoutError:
                checks["store"] = f"no answer within {_PROBE_TIMEOUT:g} s"
            except Exception as exc:
                checks["store"] = f"error: {type(exc).__name__}"
        scheduler = ctx.scheduler
        if scheduler is not None and hasattr(scheduler, "running"):
            running = scheduler.running
            running = running() if callable(running) else running
            checks["scheduler"] = "ok" if running else "not running"
        failed = [name for name, state in checks.items() if state != "ok"]
        if failed:
            log.warning("not ready", checks=checks)
            return error_response(503, f"not ready: {', '.join(failed)}", checks=checks)
        return web.json_response({"status": "ready", "checks": checks})

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        ctx = self.ctx(request)
        if ctx.metrics is None:
            raise web.HTTPNotFound()
        counts = None
        if ctx.store is not None:
            try:
                counts = await asyncio.wait_for(ctx.store.counts(), _PROBE_TIMEOUT)
            except Exception:
                log.warning("inbox counts unavailable for /metrics", exc_info=True)
        ctx.metrics.set_inbox(counts)
        return web.Response(body=ctx.metrics.render(), headers={hdrs.CONTENT_TYPE: ctx.metrics.content_type})


def add_routes(app: web.Application, *, ctx_key: web.AppKey[Ctx] = CTX_KEY, prefix: str = "") -> None:
    """Add the receivers, probes and metrics to ``app``, and the request middleware.

    ``app[ctx_key]`` (or a parent app's) must hold the running ``Ctx`` before the
    first request; handlers use ``ctx.config``, ``ctx.store``, ``ctx.metrics``,
    ``ctx.scheduler`` and ``ctx.extras[WAKE_WORKER]``. The middleware applies to
    the whole app, so plugin routes get request ids and JSON errors too; call this
    before the app starts (middlewares freeze then).
    """
    r = Receivers(ctx_key)
    app.middlewares.append(request_middleware)
    app.router.add_post(f"{prefix}/webhooks/pagerduty", r.guarded("pagerduty", r.pagerduty_v3))
    app.router.add_post(f"{prefix}/webhooks/pagerduty/v2", r.guarded("pagerduty_v2", r.pagerduty_v2))
    app.router.add_post(f"{prefix}/webhooks/servicenow", r.guarded("servicenow", r.servicenow))
    app.router.add_get(f"{prefix}/healthz", r.healthz)
    app.router.add_get(f"{prefix}/readyz", r.readyz)
    app.router.add_get(f"{prefix}/metrics", r.metrics)
