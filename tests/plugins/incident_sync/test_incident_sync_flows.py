"""End to end, through real HTTP: each flow and setting of incident sync, acting as people
in the two sandboxes and waiting for the daemon to carry the change across."""

from __future__ import annotations

import base64

import aiohttp
import pytest

from tests.plugins.incident_sync.world import (
    ALICE_SN,
    BOB_SN,
    CAROL_SN,
    DB_GROUP,
    DESK_GROUP,
    DOORBELL_TOKEN,
    ERIN_SN,
    NET_GROUP,
    PAYMENTS_API_CI,
    PD_TO_SN,
    SN_INTEGRATION,
    V2_PASSWORD,
    V2_USER,
)

INTEGRATION_SN = "450a5461e2dbad53f265a09c73c9de9d"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_kind(request) -> str:
    """Every flow runs on both stores."""
    return request.param


def only(rows: list[dict]) -> dict:
    assert len(rows) == 1, rows
    return rows[0]


# ---------------------------------------------------------------------------------------
# PagerDuty -> ServiceNow
# ---------------------------------------------------------------------------------------


async def test_pagerduty_lifecycle_reaches_servicenow(world):
    pd = world.pd
    inc = pd.create_incident(
        title="Replica lag on db-01",
        service_id="PSVCDB1",
        from_user="PALICE1",
        body_details="lag 900s on the read replica",
    )
    await world.settle()
    rec = only(world.sn_for(inc["id"]))
    assert rec["short_description"] == "Replica lag on db-01"
    assert rec["correlation_display"] == "PagerDuty" and rec["x_pd_integration_incident"] == ""
    assert rec["assignment_group"] == DB_GROUP
    assert rec["caller_id"] == INTEGRATION_SN
    assert "lag 900s" in rec["description"] and inc["html_url"] in rec["description"]
    assert (rec["impact"], rec["urgency"], rec["priority"]) == ("1", "2", "2")  # high urgency -> 2 - High
    assert rec["state"] == "1"
    assert rec["assigned_to"] == PD_TO_SN[pd.level_targets("PEPDB01", 1)[0]]  # Database's on-call
    link = only(await world.links())
    assert (link.pd_id, link.sn_id) == (inc["id"], rec["sys_id"])
    sys_id = rec["sys_id"]

    pd.acknowledge(inc["id"], "PBOBSM1")
    await world.settle()
    rec = world.sn.get("incident", sys_id)
    assert (rec["state"], rec["assigned_to"]) == ("2", BOB_SN)

    pd.add_note(inc["id"], "PALICE1", "Failing over to db-02")
    await world.settle()
    note = only(world.work_notes(sys_id))
    assert note.startswith("Failing over to db-02 (PagerDuty: Alice Nguyen on ") and note.endswith(")")

    pd.delegate(inc["id"], "PEPNET1", "PALICE1")
    await world.settle()
    rec = world.sn.get("incident", sys_id)
    assert rec["assignment_group"] == NET_GROUP and rec["assigned_to"] == BOB_SN

    pd.reassign(inc["id"], ["PCAROL1"], "PBOBSM1")
    await world.settle()
    assert world.sn.get("incident", sys_id)["assigned_to"] == CAROL_SN

    pd.set_priority(inc["id"], "PPRIO01", "PBOBSM1")
    await world.settle()
    rec = world.sn.get("incident", sys_id)
    assert (rec["impact"], rec["urgency"], rec["priority"]) == ("1", "1", "1")

    pd.resolve(inc["id"], "PCAROL1", resolution="Replica rebuilt")
    await world.settle()
    rec = world.sn.get("incident", sys_id)
    assert rec["state"] == "6" and rec["close_code"] == "Solved (Permanently)"
    assert rec["close_notes"] == "Resolved in PagerDuty by Carol Jones."

    pd.reopen(inc["id"], "PALICE1")
    await world.settle()
    assert world.sn.get("incident", sys_id)["state"] == "2"

    # Nothing was echoed back: no PagerDuty note came from ServiceNow, one work note only.
    assert world.pd_notes(inc["id"]) == ["Failing over to db-02"]
    assert len(world.work_notes(sys_id)) == 1
    assert len(world.sn_incidents()) == 1


