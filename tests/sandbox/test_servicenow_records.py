"""What an instance does to records on write: numbers, priority, journals, sys_ fields,
state stamps, CMDB classes, custom columns, seeds."""

from __future__ import annotations

import itertools
import re

import pytest

from dutybridge_sandbox.servicenow import OperationFailed, RecordNotFound, ServiceNowState, UnknownTable

DATABASE = "791d31c38a869b0f335daf24593fd37d"
NETWORK = "c9f3e1c4781d0ed7199cc9f411b78597"
ALICE = "f164b40bc4b53aa13fb15510f77528f4"
PAYMENTS = "ee5268656e1828ea161cb25f1464eb5c"
DB01 = "6eb44e1a6c6757691cc51b3f09e7036e"


async def _post(client, headers, table, body):
    response = await client.post(f"/api/now/table/{table}", json=body, headers=headers)
    assert response.status == 201, await response.text()
    return (await response.json())["result"]


async def _patch(client, headers, table, sys_id, body):
    response = await client.patch(f"/api/now/table/{table}/{sys_id}", json=body, headers=headers)
    assert response.status == 200, await response.text()
    return (await response.json())["result"]


async def test_incident_numbers_follow_a_sequence(sn_client, sn_state, sn_admin):
    first = await _post(sn_client, sn_admin, "incident", {"short_description": "a"})
    second = await _post(sn_client, sn_admin, "incident", {"short_description": "b"})
    third = sn_state.insert("incident", {"short_description": "c"})
    assert [first["number"], second["number"], third["number"]] == ["INC0010001", "INC0010002", "INC0010003"]
    security = await _post(sn_client, sn_admin, "sn_si_incident", {"short_description": "phishing"})
    assert security["number"] == "SIR0010001"
    sn_state.reset()
    assert sn_state.insert("incident", {})["number"] == "INC0010001"


@pytest.mark.parametrize(("impact", "urgency"), list(itertools.product("123", "123")))
async def test_priority_follows_servicenows_default_matrix(sn_client, sn_admin, impact, urgency):
    expected = {
        ("1", "1"): "1",
        ("1", "2"): "2",
        ("2", "1"): "2",
        ("1", "3"): "3",
        ("2", "2"): "3",
        ("3", "1"): "3",
        ("2", "3"): "4",
        ("3", "2"): "4",
        ("3", "3"): "5",
    }[(impact, urgency)]
    record = await _post(sn_client, sn_admin, "incident", {"impact": impact, "urgency": urgency, "priority": "5"})
    assert record["priority"] == expected


async def test_priority_is_recomputed_when_impact_or_urgency_change(sn_client, sn_admin):
    record = await _post(sn_client, sn_admin, "incident", {"short_description": "x"})
    assert (record["impact"], record["urgency"], record["priority"]) == ("3", "3", "5")
    assert (await _patch(sn_client, sn_admin, "incident", record["sys_id"], {"impact": "1"}))["priority"] == "3"
    assert (await _patch(sn_client, sn_admin, "incident", record["sys_id"], {"urgency": "1"}))["priority"] == "1"
    # Writing priority alone does not override the lookup.
    after = await _patch(sn_client, sn_admin, "incident", record["sys_id"], {"priority": "4"})
    assert after["priority"] == "1"
    assert after["sys_mod_count"] == "2", "a write the lookup undoes changes nothing"


