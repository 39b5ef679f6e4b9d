"""Builds and runs the daemon: config + plugins -> aiohttp app with store, clients,
scheduler and worker, each one ``cleanup_ctx``; signals, systemd notify, reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

import pluggy
import structlog
from aiohttp import web

from . import systemd
from .config import Config, ConfigError, read_toml, validate
from .connections import runner_kwargs, start_site
from .context import Ctx
from .events import utcnow
from .hooks import hooks_of
from .http import OutboundPipeline
from .logging import adjust_level, set_level, set_secrets
from .logging import configure as configure_logging
from .metrics import Metrics
from .pagerduty import PagerDutyClient
from .plugins import (
    PluginError,
    build_plugin_manager,
    known_plugins,
    register_hook_files,
)
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


#: Keys read once at start; a reload that changes them says a restart is needed.
RESTART_KEYS = ("daemon.listen_host", "daemon.listen_port", "daemon.store_url",
                "daemon.worker_concurrency", "daemon.log_format", "daemon.max_connections",
                "daemon.keepalive_timeout_seconds")


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


def load(path: str | os.PathLike, *, extra_plugins: list[object] = (),
         pm: pluggy.PluginManager | None = None) -> tuple[Config, pluggy.PluginManager]:
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
    return WriteTrackingStore(open_store(config.daemon.store_url, config.resolve_path(".", state=True)))  # type: ignore[return-value]


def build_clients(ctx: Ctx) -> None:
    if ctx.http is None:
        raise RuntimeError("the outbound pipeline is not started")
    old = ctx.pagerduty
    # The rate budget belongs to the API key: a reload with the same key keeps it.
    same_key = old is not None and old.config.api_key == ctx.config.pagerduty.api_key
    ctx.pagerduty = PagerDutyClient(ctx.http, ctx.config.pagerduty,
                                    limiter=old.limiter if same_key else None)
    ctx.servicenow = ServiceNowClient(ctx.http, ctx.config.servicenow)


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    ctx = app[CTX_KEY]
    if ctx.store is None:
        ctx.store = open_configured_store(ctx.config)
    await ctx.store.open()
    log.info("store open", store=_safe_url(ctx.config.daemon.store_url),
             schema_version=await ctx.store.schema_version())
    yield
    await ctx.store.close()
    log.info("shutdown: store closed")


def _safe_url(url: str) -> str:
    # postgresql://user:password@host/db -> postgresql://user:***@host/db
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        user = cred.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url


async def _http_ctx(app: web.Application) -> AsyncIterator[None]:
    ctx = app[CTX_KEY]
    ctx.http = OutboundPipeline(ctx.hooks, ctx, metrics=ctx.metrics)
    await ctx.http.start()
    build_clients(ctx)
    yield
    await ctx.http.close()
    log.info("shutdown: outbound HTTP session closed")


async def _plugins_ctx(app: web.Application) -> AsyncIterator[None]:
    ctx = app[CTX_KEY]
    await ctx.hooks.on_startup(ctx=ctx)
    yield
    try:
        await ctx.hooks.on_shutdown(ctx=ctx)
    except Exception:  # noqa: BLE001 - shutdown goes on
        log.exception("shutdown: a plugin's on_shutdown failed")
    log.info("shutdown: plugins stopped")


def register_jobs(ctx: Ctx, scheduler: Scheduler) -> None:
    """(Re)schedule the core's housekeeping and every plugin's jobs."""
    scheduler.remove_all_jobs()
    retention = ctx.config.daemon.event_retention_days
    if retention:
        scheduler.add_job(_purge_old_events, "interval", id="dutybridge.purge_old_events",
                          hours=1, args=(ctx,))
    for job in ctx.hooks.register_jobs(ctx=ctx):
        scheduler.add(job)


async def _purge_old_events(ctx: Ctx) -> None:
    days = ctx.config.daemon.event_retention_days
    if days and ctx.store is not None:
        removed = await ctx.store.purge_done(utcnow() - timedelta(days=days))
        if removed:
            log.info("purged handled events", count=removed, older_than_days=days)


async def _scheduler_ctx(app: web.Application) -> AsyncIterator[None]:
    ctx = app[CTX_KEY]
    scheduler = ctx.scheduler = ctx.scheduler or Scheduler()
    register_jobs(ctx, scheduler)
    scheduler.start()
    log.info("scheduler started", jobs=scheduler.job_ids())
    yield
    scheduler.shutdown()
    log.info("shutdown: scheduler stopped")


async def _worker_ctx(app: web.Application) -> AsyncIterator[None]:
    ctx = app[CTX_KEY]
    if ctx.store is None:
        raise RuntimeError("the store is not open")
    d = ctx.config.daemon
    worker = Worker(ctx.store, ctx.hooks, ctx, concurrency=d.worker_concurrency, max_attempts=d.max_attempts,
                    retry_base=d.retry_base_seconds, retry_max=d.retry_max_seconds,
                    lease_seconds=d.lease_seconds, metrics=ctx.metrics)
    app[WORKER_KEY] = worker
    ctx.waker = worker.wake
    await worker.start()
    yield
    drain, grace = worker_budget(app[SHUTDOWN_KEY].remaining(ctx.config.daemon.shutdown_timeout))
    log.info("shutdown: draining the worker", timeout=round(drain, 2), cancel_grace=round(grace, 2))
    ctx.waker = None
    await worker.stop(drain, cancel_grace=grace)
    log.info("shutdown: worker stopped")


@contextlib.asynccontextmanager
async def command_context(config: Config, pm: pluggy.PluginManager, *, store: bool = True,
                          clients: bool = True) -> AsyncIterator[Ctx]:
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


def create_app(config: Config, pm: pluggy.PluginManager, *, ctx: Ctx | None = None,
               worker: bool = True, scheduler: bool = True) -> web.Application:
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


def _changed(old: Config, new: Config, dotted: str) -> bool:
    section, key = dotted.split(".")
    return getattr(getattr(old, section), key) != getattr(getattr(new, section), key)


async def reload(ctx: Ctx, path: Path) -> bool:
    """SIGHUP: re-read config and hook files; a broken one changes nothing."""
    systemd.reloading()
    try:
        new, _ = load(path, pm=ctx.pm)
        register_hook_files(ctx.pm, hooks_dir_of(new.raw, path))
    except (ConfigError, PluginError) as exc:
        log.error("reload rejected: the running configuration stays in force",
                  problems=str(exc).splitlines())
        systemd.ready("serving (last reload rejected)")
        return False
    old = ctx.config
    need_restart = [k for k in RESTART_KEYS if _changed(old, new, k)]
    if new.plugins_enabled != old.plugins_enabled:
        need_restart.append("plugins.enabled")
    ctx.config = new
    set_secrets(new.secrets())
    set_level(new.daemon.log_level, new.daemon.log_levels)
    if ctx.http is not None:
        build_clients(ctx)
    if ctx.scheduler is not None and ctx.scheduler.running:
        register_jobs(ctx, ctx.scheduler)
    if need_restart:
        log.warning("reloaded; these changes take effect after a restart", keys=need_restart)
    else:
        log.info("reloaded configuration and hook files")
    systemd.ready()
    return True


async def _watchdog(ctx: Ctx, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        # Ping only while the store answers: a wedged daemon should be restarted.
        try:
            healthy = ctx.store is not None and await asyncio.wait_for(ctx.store.ping(), interval)
        except Exception:  # noqa: BLE001
            healthy = False
        if healthy:
            systemd.watchdog()
        else:
            log.warning("watchdog: store not answering; not pinging systemd")


async def serve(config: Config, pm: pluggy.PluginManager, path: Path | None) -> int:
    """Run until SIGTERM/SIGINT; reload on SIGHUP. The exit code."""
    ctx = make_ctx(config, pm)
    app = create_app(config, pm, ctx=ctx)
    runner = web.AppRunner(app, handle_signals=False, access_log=None,
                           shutdown_timeout=config.daemon.shutdown_timeout * HTTP_DRAIN_SHARE,
                           **runner_kwargs(config.daemon))
    try:
        await runner.setup()
    except Exception as exc:  # noqa: BLE001 - start-up failures end with a clear line, not a traceback
        log.error("start-up failed", error=f"{type(exc).__name__}: {exc}")
        await runner.cleanup()
        return 1
    try:
        await start_site(runner, ctx, config.daemon.listen_host, config.daemon.listen_port)
    except OSError as exc:
        log.error("cannot listen", host=config.daemon.listen_host, port=config.daemon.listen_port,
                  error=exc.strerror or str(exc))
        await runner.cleanup()
        return 1
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reloads: set[asyncio.Task] = set()

    def on_stop(signame: str) -> None:
        log.info("signal received; stopping", signal=signame)
        stop.set()

    def on_hup() -> None:
        if path is None:
            log.warning("SIGHUP ignored: no configuration file to reload")
            return
        task = loop.create_task(reload(ctx, path))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    # Handlers before READY=1: a SIGHUP's default action would end the process.
    loop.add_signal_handler(signal.SIGTERM, on_stop, "SIGTERM")
    loop.add_signal_handler(signal.SIGINT, on_stop, "SIGINT")
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    addresses = [f"http://{a[0]}:{a[1]}" for a in runner.addresses if isinstance(a, tuple)]
    log.info("listening", urls=addresses, pid=os.getpid())
    systemd.ready(f"serving on {', '.join(addresses)}")
    interval = systemd.watchdog_interval()
    watchdog = loop.create_task(_watchdog(ctx, interval)) if interval else None
    try:
        await stop.wait()
    finally:
        systemd.stopping()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        if watchdog:
            watchdog.cancel()
        total = ctx.config.daemon.shutdown_timeout
        app[SHUTDOWN_KEY].start(total)
        log.info("shutdown: no longer accepting webhooks; finishing in-flight requests",
                 timeout=total * HTTP_DRAIN_SHARE, total=total)
        await runner.cleanup()
        log.info("shutdown complete")
    return 0


def run(path: str | os.PathLike[str], *, verbose: int = 0, quiet: int = 0, stderr: IO[str] | None = None) -> int:
    """``dutybridge run``: load, configure logging, serve. The exit code."""
    stderr = stderr or sys.stderr
    # The plugin manager logs while the configuration loads: configure at the defaults
    # first, so that those lines have the format of all the others.
    configure_logging(adjust_level("info", verbose, quiet))
    try:
        config, pm = load(path)
    except (ConfigError, PluginError) as exc:
        print(str(exc), file=stderr)
        return 2
    configure_logging(adjust_level(config.daemon.log_level, verbose, quiet), config.daemon.log_format,
                      log_levels=config.daemon.log_levels)
    set_secrets(config.secrets())
    for warning in config.warnings:
        log.warning("configuration warning", problem=warning)
    return asyncio.run(serve(config, pm, Path(path)))