async def test_escalation_moves_the_assignee(world):
    inc = world.pd.create_incident(title="Disk full", service_id="PSVCDB1", from_user="PALICE1")
    await world.settle()
    world.pd.escalate(inc["id"], 2, "PALICE1")
    await world.settle()
    rec = only(world.sn_for(inc["id"]))
    assert rec["assigned_to"] == ALICE_SN  # level 2 of PEPDB01 is Alice herself
    world.pd.delegate(inc["id"], "PEPNET1", "PALICE1")
    world.pd.escalate(inc["id"], 1, "PALICE1")
    await world.settle()
    rec = only(world.sn_for(inc["id"]))
    assert (rec["assignment_group"], rec["assigned_to"]) == (NET_GROUP, BOB_SN)


async def test_incident_on_an_unmapped_service_is_not_synced(make_world):
    world = await make_world(links=[{"group": "Network", "service": "PSVCNET", "escalation_policy": "PEPNET1"}])
    world.pd.create_incident(title="Not ours", service_id="PSVCDB1", from_user="PALICE1")
    await world.settle()
    assert world.sn_incidents() == []


async def test_assign_only_after_acknowledgement(make_world):
    world = await make_world(assign_on_ack_only=True)
    inc = world.pd.create_incident(title="Queue backlog", service_id="PSVCDB1", from_user="PALICE1")
    await world.settle()
    rec = only(world.sn_for(inc["id"]))
    assert rec["assigned_to"] == ""
    world.pd.reassign(inc["id"], ["PDAVEP1"], "PALICE1")
    await world.settle()
    assert world.sn.get("incident", rec["sys_id"])["assigned_to"] == ""
    world.pd.acknowledge(inc["id"], "PDAVEP1")
    await world.settle()
    rec = world.sn.get("incident", rec["sys_id"])
    assert (rec["state"], rec["assigned_to"]) == ("2", "dbde7f72b54eaa98f17f4745d00f67f2")


async def test_security_incident_type_per_service(make_world):
    world = await make_world(service_options=[{"service": "PSVCNET", "incident_type": "security_incident"}])
    inc = world.pd.create_incident(title="Port scan from 203.0.113.7", service_id="PSVCNET", from_user="PBOBSM1")
    await world.settle()
    assert world.sn_incidents() == []
    rec = only(world.sn_for(inc["id"], "sn_si_incident"))
    assert rec["number"].startswith("SIR") and rec["caller"] == INTEGRATION_SN
    assert rec["assignment_group"] == NET_GROUP and rec["state"] == "10"
    world.pd.acknowledge(inc["id"], "PBOBSM1")
    await world.settle()
    assert world.sn.get("sn_si_incident", rec["sys_id"])["state"] == "16"
    world.pd.resolve(inc["id"], "PBOBSM1")
    await world.settle()
    assert world.sn.get("sn_si_incident", rec["sys_id"])["state"] == "3"
    # And back: reopening the security incident in ServiceNow reopens PagerDuty's.
    world.sn.update("sn_si_incident", rec["sys_id"], {"state": "18"}, user="bob.smith")
    await world.settle()
    assert world.pd.incidents[inc["id"]]["status"] == "triggered"


async def test_incident_type_security_globally(make_world):
    world = await make_world(incident_type="security_incident")
    inc = world.pd.create_incident(title="Malware on db-01", service_id="PSVCDB1", from_user="PALICE1")
    await world.settle()
    only(world.sn_for(inc["id"], "sn_si_incident"))


