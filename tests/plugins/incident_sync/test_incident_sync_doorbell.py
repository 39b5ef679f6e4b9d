"""Doorbells without sys_mod_count (an older or hand-written business rule): a change in
the same second as the daemon's own write is never dropped as a duplicate, and the echo
of that write still costs no more than the one read of the record."""

from __future__ import annotations

from tests.plugins.incident_sync.test_incident_sync_calls import Recorder, open_sn
from tests.plugins.incident_sync.world import NET_GROUP


async def test_a_change_in_the_second_of_our_own_write_is_synced_at_once(make_world):
    # Every change in one second; no recheck, no poll: only the doorbell can bring it.
    world = await make_world(sn_clock="frozen", doorbell_mod_count=False)
    rec = open_sn(world, "Same second as ours")
    [inc] = await world.wait_for(lambda: world.pd_for(rec["sys_id"]), what="the PagerDuty incident")
    await world.settle()
    world.pd.acknowledge(inc["id"], "PBOBSM1")
    await world.wait_for(lambda: world.sn.get("incident", rec["sys_id"])["state"] == "2", what="our write")
    world.sn.update("incident", rec["sys_id"], {"work_notes": "right after yours"}, user="alice.nguyen")
    await world.wait_for(lambda: world.pd_notes(inc["id"]), what="the note, from its own doorbell")
    world.sn.update("incident", rec["sys_id"], {"assignment_group": NET_GROUP}, user="alice.nguyen")
    await world.wait_for(
        lambda: world.pd.incidents[inc["id"]]["escalation_policy"]["id"] == "PEPNET1", what="the reassignment"
    )
    await world.settle()
    assert world.pd_notes(inc["id"]) == ["(from ServiceNow: Alice Nguyen) right after yours"]


async def test_the_echo_of_our_write_costs_one_read(make_world):
    recorder = Recorder()
    world = await make_world(sn_clock="frozen", doorbell_mod_count=False, extra_plugins=[recorder])
    rec = open_sn(world, "Echo")
    [inc] = await world.wait_for(lambda: world.pd_for(rec["sys_id"]), what="the PagerDuty incident")
    await world.settle()
    recorder.on = True
    world.pd.acknowledge(inc["id"], "PBOBSM1")
    await world.wait_for(lambda: world.sn.get("incident", rec["sys_id"])["state"] == "2", what="our write")
    await world.settle()
    ops = recorder.ops()
    ours = max(
        i
        for i, (service, method, _) in enumerate(recorder.calls)
        if service == "servicenow" and method in ("PUT", "PATCH")
    )
    # After our write, its echo: the record read once, found at the version we wrote.
    assert ops[ours + 1 :] == [("servicenow", "GET /api/now/table/incident/{sys_id}")]
