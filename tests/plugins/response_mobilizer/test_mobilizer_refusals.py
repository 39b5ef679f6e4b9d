"""End to end: what the mobilizer refuses, and says why: a setting off (403 naming it),
a user without the role, an unknown incident, an account without the ability (402),
bad credentials and bad input."""

from __future__ import annotations

import pytest

from tests.plugins.response_mobilizer.conftest import TOKEN, seed_with

ACTIONS = {
    "responders": ("responders", {"users": ["bob.smith"], "message": "join"}),
    "conference_bridges": ("conference-bridge", {"name": "Major incident bridge"}),
    "response_plays": ("workflows", {"workflow": "Major incident"}),
    "status_updates": ("status-updates", {"message": "Investigating"}),
}


@pytest.mark.parametrize("setting", sorted(ACTIONS))
async def test_each_setting_off_is_a_403_naming_it(api_world, setting):
    world, api, rec, pd_id = await api_world(**{setting: False})
    action, body = ACTIONS[setting]
    status, answer = await api.post(rec["number"], action, {"requested_by": "alice.nguyen", **body})
    assert status == 403 and f"plugins.response_mobilizer.{setting} = true" in answer["error"]
    if action != "responders":
        status, answer = await api.get(rec["number"], action)
        assert status == 403 and setting in answer["error"]
    # Nothing reached PagerDuty; another part, still on, works.
    inc = world.pd.incidents[pd_id]
    assert not (
        inc["responder_requests"]
        or inc.get("conference_bridge")
        or world.pd.workflow_instances
        or world.pd.status_updates.get(pd_id)
    )
    other = next(s for s in sorted(ACTIONS) if s != setting)
    status, answer = await api.post(
        rec["number"], ACTIONS[other][0], {"requested_by": "alice.nguyen", **ACTIONS[other][1]}
    )
    assert status == 200, answer


async def test_responders_with_a_bridge_need_the_bridge_setting(api_world):
    world, api, rec, pd_id = await api_world(conference_bridges=False)
    status, answer = await api.post(
        rec["number"],
        "responders",
        {
            "requested_by": "alice.nguyen",
            "users": ["bob.smith"],
            "conference_bridge": {"name": "Major incident bridge"},
        },
    )
    assert status == 403 and "conference_bridges" in answer["error"]
    assert world.pd.incidents[pd_id]["responder_requests"] == []  # nothing half done


async def test_a_user_without_the_role_is_refused(api_world):
    world, api, rec, pd_id = await api_world()
    status, answer = await api.post(rec["number"], "status-updates", {"requested_by": "carol.jones", "message": "x"})
    assert status == 403 and answer["error"] == (
        "ServiceNow user carol.jones does not hold the role x_pd_integration.incident_response"
    )
    assert world.pd.status_updates.get(pd_id, []) == []
    world.sn.set_roles("carol.jones", ["itil", "x_pd_integration.incident_response"])
    status, answer = await api.post(rec["number"], "status-updates", {"requested_by": "carol.jones", "message": "x"})
    assert status == 200 and answer["acted_as"]["pagerduty_user"] == "PCAROL1"
    world.sn.set_roles("carol.jones", ["itil"])  # revoked: refused again, checked on every call
    status, answer = await api.post(rec["number"], "status-updates", {"requested_by": "carol.jones", "message": "y"})
    assert status == 403


async def test_another_role_can_be_configured(api_world):
    _world, api, rec, _pd_id = await api_world(role="itil")
    status, answer = await api.post(rec["number"], "status-updates", {"requested_by": "carol.jones", "message": "x"})
    assert status == 200, answer


@pytest.mark.parametrize(
    "requested_by, said",
    [
        (None, "requested_by: the acting ServiceNow user (user_name or sys_id) is required"),
        ("nobody.here", "requested_by: no ServiceNow user 'nobody.here'"),
        ("bad^name", "requested_by: 'bad^name' is not a ServiceNow user_name or sys_id"),
    ],
)
async def test_the_acting_user_must_exist(api_world, requested_by, said):
    _world, api, rec, _pd_id = await api_world()
    body = {"message": "x"} | ({"requested_by": requested_by} if requested_by else {})
    status, answer = await api.post(rec["number"], "status-updates", body)
    assert (status, answer["error"]) == (400, said)