def basic_auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def test_manual_sync_by_custom_incident_action(make_world):
    world = await make_world(service_options=[{"service": "PSVCDB1", "sync_option": "manual"}])
    await world.poll()  # the first pass only sets the watermarks
    inc = world.pd.create_incident(title="Slow queries", service_id="PSVCDB1", from_user="PALICE1")
    world.pd.add_note(inc["id"], "PALICE1", "looking")
    await world.settle()
    assert world.sn_incidents() == []
    await world.poll()
    await world.settle()
    assert world.sn_incidents() == []  # polling does not sync a manual service's incident either

    # The custom incident action "Sync with ServiceNow" posts the incident (V2 shape).
    body = {
        "messages": [
            {
                "event": "incident.custom",
                "id": "b1f9c7e0-0000-4000-8000-000000000001",
                "incident": {"id": inc["id"], "title": inc["title"]},
            }
        ]
    }
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{world.url}/webhooks/pagerduty/sync", json=body) as resp:
            assert resp.status == 401
            # The challenge names both schemes the doorbell credentials allow.
            assert "Bearer" in resp.headers["WWW-Authenticate"] and "Basic" in resp.headers["WWW-Authenticate"]
        wrong = {"Authorization": basic_auth(V2_USER, "not-the-password")}
        async with http.post(f"{world.url}/webhooks/pagerduty/sync", json=body, headers=wrong) as resp:
            assert resp.status == 401 and (await resp.json()) == {"error": "missing or wrong credentials"}
        headers = {"Authorization": f"Bearer {DOORBELL_TOKEN}"}
        async with http.post(f"{world.url}/webhooks/pagerduty/sync", json=body, headers=headers) as resp:
            assert resp.status == 202
        async with http.post(f"{world.url}/webhooks/pagerduty/sync", json=body, headers=headers) as resp:
            assert resp.status == 202  # a retried delivery: same message id, deduplicated
        basic = {"Authorization": basic_auth(V2_USER, V2_PASSWORD)}  # the action's URL may carry them
        async with http.post(f"{world.url}/webhooks/pagerduty/sync", json=body, headers=basic) as resp:
            assert resp.status == 202
        async with http.post(f"{world.url}/webhooks/pagerduty/sync", json={"nothing": 1}, headers=headers) as resp:
            assert resp.status == 400
    await world.settle()
    rec = only(world.sn_for(inc["id"]))
    assert world.work_notes(rec["sys_id"])[0].startswith("looking (PagerDuty: Alice Nguyen")
    world.pd.resolve(inc["id"], "PALICE1")
    await world.settle()
    assert world.sn.get("incident", rec["sys_id"])["state"] == "6"


async def test_manual_sync_by_cli_command(make_world):
    from dutybridge.cli import build_parser

    world = await make_world(sync_option="manual")
    inc = world.pd.create_incident(title="Cert expiring", service_id="PSVCNET", from_user="PBOBSM1")
    await world.settle()
    assert world.sn_incidents() == []

    parser = build_parser()  # the CLI's own parser, with every plugin's commands
    args = parser.parse_args(["incident", "sync", inc["id"]])
    assert args.plugin == "incident_sync"
    assert await args.plugin_command.handler(args, world.ctx) == 0
    args = parser.parse_args(["incident", "sync", "PNOSUCH"])
    assert await args.plugin_command.handler(args, world.ctx) == 1
    await world.settle()
    rec = only(world.sn_for(inc["id"]))
    assert rec["assignment_group"] == NET_GROUP


async def test_v2_extension_webhooks_for_operators_leaving_the_v7_app(make_world):
    world = await make_world(webhooks=False)
    world.pd.create_extension(
        {
            "type": "extension",
            "name": "servicenow-database",
            "endpoint_url": f"{world.url}/webhooks/pagerduty/v2",
            "extension_schema": {"id": "PAKM60Z", "type": "extension_schema_reference"},
            "extension_objects": [{"id": "PSVCDB1", "type": "service_reference"}],
            "config": {
                "snow_user": V2_USER,
                "snow_password": V2_PASSWORD,
                "sync_options": "sync_all",
                "target": f"{world.url}/webhooks/pagerduty/v2",
            },
        }
    )
    inc = world.pd.create_incident(title="From a V2 extension", service_id="PSVCDB1", from_user="PALICE1")
    await world.settle()
    rec = only(world.sn_for(inc["id"]))
    world.pd.acknowledge(inc["id"], "PALICE1")
    world.pd.add_note(inc["id"], "PALICE1", "v2 note")
    world.pd.resolve(inc["id"], "PALICE1")
    await world.settle()
    rec = world.sn.get("incident", rec["sys_id"])
    assert rec["state"] == "6" and rec["assigned_to"] in (ALICE_SN, PD_TO_SN[world.pd.level_targets("PEPDB01", 1)[0]])
    assert world.work_notes(rec["sys_id"])[0].startswith("v2 note (PagerDuty: Alice Nguyen")


# ---------------------------------------------------------------------------------------
# ServiceNow -> PagerDuty
# ---------------------------------------------------------------------------------------


def open_sn(
    world, *, group: str = DB_GROUP, impact: str = "1", urgency: str = "1", user: str = "alice.nguyen", **fields
) -> dict:
    return world.sn.insert(
        "incident",
        {
            "short_description": "Payments API 500s",
            "description": "since 10:02",
            "assignment_group": group,
            "impact": impact,
            "urgency": urgency,
            "caller_id": ALICE_SN,
            **fields,
        },
        user=user,
    )