async def test_work_notes_and_comments_go_to_the_journal(sn_client, sn_state, sn_admin, sn_itil):
    record = await _post(sn_client, sn_itil, "incident", {"short_description": "x", "work_notes": "first note"})
    assert record["work_notes"] == ""
    sn_state.advance(5)
    updated = await _patch(
        sn_client, sn_admin, "incident", record["sys_id"], {"work_notes": "second note", "comments": "to the caller"}
    )
    assert updated["work_notes"] == "" and updated["comments"] == ""
    notes = sn_state.journal("incident", record["sys_id"])
    assert [n["value"] for n in notes] == ["first note", "second note"]
    assert [n["sys_created_by"] for n in notes] == ["alice.nguyen", "pagerduty.integration"]
    assert notes[1]["sys_created_on"] == updated["sys_updated_on"]
    assert all(n["element_id"] == record["sys_id"] and n["name"] == "incident" for n in notes)
    assert [c["value"] for c in sn_state.journal("incident", record["sys_id"], "comments")] == ["to the caller"]

    via_api = await sn_client.get(
        "/api/now/table/sys_journal_field",
        headers=sn_admin,
        params={
            "sysparm_query": f"element_id={record['sys_id']}^element=work_notes^ORDERBYsys_created_on",
            "sysparm_fields": "value,sys_created_by,element",
        },
    )
    assert [e["value"] for e in (await via_api.json())["result"]] == ["first note", "second note"]

    shown = await sn_client.get(
        f"/api/now/table/incident/{record['sys_id']}",
        headers=sn_admin,
        params={"sysparm_display_value": "true", "sysparm_fields": "work_notes,comments_and_work_notes"},
    )
    text = (await shown.json())["result"]
    assert text["work_notes"].index("second note") < text["work_notes"].index("first note"), "newest first"
    assert "Alice Nguyen (Work notes)" in text["work_notes"]
    assert "(Additional comments)\nto the caller" in text["comments_and_work_notes"]


async def test_an_admin_may_write_the_journal_directly(sn_client, sn_state, sn_admin, sn_itil):
    record = await _post(sn_client, sn_admin, "incident", {})
    entry = {"element_id": record["sys_id"], "element": "work_notes", "name": "incident", "value": "imported"}
    assert (await sn_client.post("/api/now/table/sys_journal_field", json=entry, headers=sn_itil)).status == 403
    await _post(sn_client, sn_admin, "sys_journal_field", entry)
    assert [(n["value"], n["sys_created_by"]) for n in sn_state.journal("incident", record["sys_id"])] == [
        ("imported", "pagerduty.integration")
    ]


async def test_an_empty_work_note_adds_nothing(sn_client, sn_state, sn_admin):
    record = await _post(sn_client, sn_admin, "incident", {"short_description": "x"})
    after = await _patch(sn_client, sn_admin, "incident", record["sys_id"], {"work_notes": ""})
    assert sn_state.journal("incident", record["sys_id"]) == []
    assert after["sys_mod_count"] == "0"


async def test_sys_fields_are_maintained(sn_client, sn_state, sn_admin, sn_itil):
    record = await _post(
        sn_client, sn_itil, "incident", {"short_description": "x", "sys_created_by": "mallory", "sys_mod_count": "99"}
    )
    assert re.fullmatch(r"[0-9a-f]{32}", record["sys_id"])
    assert record["sys_created_on"] == record["sys_updated_on"] == "2025-03-01 12:00:00"
    assert record["sys_created_by"] == "alice.nguyen", "sys_ fields are not writable"
    assert record["sys_mod_count"] == "0"
    sn_state.advance(1.5)
    first = await _patch(sn_client, sn_admin, "incident", record["sys_id"], {"state": "2"})
    assert first["sys_mod_count"] == "1"
    assert first["sys_updated_on"] == "2025-03-01 12:00:01", "one-second resolution"
    assert first["sys_updated_by"] == "pagerduty.integration"
    assert first["sys_created_by"] == "alice.nguyen"
    second = await _patch(sn_client, sn_admin, "incident", record["sys_id"], {"work_notes": "n"})
    assert second["sys_mod_count"] == "2"
    assert second["sys_updated_on"] == first["sys_updated_on"], "two writes in one second share a timestamp"


async def test_a_write_that_changes_nothing_is_not_an_update(sn_client, sn_state, sn_admin):
    record = await _post(sn_client, sn_admin, "incident", {"short_description": "same"})
    sn_state.advance(10)
    after = await _patch(
        sn_client, sn_admin, "incident", record["sys_id"], {"short_description": "same", "u_unknown": "x"}
    )
    assert after["sys_mod_count"] == "0"
    assert after["sys_updated_on"] == record["sys_updated_on"]


