"""PagerDuty sandbox incidents: creation, dedup, the status machine, assignment, notes, log entries."""

from __future__ import annotations

import pytest

FROM = {"From": "integration@acme.example"}
BOB = {"From": "bob.smith@acme.example"}


async def create(client, title="Disk full", service="PSVCDB1", headers=FROM, status=201, **extra):
    body = {
        "incident": {
            "type": "incident",
            "title": title,
            "service": {"id": service, "type": "service_reference"},
            **extra,
        }
    }
    resp = await client.post("/incidents", json=body, headers=headers)
    data = await resp.json()
    assert resp.status == status, data
    return data.get("incident", data)


async def update(client, iid, changes, headers=FROM, status=200):
    resp = await client.put(
        f"/incidents/{iid}", json={"incident": {"type": "incident_reference", **changes}}, headers=headers
    )
    data = await resp.json()
    assert resp.status == status, data
    return data.get("incident", data)


def log_types(state, iid):
    return [e["type"] for e in reversed(state.incident_log_entries(iid))]


# ------------------------------------------------------------- creation


async def test_create_fills_the_incident_like_pagerduty(pd_client, pd_state):
    inc = await create(pd_client, body={"type": "incident_body", "details": "It is full"})
    assert inc["type"] == "incident" and inc["status"] == "triggered"
    assert inc["summary"] == f"[#{inc['incident_number']}] Disk full"
    assert inc["self"].endswith(f"/incidents/{inc['id']}") and inc["html_url"].endswith(f"/incidents/{inc['id']}")
    assert inc["service"]["id"] == "PSVCDB1" and inc["service"]["type"] == "service_reference"
    assert inc["escalation_policy"]["id"] == "PEPDB01"
    assert [t["id"] for t in inc["teams"]] == ["PTDBA01"]
    assert inc["urgency"] == "high"
    assert inc["priority"] is None and inc["resolved_at"] is None and inc["resolve_reason"] is None
    assert len(inc["incident_key"]) == 32, "generated when absent"
    assert inc["last_status_change_by"]["type"] == "service_reference"
    # level 1 of PEPDB01 is the Database on-call schedule (Alice this week)
    assert [a["assignee"]["id"] for a in inc["assignments"]] == ["PALICE1"]
    assert inc["assigned_via"] == "escalation_policy"
    trigger = pd_state.log_entries[inc["first_trigger_log_entry"]["id"]]
    assert trigger["type"] == "trigger_log_entry"
    assert trigger["agent"]["id"] == "PINTEGR"
    assert trigger["channel"]["details"] == "It is full"


async def test_incident_numbers_increase(pd_client):
    numbers = [(await create(pd_client, title=f"n{i}"))["incident_number"] for i in range(4)]
    assert numbers == sorted(numbers) and len(set(numbers)) == 4


async def test_schedule_rotation_moves_with_the_clock(pd_client, pd_clock):
    first = await create(pd_client, title="week 1")
    pd_clock.advance(7 * 86400)
    second = await create(pd_client, title="week 2")
    assert {first["assignments"][0]["assignee"]["id"], second["assignments"][0]["assignee"]["id"]} == {
        "PALICE1",
        "PDAVEP1",
    }


async def test_incident_key_dedups_open_incidents_of_the_same_service(pd_client, pd_state):
    first = await create(pd_client, incident_key="snow-INC0010001")
    dup = await create(pd_client, incident_key="snow-INC0010001", status=400)
    assert dup["error"]["code"] == 2001
    assert any("dedup key" in e for e in dup["error"]["errors"])
    await create(pd_client, incident_key="snow-INC0010001", service="PSVCNET")  # another service: fine
    pd_state.acknowledge(first["id"], "PALICE1")
    await create(pd_client, incident_key="snow-INC0010001", status=400)  # still open
    pd_state.resolve(first["id"], "PALICE1")
    again = await create(pd_client, incident_key="snow-INC0010001")
    assert again["id"] != first["id"]