async def test_servicenow_lifecycle_reaches_pagerduty(world):
    rec = open_sn(world)
    await world.settle()
    inc = only(world.pd_for(rec["sys_id"]))
    assert inc["title"] == "Payments API 500s" and inc["service"]["id"] == "PSVCDB1"
    assert inc["escalation_policy"]["id"] == "PEPDB01" and inc["urgency"] == "high"
    assert inc["priority"]["summary"] == "P1"
    trigger = world.pd.incident_log_entries(inc["id"])[-1]
    assert trigger["channel"]["details"] == {
        "description": "since 10:02",
        "servicenow_number": rec["number"],
        "servicenow_sys_id": rec["sys_id"],
    }
    assert trigger["agent"]["id"] == "PALICE1"  # From: the ServiceNow user's email
    rec = world.sn.get("incident", rec["sys_id"])
    assert (rec["correlation_id"], rec["correlation_display"]) == (inc["id"], "PagerDuty")
    sys_id = rec["sys_id"]

    world.sn.update("incident", sys_id, {"work_notes": "Rolling back release 42"}, user="alice.nguyen")
    await world.settle()
    assert world.pd_notes(inc["id"]) == ["(from ServiceNow: Alice Nguyen) Rolling back release 42"]
    assert world.pd.list_notes(inc["id"])[0]["user"]["id"] == "PALICE1"

    world.sn.update("incident", sys_id, {"assignment_group": NET_GROUP}, user="alice.nguyen")
    await world.settle()
    assert world.pd.incidents[inc["id"]]["escalation_policy"]["id"] == "PEPNET1"

    world.sn.update("incident", sys_id, {"assigned_to": CAROL_SN}, user="bob.smith")
    await world.settle()
    assert [a["assignee"]["id"] for a in world.pd.incidents[inc["id"]]["assignments"]] == ["PCAROL1"]

    world.sn.update("incident", sys_id, {"state": "2"}, user="carol.jones")
    await world.settle()
    pd_inc = world.pd.incidents[inc["id"]]
    assert pd_inc["status"] == "acknowledged" and pd_inc["acknowledgements"][-1]["acknowledger"]["id"] == "PCAROL1"

    world.sn.update("incident", sys_id, {"impact": "2", "urgency": "2"}, user="carol.jones")  # priority 3
    await world.settle()
    assert world.pd.incidents[inc["id"]]["priority"]["summary"] == "P3"
    assert world.pd.incidents[inc["id"]]["urgency"] == "low"

    world.sn.update(
        "incident",
        sys_id,
        {"state": "6", "close_code": "Solved (Permanently)", "close_notes": "Rolled back"},
        user="carol.jones",
    )
    await world.settle()
    pd_inc = world.pd.incidents[inc["id"]]
    assert pd_inc["status"] == "resolved"
    resolve = next(e for e in world.pd.incident_log_entries(inc["id"]) if e["type"] == "resolve_log_entry")
    assert resolve["note"] == "Rolled back" and resolve["agent"]["id"] == "PCAROL1"

    world.sn.update("incident", sys_id, {"state": "2"}, user="carol.jones")
    await world.settle()
    assert world.pd.incidents[inc["id"]]["status"] in ("triggered", "acknowledged")

    assert len(world.pd.incidents) == 1
    assert len(world.work_notes(sys_id)) == 1  # the PD note made from it did not come back
    rec = world.sn.get("incident", sys_id)
    assert rec["assignment_group"] == NET_GROUP and rec["assigned_to"] == CAROL_SN


async def test_only_configured_priorities_trigger_and_an_update_can_qualify(world):
    rec = open_sn(world, impact="2", urgency="2")  # priority 3
    await world.settle()
    assert world.pd.incidents == {}
    world.sn.update("incident", rec["sys_id"], {"impact": "1"}, user="alice.nguyen")  # priority 2
    await world.settle()
    inc = only(world.pd_for(rec["sys_id"]))
    assert inc["urgency"] == "high" and inc["priority"]["summary"] == "P2"


async def test_unmapped_group_does_not_trigger(world):
    open_sn(world, group=DESK_GROUP)
    await world.settle()
    assert world.pd.incidents == {}


