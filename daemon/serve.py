"""``dutybridge run`` as a process: the listening sockets bound first, signals, SIGHUP's
reload against what runs, the systemd watchdog, and one deadline for the whole shutdown.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pluggy
import structlog
from aiohttp import web

from . import eventloop, systemd
from .app import (
    HTTP_DRAIN_SHARE,
    SHUTDOWN_KEY,
    WORKER_KEY,
    build_clients,
    create_app,
    hooks_dir_of,
    load,
    make_ctx,
    register_jobs,
)
from .config import Config, ConfigError
from .connections import runner_kwargs, start_sites
from .context import Ctx
from .logging import adjust_level, set_level, set_secrets
from .logging import configure as configure_logging
from .plugins import PluginError, register_hook_files
from .redact import safe_url

log = structlog.get_logger("dutybridge")


#: Keys read once at start; a reload that changes them says a restart is needed.
#: shutdown_timeout is the runner's and the worker's drain, both fixed at start.
RESTART_KEYS = (
    "daemon.listen_host",
    "daemon.listen_port",
    "daemon.store_url",
    "daemon.worker_concurrency",
    "daemon.log_format",
    "daemon.shutdown_timeout",
    "daemon.max_connections",
    "daemon.keepalive_timeout_seconds",
    "daemon.store_password",
    "daemon.leader_lease_seconds",
)
#: Worker settings a reload applies to the running worker: ``daemon`` key -> attribute.
WORKER_SETTINGS = {
    "max_attempts": "max_attempts",
    "retry_base_seconds": "retry_base",
    "retry_max_seconds": "retry_max",
    "lease_seconds": "lease_seconds",
}
#: Every other ``daemon`` key is read where it is used (hooks_dir by reload itself),
#: so the next request, job or log line sees the reloaded value.
LIVE_KEYS = (
    "daemon.public_url",
    "daemon.hooks_dir",
    "daemon.log_level",
    "daemon.log_levels",
    "daemon.max_body_bytes",
    "daemon.event_retention_days",
    "daemon.header_timeout_seconds",
    "daemon.body_timeout_seconds",
    "daemon.max_body_bytes_in_flight",
)


@dataclass(frozen=True)
class Running:
    """What a serving process runs, as its reloads need it: the configuration it
    started with (restart-only keys keep those values), its app (for the worker) and
    the command line's -v/-q, which adjust every reloaded log level as they did the first."""

    config: Config
    app: web.Application | None = None
    verbose: int = 0
    quiet: int = 0


def _changed(old: Config, new: Config, dotted: str) -> bool:
    section, key = dotted.split(".")
    return getattr(getattr(old, section), key) != getattr(getattr(new, section), key)


async def reload(ctx: Ctx, path: Path, running: Running | None = None) -> bool:
    """SIGHUP: re-read config and hook files; a broken one changes nothing.

    Restart-only keys are compared with ``running.config`` (what this process started
    with), so a reverted change is quiet and an unapplied one is said at every reload.
    Without ``running`` (no process around it) they are compared with ``ctx.config``.
    """
    running = running or Running(ctx.config)
    systemd.reloading()
    try:
        new, _ = load(path, pm=ctx.pm)
        register_hook_files(ctx.pm, hooks_dir_of(new.raw, path))
    except (ConfigError, PluginError) as exc:
        log.error("reload_rejected", reason="the running configuration stays in force", problems=str(exc).splitlines())
        systemd.ready("serving (last reload rejected)")
        return False
    started = running.config
    need_restart = [k for k in RESTART_KEYS if _changed(started, new, k)]
    if new.plugins_enabled != started.plugins_enabled:
        need_restart.append("plugins.enabled")
    ctx.config = new
    set_secrets(new.secrets())
    set_level(adjust_level(new.daemon.log_level, running.verbose, running.quiet), new.daemon.log_levels)
    worker = running.app.get(WORKER_KEY) if running.app is not None else None
    applied: dict[str, Any] = {}
    if worker is not None:
        for key, attribute in WORKER_SETTINGS.items():
            value = getattr(new.daemon, key)
            if getattr(worker, attribute) != value:
                setattr(worker, attribute, value)
                applied[f"daemon.{key}"] = value
        if applied:
            # A shorter retry delay or lease may make something due before the worker's wait ends.
            worker.wake()
    if ctx.http is not None:
        build_clients(ctx)
    if ctx.scheduler is not None and ctx.scheduler.running:
        register_jobs(ctx, ctx.scheduler)
    if need_restart:
        log.warning(
            "reloaded_restart_needed",
            reason="these changes take effect after a restart",
            keys=need_restart,
            running={k: _running_value(started, k) for k in need_restart},
            worker_applied=applied,
        )
    else:
        log.info("reloaded", detail="configuration and hook files", worker_applied=applied)
    systemd.ready()
    return True