async def test_unknown_fields_are_ignored(sn_client, sn_admin):
    record = await _post(
        sn_client, sn_admin, "incident", {"short_description": "x", "u_made_up": "y", "x_pd_integration_nope": "z"}
    )
    assert "u_made_up" not in record and "x_pd_integration_nope" not in record


async def test_resolve_and_close_stamp_the_record(sn_client, sn_state, sn_admin, sn_itil):
    record = await _post(sn_client, sn_itil, "incident", {"short_description": "x"})
    assert record["state"] == "1" and record["active"] == "true"
    assert record["resolved_at"] == "" and record["closed_at"] == ""
    assert record["opened_at"] == record["sys_created_on"]
    sn_state.advance(60)
    resolved = await _patch(
        sn_client,
        sn_admin,
        "incident",
        record["sys_id"],
        {"state": "6", "close_code": "Solved (Permanently)", "close_notes": "done"},
    )
    assert resolved["resolved_at"] == "2025-03-01 12:01:00"
    assert resolved["resolved_by"]["value"] == "450a5461e2dbad53f265a09c73c9de9d"
    assert resolved["active"] == "true" and resolved["incident_state"] == "6"
    sn_state.advance(60)
    closed = await _patch(sn_client, sn_admin, "incident", record["sys_id"], {"state": "7"})
    assert closed["closed_at"] == "2025-03-01 12:02:00"
    assert closed["resolved_at"] == "2025-03-01 12:01:00"
    assert closed["active"] == "false"


async def test_reopening_clears_the_resolution_and_counts(sn_client, sn_admin):
    record = await _post(sn_client, sn_admin, "incident", {"state": "6"})
    assert record["resolved_at"] != ""
    reopened = await _patch(sn_client, sn_admin, "incident", record["sys_id"], {"state": "2"})
    assert reopened["resolved_at"] == "" and reopened["resolved_by"] == ""
    assert reopened["reopen_count"] == "1"


async def test_reassignment_is_counted(sn_client, sn_admin):
    record = await _post(sn_client, sn_admin, "incident", {"assignment_group": DATABASE})
    moved = await _patch(sn_client, sn_admin, "incident", record["sys_id"], {"assignment_group": NETWORK})
    assert moved["reassignment_count"] == "1"


async def test_a_reference_can_be_set_by_display_value(sn_client, sn_admin):
    record = await _post(sn_client, sn_admin, "incident", {"assignment_group": "Network", "assigned_to": "Bob Smith"})
    assert record["assignment_group"]["value"] == NETWORK
    assert record["assigned_to"]["value"] == "1b4d13e3bdcc91087aa6422d46dd25e7"


async def test_a_data_policy_can_require_resolution_fields(sn_client, sn_state, sn_admin):
    sn_state.require_close_fields = True
    record = await _post(sn_client, sn_admin, "incident", {"short_description": "x"})
    refused = await sn_client.patch(
        f"/api/now/table/incident/{record['sys_id']}", json={"state": "6"}, headers=sn_admin
    )
    assert refused.status == 403
    body = await refused.json()
    assert body["error"]["message"] == "Operation Failed"
    assert "Resolution code" in body["error"]["detail"]
    assert sn_state.get("incident", record["sys_id"])["state"] == "1", "a refused write changes nothing"


