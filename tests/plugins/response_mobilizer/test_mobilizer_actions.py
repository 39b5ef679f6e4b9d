"""End to end against the sandbox: each mobilizer action through the HTTP API (as the
ServiceNow UI actions call it) lands in PagerDuty, as the ServiceNow user who asked."""

from __future__ import annotations

import pytest

from tests.plugins.incident_sync.world import NET_GROUP

# PagerDuty's OpenAPI file no longer has the response play endpoints (removed in September
# 2025), so tests of an account that still serves them skip the request check.
legacy_plays = pytest.mark.no_openapi_check


async def test_add_responders_by_user_and_group_with_a_bridge(api_world):
    world, api, rec, pd_id = await api_world()
    status, body = await api.post(
        rec["number"],
        "responders",
        {
            "requested_by": "alice.nguyen",
            "users": ["bob.smith"],
            "groups": ["Network"],
            "message": "Payments down, please join",
            "conference_bridge": {"name": "major incident bridge"},
        },
    )
    assert status == 200, body
    inc = world.pd.incidents[pd_id]
    [req] = inc["responder_requests"]
    assert req["requester"]["id"] == "PALICE1" and req["message"] == "Payments down, please join"
    targets = {
        (t["responder_request_target"]["type"], t["responder_request_target"]["id"])
        for t in req["responder_request_targets"]
    }
    assert targets == {("user_reference", "PBOBSM1"), ("escalation_policy_reference", "PEPNET1")}
    assert {r["user"]["id"] for r in inc["incidents_responders"]} == {"PBOBSM1"}  # Network's first level is Bob
    assert inc["conference_bridge"] == {
        "conference_number": "+1 415-555-0100,,123456#",
        "conference_url": "https://meet.example.com/major",
    }
    assert body["acted_as"] == {
        "servicenow": "alice.nguyen",
        "pagerduty_user": "PALICE1",
        "own_pagerduty_account": True,
    }
    assert body["incident"] == {"pagerduty": pd_id, "servicenow": rec["number"], "sys_id": rec["sys_id"]}
    assert body["work_note"] is True
    assert any("+1 415-555-0100" in n for n in world.work_notes(rec["sys_id"]))


async def test_responders_by_sys_id_and_pagerduty_ids_default_message(api_world):
    world, api, rec, pd_id = await api_world()
    status, body = await api.post(
        pd_id,
        "responders",
        {"requested_by": "bob.smith", "pagerduty_user_ids": ["PDAVEP1"], "escalation_policy_ids": ["PEPDBP1"]},
    )
    assert status == 200, body
    [req] = world.pd.incidents[pd_id]["responder_requests"]
    assert req["requester"]["id"] == "PBOBSM1" and rec["number"] in req["message"]
    assert {t["id"] for t in body["responder_request"]["targets"]} == {"PDAVEP1", "PEPDBP1"}


async def test_someone_without_a_pagerduty_account_acts_as_the_default_user(api_world):
    world, api, rec, pd_id = await api_world()
    world.sn.set_roles("erin.garcia", ["itil", "x_pd_integration.incident_response"])  # Erin has no PagerDuty user
    status, body = await api.post(
        rec["sys_id"], "status-updates", {"requested_by": "erin.garcia", "message": "Investigating"}
    )
    assert status == 200, body
    assert body["acted_as"]["pagerduty_user"] == "PINTEGR" and body["acted_as"]["own_pagerduty_account"] is False
    assert world.pd.status_updates[pd_id][-1]["sender"]["id"] == "PINTEGR"


async def test_conference_bridge_by_number_and_url(api_world):
    world, api, rec, pd_id = await api_world()
    status, body = await api.post(
        rec["number"],
        "conference-bridge",
        {"requested_by": "alice.nguyen", "dial_in_number": "+44 20 7946 0000", "url": "https://meet.example.com/x"},
    )
    assert status == 200, body
    assert world.pd.incidents[pd_id]["conference_bridge"] == {
        "conference_number": "+44 20 7946 0000",
        "conference_url": "https://meet.example.com/x",
    }
    note = world.work_notes(rec["sys_id"])[-1]
    assert "+44 20 7946 0000" in note and "https://meet.example.com/x" in note and "Alice Nguyen" in note
    status, body = await api.get(rec["number"], "conference-bridge")
    assert status == 200 and body["conference_bridge"]["url"] == "https://meet.example.com/x"
    assert [b["name"] for b in body["bridges"]] == ["Major incident bridge"]
    status, body = await api.post(rec["number"], "conference-bridge", {"requested_by": "alice.nguyen", "name": "Nope"})
    assert status == 400 and body["error"].startswith("name: no conference bridge named 'Nope'")


async def test_workflows_without_legacy_plays_never_call_the_removed_api(api_world):
    _world, api, rec, _pd_id = await api_world(legacy_response_plays=False)
    status, body = await api.get(rec["number"], "workflows")
    assert status == 200 and [w["id"] for w in body["workflows"]] == ["PWFMAJ1"] and body["response_plays"] == []
    status, body = await api.post(
        rec["number"], "response-plays", {"requested_by": "bob.smith", "response_play": "PRPMAJ1"}
    )
    assert status == 410 and "legacy_response_plays = true" in body["error"]
    status, body = await api.post(rec["number"], "workflows", {"requested_by": "alice.nguyen", "workflow": "PWFMAJ1"})
    assert status == 200 and body["ran"]["kind"] == "incident_workflow"


