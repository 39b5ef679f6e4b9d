"""The crash window between ServiceNow's insert and the stored link, reached on purpose:
the daemon stops after ServiceNow committed the incident it opened and before the link
was stored; the daemon started after it on the same store adopts that incident through
its correlation_id and never opens a second."""

from __future__ import annotations

import asyncio

from dutybridge import hookimpl
from tests.plugins.incident_sync.world import restart_daemon


class StopAfterInsert:
    """Holds the handler that opened a ServiceNow incident right after ServiceNow answered
    (the insert is committed there), so the daemon stops with the link not stored, as a
    crash at that point would leave it."""

    def __init__(self) -> None:
        self.inserted = asyncio.Event()
        self.held: list[str] = []

    @hookimpl
    async def outbound_response(self, request, response, ctx):
        if request.method == "POST" and request.operation == "POST /api/now/table/incident" and response.status == 201:
            self.held.append(response.json()["result"]["sys_id"])
            self.inserted.set()
            await asyncio.Event().wait()  # until the daemon's shutdown cancels the handler


async def test_a_stop_between_insert_and_link_adopts_the_incident_after_the_restart(make_world):
    fault = StopAfterInsert()
    world = await make_world(extra_plugins=[fault], daemon={"shutdown_timeout": 0.2})
    inc = world.pd.create_incident(title="Crash window", service_id="PSVCDB1", from_user="PALICE1")
    await asyncio.wait_for(fault.inserted.wait(), 10)
    [opened] = world.sn_for(inc["id"])  # committed in ServiceNow ...
    assert fault.held == [opened["sys_id"]]
    assert await world.links() == []  # ... and not linked here

    await restart_daemon(world)  # the same store: the interrupted event runs again
    await world.wait_for(world.links, what="the link after the restart")
    await world.settle()
    [link] = await world.links()
    assert (link.pd_id, link.sn_id) == (inc["id"], opened["sys_id"])
    assert len(world.sn_for(inc["id"])) == 1 and len(world.sn_incidents()) == 1

    # Adopted, not merely found: the pair syncs from here on.
    world.pd.acknowledge(inc["id"], "PBOBSM1")
    await world.settle()
    assert world.sn.get("incident", opened["sys_id"])["state"] == "2"
    assert len(world.sn_incidents()) == 1
