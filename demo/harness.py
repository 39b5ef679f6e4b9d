"""Start the daemon in-process on a loopback port, as ``dutybridge run`` would serve it:
the one helper the demo, the end-to-end tests and the benchmarks use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pluggy
from aiohttp import web

from dutybridge.app import create_app, load
from dutybridge.config import Config
from dutybridge.context import Ctx
from dutybridge.web import CTX_KEY


@dataclass
class RunningDaemon:
    """A daemon serving on ``url``; ``ctx`` is its running context."""

    app: web.Application
    runner: web.AppRunner
    url: str

    @property
    def ctx(self) -> Ctx:
        return self.app[CTX_KEY]

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_daemon(
    config: Config | str | Path,
    pm: pluggy.PluginManager | None = None,
    *,
    extra_plugins: Sequence[object] = (),
    host: str = "127.0.0.1",
    port: int = 0,
    shutdown_timeout: float = 5.0,
    worker: bool = True,
    scheduler: bool = True,
) -> RunningDaemon:
    """Load ``config`` (a path, or a loaded ``Config`` with its ``pm``) and serve it.

    Everything ``create_app`` opens (store, clients, plugins, scheduler, worker) is
    running when this returns; ``await daemon.stop()`` shuts it down in order.
    """
    if not isinstance(config, Config):
        config, pm = load(config, extra_plugins=list(extra_plugins))
    if pm is None:
        raise ValueError("a loaded Config needs its plugin manager")
    app = create_app(config, pm, worker=worker, scheduler=scheduler)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = next(a for a in runner.addresses if isinstance(a, tuple))
    return RunningDaemon(app=app, runner=runner, url=f"http://{bound[0]}:{bound[1]}")
