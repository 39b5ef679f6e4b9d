"""``dutybridge incident sync PD_ID`` through the real command line, next to a running
daemon: ``--config``/``-c`` (and -v) wherever they stand, as for every other command."""

from __future__ import annotations

import asyncio

from dutybridge.cli import main


async def test_incident_sync_takes_the_config_in_every_position(make_world, capsys):
    world = await make_world(sync_option="manual")
    path = str(world.config_path)
    positions = [
        lambda pd: ["incident", "sync", pd, "--config", path],
        lambda pd: ["--config", path, "incident", "sync", pd],
        lambda pd: ["incident", "--config", path, "sync", pd],
        lambda pd: ["incident", "sync", "-c", path, pd],
        lambda pd: ["-v", "incident", "sync", f"--config={path}", pd, "-q"],
    ]
    for argv in positions:
        inc = world.pd.create_incident(title="Cert expiring", service_id="PSVCNET", from_user="PBOBSM1")
        await world.settle()
        assert world.sn_for(inc["id"]) == []  # manual: nothing until asked
        # main() runs its own event loop, as from a shell; the daemon runs in this one.
        assert await asyncio.to_thread(main, argv(inc["id"])) == 0, argv(inc["id"])
        assert capsys.readouterr().out.splitlines()[-1].startswith(f"sync of PagerDuty incident {inc['id']} queued")
        # The request went into the daemon's inbox: the daemon opens the incident.
        await world.wait_for(lambda: world.sn_for(inc["id"]), what=f"SN incident for {argv(inc['id'])}")
    assert await asyncio.to_thread(main, ["incident", "sync", "PNOSUCH", "--config", path]) == 1
    assert "PagerDuty incident PNOSUCH not found" in capsys.readouterr().out