@pytest.mark.parametrize(
    "ref, said",
    [
        ("INC0099999", "no incident INC0099999 in ServiceNow or PagerDuty"),
        ("SIR0099999x", "is neither a ServiceNow number"),
        ("0123456789abcdef0123456789abcdef", "no PagerDuty incident is linked to the ServiceNow record"),
        ("PNOSUCH", "no incident PNOSUCH in ServiceNow or PagerDuty"),
        ("not-an-id", "is neither a ServiceNow number or sys_id nor a PagerDuty incident id"),
    ],
)
async def test_an_unknown_incident_is_a_404(api_world, ref, said):
    _world, api, _rec, _pd_id = await api_world()
    status, answer = await api.post(ref, "responders", {"requested_by": "alice.nguyen", "users": ["bob.smith"]})
    assert status == 404 and said in answer["error"]


async def test_a_servicenow_incident_not_in_pagerduty_is_a_404(api_world):
    world, api, _rec, _pd_id = await api_world()
    desk = world.sn.insert(
        "incident", {"short_description": "Printer", "impact": "3", "urgency": "3"}, user="alice.nguyen"
    )
    await world.settle()
    status, answer = await api.post(desk["number"], "status-updates", {"requested_by": "alice.nguyen", "message": "x"})
    assert status == 404 and answer["error"] == f"ServiceNow {desk['number']} is not linked to a PagerDuty incident"


async def test_an_account_without_the_ability_gets_a_clear_402(api_world):
    _world, api, rec, _pd_id = await api_world(seed=seed_with(("coordinated_responding", "incident_workflows")))
    status, answer = await api.post(
        rec["number"], "responders", {"requested_by": "alice.nguyen", "users": ["bob.smith"]}
    )
    assert status == 402
    assert answer["error"].startswith("the PagerDuty account lacks the ability to add responders (")
    assert "coordinated_responding" in answer["error"]
    status, answer = await api.get(rec["number"], "workflows")
    assert status == 402 and "list incident workflows" in answer["error"] and "incident_workflows" in answer["error"]


@pytest.mark.parametrize("token", [None, "wrong-token"])
async def test_the_api_needs_the_bearer_token(api_world, token):
    world, api, rec, pd_id = await api_world()
    status, answer = await api.post(
        rec["number"], "status-updates", {"requested_by": "alice.nguyen", "message": "x"}, token=token
    )
    assert status == 401 and answer["error"] == "missing or wrong bearer token"
    assert world.pd.status_updates.get(pd_id, []) == []


async def test_without_a_token_configured_the_api_is_off(api_world):
    _world, api, rec, _pd_id = await api_world(api_token=None)
    status, answer = await api.get(rec["number"], "status-updates", token=TOKEN)
    assert status == 503 and "api_token is not set" in answer["error"]


@pytest.mark.parametrize(
    "body, said",
    [
        ({}, "users: give users, groups, pagerduty_user_ids or escalation_policy_ids to request"),
        ({"users": "bob.smith", "groups": [""]}, "groups: a list of non-empty strings"),
        ({"users": ["nobody.here"]}, "users[0]: no ServiceNow user 'nobody.here'"),
        ({"users": ["erin.garcia"]}, "users[0]: ServiceNow user erin.garcia has no PagerDuty account"),
        ({"pagerduty_user_ids": ["lower"]}, "pagerduty_user_ids[0]: 'lower' is not a PagerDuty id"),
        ({"users": ["bob.smith"], "conference_bridge": {"url": "ftp://x"}}, "conference_bridge.url: must start with"),
    ],
)
async def test_bad_responder_input_names_the_field(api_world, body, said):
    _world, api, rec, _pd_id = await api_world()
    status, answer = await api.post(rec["number"], "responders", {"requested_by": "alice.nguyen", **body})
    assert status == 400 and answer["error"].startswith(said), answer


async def test_unknown_action_and_body_that_is_not_json(api_world):
    world, api, rec, _pd_id = await api_world()
    status, answer = await api.post(rec["number"], "escalate", {"requested_by": "alice.nguyen"})
    assert status == 404 and answer["error"].startswith("no action 'escalate' (known: conference-bridge, ")
    async with api.session.post(
        f"{world.url}/api/v1/incidents/{rec['number']}/responders",
        data=b"[1, 2",
        headers={"Authorization": f"Bearer {TOKEN}"},
    ) as resp:
        assert resp.status == 400 and "error" in await resp.json()


async def test_a_resolved_incident_cannot_get_responders(api_world):
    world, api, rec, pd_id = await api_world()
    world.pd.resolve(pd_id, "PALICE1")
    await world.settle()
    status, answer = await api.post(
        rec["number"], "responders", {"requested_by": "alice.nguyen", "users": ["bob.smith"]}
    )
    assert status == 400 and answer["error"].startswith("cannot add responders: PagerDuty answered 400")
