"""Probes and metrics: ``/healthz`` (the process answers), ``/readyz`` (the store and
scheduler work; plugins' parts as detail), ``/metrics`` (Prometheus text, with the inbox's counts).
"""

from __future__ import annotations

import asyncio

import structlog
from aiohttp import hdrs, web

from .context import Ctx
from .web import ctx_of, error_response

log = structlog.get_logger("dutybridge.server")

_PROBE_TIMEOUT = 3.0


async def healthz(request: web.Request) -> web.StreamResponse:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.StreamResponse:
    ctx = ctx_of(request)
    checks: dict[str, str] = {}
    if ctx.store is None:
        checks["store"] = "not open"
    else:
        try:
            up = await asyncio.wait_for(ctx.store.ping(), _PROBE_TIMEOUT)
            checks["store"] = "ok" if up else "ping failed"
            if up and not await _writable(ctx.store):
                # A store that reads but cannot write (a full disk) takes no webhook.
                checks["store"] = f"writes failing: {getattr(ctx.store, 'last_write_error', None) or 'unknown error'}"
        except TimeoutError:
            checks["store"] = f"no answer within {_PROBE_TIMEOUT:g} s"
        except Exception as exc:
            checks["store"] = f"error: {type(exc).__name__}"
    scheduler = ctx.scheduler
    if scheduler is not None and hasattr(scheduler, "running"):
        running = scheduler.running
        running = running() if callable(running) else running
        checks["scheduler"] = "ok" if running else "not running"
    election = getattr(scheduler, "election", None)
    detail = (
        {}
        if election is None
        else {"scheduler": {"leader": election.leader, "this_instance": election.holder, "leading": election.leading}}
    )
    health = plugin_health(ctx)
    failed = [name for name, state in checks.items() if state != "ok"]
    if failed:
        log.warning("not_ready", checks=checks)
        return error_response(503, f"not ready: {', '.join(failed)}", checks=checks, health=health, **detail)
    # A failing plugin part (one poll of several) leaves the daemon ready: its webhooks
    # still work, so a load balancer must not pull it. The status says it is degraded.
    degraded = any(state != "ok" for parts in health.values() for state in parts.values())
    return web.json_response(
        {"status": "degraded" if degraded else "ready", "checks": checks, "health": health, **detail}
    )


def plugin_health(ctx: Ctx) -> dict[str, dict[str, str]]:
    """Every plugin's ``report_health``; a plugin whose report fails shows that as its state."""
    try:
        health = ctx.hooks.report_health(ctx=ctx)
    except Exception as exc:  # a broken report must not take the probe down with it
        log.warning("plugin_health_unavailable", error=f"{type(exc).__name__}: {exc}")
        return {"report_health": {"call": f"error: {type(exc).__name__}"}}
    if ctx.metrics is not None:
        ctx.metrics.set_plugin_health(health)
    return health


async def _writable(store: object) -> bool:
    """The last write's outcome; when it failed, a probe write tells whether writes
    work again (and writes the results that waited for it)."""
    if getattr(store, "write_ok", True):
        return True
    probe = getattr(store, "probe_write", None)
    return bool(probe is not None and await asyncio.wait_for(probe(), _PROBE_TIMEOUT))


async def metrics(request: web.Request) -> web.StreamResponse:
    ctx = ctx_of(request)
    if ctx.metrics is None:
        raise web.HTTPNotFound()
    counts = None
    if ctx.store is not None:
        try:
            counts = await asyncio.wait_for(ctx.store.counts(), _PROBE_TIMEOUT)
        except Exception:
            log.warning("inbox_counts_unavailable", endpoint="/metrics", exc_info=True)
    ctx.metrics.set_inbox(counts, writable=getattr(ctx.store, "write_ok", True))
    plugin_health(ctx)
    return web.Response(body=ctx.metrics.render(), headers={hdrs.CONTENT_TYPE: ctx.metrics.content_type})
