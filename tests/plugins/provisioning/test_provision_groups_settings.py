"""Group provisioning settings (members, schedule, teams, write-back), the licence
question, and recovery: a failure half way, a kill between a create and its record,
a lost webhook secret, a 429 burst."""

from __future__ import annotations

import pytest

from dutybridge_sandbox.faults import FaultInjector
from tests.plugins.provisioning.world import DESK_GROUP, FRANK_SN, outcomes, summary

pytestmark = pytest.mark.slow

ALL_SETTINGS = {
    "provision_members": True,
    "create_schedule": True,
    "create_team": True,
    "use_teams": True,
    "write_back": True,
}


def named(objects, name):
    return [o for o in objects.values() if o["name"] == name]


async def test_members_schedule_team_and_write_back(make_world):
    world = await make_world(**ALL_SETTINGS)
    code, _lines, err = await world.cli("provision", "groups", "Service Desk", "--yes")
    assert code == 0, err
    assert "1 PagerDuty user(s) will be created" in err
    [frank] = [u for u in world.pd.users.values() if u["email"] == "frank.miller@acme.example"]
    assert frank["role"] == "limited_user"
    [schedule] = named(world.pd.schedules, "Service Desk on-call")
    assert [u["user"]["id"] for u in schedule["schedule_layers"][0]["users"]] == [frank["id"]]
    [team] = named(world.pd.teams, "Service Desk")
    members = {m["user"]["id"]: m["role"] for m in world.pd.team_members_list(team["id"])}
    [ep] = named(world.pd.escalation_policies, "Service Desk")
    assert [(t["type"], t["id"]) for t in ep["escalation_rules"][0]["targets"]] == [
        ("schedule_reference", schedule["id"])
    ]
    assert [t["id"] for t in ep["teams"]] == [team["id"]]
    [service] = named(world.pd.services, "Service Desk")
    assert [t["id"] for t in service["teams"]] == [team["id"]]
    group = world.sn.get("sys_user_group", DESK_GROUP)
    assert group["x_pd_integration_pagerduty_escalation"] == ep["id"]
    assert group["x_pd_integration_pagerduty_service"] == service["id"]
    assert group["x_pd_integration_pagerduty_webhook"]
    assert world.sn.get("sys_user", FRANK_SN)["x_pd_integration_pagerduty_id"] == frank["id"]
    assert members == {frank["id"]: "manager"}
    link = await world.store.get_link("user", sn_id=FRANK_SN)
    assert link.pd_id == frank["id"]


async def test_users_are_not_created_without_an_answer(make_world):
    world = await make_world(provision_members=True)
    users = len(world.pd.users)
    code, _lines, err = await world.cli("provision", "groups", "Service Desk")
    assert code == 2
    assert "pass --yes" in err
    assert len(world.pd.users) == users and not named(world.pd.escalation_policies, "Service Desk")


async def test_a_failure_half_way_is_finished_by_the_next_run(make_world):
    world = await make_world()
    world.pd.faults = FaultInjector.parse("POST /services: error_rate=1")
    code, lines, _ = await world.cli("provision", "groups", "Service Desk")
    assert code == 1
    assert outcomes(lines, "group")[0]["status"] == "failed"
    assert len(named(world.pd.escalation_policies, "Service Desk")) == 1
    assert await world.store.get_link("group", sn_id=DESK_GROUP) is None

    world.pd.faults = FaultInjector()
    code, lines, _ = await world.cli("provision", "groups", "Service Desk")
    assert code == 0
    assert outcomes(lines, "group")[0]["status"] == "created"
    assert len(named(world.pd.escalation_policies, "Service Desk")) == 1
    assert len(named(world.pd.services, "Service Desk")) == 1
    assert await world.store.get_link("group", sn_id=DESK_GROUP) is not None


async def test_a_kill_between_create_and_record_leaves_nothing_twice(make_world):
    world = await make_world()
    code, _, _ = await world.cli("provision", "groups", "Service Desk")
    assert code == 0
    [service] = named(world.pd.services, "Service Desk")
    # As if the run had died after PagerDuty answered and before anything was recorded,
    # the webhook's secret included.
    for kind in ("provisioned", "group", "pd_webhook_secret"):
        for link in await world.store.list_links(kind):
            await world.store.delete_link(kind, link.pd_id)
    [old_sub] = [s["id"] for s in world.pd.webhook_subscriptions.values()]

    code, lines, err = await world.cli("provision", "groups", "Service Desk")
    assert code == 0, err
    assert outcomes(lines, "group")[0]["status"] == "created"
    assert named(world.pd.services, "Service Desk") == [service]
    assert len(named(world.pd.escalation_policies, "Service Desk")) == 1
    # The subscription whose secret was lost is replaced by one whose secret is stored.
    [sub] = list(world.pd.webhook_subscriptions.values())
    assert sub["id"] != old_sub
    [secret] = await world.store.list_links("pd_webhook_secret")
    assert secret.pd_id == sub["id"] and secret.state["secret"] == world.pd.subscription_secret(sub["id"])


async def test_a_429_burst_is_waited_out(make_world):
    world = await make_world(pagerduty={"max_retries": 4})  # the default
    world.pd.faults = FaultInjector.parse("seed=5; burst429_rate=0.1, burst429_len=3")
    code, lines, err = await world.cli("provision", "groups", "Service Desk", "Database", "Network", "--link-existing")
    assert code == 0, err
    assert world.pd.faults.injected["429"] >= 3
    assert summary(lines)["failed"] == 0
    assert {o["name"] for o in outcomes(lines, "group")} == {"Service Desk", "Database", "Network"}