@legacy_plays
async def test_workflows_listed_and_run_preferring_workflows(api_world):
    world, api, rec, pd_id = await api_world(legacy_response_plays=True)
    status, body = await api.get(rec["number"], "workflows")
    assert status == 200
    assert [w["name"] for w in body["workflows"]] == ["Major incident"]
    assert [p["id"] for p in body["response_plays"]] == ["PRPMAJ1"] and body["response_plays_available"]
    status, body = await api.post(
        rec["number"], "workflows", {"requested_by": "alice.nguyen", "workflow": "major incident"}
    )
    assert status == 200, body
    assert body["ran"]["kind"] == "incident_workflow" and body["ran"]["id"] == "PWFMAJ1"
    [instance] = world.pd.workflow_instances.values()
    assert instance["incident"]["id"] == pd_id and instance["id"] == body["ran"]["instance"]
    # A name only a response play has: the play runs, as the user who asked.
    status, body = await api.post(
        rec["number"],
        "workflows",
        {"requested_by": "alice.nguyen", "workflow": "Major incident (legacy response play)"},
    )
    assert status == 200 and body["ran"]["kind"] == "response_play"
    assert [(r["response_play"], r["incident"], r["by"]) for r in world.pd.response_play_runs] == [
        ("PRPMAJ1", pd_id, "PALICE1")
    ]


@legacy_plays
async def test_response_plays_run_and_their_removal_is_explained(api_world):
    world, api, rec, _pd_id = await api_world(legacy_response_plays=True)
    status, body = await api.post(
        rec["number"], "response-plays", {"requested_by": "bob.smith", "response_play": "PRPMAJ1"}
    )
    assert status == 200 and body["ran"]["id"] == "PRPMAJ1"
    assert world.pd.response_play_runs[-1]["by"] == "PBOBSM1"
    world.pd.response_plays_enabled = False  # PagerDuty's September 2025 removal
    status, body = await api.get(rec["number"], "response-plays")
    assert status == 410 and "removed response plays" in body["error"] and "workflows" in body["error"]
    status, body = await api.post(
        rec["number"], "response-plays", {"requested_by": "bob.smith", "response_play": "PRPMAJ1"}
    )
    assert status == 410
    status, body = await api.get(rec["number"], "workflows")
    assert status == 200 and body["response_plays"] == [] and body["response_plays_available"] is False


async def test_status_update_reports_impacted_business_services(api_world):
    world, api, rec, pd_id = await api_world()
    status, body = await api.get(rec["number"], "status-updates")
    assert status == 200 and body == {**body, "impacted_business_services": [], "published": False, "notice": None}
    world.pd.associate_dependencies(
        [
            {
                "supporting_service": {"id": "PSVCDB1", "type": "service"},
                "dependent_service": {"id": "PBSPAY1", "type": "business_service"},
            }
        ]
    )
    status, body = await api.get(rec["number"], "status-updates")
    assert body["impacted_business_services"] == [{"id": "PBSPAY1", "name": "Payments"}] and body["published"]
    assert body["notice"] == "This update will be published to your PagerDuty status dashboard"
    status, body = await api.post(
        rec["number"],
        "status-updates",
        {
            "requested_by": "alice.nguyen",
            "message": "Failover under way",
            "subject": "Payments degraded",
            "html_message": "<p>Failover under way</p>",
        },
    )
    assert status == 200, body
    [update] = world.pd.status_updates[pd_id]
    assert (update["message"], update["subject"], update["sender"]["id"]) == (
        "Failover under way",
        "Payments degraded",
        "PALICE1",
    )
    assert body["status_update"]["id"] == update["id"] and body["published"] is True


async def test_status_update_can_mark_a_business_service_impacted(api_world):
    world, api, rec, pd_id = await api_world()
    status, body = await api.post(
        rec["number"],
        "status-updates",
        {
            "requested_by": "alice.nguyen",
            "message": "Card payments failing",
            "impacted_business_services": ["Payments"],
        },
    )
    assert status == 200, body
    assert body["impacted_business_services"] == [{"id": "PBSPAY1", "name": "Payments"}] and body["published"]
    assert world.pd.business_service_impacts(pd_id)[0]["id"] == "PBSPAY1"
    status, body = await api.post(
        rec["number"],
        "status-updates",
        {"requested_by": "alice.nguyen", "message": "x", "impacted_business_services": ["Nope"]},
    )
    assert status == 400 and body["error"].startswith("impacted_business_services[0]: no PagerDuty business service")
    status, body = await api.post(
        rec["number"], "status-updates", {"requested_by": "alice.nguyen", "message": "x", "subject": "only a subject"}
    )
    assert status == 400 and body["error"].startswith("html_message:")


async def test_a_group_reassigned_elsewhere_is_still_requested_by_its_policy(api_world):
    _world, api, rec, _pd_id = await api_world()
    status, body = await api.post(rec["number"], "responders", {"requested_by": "alice.nguyen", "groups": [NET_GROUP]})
    assert status == 200 and [t["id"] for t in body["responder_request"]["targets"]] == ["PEPNET1"]
    status, body = await api.post(
        rec["number"], "responders", {"requested_by": "alice.nguyen", "groups": ["Service Desk"]}
    )
    assert (
        status == 400 and body["error"] == "groups[0]: assignment group Service Desk has no PagerDuty escalation policy"
    )
