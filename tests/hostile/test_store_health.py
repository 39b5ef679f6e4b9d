"""A store that cannot write (a full disk): not ready, store_up 0, webhooks 503; and
the worker's results that failed to write are written as soon as writes work again,
not left claimed for the whole lease.
"""

from __future__ import annotations

import asyncio
import sqlite3

import aiohttp

from dutybridge import hookimpl
from dutybridge.events import Event
from tests.hostile.conftest import AUTH, inbox

DOORBELL = {
    "table": "incident",
    "sys_id": "0123456789abcdef0123456789abcdef",
    "operation": "update",
    "sys_updated_on": "2024-03-05 14:07:09",
}


class Gated:
    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.gate = asyncio.Event()

    @hookimpl
    async def handle_event(self, event, ctx):
        if event.source != "test":
            return False
        self.started.set()
        await self.gate.wait()
        return True


def fill_the_disk(store, full: list[bool]) -> None:
    """The SQLite store's writes fail as on a full disk while ``full[0]``; reads work."""
    inner = store.inner
    for name in ("add_event", "claim", "complete_and_claim", "complete", "fail", "set_watermark", "release_claims"):
        original = getattr(inner, name)

        async def write(*args, _original=original, **kwargs):
            if full[0]:
                raise sqlite3.OperationalError("database or disk is full")
            return await _original(*args, **kwargs)

        setattr(inner, name, write)


async def test_a_store_that_cannot_write_is_not_ready_and_recovers_its_results(daemon):
    plugin = Gated()
    d = await daemon({"daemon": {"lease_seconds": 300}}, worker=True, scheduler=True, plugins=(plugin,))
    full = [False]
    fill_the_disk(d.ctx.store, full)
    await d.ctx.enqueue(Event(source="test", type="t", event_id="e1", resource="test:1", payload={}))
    async with asyncio.timeout(5):
        await plugin.started.wait()
    full[0] = True
    plugin.gate.set()
    async with asyncio.timeout(5):
        while d.ctx.store.write_ok:  # the worker's attempt to record its result failed
            await asyncio.sleep(0.02)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{d.url}/readyz") as resp:
            assert resp.status == 503
            assert "writes failing" in (await resp.json())["checks"]["store"]
        async with http.get(f"{d.url}/metrics") as resp:
            assert "dutybridge_store_up 0.0" in await resp.text()
        async with http.post(f"{d.url}/webhooks/servicenow", json=DOORBELL, headers=AUTH) as resp:
            assert resp.status == 503
        assert [e.status for e in await inbox(d)] == ["claimed"]

        full[0] = False
        async with http.get(f"{d.url}/readyz") as resp:
            assert resp.status == 200
        async with http.get(f"{d.url}/metrics") as resp:
            assert "dutybridge_store_up 1.0" in await resp.text()
    # Written when writes came back, not after the 300 s lease.
    async with asyncio.timeout(10):
        while [e.status for e in await inbox(d)] != ["done"]:
            await asyncio.sleep(0.05)
    assert d.ctx.store.unwritten == 0