@pytest.mark.parametrize("resolve", [True, False])
async def test_reassignment_to_an_unmapped_group(make_world, resolve):
    world = await make_world(resolve_if_unmapped_group=resolve)
    rec = open_sn(world)
    await world.settle()
    inc = only(world.pd_for(rec["sys_id"]))
    world.sn.update("incident", rec["sys_id"], {"assignment_group": DESK_GROUP}, user="alice.nguyen")
    await world.settle()
    link = only(await world.links(include_unlinked=True))
    if resolve:
        assert world.pd.incidents[inc["id"]]["status"] == "resolved"
        assert link.status == "unlinked"
        # Unlinked: later changes on either side stay where they are.
        world.sn.update("incident", rec["sys_id"], {"work_notes": "desk picked it up"}, user="frank.miller")
        await world.settle()
        assert world.pd_notes(inc["id"]) == []
        # Back to a mapped group: a new PagerDuty incident, as the app's "on update" rule does.
        world.sn.update("incident", rec["sys_id"], {"assignment_group": DB_GROUP}, user="frank.miller")
        await world.settle()
        assert len(world.pd_for(rec["sys_id"])) == 2
        assert sum(i["status"] != "resolved" for i in world.pd_for(rec["sys_id"])) == 1
    else:
        assert world.pd.incidents[inc["id"]]["status"] == "triggered"
        assert link.status == "linked"


async def test_escalation_policy_for_hook_chooses_the_policy(make_world):
    from dutybridge import hookimpl

    class PriorityMapping:
        @hookimpl
        def escalation_policy_for(self, group, priority, ctx):
            return "PEPDBP1" if group["name"] == "Database" and priority == "1" else None

    world = await make_world(extra_plugins=[PriorityMapping()])
    p1 = open_sn(world)
    p2 = open_sn(world, urgency="2")
    await world.settle()
    assert only(world.pd_for(p1["sys_id"]))["escalation_policy"]["id"] == "PEPDBP1"
    p2_inc = only(world.pd_for(p2["sys_id"]))
    assert p2_inc["escalation_policy"]["id"] == "PEPDB01"
    # Raised to priority 1: routed to the P1 policy; lowered again: back to the group's.
    world.sn.update("incident", p2["sys_id"], {"urgency": "1"}, user="alice.nguyen")
    await world.settle()
    assert world.pd.incidents[p2_inc["id"]]["escalation_policy"]["id"] == "PEPDBP1"
    world.sn.update("incident", p2["sys_id"], {"urgency": "2"}, user="alice.nguyen")
    await world.settle()
    assert world.pd.incidents[p2_inc["id"]]["escalation_policy"]["id"] == "PEPDB01"
    # A policy someone picks in PagerDuty stays when the priority change does not re-route.
    world.pd.delegate(p2_inc["id"], "PEPNET1", "PALICE1")
    await world.settle()
    world.sn.update("incident", p2["sys_id"], {"impact": "2"}, user="alice.nguyen")  # priority 3
    await world.settle()
    assert world.pd.incidents[p2_inc["id"]]["escalation_policy"]["id"] == "PEPNET1"


@pytest.mark.parametrize("create", [True, False])
async def test_create_missing_pagerduty_users(make_world, create):
    world = await make_world(create_missing_users=create)
    rec = open_sn(world)
    await world.settle()
    inc = only(world.pd_for(rec["sys_id"]))
    world.sn.update("incident", rec["sys_id"], {"assigned_to": ERIN_SN}, user="alice.nguyen")
    await world.settle()
    erin = world.pd.user_by_email("erin.garcia@acme.example")
    assignees = [a["assignee"]["id"] for a in world.pd.incidents[inc["id"]]["assignments"]]
    if create:
        assert erin is not None and erin["role"] == "limited_user" and assignees == [erin["id"]]
    else:
        assert erin is None and assignees == world.pd.level_targets("PEPDB01", 1)


