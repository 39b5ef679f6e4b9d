"""Builds the daemon: config + plugins -> aiohttp app with store, clients, scheduler and
worker, each one ``cleanup_ctx``; and the ready ``ctx`` of a one-off command.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pluggy
import structlog
from aiohttp import web

from .config import Config, read_toml, validate
from .context import Ctx
from .events import utcnow
from .hooks import hooks_of
from .http import OutboundPipeline
from .metrics import Metrics
from .pagerduty import PagerDutyClient
from .plugins import (
    PluginError,
    build_plugin_manager,
    known_plugins,
    register_hook_files,
)
from .redact import hide_credentials
from .scheduler import Scheduler
from .server import add_routes
from .servicenow import ServiceNowClient
from .store import open_store
from .store.base import Store
from .store.health import WriteTrackingStore
from .web import CTX_KEY
from .worker import CANCEL_GRACE_SECONDS, Worker

log = structlog.get_logger("dutybridge")

#: The running worker, for tests and probes that look at it.
WORKER_KEY: web.AppKey[Worker] = web.AppKey("dutybridge.worker", Worker)


class ShutdownClock:
    """One deadline for the whole shutdown, ``daemon.shutdown_timeout`` from SIGTERM:
    the HTTP drain, the worker's drain and its handlers' cancellation all fit in it."""

    def __init__(self) -> None:
        self.deadline: float | None = None

    def start(self, total: float) -> None:
        if self.deadline is None:
            self.deadline = asyncio.get_running_loop().time() + total

    def remaining(self, total: float) -> float:
        """Seconds left (the clock starts now if nothing started it: a test's cleanup)."""
        self.start(total)
        return max(0.0, (self.deadline or 0.0) - asyncio.get_running_loop().time())


SHUTDOWN_KEY: web.AppKey[ShutdownClock] = web.AppKey("dutybridge.shutdown", ShutdownClock)
#: The HTTP drain's share of shutdown_timeout: a webhook's handler writes one row, so
#: in-flight requests need seconds; the rest is the worker's (handlers call APIs).
HTTP_DRAIN_SHARE = 0.25
#: Of what is left for the worker: the share its handlers get to end once cancelled
#: (at most the worker's own grace), and what is kept for releasing claims, plugins'
#: on_shutdown and closing the store.
CANCEL_SHARE, CLOSE_SHARE = 0.2, 0.1


def worker_budget(remaining: float) -> tuple[float, float]:
    """(drain, cancel grace) for the worker out of ``remaining`` seconds."""
    grace = min(CANCEL_GRACE_SECONDS, remaining * CANCEL_SHARE)
    close = min(1.0, remaining * CLOSE_SHARE)
    return max(0.0, remaining - grace - close), grace


def plugin_schemas(pm: pluggy.PluginManager) -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    for _, result in hooks_of(pm).register_config_sections():
        for section, model in result.items():
            if section in schemas and schemas[section] is not model:
                raise PluginError(f"two plugins declare the configuration section plugins.{section}")
            schemas[section] = model
    return schemas


def hooks_dir_of(raw: dict[str, Any], config_path: Path) -> Path | None:
    daemon = raw.get("daemon") if isinstance(raw.get("daemon"), dict) else {}
    value = daemon.get("hooks_dir", "") if isinstance(daemon, dict) else ""
    if not value or not isinstance(value, str):
        return None
    p = Path(value)
    return p if p.is_absolute() else config_path.resolve().parent / p


def load(
    path: str | os.PathLike[str], *, extra_plugins: Sequence[object] = (), pm: pluggy.PluginManager | None = None
) -> tuple[Config, pluggy.PluginManager]:
    """Read, validate and build: the configuration and its plugin manager.

    Raises ConfigError or PluginError, whose message is one line per problem.
    With ``pm`` (a reload), that manager's plugins provide the schemas and its hook
    files are not touched here.
    """
    path = Path(path)
    raw = read_toml(path)
    known = known_plugins()
    plugins_raw = raw.get("plugins") if isinstance(raw.get("plugins"), dict) else {}
    enabled = plugins_raw.get("enabled", []) if isinstance(plugins_raw, dict) else []
    enabled = [n for n in enabled if isinstance(n, str) and n in known] if isinstance(enabled, list) else []
    if pm is None:
        pm = build_plugin_manager(list(dict.fromkeys(enabled)), None, extra_plugins=list(extra_plugins))
        fresh = True
    else:
        fresh = False
    config = validate(raw, plugin_schemas(pm), known_plugins=list(known), path=path)
    if fresh:
        register_hook_files(pm, hooks_dir_of(raw, path))
    return config, pm


def make_ctx(config: Config, pm: pluggy.PluginManager) -> Ctx:
    return Ctx(config=config, pm=pm, scheduler=Scheduler(), metrics=Metrics())


def open_configured_store(config: Config) -> Store:
    """The store ``daemon.store_url`` names (not yet opened): the one place it is made.
    Its write health is tracked for /readyz, and results it failed to write are retried."""
    secret = config.daemon.store_password
    store = open_store(
        config.daemon.store_url,
        config.resolve_path(".", state=True),
        password=None if secret is None else secret.get_secret_value(),
    )
    return WriteTrackingStore(store)  # type: ignore[return-value]


def build_clients(ctx: Ctx) -> None:
    if ctx.http is None:
        raise RuntimeError("the outbound pipeline is not started")
    old = ctx.pagerduty
    # The rate budget belongs to the API key: a reload with the same key keeps it.
    same_key = old is not None and old.config.api_key == ctx.config.pagerduty.api_key
    ctx.pagerduty = PagerDutyClient(
        ctx.http, ctx.config.pagerduty, limiter=old.limiter if old is not None and same_key else None
    )
    ctx.servicenow = ServiceNowClient(ctx.http, ctx.config.servicenow)


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    ctx = app[CTX_KEY]
    if ctx.store is None:
        ctx.store = open_configured_store(ctx.config)
    await ctx.store.open()
    log.info(
        "store_open",
        store=hide_credentials(ctx.config.daemon.store_url),
        schema_version=await ctx.store.schema_version(),
    )
    yield
    await ctx.store.close()
    log.info("store_closed", phase="shutdown")


async def _http_ctx(app: web.Application) -> AsyncIterator[None]:
    ctx = app[CTX_KEY]
    ctx.http = OutboundPipeline(ctx.hooks, ctx, metrics=ctx.metrics)
    await ctx.http.start()
    build_clients(ctx)
    yield
    await ctx.http.close()
    log.info("http_session_closed", phase="shutdown")


async def _plugins_ctx(app: web.Application) -> AsyncIterator[None]:
    ctx = app[CTX_KEY]
    await ctx.hooks.on_startup(ctx=ctx)
    yield
    try:
        await ctx.hooks.on_shutdown(ctx=ctx)
    except Exception:
        log.exception("plugin_shutdown_failed", phase="shutdown")
    log.info("plugins_stopped", phase="shutdown")


def register_jobs(ctx: Ctx, scheduler: Scheduler) -> None:
    """(Re)schedule the core's housekeeping and every plugin's jobs."""
    scheduler.remove_all_jobs()
    retention = ctx.config.daemon.event_retention_days
    if retention:
        scheduler.add_job(_purge_old_events, "interval", id="dutybridge.purge_old_events", hours=1, args=(ctx,))
    for job in ctx.hooks.register_jobs(ctx=ctx):
        scheduler.add(job)


async def purge_old_events(store: Store, retention_days: int, clock: Callable[[], datetime] = utcnow) -> int:
    """Delete events handled more than ``retention_days`` ago (0 keeps them); the count removed."""
    if retention_days <= 0:
        return 0
    removed = await store.purge_done(clock() - timedelta(days=retention_days))
    if removed:
        log.info("handled_events_purged", count=removed, older_than_days=retention_days)
    return removed


async def _purge_old_events(ctx: Ctx) -> None:
    # Read per run: a reload may change the retention.
    if ctx.store is not None:
        await purge_old_events(ctx.store, ctx.config.daemon.event_retention_days)


async def _scheduler_ctx(app: web.Application) -> AsyncIterator[None]:
    ctx = app[CTX_KEY]
    scheduler = ctx.scheduler = ctx.scheduler or Scheduler()
    register_jobs(ctx, scheduler)
    scheduler.start()
    if ctx.store is not None and ctx.store.shared:
        # Several instances share the store: the jobs run on the elected one only.
        metrics = ctx.metrics
        scheduler.elect(
            ctx.store,
            ctx.config.daemon.leader_lease_seconds,
            on_change=None if metrics is None else metrics.set_scheduler_leader,
        )
    log.info("scheduler_started", jobs=scheduler.job_ids())
    yield
    await scheduler.stop_election()
    scheduler.shutdown()
    log.info("scheduler_stopped", phase="shutdown")


async def _worker_ctx(app: web.Application) -> AsyncIterator[None]:
    ctx = app[CTX_KEY]
    if ctx.store is None:
        raise RuntimeError("the store is not open")
    d = ctx.config.daemon
    worker = Worker(
        ctx.store,
        ctx.hooks,
        ctx,
        concurrency=d.worker_concurrency,
        max_attempts=d.max_attempts,
        retry_base=d.retry_base_seconds,
        retry_max=d.retry_max_seconds,
        lease_seconds=d.lease_seconds,
        metrics=ctx.metrics,
    )
    app[WORKER_KEY] = worker
    ctx.waker = worker.wake
    await worker.start()
    yield
    drain, grace = worker_budget(app[SHUTDOWN_KEY].remaining(ctx.config.daemon.shutdown_timeout))
    log.info("worker_draining", phase="shutdown", timeout=round(drain, 2), cancel_grace=round(grace, 2))
    ctx.waker = None
    await worker.stop(drain, cancel_grace=grace)
    log.info("worker_stopped", phase="shutdown")


@contextlib.asynccontextmanager
async def command_context(
    config: Config, pm: pluggy.PluginManager, *, store: bool = True, clients: bool = True
) -> AsyncIterator[Ctx]:
    """``ctx`` for a one-off command (the CLI's and plugins' commands, ``dutybridge
    check``): store open, clients ready, nothing listening, no worker."""
    ctx = make_ctx(config, pm)
    async with contextlib.AsyncExitStack() as stack:
        if store:
            ctx.store = open_configured_store(config)
            await ctx.store.open()
            stack.push_async_callback(ctx.store.close)
        if clients:
            ctx.http = OutboundPipeline(ctx.hooks, ctx, metrics=ctx.metrics)
            await ctx.http.start()
            stack.push_async_callback(ctx.http.close)
            build_clients(ctx)
        yield ctx


def create_app(
    config: Config, pm: pluggy.PluginManager, *, ctx: Ctx | None = None, worker: bool = True, scheduler: bool = True
) -> web.Application:
    """The daemon as an aiohttp application; resources open when it starts."""
    ctx = ctx or make_ctx(config, pm)
    app = web.Application(client_max_size=config.daemon.max_body_bytes)
    app[CTX_KEY] = ctx
    app[SHUTDOWN_KEY] = ShutdownClock()
    add_routes(app)
    app.router.add_routes(ctx.hooks.register_routes(ctx=ctx))
    app.cleanup_ctx.append(_store_ctx)
    app.cleanup_ctx.append(_http_ctx)
    app.cleanup_ctx.append(_plugins_ctx)
    if scheduler:
        app.cleanup_ctx.append(_scheduler_ctx)
    if worker:
        app.cleanup_ctx.append(_worker_ctx)
    return app
