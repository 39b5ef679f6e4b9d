"""What the v7 app's users suffer, tried on purpose: duplicated and reordered webhooks,
replays, lost pushes (polling alone), and automation bouncing incidents between groups."""

from __future__ import annotations

import asyncio
import random

import aiohttp
import structlog
from aiohttp import web

from dutybridge_plugins.incident_sync.poll import WM_PD, WM_SN
from tests.plugins.incident_sync.world import BOB_SN, DB_GROUP, NET_GROUP, PD_SECRET, V3_EVENTS


def only(rows):
    assert len(rows) == 1, rows
    return rows[0]


async def capture_server():
    """A stand-in receiver that keeps every webhook PagerDuty sends it."""
    received: list[tuple[bytes, dict[str, str]]] = []

    async def handler(request: web.Request) -> web.Response:
        received.append(
            (
                await request.read(),
                {k: v for k, v in request.headers.items() if k.lower().startswith("x-") or k.lower() == "content-type"},
            )
        )
        return web.Response(status=202)

    app = web.Application()
    app.router.add_post("/hook", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/hook", received


async def test_every_event_twice_and_out_of_order_gives_one_incident_in_its_final_state(make_world):
    world = await make_world(webhooks=False)
    runner, url, received = await capture_server()
    try:
        world.pd.create_webhook_subscription(
            {
                "type": "webhook_subscription",
                "delivery_method": {"type": "http_delivery_method", "url": url},
                "events": V3_EVENTS,
                "filter": {"type": "account_reference"},
            },
            secret=PD_SECRET,
        )
        pd = world.pd
        inc = pd.create_incident(title="Checkout errors", service_id="PSVCDB1", from_user="PALICE1")
        pd.acknowledge(inc["id"], "PALICE1")
        pd.add_note(inc["id"], "PALICE1", "first note")
        pd.delegate(inc["id"], "PEPNET1", "PALICE1")
        pd.acknowledge(inc["id"], "PBOBSM1")
        pd.add_note(inc["id"], "PBOBSM1", "second note")
        pd.set_priority(inc["id"], "PPRIO01", "PBOBSM1")
        pd.resolve(inc["id"], "PBOBSM1", resolution="config rolled back")
        await pd.dispatcher.drain()
    finally:
        await runner.cleanup()
    assert len(received) == 8

    deliveries = received * 2
    random.Random(7).shuffle(deliveries)
    deliveries.sort(key=lambda d: 0 if b"incident.resolved" in d[0] else 1)  # the newest event first
    async with aiohttp.ClientSession() as http:
        for body, headers in deliveries:
            async with http.post(f"{world.url}/webhooks/pagerduty", data=body, headers=headers) as resp:
                assert resp.status == 202, await resp.text()
    await world.settle()

    rec = only(world.sn_incidents())
    assert rec["correlation_id"] == inc["id"]
    assert rec["state"] == "6" and rec["close_notes"] == "Resolved in PagerDuty by Bob Smith."
    assert rec["assignment_group"] == NET_GROUP and rec["priority"] == "1"
    notes = world.work_notes(rec["sys_id"])
    assert sorted(n.split(" (PagerDuty:")[0] for n in notes) == ["first note", "second note"]
    mods = rec["sys_mod_count"]

    # Replaying every handled event (as `dutybridge events replay` would) changes nothing.
    for event in await world.store.list_events(limit=1000):
        await world.store.replay(event.id)
    world.ctx.wake_worker()
    await world.settle()
    assert world.sn.get("incident", rec["sys_id"])["sys_mod_count"] == mods
    assert len(world.work_notes(rec["sys_id"])) == 2 and len(world.pd_notes(inc["id"])) == 2


async def test_duplicated_doorbells_and_stale_events_change_nothing(world):
    rec = world.sn.insert(
        "incident",
        {"short_description": "Login failures", "assignment_group": DB_GROUP, "impact": "1", "urgency": "1"},
        user="alice.nguyen",
    )
    await world.settle()
    world.sn.update("incident", rec["sys_id"], {"work_notes": "checking IdP"}, user="alice.nguyen")
    world.sn.update("incident", rec["sys_id"], {"assigned_to": BOB_SN}, user="alice.nguyen")
    await world.settle()
    inc = only(world.pd_for(rec["sys_id"]))
    log_count = len(world.pd.incident_log_entries(inc["id"]))
    bells = [d for d in world.sn.doorbell_deliveries if d["delivered"]]
    assert len(bells) >= 3
    payloads = [{k: d[k] for k in ("table", "sys_id", "operation", "sys_updated_on")} for d in bells]
    async with aiohttp.ClientSession(headers={"Authorization": "Bearer doorbell-incident-sync-e2e"}) as http:
        for payload in list(reversed(payloads)) * 2:
            async with http.post(f"{world.url}/webhooks/servicenow", json=payload) as resp:
                assert resp.status == 202
    # And the handler itself, given an old change after a newer one was synced:
    assert await world.engine.servicenow_changed("incident", rec["sys_id"], "2000-01-01 00:00:00")
    await world.settle()
    assert len(world.pd.incident_log_entries(inc["id"])) == log_count
    assert world.pd_notes(inc["id"]) == ["(from ServiceNow: Alice Nguyen) checking IdP"]
    assert len(world.pd.incidents) == 1


async def test_racing_updates_never_trigger_two_pagerduty_incidents(world):
    await world.poll()  # the first pass only sets the watermark
    # Automation updates the record twice right after it is created (the app's known race).
    rec = world.sn.insert(
        "incident",
        {"short_description": "Race", "assignment_group": DB_GROUP, "impact": "1", "urgency": "1"},
        user="alice.nguyen",
    )
    world.sn.update("incident", rec["sys_id"], {"description": "enriched by automation"}, user="admin")
    world.sn.update("incident", rec["sys_id"], {"work_notes": "auto-triaged"}, user="admin")
    # Polls racing the doorbells feed the same changes again.
    await asyncio.gather(world.poll(), world.poll())
    await world.settle()
    assert len(world.pd_for(rec["sys_id"])) == 1
    assert len(world.sn_incidents()) == 1


async def test_pushes_off_converge_by_polling_alone(make_world):
    world = await make_world(webhooks=False, doorbell=False, poll_interval_seconds=0.2, poll_overlap_seconds=5.0)
    store = world.store

    async def marks_set():
        return all([await store.get_watermark(WM_PD), await store.get_watermark(WM_SN.format(table="incident"))])

    await world.wait_for(marks_set, what="the first poll")
    pd_born = world.pd.create_incident(title="Found by polling", service_id="PSVCDB1", from_user="PALICE1")
    sn_born = world.sn.insert(
        "incident",
        {"short_description": "Also by polling", "assignment_group": NET_GROUP, "impact": "1", "urgency": "2"},
        user="bob.smith",
    )
    await world.wait_for(lambda: world.sn_for(pd_born["id"]), what="PD incident synced to SN")
    await world.wait_for(lambda: world.pd_for(sn_born["sys_id"]), what="SN incident synced to PD")
    sn_of_pd = only(world.sn_for(pd_born["id"]))
    pd_of_sn = only(world.pd_for(sn_born["sys_id"]))

    world.pd.acknowledge(pd_born["id"], "PBOBSM1")
    world.pd.add_note(pd_born["id"], "PBOBSM1", "polled note")
    world.sn.update("incident", sn_born["sys_id"], {"work_notes": "polled work note"}, user="bob.smith")
    world.sn.update("incident", sn_born["sys_id"], {"state": "6", "close_notes": "fixed"}, user="bob.smith")
    await world.wait_for(lambda: world.sn.get("incident", sn_of_pd["sys_id"])["state"] == "2", what="ack via poll")
    await world.wait_for(lambda: world.work_notes(sn_of_pd["sys_id"]), what="note via poll")
    await world.wait_for(lambda: world.pd.incidents[pd_of_sn["id"]]["status"] == "resolved", what="resolve via poll")
    await world.wait_for(lambda: world.pd_notes(pd_of_sn["id"]), what="work note via poll")
    assert world.sn.get("incident", sn_of_pd["sys_id"])["assigned_to"] == BOB_SN
    assert world.pd_notes(pd_of_sn["id"]) == ["(from ServiceNow: Bob Smith) polled work note"]
    # A priority change leaves no PagerDuty log entry: the sweep of open incidents finds it.
    world.pd.set_priority(pd_born["id"], "PPRIO01", "PBOBSM1")
    await world.wait_for(
        lambda: world.sn.get("incident", sn_of_pd["sys_id"])["priority"] == "1",
        what="priority via the open-incident sweep",
    )
    assert len(world.sn_incidents()) == 2 and len(world.pd.incidents) == 2


async def test_two_changes_in_one_second_are_caught_by_the_recheck(make_world):
    # Doorbells of two changes in the same second share an event id; the second is
    # dropped as a duplicate. The recheck reads the record again and syncs it.
    world = await make_world(sn_clock="frozen", recheck_seconds=0.1)
    rec = world.sn.insert(
        "incident",
        {"short_description": "Same second", "assignment_group": DB_GROUP, "impact": "1", "urgency": "1"},
        user="alice.nguyen",
    )
    inc = await world.wait_for(lambda: world.pd_for(rec["sys_id"]), what="the PD incident")
    await world.settle()
    world.sn.update("incident", rec["sys_id"], {"assignment_group": NET_GROUP}, user="alice.nguyen")
    world.sn.update("incident", rec["sys_id"], {"work_notes": "same second note"}, user="alice.nguyen")
    await world.wait_for(lambda: world.pd_notes(inc[0]["id"]), what="the note, via the recheck")
    await world.wait_for(
        lambda: world.pd.incidents[inc[0]["id"]]["escalation_policy"]["id"] == "PEPNET1", what="the reassignment"
    )
    await world.settle()
    assert world.pd_notes(inc[0]["id"]) == ["(from ServiceNow: Alice Nguyen) same second note"]


async def test_two_changes_in_one_second_are_caught_by_the_poll(make_world):
    world = await make_world(sn_clock="frozen")  # rechecks off
    await world.poll()  # the first pass only sets the watermark
    rec = world.sn.insert(
        "incident",
        {"short_description": "Same second", "assignment_group": DB_GROUP, "impact": "1", "urgency": "1"},
        user="alice.nguyen",
    )
    await world.settle()
    inc = only(world.pd_for(rec["sys_id"]))
    world.sn.update("incident", rec["sys_id"], {"assignment_group": NET_GROUP}, user="alice.nguyen")
    world.sn.update("incident", rec["sys_id"], {"work_notes": "same second note"}, user="alice.nguyen")
    await world.settle()
    await world.poll()
    await world.settle()
    assert world.pd.incidents[inc["id"]]["escalation_policy"]["id"] == "PEPNET1"
    assert world.pd_notes(inc["id"]) == ["(from ServiceNow: Alice Nguyen) same second note"]


async def automation(world, stop: asyncio.Event, *, pd_rule: bool) -> None:
    """Business rules on both sides: ServiceNow moves Database to Network; PagerDuty (if
    ``pd_rule``) moves incidents off Network's policy back to Database's."""
    while not stop.is_set():
        for rec in world.sn.query("incident", f"assignment_group={DB_GROUP}^active=true"):
            world.sn.update("incident", rec["sys_id"], {"assignment_group": NET_GROUP}, user="admin")
        if pd_rule:
            for inc in list(world.pd.incidents.values()):
                if inc["status"] != "resolved" and inc["escalation_policy"]["id"] == "PEPNET1":
                    world.pd.delegate(inc["id"], "PEPDB01", "PBOBSM1")
        await asyncio.sleep(0.005)


async def test_groups_sharing_a_policy_do_not_loop(make_world):
    world = await make_world(
        links=[
            {"group": "Database", "service": "PSVCDB1", "escalation_policy": "PEPDB01"},
            {"group": "Network", "service": "PSVCNET", "escalation_policy": "PEPDB01"},
        ]
    )
    stop = asyncio.Event()
    rule = asyncio.create_task(automation(world, stop, pd_rule=False))
    try:
        inc = world.pd.create_incident(title="Shared policy", service_id="PSVCDB1", from_user="PALICE1")
        await world.settle()
        world.pd.delegate(inc["id"], "PEPDB01", "PALICE1")  # someone re-delegates to the same policy
        await world.settle()
        sn_born = world.sn.insert(
            "incident",
            {"short_description": "Shared, from SN", "assignment_group": DB_GROUP, "impact": "1", "urgency": "1"},
            user="alice.nguyen",
        )
        await world.settle()
    finally:
        stop.set()
        await rule
    rec = only(world.sn_for(inc["id"]))
    assert rec["assignment_group"] == NET_GROUP and rec["reassignment_count"] == "1"
    delegations = [e for e in world.pd.incident_log_entries(inc["id"]) if e["type"] == "delegate_log_entry"]
    assert len(delegations) == 1  # only the person's; dutybridge never re-delegated
    other = only(world.pd_for(sn_born["sys_id"]))
    assert not [e for e in world.pd.incident_log_entries(other["id"]) if e["type"] == "delegate_log_entry"]


async def test_automation_fighting_across_systems_is_bounded_and_logged(make_world):
    world = await make_world(max_reassignments=4)
    stop = asyncio.Event()
    rule = asyncio.create_task(automation(world, stop, pd_rule=True))
    try:
        with structlog.testing.capture_logs() as logs:
            rec = world.sn.insert(
                "incident",
                {"short_description": "Tug of war", "assignment_group": DB_GROUP, "impact": "1", "urgency": "1"},
                user="alice.nguyen",
            )
            await world.settle(timeout=15)
    finally:
        stop.set()
        await rule
    inc = only(world.pd_for(rec["sys_id"]))
    ours = [
        e
        for e in world.pd.incident_log_entries(inc["id"])
        if e["type"] == "delegate_log_entry" and e["agent"]["id"] != "PBOBSM1"
    ]
    assert 1 <= len(ours) <= 4
    warnings = [e for e in logs if e["event"] == "reassignment_loop_bound_reached"]
    assert len(warnings) == 1 and warnings[0]["log_level"] == "warning"
    assert warnings[0]["pd_incident"] == inc["id"]
    assert len(world.sn_incidents()) == 1 and len(world.pd.incidents) == 1


async def test_a_resolution_in_servicenow_is_not_undone_by_a_later_acknowledgement(world):
    await world.poll()  # the first pass only sets the watermarks
    rec = world.sn.insert(
        "incident",
        {"short_description": "Crossing", "assignment_group": DB_GROUP, "impact": "1", "urgency": "1"},
        user="alice.nguyen",
    )
    await world.settle()
    inc = only(world.pd_for(rec["sys_id"]))
    # The service desk resolves while its doorbell is lost; then Bob acknowledges in PagerDuty.
    world.sn.configure_doorbell(None)
    world.sn.update("incident", rec["sys_id"], {"state": "6", "close_notes": "user rebooted"}, user="alice.nguyen")
    world.pd.acknowledge(inc["id"], "PBOBSM1")
    await world.settle()
    assert world.sn.get("incident", rec["sys_id"])["state"] == "6"  # not reopened by the acknowledgement
    await world.poll()
    await world.settle()
    assert world.pd.incidents[inc["id"]]["status"] == "resolved"
    assert world.sn.get("incident", rec["sys_id"])["state"] == "6"


async def test_a_group_change_meeting_a_delegation_and_its_undoing_converges(make_world):
    # Handled in this order: ServiceNow's move to Network finds PagerDuty delegated there
    # already (its webhook not handled yet), then PagerDuty is delegated back. That first
    # webhook, handled last, must not take "back on Database" for "nothing changed".
    world = await make_world(webhooks=False, doorbell=False)
    engine = world.engine
    inc = world.pd.create_incident(title="Crossing", service_id="PSVCDB1", from_user="PALICE1")
    assert await engine.pagerduty_changed(inc["id"])
    rec = only(world.sn_for(inc["id"]))
    world.pd.delegate(inc["id"], "PEPNET1", "PALICE1")
    rec = world.sn.update("incident", rec["sys_id"], {"assignment_group": NET_GROUP}, user="alice.nguyen")
    assert await engine.servicenow_changed("incident", rec["sys_id"], mod_count=rec["sys_mod_count"])
    assert world.pd.incidents[inc["id"]]["escalation_policy"]["id"] == "PEPNET1"  # nothing to write
    world.pd.delegate(inc["id"], "PEPDB01", "PALICE1")
    assert await engine.pagerduty_changed(inc["id"])  # the first delegation's webhook
    assert await engine.pagerduty_changed(inc["id"])  # the second's
    assert world.sn.get("incident", rec["sys_id"])["assignment_group"] == DB_GROUP


async def test_a_delegation_meeting_a_group_change_and_its_undoing_converges(make_world):
    # The mirror image: PagerDuty's delegation to Network finds ServiceNow moved there
    # already (its doorbell not handled yet), then ServiceNow is moved back. That first
    # doorbell, handled after, must not take "back on Database" for "nothing changed".
    world = await make_world(webhooks=False, doorbell=False)
    engine = world.engine
    inc = world.pd.create_incident(title="Crossing", service_id="PSVCDB1", from_user="PALICE1")
    assert await engine.pagerduty_changed(inc["id"])
    rec = only(world.sn_for(inc["id"]))
    first = world.sn.update("incident", rec["sys_id"], {"assignment_group": NET_GROUP}, user="alice.nguyen")
    world.pd.delegate(inc["id"], "PEPNET1", "PALICE1")
    assert await engine.pagerduty_changed(inc["id"])  # the group is there already: not written
    back = world.sn.update("incident", rec["sys_id"], {"assignment_group": DB_GROUP}, user="alice.nguyen")
    assert await engine.servicenow_changed("incident", rec["sys_id"], mod_count=first["sys_mod_count"])
    assert await engine.servicenow_changed("incident", rec["sys_id"], mod_count=back["sys_mod_count"])
    assert world.pd.incidents[inc["id"]]["escalation_policy"]["id"] == "PEPDB01"