async def test_assignments_and_escalation_policy_on_create(pd_client):
    direct = await create(pd_client, assignments=[{"assignee": {"id": "PBOBSM1", "type": "user_reference"}}])
    assert [a["assignee"]["id"] for a in direct["assignments"]] == ["PBOBSM1"]
    assert direct["assigned_via"] == "direct_assignment"
    via_ep = await create(pd_client, escalation_policy={"id": "PEPDBP1", "type": "escalation_policy_reference"})
    assert via_ep["escalation_policy"]["id"] == "PEPDBP1"
    assert sorted(a["assignee"]["id"] for a in via_ep["assignments"]) == ["PALICE1", "PDAVEP1"]
    both = await create(
        pd_client,
        status=400,
        assignments=[{"assignee": {"id": "PBOBSM1", "type": "user_reference"}}],
        escalation_policy={"id": "PEPDBP1", "type": "escalation_policy_reference"},
    )
    assert both["error"]["code"] == 2001
    ghost = await create(pd_client, status=400, assignments=[{"assignee": {"id": "PNOPE00", "type": "user_reference"}}])
    assert ghost["error"]["code"] == 1007


async def test_creating_an_incident_assigned_to_yourself_acknowledges_it(pd_client):
    inc = await create(pd_client, headers=BOB, assignments=[{"assignee": {"id": "PBOBSM1", "type": "user_reference"}}])
    assert inc["status"] == "acknowledged"
    assert inc["acknowledgements"][0]["acknowledger"]["id"] == "PBOBSM1"


async def test_create_validates_type_urgency_priority(pd_client):
    assert (await create(pd_client, status=400, type="incident_reference"))["error"]["code"] == 2001
    assert (await create(pd_client, status=400, urgency="medium"))["error"]["code"] == 2001
    bad = await create(pd_client, status=400, priority={"id": "PNOPE00", "type": "priority_reference"})
    assert bad["error"]["code"] == 1020
    ok = await create(pd_client, urgency="low", priority={"id": "PPRIO01", "type": "priority_reference"})
    assert ok["urgency"] == "low" and ok["priority"]["summary"] == "P1"


# ------------------------------------------------------------ status machine


async def test_acknowledge_then_resolve(pd_client, pd_state):
    inc = await create(pd_client)
    acked = await update(pd_client, inc["id"], {"status": "acknowledged"}, headers=BOB)
    assert acked["status"] == "acknowledged"
    assert acked["acknowledgements"][0]["acknowledger"]["id"] == "PBOBSM1"
    assert acked["last_status_change_by"]["id"] == "PBOBSM1"
    resolved = await update(pd_client, inc["id"], {"status": "resolved", "resolution": "Rotated logs"}, headers=BOB)
    assert resolved["status"] == "resolved" and resolved["resolved_at"]
    assert resolved["assignments"] == [] and resolved["acknowledgements"] == []
    assert log_types(pd_state, inc["id"]) == [
        "trigger_log_entry",
        "assign_log_entry",
        "acknowledge_log_entry",
        "resolve_log_entry",
    ]
    resolve_entry = pd_state.incident_log_entries(inc["id"])[0]
    assert resolve_entry["note"] == "Rotated logs"


async def test_acknowledging_twice_is_1002(pd_client):
    inc = await create(pd_client)
    await update(pd_client, inc["id"], {"status": "acknowledged"}, headers=BOB)
    err = await update(pd_client, inc["id"], {"status": "acknowledged"}, headers=BOB, status=400)
    assert err["error"]["code"] == 1002
    other = await update(pd_client, inc["id"], {"status": "acknowledged"}, headers=FROM)
    assert [a["acknowledger"]["id"] for a in other["acknowledgements"]] == ["PBOBSM1", "PINTEGR"]