async def test_security_incidents_have_their_own_states(sn_client, sn_state, sn_admin, sn_basic):
    record = await _post(sn_client, sn_admin, "sn_si_incident", {"short_description": "phishing"})
    assert record["state"] == "10"
    shown = await sn_client.get(
        f"/api/now/table/sn_si_incident/{record['sys_id']}",
        headers=sn_admin,
        params={"sysparm_display_value": "true", "sysparm_fields": "state"},
    )
    assert (await shown.json())["result"]["state"] == "Draft"
    for value in ("16", "18", "19", "20", "100"):
        assert (await _patch(sn_client, sn_admin, "sn_si_incident", record["sys_id"], {"state": value}))[
            "active"
        ] == "true"
    closed = await _patch(sn_client, sn_admin, "sn_si_incident", record["sys_id"], {"state": "3"})
    assert closed["active"] == "false" and closed["closed_at"] != ""
    # The security analyst role, not itil, opens the table.
    sn_state.set_password("carol.jones", "pw", roles=["sn_si.analyst"])
    carol = sn_basic("carol.jones", "pw")
    assert (await sn_client.get("/api/now/table/sn_si_incident", headers=carol)).status == 200
    assert (await sn_client.get("/api/now/table/incident", headers=carol)).status == 403


async def test_child_classes_are_readable_through_cmdb_ci(sn_client, sn_admin):
    everything = await sn_client.get(
        "/api/now/table/cmdb_ci", headers=sn_admin, params={"sysparm_fields": "name,sys_class_name"}
    )
    classes = {r["name"]: r["sys_class_name"] for r in (await everything.json())["result"]}
    assert classes["Payments"] == "cmdb_ci_service"
    assert classes["db-01"] == "cmdb_ci_server"
    assert classes["payments-api"] == "cmdb_ci_appl"

    server = await _post(
        sn_client, sn_admin, "cmdb_ci_server", {"name": "db-02", "os": "Linux", "assignment_group": DATABASE}
    )
    through_parent = await sn_client.get(f"/api/now/table/cmdb_ci/{server['sys_id']}", headers=sn_admin)
    parent_view = (await through_parent.json())["result"]
    assert parent_view["sys_class_name"] == "cmdb_ci_server"
    assert parent_view["name"] == "db-02"
    assert "os" not in parent_view, "the parent table shows the parent's columns"
    child_view = (
        await (await sn_client.get(f"/api/now/table/cmdb_ci_server/{server['sys_id']}", headers=sn_admin)).json()
    )["result"]
    assert child_view["os"] == "Linux"
    # Not a service: a service-table read does not find it.
    assert (await sn_client.get(f"/api/now/table/cmdb_ci_service/{server['sys_id']}", headers=sn_admin)).status == 404
    services = await sn_client.get(
        "/api/now/table/cmdb_ci", headers=sn_admin, params={"sysparm_query": "sys_class_nameINSTANCEOFcmdb_ci_service"}
    )
    assert {r["name"] for r in (await services.json())["result"]} == {"Payments", "Customer Portal"}


async def test_inserting_into_cmdb_ci_with_a_class_creates_that_class(sn_client, sn_state, sn_admin):
    record = await _post(sn_client, sn_admin, "cmdb_ci", {"name": "web-09", "sys_class_name": "cmdb_ci_server"})
    assert record["sys_class_name"] == "cmdb_ci_server"
    assert record["sys_id"] in sn_state.tables["cmdb_ci_server"]


async def test_seeded_relationships_read_through_references(sn_client, sn_admin):
    response = await sn_client.get(
        "/api/now/table/cmdb_rel_ci",
        headers=sn_admin,
        params={
            "sysparm_query": f"parent={PAYMENTS}",
            "sysparm_fields": "child.name,type.name",
        },
    )
    assert (await response.json())["result"] == [{"child.name": "payments-api", "type.name": "Depends on::Used by"}]


async def test_group_members_are_seeded(sn_client, sn_admin):
    response = await sn_client.get(
        "/api/now/table/sys_user_grmember",
        headers=sn_admin,
        params={
            "sysparm_query": "group.name=Database^ORDERBYuser.name",
            "sysparm_fields": "user.user_name",
        },
    )
    assert [r["user.user_name"] for r in (await response.json())["result"]] == [
        "alice.nguyen",
        "dave.patel",
        "erin.garcia",
    ]


