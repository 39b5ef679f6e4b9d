"""What every webhook receiver does once a request is valid: write its event to the
inbox (503 when the inbox cannot take it) or acknowledge it as ignored.
"""

from __future__ import annotations

from typing import Any

import structlog
from aiohttp import web

from ..context import Ctx
from ..events import Event
from ..web import Reject

log = structlog.get_logger("dutybridge.server")


async def store_event(ctx: Ctx, route: str, event: Event) -> int | None:
    """Enqueue; the row id, or None for a duplicate. A store failure is a 503 so the
    sender retries (PagerDuty does for 48 h) rather than drops."""
    if ctx.store is None:
        raise Reject(503, "store_unavailable", "the inbox is not open; retry later")
    try:
        stored = await ctx.enqueue(event)
    except Exception:
        log.exception("inbox_write_failed", route=route, event_id=event.event_id)
        raise Reject(503, "store_unavailable", "the inbox is unavailable; retry later") from None
    if stored is None:
        if ctx.metrics is not None:
            ctx.metrics.event_duplicate(event.source, event.type)
        log.info(
            "webhook_duplicate", route=route, event_type=event.type, event_id=event.event_id, resource=event.resource
        )
        return None
    log.info(
        "webhook_accepted",
        route=route,
        event_type=event.type,
        event_id=event.event_id,
        resource=event.resource,
        id=stored.id,
    )
    return stored.id


def ignored(ctx: Ctx, route: str, source: str, label: str, reason: str, **kw: Any) -> web.Response:
    if ctx.metrics is not None:
        ctx.metrics.event_ignored(source, label)
    log.info("webhook_ignored", route=route, reason=reason, **kw)
    return web.json_response({"status": "ignored", "reason": reason}, status=202)