async def test_resolved_incidents_answer_1001_to_resolve_and_reassign(pd_client):
    inc = await create(pd_client)
    await update(pd_client, inc["id"], {"status": "resolved"})
    for changes in (
        {"status": "resolved"},
        {"assignments": [{"assignee": {"id": "PBOBSM1", "type": "user_reference"}}]},
        {"escalation_level": 2},
        {"urgency": "low"},
    ):
        err = await update(pd_client, inc["id"], changes, status=400)
        assert err["error"]["code"] == 1001, changes
        assert err["error"]["message"] == "Incident Already Resolved"


async def test_triggered_on_an_acknowledged_incident_unacknowledges_it(pd_client, pd_state):
    inc = await create(pd_client)
    await update(pd_client, inc["id"], {"status": "acknowledged"}, headers=BOB)
    back = await update(pd_client, inc["id"], {"status": "triggered"}, headers=BOB)
    assert back["status"] == "triggered" and back["acknowledgements"] == []
    assert log_types(pd_state, inc["id"])[-1] == "unacknowledge_log_entry"
    same = await update(pd_client, inc["id"], {"status": "triggered"})
    assert same["status"] == "triggered"
    assert log_types(pd_state, inc["id"])[-1] == "unacknowledge_log_entry", "no-op leaves no log entry"


async def test_reopening_a_resolved_incident(pd_client, pd_state):
    """OpenAPI, PUT /incidents/{id} status: setting triggered or acknowledged on a resolved incident reopens it."""
    inc = await create(pd_client, incident_key="k-reopen")
    await update(pd_client, inc["id"], {"status": "resolved"})
    reopened = await update(pd_client, inc["id"], {"status": "triggered"})
    assert reopened["status"] == "triggered" and reopened["resolved_at"] is None
    assert [a["assignee"]["id"] for a in reopened["assignments"]] == ["PALICE1"], "assigned to the current policy"
    await create(pd_client, incident_key="k-reopen", status=400)  # open again, so the key dedups again
    await update(pd_client, inc["id"], {"status": "resolved"})
    mine = await update(pd_client, inc["id"], {"status": "acknowledged"}, headers=BOB)
    assert mine["status"] == "acknowledged"
    assert [a["assignee"]["id"] for a in mine["assignments"]] == ["PBOBSM1"], "reopened to acknowledged: assigned to me"


async def test_reopen_is_refused_when_the_key_is_taken_again(pd_client):
    inc = await create(pd_client, incident_key="k-taken")
    await update(pd_client, inc["id"], {"status": "resolved"})
    await create(pd_client, incident_key="k-taken")
    err = await update(pd_client, inc["id"], {"status": "triggered"}, status=400)
    assert err["error"]["code"] == 2001


async def test_invalid_status_is_1003(pd_client):
    inc = await create(pd_client)
    err = await update(pd_client, inc["id"], {"status": "closed"}, status=400)
    assert err["error"]["code"] == 1003


async def test_type_is_required_on_update(pd_client):
    inc = await create(pd_client)
    resp = await pd_client.put(f"/incidents/{inc['id']}", json={"incident": {"status": "acknowledged"}}, headers=FROM)
    assert resp.status == 400


# ------------------------------------------------------- assignment changes


