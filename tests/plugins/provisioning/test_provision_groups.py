"""``dutybridge provision groups`` end to end against the sandbox: escalation policy,
service, webhook subscription whose secret the daemon accepts, the links incident sync
reads, idempotence, dry run, existing names, a group without a manager's PagerDuty user."""

from __future__ import annotations

import pytest

from tests.plugins.incident_sync.world import DB_GROUP
from tests.plugins.provisioning.world import DESK_GROUP, outcomes, summary

pytestmark = pytest.mark.slow


def desk_objects(world):
    eps = [e for e in world.pd.escalation_policies.values() if e["name"] == "Service Desk"]
    services = [s for s in world.pd.services.values() if s["name"] == "Service Desk"]
    return eps, services


async def test_a_provisioned_group_syncs_its_incidents_at_once(make_world):
    world = await make_world()
    code, lines, err = await world.cli("provision", "groups", "Service Desk")
    assert code == 0, err
    [group] = outcomes(lines, "group")
    assert group["status"] == "created"
    [ep], [service] = desk_objects(world)
    assert service["escalation_policy"]["id"] == ep["id"]
    # Frank, the manager, has no PagerDuty user: the default user is the target.
    assert [(t["type"], t["id"]) for t in ep["escalation_rules"][0]["targets"]] == [("user_reference", "PINTEGR")]
    assert "no PagerDuty user" in group["detail"]
    [sub] = [s for s in world.pd.webhook_subscriptions.values() if s["filter"].get("id") == service["id"]]
    assert sub["delivery_method"]["url"] == f"{world.url}/webhooks/pagerduty"
    link = await world.store.get_link("group", sn_id=DESK_GROUP)
    assert link.pd_id == service["id"] and link.state["escalation_policy"] == ep["id"]

    # A ServiceNow incident of the group triggers in PagerDuty: no static link, no restart,
    # and no webhook secret in the config.
    rec = world.sn.insert(
        "incident",
        {"short_description": "Printer on fire", "assignment_group": DESK_GROUP, "impact": "1", "urgency": "1"},
    )
    inc = await world.wait_for(
        lambda: [i for i in world.pd.incidents.values() if i["incident_key"] == rec["sys_id"]],
        what="the PagerDuty incident",
    )
    assert inc[0]["service"]["id"] == service["id"]
    # PagerDuty's webhook for it, signed with the secret the store holds, is taken in.
    delivered = await world.wait_for(
        lambda: [d for d in world.pd.webhook_deliveries if d["target_id"] == sub["id"] and d["outcome"] != "retry"],
        what="the webhook of the new incident",
    )
    assert [(d["event_type"], d["status"]) for d in delivered][:1] == [("incident.triggered", 202)]


async def test_running_twice_creates_nothing_new(make_world):
    world = await make_world()
    code, _, err = await world.cli("provision", "groups", "Service Desk")
    assert code == 0, err
    counts = (len(world.pd.escalation_policies), len(world.pd.services), len(world.pd.webhook_subscriptions))
    code, lines, _ = await world.cli("provision", "groups", "Service Desk")
    assert code == 0
    assert [o["status"] for o in outcomes(lines, "group")] == ["skipped"]
    assert (len(world.pd.escalation_policies), len(world.pd.services), len(world.pd.webhook_subscriptions)) == counts


async def test_dry_run_plans_and_writes_nothing(make_world):
    world = await make_world()
    before = (len(world.pd.escalation_policies), len(world.pd.services))
    code, lines, err = await world.cli("provision", "groups", "Service Desk", "--dry-run")
    assert code == 0
    assert [o["status"] for o in outcomes(lines, "group")] == ["planned"]
    assert (len(world.pd.escalation_policies), len(world.pd.services)) == before
    assert await world.store.get_link("group", sn_id=DESK_GROUP) is None
    assert "dry run" in err


async def test_an_existing_name_fails_unless_linking_is_asked(make_world):
    world = await make_world()
    code, lines, err = await world.cli("provision", "groups", "Database")
    assert code == 1
    [group] = outcomes(lines, "group")
    assert group["status"] == "failed" and "already exists" in group["detail"]
    assert "already exists" in err  # the summary names the reason
    assert summary(lines)["failed"] == 1

    code, lines, _ = await world.cli("provision", "groups", DB_GROUP, "--link-existing")
    assert code == 0
    [group] = outcomes(lines, "group")
    # The existing policy and service are linked; only the webhook subscription is new.
    assert group["status"] == "created"
    assert group["pagerduty"]["escalation_policy"] == "PEPDB01" and group["pagerduty"]["service"] == "PSVCDB1"
    assert [s["filter"] for s in world.pd.webhook_subscriptions.values()] == [
        {"type": "service_reference", "id": "PSVCDB1"}
    ]
    link = await world.store.get_link("group", sn_id=DB_GROUP)
    assert link.pd_id == "PSVCDB1"


async def test_an_unknown_group_fails_the_command(make_world):
    world = await make_world()
    code, lines, _ = await world.cli("provision", "groups", "No Such Group")
    assert code == 1
    assert outcomes(lines, "group")[0]["detail"] == "not found in ServiceNow"
