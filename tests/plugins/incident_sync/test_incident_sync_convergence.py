"""Failures the incident-sync state machine found (stress/incident_sync_machine.py), each
as a deterministic test: handlers called in the order that broke convergence."""

from __future__ import annotations

from dutybridge import hookimpl
from tests.plugins.incident_sync.world import DB_GROUP, NET_GROUP


async def sn_born(world) -> tuple[dict, dict]:
    rec = world.sn.insert(
        "incident",
        {"short_description": "Reassigned while resolved", "assignment_group": DB_GROUP, "impact": "1", "urgency": "1"},
        user="alice.nguyen",
    )
    await world.engine.servicenow_changed("incident", rec["sys_id"])
    [inc] = world.pd_for(rec["sys_id"])
    assert inc["escalation_policy"]["id"] == "PEPDB01"
    return rec, inc


async def reopened_by_us(world, rec: dict, inc: dict, user: str) -> None:
    """PagerDuty reopened by ``user``; the daemon reopens ServiceNow, then reads the echo
    of that write, which must find the group unsynced and move the policy."""
    world.pd.reopen(inc["id"], user)
    await world.engine.pagerduty_changed(inc["id"])  # ServiceNow reopened by us
    assert world.sn.get("incident", rec["sys_id"])["state"] not in ("6", "7", "8")
    await world.engine.servicenow_changed("incident", rec["sys_id"])  # the echo of that write
    assert world.pd.incidents[inc["id"]]["escalation_policy"]["id"] == "PEPNET1"
    assert world.sn.get("incident", rec["sys_id"])["assignment_group"] == NET_GROUP


async def test_a_group_changed_while_resolved_follows_when_servicenow_reopens(make_world):
    # The machine's group/escalation-policy mismatch: a group change read while the
    # ServiceNow incident was resolved was recorded as synced, though only the resolution
    # went to PagerDuty; once reopened, the pair kept two policies for good.
    world = await make_world(doorbell=False, webhooks=False)
    rec, inc = await sn_born(world)
    world.sn.update("incident", rec["sys_id"], {"state": "6", "close_notes": "done"}, user="bob.smith")
    world.sn.update("incident", rec["sys_id"], {"assignment_group": NET_GROUP}, user="alice.nguyen")
    await world.engine.servicenow_changed("incident", rec["sys_id"])  # one read: resolved and reassigned
    assert world.pd.incidents[inc["id"]]["status"] == "resolved"
    world.sn.update("incident", rec["sys_id"], {"state": "2"}, user="alice.nguyen")
    await world.engine.servicenow_changed("incident", rec["sys_id"])
    pd = world.pd.incidents[inc["id"]]
    assert pd["status"] != "resolved" and pd["escalation_policy"]["id"] == "PEPNET1"


async def test_a_group_changed_while_resolved_follows_when_our_write_reopens_it(make_world):
    # The same, reopened by the daemon's own write (PagerDuty reopened): the echo of that
    # write finds the group still unsynced and moves the policy.
    world = await make_world(doorbell=False, webhooks=False)
    rec, inc = await sn_born(world)
    world.sn.update("incident", rec["sys_id"], {"state": "6", "close_notes": "done"}, user="bob.smith")
    world.sn.update("incident", rec["sys_id"], {"assignment_group": NET_GROUP}, user="alice.nguyen")
    await world.engine.servicenow_changed("incident", rec["sys_id"])
    await reopened_by_us(world, rec, inc, "PALICE1")


async def test_a_group_changed_while_pagerduty_is_resolved_follows_when_reopened(make_world):
    # Seed 4 of the machine, polling on and off: Bob resolved in PagerDuty and Alice moved
    # the group in ServiceNow before the daemon read either. The ServiceNow read found
    # PagerDuty resolved, so no policy could move, yet the group was recorded as synced;
    # PagerDuty, reopened later, kept the old policy and the pair two for good.
    world = await make_world(doorbell=False, webhooks=False)
    rec, inc = await sn_born(world)
    world.pd.resolve(inc["id"], "PBOBSM1")
    world.sn.update("incident", rec["sys_id"], {"assignment_group": NET_GROUP}, user="alice.nguyen")
    await world.engine.servicenow_changed("incident", rec["sys_id"])  # PagerDuty resolved: nothing moves
    assert world.pd.incidents[inc["id"]]["escalation_policy"]["id"] == "PEPDB01"
    await world.engine.pagerduty_changed(inc["id"])  # the resolve reaches ServiceNow
    assert world.sn.get("incident", rec["sys_id"])["state"] == "6"
    await world.engine.servicenow_changed("incident", rec["sys_id"])  # the echo of that write
    await reopened_by_us(world, rec, inc, "PDAVEP1")