async def test_reassign_escalate_delegate(pd_client, pd_state):
    inc = await create(pd_client)
    await update(pd_client, inc["id"], {"status": "acknowledged"}, headers=BOB)
    moved = await update(
        pd_client, inc["id"], {"assignments": [{"assignee": {"id": "PDAVEP1", "type": "user_reference"}}]}
    )
    assert [a["assignee"]["id"] for a in moved["assignments"]] == ["PDAVEP1"]
    assert moved["status"] == "triggered", "reassigning puts an acknowledged incident back to triggered"
    escalated = await update(pd_client, inc["id"], {"escalation_level": 2})
    assert [a["assignee"]["id"] for a in escalated["assignments"]] == ["PALICE1"]
    err = await update(pd_client, inc["id"], {"escalation_level": 3}, status=400)
    assert err["error"]["code"] == 1006
    delegated = await update(
        pd_client, inc["id"], {"escalation_policy": {"id": "PEPNET1", "type": "escalation_policy_reference"}}
    )
    assert delegated["escalation_policy"]["id"] == "PEPNET1"
    assert [a["assignee"]["id"] for a in delegated["assignments"]] == ["PBOBSM1"]
    assert {t["id"] for t in delegated["teams"]} == {"PTDBA01", "PTNET01"}
    assert log_types(pd_state, inc["id"])[-3:] == ["assign_log_entry", "escalate_log_entry", "delegate_log_entry"]
    err = await update(
        pd_client,
        inc["id"],
        {"escalation_policy": {"id": "PNOPE00", "type": "escalation_policy_reference"}},
        status=400,
    )
    assert err["error"]["code"] == 1014


async def test_priority_by_object_or_name_urgency_title_bridge(pd_client, pd_state):
    inc = await create(pd_client)
    by_name = await update(pd_client, inc["id"], {"priority": "P2"})
    assert by_name["priority"]["id"] == "PPRIO02"
    by_ref = await update(pd_client, inc["id"], {"priority": {"id": "PPRIO04", "type": "priority_reference"}})
    assert by_ref["priority"]["summary"] == "P4"
    err = await update(pd_client, inc["id"], {"priority": "P9"}, status=400)
    assert err["error"]["code"] == 1020
    changed = await update(
        pd_client,
        inc["id"],
        {
            "urgency": "low",
            "title": "Disk very full",
            "conference_bridge": {
                "conference_number": "+1 415-555-1212,,1234#",
                "conference_url": "https://meet.example/x",
            },
        },
    )
    assert changed["urgency"] == "low" and changed["title"] == "Disk very full"
    assert changed["summary"].endswith("Disk very full")
    assert changed["conference_bridge"]["conference_url"] == "https://meet.example/x"
    assert "urgency_change_log_entry" in log_types(pd_state, inc["id"])
    err = await update(pd_client, inc["id"], {"urgency": "urgent"}, status=400)
    assert err["error"]["code"] == 2001
    # references to the incident follow its new title
    note = pd_state.add_note(inc["id"], "PINTEGR", "n")
    assert note
    entry = pd_state.incident_log_entries(inc["id"])[0]
    assert entry["incident"]["summary"].endswith("Disk very full")


async def test_a_failing_change_changes_nothing(pd_client, pd_state):
    inc = await create(pd_client)
    await update(pd_client, inc["id"], {"title": "new title", "priority": "P9"}, status=400)
    assert pd_state.incidents[inc["id"]]["title"] == "Disk full"


# ------------------------------------------------------------------- bulk


async def test_bulk_update_applies_all_or_nothing(pd_client, pd_state):
    a, b = await create(pd_client, title="a"), await create(pd_client, title="b")
    resp = await pd_client.put(
        "/incidents",
        headers=FROM,
        json={
            "incidents": [
                {"id": a["id"], "type": "incident_reference", "status": "acknowledged"},
                {"id": b["id"], "type": "incident_reference", "status": "bogus"},
            ]
        },
    )
    assert resp.status == 400
    assert pd_state.incidents[a["id"]]["status"] == "triggered"
    resp = await pd_client.put(
        "/incidents",
        headers=FROM,
        json={
            "incidents": [
                {"id": a["id"], "type": "incident_reference", "status": "acknowledged"},
                {"id": b["id"], "type": "incident_reference", "status": "resolved"},
            ]
        },
    )
    assert resp.status == 200
    body = await resp.json()
    assert [i["status"] for i in body["incidents"]] == ["acknowledged", "resolved"]
    assert body["more"] is False
    resp = await pd_client.put(
        "/incidents",
        headers=FROM,
        json={"incidents": [{"id": "PNOPE00", "type": "incident_reference", "status": "resolved"}]},
    )
    assert resp.status == 404