def _running_value(config: Config, dotted: str) -> Any:
    if dotted == "plugins.enabled":
        return list(config.plugins_enabled)
    section, key = dotted.split(".")
    value = getattr(getattr(config, section), key)
    return safe_url(value) if key == "store_url" else value


async def _watchdog(ctx: Ctx, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        # Ping only while the store answers: a wedged daemon should be restarted.
        try:
            healthy = ctx.store is not None and await asyncio.wait_for(ctx.store.ping(), interval)
        except Exception:
            healthy = False
        if healthy:
            systemd.watchdog()
        else:
            log.warning("watchdog_store_not_answering", detail="not pinging systemd")


def _bind(host: str, port: int, backlog: int = 128) -> list[socket.socket]:
    """Listening sockets on every address ``host`` names, bound as asyncio's
    create_server binds them; OSError if one cannot be. Connections made before the
    server starts wait in the backlog."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:
                # One free port for all the addresses, not one each.
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


async def _abandon_start(runner: web.AppRunner, sockets: list[socket.socket]) -> int:
    await runner.cleanup()  # each part that started logs its shutdown step
    for sock in sockets:
        sock.close()  # those no site took over
    log.info("shutdown_complete", phase="shutdown")
    return 1


async def serve(
    config: Config, pm: pluggy.PluginManager, path: Path | None, *, verbose: int = 0, quiet: int = 0
) -> int:
    """Run until SIGTERM/SIGINT; reload on SIGHUP. The exit code.

    ``verbose``/``quiet`` are the command line's -v/-q, kept for every reload.
    """
    ctx = make_ctx(config, pm)
    app = create_app(config, pm, ctx=ctx)
    running = Running(config, app, verbose, quiet)
    d = config.daemon
    # The port first: when it is taken, start-up fails before the worker has claimed
    # an event or a job has run.
    try:
        sockets = _bind(d.listen_host, d.listen_port)
    except OSError as exc:
        log.error("cannot_listen", host=d.listen_host, port=d.listen_port, error=exc.strerror or str(exc))
        log.info("shutdown_complete", phase="shutdown")
        return 1
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        shutdown_timeout=config.daemon.shutdown_timeout * HTTP_DRAIN_SHARE,
        **runner_kwargs(config.daemon),
    )
    try:
        await runner.setup()
    except Exception as exc:
        log.error("startup_failed", error=f"{type(exc).__name__}: {exc}")
        return await _abandon_start(runner, sockets)
    try:
        await start_sites(runner, ctx, sockets)
    except OSError as exc:
        log.error("cannot_listen", host=d.listen_host, port=d.listen_port, error=exc.strerror or str(exc))
        return await _abandon_start(runner, sockets)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reloads: set[asyncio.Task[bool]] = set()

    def on_stop(signame: str) -> None:
        log.info("signal_received", detail="stopping", signal=signame)
        stop.set()

    def on_hup() -> None:
        if path is None:
            log.warning("sighup_ignored", reason="no configuration file to reload")
            return
        task = loop.create_task(reload(ctx, path, running))
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
        log.info(
            "webhooks_stopped",
            phase="shutdown",
            detail="finishing in-flight requests",
            timeout=total * HTTP_DRAIN_SHARE,
            total=total,
        )
        await runner.cleanup()
        log.info("shutdown_complete", phase="shutdown")
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
    configure_logging(
        adjust_level(config.daemon.log_level, verbose, quiet),
        config.daemon.log_format,
        log_levels=config.daemon.log_levels,
    )
    set_secrets(config.secrets())
    for warning in config.warnings:
        log.warning("configuration_warning", problem=warning)
    return eventloop.run(serve(config, pm, Path(path), verbose=verbose, quiet=quiet))