async def test_cis_and_assignment_groups_mapping_mode(make_world):
    world = await make_world(
        mapping_mode="cis_and_assignment_groups",
        links=[
            {"ci": "payments-api", "service": "PSVCDB1"},
            {"group": "Database", "escalation_policy": "PEPDB01"},
            {"group": "Network", "escalation_policy": "PEPNET1"},
        ],
    )
    rec = open_sn(world, group=NET_GROUP, cmdb_ci=PAYMENTS_API_CI)
    await world.settle()
    inc = only(world.pd_for(rec["sys_id"]))
    assert (inc["service"]["id"], inc["escalation_policy"]["id"]) == ("PSVCDB1", "PEPNET1")
    # PagerDuty-born on the CI's service: the CI is set, the group follows the policy.
    other = world.pd.create_incident(title="payments-api latency", service_id="PSVCDB1", from_user="PALICE1")
    await world.settle()
    created = only(world.sn_for(other["id"]))
    assert (created["cmdb_ci"], created["assignment_group"]) == (PAYMENTS_API_CI, DB_GROUP)
    # A group without a CI cannot trigger in this mode: no service to trigger on.
    open_sn(world, group=DB_GROUP)
    await world.settle()
    assert len(world.pd.incidents) == 2


async def test_v7_fields_are_read_and_written(make_world):
    world_seed_groups = {"Database": ("PSVCDB1", "PEPDB01")}
    world = await make_world(links=[], v7_fields=True)
    for name, (service, ep) in world_seed_groups.items():
        group = world.sn.query("sys_user_group", f"name={name}")[0]
        world.sn.update(
            "sys_user_group",
            group["sys_id"],
            {"x_pd_integration_pagerduty_service": service, "x_pd_integration_pagerduty_escalation": ep},
        )
    await world.engine.refresh()  # what on_startup does; the poll does it again each pass
    rec = open_sn(world)
    await world.settle()
    inc = only(world.pd_for(rec["sys_id"]))
    assert world.sn.get("incident", rec["sys_id"])["x_pd_integration_incident"] == inc["id"]
    group_links = await world.store.list_links("group")
    assert [(lk.sn_id, lk.pd_id, lk.state["source"]) for lk in group_links] == [(DB_GROUP, "PSVCDB1", "v7")]

    # Network gets mapped in ServiceNow while the daemon runs: the next poll picks it up.
    world.sn.update(
        "sys_user_group",
        NET_GROUP,
        {"x_pd_integration_pagerduty_service": "PSVCNET", "x_pd_integration_pagerduty_escalation": "PEPNET1"},
    )
    await world.poll()
    world.sn.update("incident", rec["sys_id"], {"assignment_group": NET_GROUP}, user="alice.nguyen")
    await world.settle()
    assert world.pd.incidents[inc["id"]]["escalation_policy"]["id"] == "PEPNET1"

    # The v7 app's user field links users whose emails differ.
    world.sn.update("sys_user", "cca49bea062ac75bd7ce83ba276063ea", {"x_pd_integration_pagerduty_id": "PDAVEP1"})
    world.sn.update("incident", rec["sys_id"], {"assigned_to": "cca49bea062ac75bd7ce83ba276063ea"}, user="alice.nguyen")
    await world.settle()
    assert [a["assignee"]["id"] for a in world.pd.incidents[inc["id"]]["assignments"]] == ["PDAVEP1"]


async def test_incident_opened_by_the_v7_app_is_adopted_not_duplicated(make_world):
    world = await make_world(v7_fields=True)
    inc = world.pd.create_incident(title="Opened by the old app", service_id="PSVCDB1", from_user="PALICE1")
    rec = world.sn.insert(
        "incident",
        {
            "short_description": "Opened by the old app",
            "assignment_group": DB_GROUP,
            "impact": "1",
            "urgency": "1",
            "x_pd_integration_incident": inc["id"],
        },
        user=SN_INTEGRATION,
    )
    await world.settle()
    assert len(world.sn_incidents()) == 1 and len(world.pd.incidents) == 1
    link = only(await world.links())
    assert (link.pd_id, link.sn_id) == (inc["id"], rec["sys_id"])


async def test_check_reports_links_to_missing_pagerduty_objects(make_world):
    world = await make_world(
        links=[
            {"group": "Database", "service": "PSVCDB1", "escalation_policy": "PEPDB01"},
            {"group": "Network", "service": "PNOSUCH", "escalation_policy": "PEPNET1"},
            {"group": "No Such Group", "service": "PSVCDB1"},
        ]
    )
    [check] = world.plugin.register_checks(ctx=world.ctx)
    result = await check.func(world.ctx)
    assert not result.ok
    assert "group Network (config): PagerDuty service PNOSUCH does not exist" in result.detail
    assert "links[2]: no sys_user_group record named or with sys_id 'No Such Group'" in result.detail
    assert "Database" not in result.detail