async def test_bulk_update_of_more_than_250_is_413(pd_client):
    items = [{"id": f"P{i:06d}", "type": "incident_reference", "status": "resolved"} for i in range(251)]
    resp = await pd_client.put("/incidents", headers=FROM, json={"incidents": items})
    assert resp.status == 413


# ------------------------------------------------------------------ merge


async def test_merge_resolves_the_sources_into_the_target(pd_client, pd_state):
    target, source = (
        await create(pd_client, title="target"),
        await create(pd_client, title="source", incident_key="merge-me"),
    )
    resp = await pd_client.put(
        f"/incidents/{target['id']}/merge",
        headers=FROM,
        json={"source_incidents": [{"id": source["id"], "type": "incident_reference"}]},
    )
    assert resp.status == 200
    assert (await resp.json())["incident"]["id"] == target["id"]
    merged = pd_state.incidents[source["id"]]
    assert merged["status"] == "resolved"
    assert merged["resolve_reason"] == {
        "type": "merge_resolve_reason",
        "incident": pd_state.ref("incident", target["id"]),
    }
    await create(pd_client, incident_key="merge-me")  # the source's key is free again
    resp = await pd_client.put(
        f"/incidents/{target['id']}/merge",
        headers=FROM,
        json={"source_incidents": [{"id": source["id"], "type": "incident_reference"}]},
    )
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == 1019
    pd_state.resolve(target["id"], "PINTEGR")
    third = await create(pd_client, title="third")
    resp = await pd_client.put(
        f"/incidents/{target['id']}/merge",
        headers=FROM,
        json={"source_incidents": [{"id": third["id"], "type": "incident_reference"}]},
    )
    assert (await resp.json())["error"]["code"] == 1001


# --------------------------------------------------------- notes and logs


async def test_notes_crud_and_annotate_log_entries(pd_client, pd_state):
    inc = await create(pd_client)
    resp = await pd_client.post(f"/incidents/{inc['id']}/notes", json={"note": {"content": "First"}}, headers=BOB)
    assert resp.status == 200
    note = (await resp.json())["note"]
    assert note["content"] == "First" and note["user"]["id"] == "PBOBSM1" and note["created_at"]
    resp = await pd_client.post(f"/incidents/{inc['id']}/notes", json={"note": {"contents": "typo"}}, headers=BOB)
    assert resp.status == 400
    notes = (await (await pd_client.get(f"/incidents/{inc['id']}/notes")).json())["notes"]
    assert [n["content"] for n in notes] == ["First"]
    assert log_types(pd_state, inc["id"])[-1] == "annotate_log_entry"
    assert (await pd_client.delete(f"/incidents/{inc['id']}/notes/{note['id']}")).status == 204
    assert (await pd_client.delete(f"/incidents/{inc['id']}/notes/{note['id']}")).status == 404


async def test_log_entries_newest_first_with_since_until(pd_client, pd_state, pd_clock):
    inc = await create(pd_client)
    pd_clock.advance(3600)
    pd_state.acknowledge(inc["id"], "PALICE1")
    pd_clock.advance(3600)
    pd_state.resolve(inc["id"], "PALICE1")
    body = await (await pd_client.get(f"/incidents/{inc['id']}/log_entries")).json()
    types = [e["type"] for e in body["log_entries"]]
    assert types[0] == "resolve_log_entry" and types[-1] in ("trigger_log_entry", "assign_log_entry")
    created = [e["created_at"] for e in body["log_entries"]]
    assert created == sorted(created, reverse=True)
    window = await (
        await pd_client.get("/log_entries", params={"since": "2025-03-01T12:30:00Z", "until": "2025-03-01T13:30:00Z"})
    ).json()
    assert [e["type"] for e in window["log_entries"]] == ["acknowledge_log_entry"]
    overview = await (
        await pd_client.get(f"/incidents/{inc['id']}/log_entries", params={"include[]": "incidents"})
    ).json()
    assert overview["log_entries"][0]["incident"]["type"] == "incident"
    one = await (await pd_client.get(f"/log_entries/{body['log_entries'][0]['id']}")).json()
    assert one["log_entry"]["type"] == "resolve_log_entry"