async def test_a_group_changed_while_pagerduty_is_resolved_follows_when_servicenow_reopens(make_world):
    # The same pair, reopened in PagerDuty before the resolve ever reached ServiceNow: the
    # next read of ServiceNow (any change there) finds the group unsynced and moves the policy.
    world = await make_world(doorbell=False, webhooks=False)
    rec, inc = await sn_born(world)
    world.pd.resolve(inc["id"], "PBOBSM1")
    world.sn.update("incident", rec["sys_id"], {"assignment_group": NET_GROUP}, user="alice.nguyen")
    await world.engine.servicenow_changed("incident", rec["sys_id"])
    world.pd.reopen(inc["id"], "PDAVEP1")
    world.sn.update("incident", rec["sys_id"], {"work_notes": "looking"}, user="alice.nguyen")
    await world.engine.servicenow_changed("incident", rec["sys_id"])
    assert world.pd.incidents[inc["id"]]["escalation_policy"]["id"] == "PEPNET1"


async def test_a_group_held_back_for_a_resolved_pagerduty_is_read_again_when_nothing_rings(make_world):
    # The same, but PagerDuty was reopened before its resolve reached ServiceNow: no side
    # writes, nothing rings again, and a poll reads only records changed since the last.
    # The held-back version stays unread, and one recheck reads it when it can move.
    world = await make_world(webhooks=False, recheck_seconds=0.2)
    rec, inc = await sn_born(world)
    await world.settle()
    world.pd.resolve(inc["id"], "PBOBSM1")
    world.sn.update("incident", rec["sys_id"], {"assignment_group": NET_GROUP}, user="alice.nguyen")
    await world.settle()  # its doorbell: PagerDuty resolved, nothing moves
    assert world.pd.incidents[inc["id"]]["escalation_policy"]["id"] == "PEPDB01"
    world.pd.reopen(inc["id"], "PDAVEP1")
    await world.engine.pagerduty_changed(inc["id"])  # reopened: the same as before the resolve
    await world.wait_for(
        lambda: world.pd.incidents[inc["id"]]["escalation_policy"]["id"] == "PEPNET1", what="the policy moved"
    )


async def test_a_policy_changed_just_before_a_resolve_follows_when_reopened(make_world):
    # The mirror image, as the machine hit it (PagerDuty's log: delegate, resolve, then
    # our reopen from ServiceNow): the delegation and the resolve were read together, so
    # only the resolve reached ServiceNow, and the new policy was recorded as synced.
    world = await make_world(doorbell=False, webhooks=False)
    rec, inc = await sn_born(world)
    world.pd.delegate(inc["id"], "PEPNET1", "PALICE1")
    world.pd.resolve(inc["id"], "PALICE1")
    await world.engine.pagerduty_changed(inc["id"])  # one read: delegated and resolved
    assert world.sn.get("incident", rec["sys_id"])["state"] == "6"
    world.sn.update("incident", rec["sys_id"], {"state": "2"}, user="alice.nguyen")  # reopened there
    await world.engine.servicenow_changed("incident", rec["sys_id"])  # PagerDuty reopened
    await world.engine.pagerduty_changed(inc["id"])  # the echo of that reopen
    await world.engine.servicenow_changed("incident", rec["sys_id"])  # and of what it wrote
    pd, sn = world.pd.incidents[inc["id"]], world.sn.get("incident", rec["sys_id"])
    assert pd["status"] != "resolved" and sn["state"] not in ("6", "7", "8")
    assert {DB_GROUP: "PEPDB01", NET_GROUP: "PEPNET1"}[sn["assignment_group"]] == pd["escalation_policy"]["id"]


class ResolveBeforePut:
    """Resolves the PagerDuty incident (a person, in PagerDuty) right before the daemon's
    next PUT to it reaches PagerDuty: after the daemon read it, before its write."""

    def __init__(self, world_box: list) -> None:
        self.world_box = world_box
        self.armed: str | None = None

    @hookimpl
    def outbound_request(self, request, ctx):
        if self.armed and request.method == "PUT" and request.operation == "PUT /incidents/{id}":
            iid, self.armed = self.armed, None
            self.world_box[0].pd.resolve(iid, "PBOBSM1")


async def test_a_resolve_between_our_read_and_our_reassignment_reaches_servicenow(make_world):
    # The machine (polling on): ServiceNow moved the group, the daemon read PagerDuty,
    # Bob resolved there, then the daemon's reassignment answered with the incident as
    # resolved; that status was recorded as our write's echo, so Bob's resolve (its
    # webhook skipped as synced) never reached ServiceNow.
    box: list = []
    fault = ResolveBeforePut(box)
    world = await make_world(extra_plugins=[fault], poll_interval_seconds=3600.0)
    box.append(world)
    rec = world.sn.insert(
        "incident",
        {"short_description": "Resolved under our write", "assignment_group": DB_GROUP, "impact": "1", "urgency": "1"},
        user="alice.nguyen",
    )
    [inc] = await world.wait_for(lambda: world.pd_for(rec["sys_id"]), what="the PagerDuty incident")
    await world.settle()
    fault.armed = inc["id"]
    world.sn.update("incident", rec["sys_id"], {"assignment_group": NET_GROUP}, user="alice.nguyen")
    await world.settle()
    assert fault.armed is None, "the reassignment was sent"
    assert world.pd.incidents[inc["id"]]["status"] == "resolved"
    assert world.sn.get("incident", rec["sys_id"])["state"] == "6"