def test_the_seeded_organisation_has_the_v7_apps_columns(sn_state):
    assert "x_pd_integration_incident" in sn_state.columns("incident")
    assert "x_pd_integration_pagerduty_id" in sn_state.columns("sys_user")
    assert "x_pd_integration_pagerduty_escalation" in sn_state.columns("sys_user_group")
    assert "x_pd_integration_pagerduty_service" in sn_state.columns("cmdb_ci_service")


async def test_custom_fields_are_accepted_once_configured(sn_client, sn_state, sn_admin):
    sn_state.custom_fields = {}
    before = await _post(sn_client, sn_admin, "incident", {"x_pd_integration_incident": "PABC123"})
    assert "x_pd_integration_incident" not in before
    sn_state.custom_fields = {
        "incident": {"x_pd_integration_incident"},
        "cmdb_ci": {"x_pd_integration_pagerduty_service"},
    }
    after = await _post(sn_client, sn_admin, "incident", {"x_pd_integration_incident": "PABC123"})
    assert after["x_pd_integration_incident"] == "PABC123"
    found = await sn_client.get(
        "/api/now/table/incident", headers=sn_admin, params={"sysparm_query": "x_pd_integration_incident=PABC123"}
    )
    assert [r["sys_id"] for r in (await found.json())["result"]] == [after["sys_id"]]
    # A parent table's custom column is inherited by its classes.
    await _patch(sn_client, sn_admin, "cmdb_ci_server", DB01, {"x_pd_integration_pagerduty_service": "PSVCDB1"})
    ci = await sn_client.get(
        f"/api/now/table/cmdb_ci/{DB01}",
        headers=sn_admin,
        params={"sysparm_fields": "x_pd_integration_pagerduty_service"},
    )
    assert (await ci.json())["result"] == {"x_pd_integration_pagerduty_service": "PSVCDB1"}


def test_custom_fields_from_the_seed(sn_seed):
    sn_seed["custom_fields"] = {"sys_user": ["x_pd_integration_pagerduty_id"]}
    assert "x_pd_integration_incident" not in ServiceNowState.from_seed(sn_seed).columns("incident")
    state = ServiceNowState.from_seed(sn_seed)
    state.update("sys_user", ALICE, {"x_pd_integration_pagerduty_id": "PALICE1"})
    assert state.query("sys_user", "x_pd_integration_pagerduty_id=PALICE1")[0]["user_name"] == "alice.nguyen"


def test_user_names_are_calculated_from_first_and_last(sn_state):
    user = sn_state.insert("sys_user", {"user_name": "gina.lopez", "first_name": "Gina", "last_name": "Lopez"})
    assert user["name"] == "Gina Lopez"
    assert sn_state.update("sys_user", user["sys_id"], {"last_name": "Lopez-Ortiz"})["name"] == "Gina Lopez-Ortiz"


def test_python_api_errors(sn_state):
    with pytest.raises(UnknownTable):
        sn_state.insert("u_nope", {})
    with pytest.raises(RecordNotFound):
        sn_state.update("incident", "0" * 32, {"state": "2"})
    with pytest.raises(RecordNotFound):
        sn_state.delete("incident", "0" * 32)
    assert sn_state.get("incident", "0" * 32) is None
    with pytest.raises(OperationFailed):
        sn_state.insert("sys_user", {"sys_id": ALICE, "user_name": "dup"})


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: s["users"][0].update(sys_id="xyz"), "users[0].sys_id"),
        (lambda s: s["groups"][0]["members"].append("0" * 32), "groups[0].members[3]"),
        (lambda s: s["cis"][0].update(sys_class_name="cmdb_ci_nope"), "cis[0].sys_class_name"),
        (lambda s: s.update(custom_fields={"u_table": ["x"]}), "custom_fields"),
        (lambda s: s["relationships"][0].update(type="f" * 32), "relationships[0].type"),
    ],
)
def test_an_invalid_seed_names_the_problem(sn_seed, mutate, message):
    mutate(sn_seed)
    with pytest.raises(ValueError, match=re.escape(message)):
        ServiceNowState.from_seed(sn_seed)
