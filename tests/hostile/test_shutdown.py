"""SIGTERM to exit within daemon.shutdown_timeout, all included, with a request in
flight and a handler that ignores its first cancellation; and the unit's stop timeout
above it.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from dutybridge import hookimpl
from dutybridge.app import load
from dutybridge.config import DaemonConfig
from dutybridge.events import Event
from dutybridge.serve import serve
from tests.hostile.conftest import log_lines

REPO = Path(__file__).resolve().parents[2]


class Stubborn:
    """A slow route and a handler that ignores its first cancellation."""

    def __init__(self) -> None:
        self.handling = asyncio.Event()
        self.requested = asyncio.Event()
        self.ctx = None

    @hookimpl
    def register_routes(self, ctx):
        async def slow(request):
            self.requested.set()
            await asyncio.sleep(60)
            return web.json_response({})

        return [web.get("/slow", slow)]

    @hookimpl
    async def on_startup(self, ctx):
        self.ctx = ctx
        await ctx.enqueue(Event(source="test", type="slow", event_id="slow-1", resource="test:1", payload={}))

    @hookimpl
    async def handle_event(self, event, ctx):
        self.handling.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            await asyncio.sleep(60)  # ignores the first cancel; the second ends it
        return True


async def test_shutdown_takes_at_most_shutdown_timeout_whatever_is_in_flight(hostile_config, json_logs):
    timeout = 3.0
    path = hostile_config({"daemon": {"shutdown_timeout": timeout, "listen_port": 0}, "plugins": {"enabled": []}})
    plugin = Stubborn()
    config, pm = load(path, extra_plugins=[plugin])
    server = asyncio.create_task(serve(config, pm, path))
    async with asyncio.timeout(10):
        await plugin.handling.wait()
    ctx = plugin.ctx
    url = None
    while url is None:
        await asyncio.sleep(0.05)
        url = next((line["urls"][0] for line in log_lines(json_logs) if line["event"] == "listening"), None)
    async with aiohttp.ClientSession() as http:
        slow = asyncio.create_task(http.get(f"{url}/slow"))
        async with asyncio.timeout(5):
            await plugin.requested.wait()
        started = time.monotonic()
        os.kill(os.getpid(), signal.SIGTERM)
        assert await asyncio.wait_for(server, timeout + 5) == 0
        took = time.monotonic() - started
        slow.cancel()
    # Before: the HTTP drain's timeout, then the worker's, then 5 s of cancel grace.
    assert took <= timeout + 0.5, f"shutdown took {took:.1f} s with shutdown_timeout={timeout}"
    assert ctx.store is not None


def test_the_units_stop_timeout_leaves_room_above_the_default_shutdown_timeout():
    unit = (REPO / "contrib" / "systemd" / "dutybridge.service").read_text()
    stop = float(re.search(r"^TimeoutStopSec=(\d+)s$", unit, re.M).group(1))
    default = DaemonConfig.model_fields["shutdown_timeout"].default
    # The whole shutdown fits in shutdown_timeout; the rest is Python's own exit.
    assert stop >= default + 5
    assert "shutdown_timeout" in unit