async def test_check_passes_in_a_command_context(world):
    from dutybridge.app import command_context

    # As `dutybridge check` runs it: its own ctx, store open, no worker.
    async with command_context(world.ctx.config, world.ctx.pm) as cli_ctx:
        [check] = world.plugin.register_checks(ctx=cli_ctx)
        result = await check.func(cli_ctx)
    assert result.ok, result.detail
    assert result.detail.startswith("2 group(s)")


async def test_user_links_are_remembered(world):
    inc = world.pd.create_incident(title="x", service_id="PSVCDB1", from_user="PALICE1")
    await world.settle()
    on_call = world.pd.level_targets("PEPDB01", 1)[0]
    users = {(lk.pd_id, lk.sn_id) for lk in await world.store.list_links("user")}
    assert (on_call, PD_TO_SN[on_call]) in users
    assert only(world.sn_for(inc["id"]))["assigned_to"] == PD_TO_SN[on_call]


async def test_custom_states_templates_maps_and_caller(make_world):
    world = await make_world(
        caller="bob.smith",
        close_code="Resolved by caller",
        close_notes="{user}: {resolution}",
        resolved_state="7",
        done_states="7, 8",
        in_progress_state="3",
        reopened_state="1",
        priorities="P1=2, P2=3",
        urgencies="high=1, low=5",
        servicenow_urgencies="1=low, 2=low, 3=high",
        impact_urgency="1=1/1, 2=2/1, 3=3/1, 5=3/3",
        trigger_priorities="1, 2, 3",
        pagerduty_body="{number}: {short_description} ({work_notes})",
        servicenow_description="{title} on {service}",
        sync_work_notes=False,
    )
    pd = world.pd
    inc = pd.create_incident(title="Custom", service_id="PSVCDB1", from_user="PALICE1")
    await world.settle()
    rec = only(world.sn_for(inc["id"]))
    assert rec["caller_id"] == BOB_SN and rec["description"] == "Custom on Database"
    assert (rec["impact"], rec["urgency"], rec["priority"]) == ("1", "1", "1")  # high -> 1
    pd.set_priority(inc["id"], "PPRIO01", "PALICE1")  # P1 -> 2 -> impact 2, urgency 1
    pd.acknowledge(inc["id"], "PALICE1")
    pd.add_note(inc["id"], "PALICE1", "not copied")
    await world.settle()
    rec = world.sn.get("incident", rec["sys_id"])
    assert (rec["priority"], rec["state"]) == ("2", "3") and world.work_notes(rec["sys_id"]) == []
    pd.resolve(inc["id"], "PALICE1", resolution="fixed it")
    await world.settle()
    rec = world.sn.get("incident", rec["sys_id"])
    assert (rec["state"], rec["close_code"], rec["close_notes"]) == (
        "7",
        "Resolved by caller",
        "Alice Nguyen: fixed it",
    )
    pd.reopen(inc["id"], "PALICE1")
    await world.settle()
    assert world.sn.get("incident", rec["sys_id"])["state"] == "1"

    sn_rec = world.sn.insert(
        "incident",
        {
            "short_description": "Moderate",
            "assignment_group": DB_GROUP,
            "impact": "2",
            "urgency": "2",
            "work_notes": "first look",
        },
        user="alice.nguyen",
    )  # priority 3: triggers with trigger_priorities 1, 2, 3
    await world.settle()
    created = only(world.pd_for(sn_rec["sys_id"]))
    assert created["urgency"] == "high" and created["priority"]["summary"] == "P2"  # 3=high, P2=3
    details = world.pd.incident_log_entries(created["id"])[-1]["channel"]["details"]
    assert details["description"] == f"{sn_rec['number']}: Moderate (first look)"
    assert world.pd_notes(created["id"]) == []
    world.sn.update("incident", sn_rec["sys_id"], {"state": "6"}, user="alice.nguyen")  # not a done state here
    await world.settle()
    assert world.pd.incidents[created["id"]]["status"] == "triggered"
    world.sn.update("incident", sn_rec["sys_id"], {"state": "8"}, user="alice.nguyen")
    await world.settle()
    assert world.pd.incidents[created["id"]]["status"] == "resolved"