async def test_helpers_write_the_same_log_entries_as_http(pd_client, pd_state):
    via_http = await create(pd_client, headers={"From": "alice.nguyen@acme.example"})
    await update(pd_client, via_http["id"], {"status": "acknowledged"}, headers=BOB)
    await pd_client.post(f"/incidents/{via_http['id']}/notes", json={"note": {"content": "n"}}, headers=BOB)
    await update(pd_client, via_http["id"], {"status": "resolved"}, headers=BOB)

    via_python = pd_state.create_incident(title="Disk full", service_id="PSVCDB1", from_user="PALICE1")
    pd_state.acknowledge(via_python["id"], "PBOBSM1")
    pd_state.add_note(via_python["id"], "PBOBSM1", "n")
    pd_state.resolve(via_python["id"], "bob.smith@acme.example")

    def shape(iid):
        return [(e["type"], e["summary"], e["agent"]["id"]) for e in pd_state.incident_log_entries(iid)]

    assert shape(via_http["id"]) == shape(via_python["id"])


# ------------------------------------------------ status updates, snooze, impacts


async def test_status_updates_and_snooze(pd_client, pd_state):
    inc = await create(pd_client)
    resp = await pd_client.post(
        f"/incidents/{inc['id']}/status_updates", headers=FROM, json={"message": "Investigating", "subject": "DB"}
    )
    assert resp.status == 200
    update_ = (await resp.json())["status_update"]
    assert update_["message"] == "Investigating" and update_["sender"]["id"] == "PINTEGR"
    resp = await pd_client.post(f"/incidents/{inc['id']}/snooze", headers=FROM, json={"duration": 600})
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == 1012
    pd_state.acknowledge(inc["id"], "PINTEGR")
    resp = await pd_client.post(f"/incidents/{inc['id']}/snooze", headers=FROM, json={"duration": 600})
    assert resp.status == 201
    assert (await resp.json())["incident"]["pending_actions"][0]["type"] == "unacknowledge"


async def test_business_service_impacts_follow_dependencies_and_manual_overrides(pd_client, pd_state):
    inc = await create(pd_client)
    url = f"/incidents/{inc['id']}/business_services/impacts"
    assert (await (await pd_client.get(url)).json())["services"] == []
    pd_state.associate_dependencies(
        [
            {
                "supporting_service": {"id": "PSVCDB1", "type": "service"},
                "dependent_service": {"id": "PBSPAY1", "type": "business_service"},
            }
        ]
    )
    assert [s["id"] for s in (await (await pd_client.get(url)).json())["services"]] == ["PBSPAY1"]
    resp = await pd_client.put(
        f"/incidents/{inc['id']}/business_services/PBSPAY1/impacts", json={"relation": "not_impacted"}
    )
    assert resp.status == 200 and (await resp.json()) == {"relation": "not_impacted"}
    assert (await (await pd_client.get(url)).json())["services"] == []
    resp = await pd_client.put(f"/incidents/{inc['id']}/business_services/PBSPAY1/impacts", json={"relation": "x"})
    assert resp.status == 400


@pytest.mark.parametrize("n", [3])
async def test_listing_incidents_sees_creations_from_both_paths(pd_client, pd_state, n):
    for i in range(n):
        pd_state.create_incident(title=f"py {i}", service_id="PSVCNET", from_user="PBOBSM1")
        await create(pd_client, title=f"http {i}", service="PSVCNET")
    body = await (await pd_client.get("/incidents", params={"total": "true"})).json()
    assert body["total"] == 2 * n
