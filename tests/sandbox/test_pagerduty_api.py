"""PagerDuty sandbox: authentication, errors, From header, pagination, rate limits, resources."""

from __future__ import annotations

import pytest

FROM = {"From": "integration@acme.example"}
ACK = {"incident": {"type": "incident_reference", "status": "acknowledged"}}


async def new_incident(client, title="Disk full", service="PSVCDB1", headers=FROM, **extra):
    body = {
        "incident": {
            "type": "incident",
            "title": title,
            "service": {"id": service, "type": "service_reference"},
            **extra,
        }
    }
    return await client.post("/incidents", json=body, headers=headers)


# ------------------------------------------------------------------ auth


@pytest.mark.parametrize("header", [None, "", "Token token=not-a-key", "Basic dXNlcjpwYXNz", "sandbox-pd-full-key"])
async def test_requests_without_a_valid_token_get_401_with_code_2006(pd_client, header):
    headers = {"Authorization": header} if header is not None else {"Authorization": ""}
    resp = await pd_client.get("/users", headers=headers)
    assert resp.status == 401
    body = await resp.json()
    assert body["error"]["code"] == 2006
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


async def test_token_and_bearer_forms_are_accepted(pd_client):
    for header in (
        "Token token=sandbox-pd-full-key",
        'Token token="sandbox-pd-full-key"',
        "Bearer sandbox-pd-full-key",
    ):
        resp = await pd_client.get("/users", headers={"Authorization": header})
        assert resp.status == 200, header


async def test_read_only_key_reads_but_gets_403_on_writes(pd_client, pd_state):
    ro = {"Authorization": "Token token=sandbox-pd-read-only-key", **FROM}
    assert (await pd_client.get("/incidents", headers=ro)).status == 200
    before = len(pd_state.incidents)
    resp = await new_incident(pd_client, headers=ro)
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == 2010
    assert len(pd_state.incidents) == before
    resp = await pd_client.delete("/users/PBOBSM1", headers=ro)
    assert resp.status == 403
    assert "PBOBSM1" in pd_state.users


async def test_unknown_routes_answer_pagerduty_404(pd_client):
    resp = await pd_client.get("/no/such/thing")
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == 2100


async def test_unknown_ids_answer_404_with_code_2100(pd_client):
    for path in (
        "/incidents/PNOPE00",
        "/users/PNOPE00",
        "/services/PNOPE00",
        "/teams/PNOPE00",
        "/escalation_policies/PNOPE00",
        "/schedules/PNOPE00",
        "/extensions/PNOPE00",
        "/webhook_subscriptions/PNOPE00",
        "/business_services/PNOPE00",
        "/incidents/PNOPE00/notes",
        "/incidents/PNOPE00/log_entries",
        "/log_entries/RNOPE",
    ):
        resp = await pd_client.get(path)
        assert resp.status == 404, path
        assert (await resp.json())["error"]["code"] == 2100, path


async def test_invalid_json_and_invalid_fields_answer_400_2001_naming_the_fields(pd_client):
    resp = await pd_client.post("/incidents", data=b"{not json", headers={**FROM, "Content-Type": "application/json"})
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == 2001
    resp = await pd_client.post(
        "/incidents", json={"incident": {"type": "incident", "title": "", "service": {"id": "PNOPE00"}}}, headers=FROM
    )
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["code"] == 2001
    joined = " ".join(error["errors"]).lower()
    assert "title" in joined and "service" in joined
    resp = await pd_client.post("/incidents", json={"title": "not wrapped"}, headers=FROM)
    assert resp.status == 400
    assert "incident" in " ".join((await resp.json())["error"]["errors"])


# ------------------------------------------------------------ From header


FROM_REQUIRED = [
    ("POST", "/incidents"),
    ("PUT", "/incidents"),
    ("PUT", "/incidents/{id}"),
    ("PUT", "/incidents/{id}/merge"),
    ("POST", "/incidents/{id}/notes"),
    ("POST", "/incidents/{id}/status_updates"),
    ("POST", "/incidents/{id}/snooze"),
    ("POST", "/users"),
]


@pytest.mark.parametrize("method,path", FROM_REQUIRED)
async def test_from_header_is_required_where_the_openapi_file_requires_it(pd_client, pd_state, method, path):
    inc = pd_state.create_incident(title="x", service_id="PSVCDB1", from_user="PINTEGR")
    resp = await pd_client.request(method, path.format(id=inc["id"]), json={})
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["code"] == 2016
    assert '"From" header' in error["message"]


async def test_from_header_on_note_update(pd_client, pd_state):
    inc = pd_state.create_incident(title="x", service_id="PSVCDB1", from_user="PINTEGR")
    note = pd_state.add_note(inc["id"], "PINTEGR", "first")
    resp = await pd_client.put(f"/incidents/{inc['id']}/notes/{note['id']}", json={"note": {"content": "edited"}})
    assert (await resp.json())["error"]["code"] == 2016
    resp = await pd_client.put(
        f"/incidents/{inc['id']}/notes/{note['id']}", json={"note": {"content": "edited"}}, headers=FROM
    )
    assert resp.status == 200
    assert pd_state.notes[inc["id"]][note["id"]]["content"] == "edited"


async def test_from_must_be_an_email_of_a_known_user(pd_client):
    resp = await new_incident(pd_client, headers={"From": "not-an-email"})
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == 1028
    resp = await new_incident(pd_client, headers={"From": "erin.garcia@acme.example"})  # ServiceNow-only person
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == 1008
    resp = await new_incident(pd_client, headers={"From": "ALICE.NGUYEN@acme.example"})
    assert resp.status == 201
    assert (await resp.json())["incident"]["first_trigger_log_entry"]


async def test_ops_without_a_from_parameter_do_not_need_it(pd_client, pd_state):
    inc = pd_state.create_incident(title="x", service_id="PSVCDB1", from_user="PINTEGR")
    assert (await pd_client.get(f"/incidents/{inc['id']}")).status == 200
    resp = await pd_client.post("/teams", json={"team": {"type": "team", "name": "SRE"}})
    assert resp.status == 201
    resp = await pd_client.post(
        "/escalation_policies",
        json={
            "escalation_policy": {
                "type": "escalation_policy",
                "name": "SRE",
                "escalation_rules": [
                    {"escalation_delay_in_minutes": 5, "targets": [{"id": "PBOBSM1", "type": "user_reference"}]}
                ],
            }
        },
    )
    assert resp.status == 201


async def test_from_a_stakeholder_cannot_act_on_incidents(pd_client, pd_state):
    pd_state.update_user("PCAROL1", {"role": "read_only_user"})
    resp = await new_incident(pd_client, headers={"From": "carol.jones@acme.example"})
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == 2010


async def test_user_key_implies_the_from_user(aiohttp_client, pd_seed_with_user_key):
    state, client = pd_seed_with_user_key
    resp = await client.post(
        "/incidents",
        json={
            "incident": {"type": "incident", "title": "x", "service": {"id": "PSVCDB1", "type": "service_reference"}}
        },
    )
    assert resp.status == 201
    trigger = state.log_entries[(await resp.json())["incident"]["first_trigger_log_entry"]["id"]]
    assert trigger["agent"]["id"] == "PBOBSM1"
    me = await client.get("/users/me")
    assert (await me.json())["user"]["id"] == "PBOBSM1"


async def test_users_me_needs_a_user_key(pd_client):
    resp = await pd_client.get("/users/me")
    assert resp.status == 400


@pytest.fixture
async def pd_seed_with_user_key(aiohttp_client, pd_clock):
    import copy

    from dutybridge_sandbox.pagerduty import PagerDutyState, create_app, load_seed

    seed = copy.deepcopy(load_seed())
    seed["api_keys"].append({"key": "bob-user-key", "read_only": False, "user": "PBOBSM1"})
    state = PagerDutyState.from_seed(seed)
    state.now = pd_clock
    client = await aiohttp_client(create_app(state), headers={"Authorization": "Token token=bob-user-key"})
    return state, client


# ------------------------------------------------------------- pagination


async def many_users(pd_state, n):
    for i in range(n):
        pd_state.create_user({"type": "user", "name": f"Load User {i:03d}", "email": f"load{i:03d}@acme.example"})


async def test_limit_defaults_to_25_and_more_says_whether_another_page_exists(pd_client, pd_state):
    await many_users(pd_state, 30)  # 35 users in all
    body = await (await pd_client.get("/users")).json()
    assert body["limit"] == 25 and body["offset"] == 0 and len(body["users"]) == 25
    assert body["more"] is True and body["total"] is None
    body = await (await pd_client.get("/users", params={"offset": 25})).json()
    assert len(body["users"]) == 10 and body["more"] is False
    body = await (await pd_client.get("/users", params={"offset": 25, "limit": 10})).json()
    assert body["more"] is False


async def test_total_is_given_only_when_asked(pd_client, pd_state):
    await many_users(pd_state, 3)
    body = await (await pd_client.get("/users", params={"total": "true", "limit": 2})).json()
    assert body["total"] == len(pd_state.users)
    assert body["more"] is True


async def test_limit_above_100_is_clamped_to_100(pd_client, pd_state):
    await many_users(pd_state, 120)
    body = await (await pd_client.get("/users", params={"limit": 1000})).json()
    assert body["limit"] == 100 and len(body["users"]) == 100 and body["more"] is True


async def test_pages_cover_every_item_exactly_once(pd_client, pd_state):
    await many_users(pd_state, 40)
    seen, offset = [], 0
    while True:
        body = await (await pd_client.get("/users", params={"limit": 7, "offset": offset})).json()
        seen += [u["id"] for u in body["users"]]
        if not body["more"]:
            break
        offset += 7
    assert sorted(seen) == sorted(pd_state.users)


@pytest.mark.parametrize(
    "params", [{"offset": 9_976}, {"offset": 9_901, "limit": 100}, {"offset": 10_000}, {"offset": 9_950, "limit": 1000}]
)
async def test_offset_plus_limit_above_10000_is_400(pd_client, params):
    resp = await pd_client.get("/incidents", params=params)
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == 2001


async def test_offset_plus_limit_of_exactly_10000_is_allowed(pd_client):
    resp = await pd_client.get("/incidents", params={"offset": 9_900, "limit": 100})
    assert resp.status == 200
    body = await resp.json()
    assert body["incidents"] == [] and body["more"] is False


@pytest.mark.parametrize("params", [{"limit": "ten"}, {"offset": "-1"}, {"limit": "-5"}])
async def test_malformed_paging_parameters_are_400(pd_client, params):
    resp = await pd_client.get("/users", params=params)
    assert resp.status == 400


# ------------------------------------------------------------- rate limits


async def test_rate_limit_headers_count_down_and_429_when_spent(pd_client, pd_state, pd_clock):
    pd_state.rate_limit_per_minute = 3
    remaining = []
    for _ in range(3):
        resp = await pd_client.get("/users")
        assert resp.status == 200
        assert resp.headers["ratelimit-limit"] == "3"
        remaining.append(int(resp.headers["ratelimit-remaining"]))
        assert 0 < int(resp.headers["ratelimit-reset"]) <= 60
    assert remaining == [2, 1, 0]
    resp = await pd_client.get("/users")
    assert resp.status == 429
    assert await resp.json() == {"error": {"message": "Rate Limit Exceeded", "code": 2020}}
    assert resp.headers["ratelimit-remaining"] == "0"
    pd_clock.advance(45)
    resp = await pd_client.get("/incidents")
    assert resp.status == 429
    assert int(resp.headers["ratelimit-reset"]) <= 15
    pd_clock.advance(15)
    resp = await pd_client.get("/users")
    assert resp.status == 200
    assert resp.headers["ratelimit-remaining"] == "2"


async def test_rate_limit_is_per_key(pd_client, pd_state):
    pd_state.rate_limit_per_minute = 1
    assert (await pd_client.get("/users")).status == 200
    assert (await pd_client.get("/users")).status == 429
    ro = {"Authorization": "Token token=sandbox-pd-read-only-key"}
    assert (await pd_client.get("/users", headers=ro)).status == 200


async def test_errors_carry_rate_limit_headers_too(pd_client):
    resp = await pd_client.get("/incidents/PNOPE00")
    assert resp.status == 404
    assert "ratelimit-remaining" in resp.headers


async def test_seeded_budget_is_960_per_minute(pd_client):
    resp = await pd_client.get("/users")
    assert resp.headers["ratelimit-limit"] == "960"


async def test_fault_injection_answers_in_pagerduty_shape(pd_client, pd_state):
    from dutybridge_sandbox.faults import FaultInjector

    pd_state.faults = FaultInjector.parse("GET /users: error_rate=1")
    resp = await pd_client.get("/users")
    assert resp.status in (500, 502, 503)
    assert "code" in (await resp.json())["error"]
    assert (await pd_client.get("/teams")).status == 200


# --------------------------------------------------------------- filters


async def test_user_query_matches_name_or_email(pd_client):
    names = lambda body: sorted(u["name"] for u in body["users"])  # noqa: E731
    assert names(await (await pd_client.get("/users", params={"query": "bob"})).json()) == ["Bob Smith"]
    assert names(await (await pd_client.get("/users", params={"query": "DAVE.PATEL@"})).json()) == ["Dave Patel"]
    body = await (await pd_client.get("/users", params=[("team_ids[]", "PTNET01")])).json()
    assert names(body) == ["Bob Smith", "Carol Jones"]


async def test_service_team_and_policy_queries(pd_client):
    body = await (await pd_client.get("/services", params={"query": "net"})).json()
    assert [s["id"] for s in body["services"]] == ["PSVCNET"]
    body = await (await pd_client.get("/teams", params={"query": "data"})).json()
    assert [t["id"] for t in body["teams"]] == ["PTDBA01"]
    body = await (await pd_client.get("/escalation_policies", params={"query": "database"})).json()
    assert sorted(e["id"] for e in body["escalation_policies"]) == ["PEPDB01", "PEPDBP1"]
    body = await (await pd_client.get("/escalation_policies", params=[("user_ids[]", "PBOBSM1")])).json()
    assert [e["id"] for e in body["escalation_policies"]] == ["PEPNET1"]
    body = await (await pd_client.get("/escalation_policies", params={"sort_by": "name:desc"})).json()
    names = [e["name"] for e in body["escalation_policies"]]
    assert names == sorted(names, reverse=True)


async def test_incident_filters(pd_client, pd_state, pd_clock):
    old = pd_state.create_incident(title="old", service_id="PSVCNET", from_user="PINTEGR")
    pd_clock.advance(40 * 86400)
    a = pd_state.create_incident(title="a", service_id="PSVCDB1", from_user="PINTEGR")
    b = pd_state.create_incident(title="b", service_id="PSVCNET", from_user="PINTEGR", urgency="low")
    pd_state.acknowledge(b["id"], "PBOBSM1")

    async def ids(params):
        resp = await pd_client.get("/incidents", params=params)
        assert resp.status == 200, await resp.text()
        return [i["id"] for i in (await resp.json())["incidents"]]

    assert await ids({}) == [a["id"], b["id"]], "default window is the last month"
    assert await ids({"date_range": "all"}) == [old["id"], a["id"], b["id"]]
    assert await ids([("statuses[]", "acknowledged")]) == [b["id"]]
    assert await ids([("statuses[]", "triggered"), ("statuses[]", "acknowledged")]) == [a["id"], b["id"]]
    assert await ids([("service_ids[]", "PSVCNET"), ("date_range", "all")]) == [old["id"], b["id"]]
    assert await ids([("urgencies[]", "low")]) == [b["id"]]
    assert await ids([("user_ids[]", "PBOBSM1"), ("date_range", "all")]) == [old["id"], b["id"]]
    assert await ids({"incident_key": a["incident_key"]}) == [a["id"]]
    assert await ids({"since": "2025-03-01T00:00:00Z", "until": "2025-03-02T00:00:00Z"}) == [old["id"]]
    assert await ids({"date_range": "all", "sort_by": "incident_number:desc"}) == [b["id"], a["id"], old["id"]]
    resp = await pd_client.get("/incidents", params=[("statuses[]", "open")])
    assert resp.status == 400
    resp = await pd_client.get("/incidents", params={"since": "yesterday"})
    assert resp.status == 400
    resp = await pd_client.get("/incidents", params={"since": "2024-01-01T00:00:00Z", "until": "2025-01-01T00:00:00Z"})
    assert resp.status == 400, "more than six months"


async def test_include_expands_references(pd_client, pd_state):
    inc = pd_state.create_incident(title="x", service_id="PSVCDB1", from_user="PINTEGR")
    body = await (
        await pd_client.get(f"/incidents/{inc['id']}", params=[("include[]", "services"), ("include[]", "assignees")])
    ).json()
    assert body["incident"]["service"]["type"] == "service"
    assert body["incident"]["service"]["escalation_policy"]["id"] == "PEPDB01"
    assert body["incident"]["assignments"][0]["assignee"]["type"] == "user"
    plain = await (await pd_client.get(f"/incidents/{inc['id']}")).json()
    assert plain["incident"]["service"]["type"] == "service_reference"
    users = await (await pd_client.get("/users/PALICE1", params={"include[]": "contact_methods"})).json()
    assert users["user"]["contact_methods"][0]["address"] == "alice.nguyen@acme.example"


# ---------------------------------------------------------- directory CRUD


async def test_user_crud_and_roles(pd_client, pd_state):
    resp = await pd_client.post(
        "/users",
        headers=FROM,
        json={
            "user": {"type": "user", "name": "Frank Miller", "email": "frank.miller@acme.example", "role": "observer"}
        },
    )
    assert resp.status == 201
    user = (await resp.json())["user"]
    assert user["role"] == "observer" and user["id"].startswith("P") and len(user["id"]) == 7
    resp = await pd_client.post(
        "/users",
        headers=FROM,
        json={"user": {"type": "user", "name": "Frank Again", "email": "FRANK.MILLER@acme.example"}},
    )
    assert resp.status == 400
    resp = await pd_client.post(
        "/users",
        headers=FROM,
        json={"user": {"type": "user", "name": "Bad Role", "email": "bad@acme.example", "role": "superuser"}},
    )
    assert resp.status == 400
    assert "role" in " ".join((await resp.json())["error"]["errors"]).lower()
    for role in (
        "owner",
        "admin",
        "user",
        "limited_user",
        "observer",
        "restricted_access",
        "read_only_user",
        "read_only_limited_user",
    ):
        resp = await pd_client.put(f"/users/{user['id']}", json={"user": {"type": "user", "role": role}})
        assert resp.status == 200 and (await resp.json())["user"]["role"] == role
    assert (await pd_client.delete(f"/users/{user['id']}")).status == 204
    assert (await pd_client.get(f"/users/{user['id']}")).status == 404


async def test_contact_methods_and_notification_rules(pd_client):
    resp = await pd_client.post(
        "/users/PBOBSM1/contact_methods",
        json={
            "contact_method": {
                "type": "sms_contact_method",
                "label": "Mobile",
                "address": "4155550102",
                "country_code": 1,
            }
        },
    )
    assert resp.status == 201
    cm = (await resp.json())["contact_method"]
    resp = await pd_client.post(
        "/users/PBOBSM1/contact_methods",
        json={
            "contact_method": {
                "type": "sms_contact_method",
                "label": "Mobile again",
                "address": "4155550102",
                "country_code": 1,
            }
        },
    )
    assert resp.status == 400
    resp = await pd_client.post(
        "/users/PBOBSM1/notification_rules",
        json={
            "notification_rule": {
                "type": "assignment_notification_rule",
                "start_delay_in_minutes": 5,
                "urgency": "low",
                "contact_method": {"id": cm["id"], "type": "sms_contact_method_reference"},
            }
        },
    )
    assert resp.status == 201
    rule = (await resp.json())["notification_rule"]
    user = (await (await pd_client.get("/users/PBOBSM1")).json())["user"]
    assert cm["id"] in [c["id"] for c in user["contact_methods"]]
    assert rule["id"] in [r["id"] for r in user["notification_rules"]]
    resp = await pd_client.put(
        f"/users/PBOBSM1/notification_rules/{rule['id']}", json={"notification_rule": {"start_delay_in_minutes": 10}}
    )
    assert (await resp.json())["notification_rule"]["start_delay_in_minutes"] == 10
    assert (await pd_client.delete(f"/users/PBOBSM1/contact_methods/{cm['id']}")).status == 204
    rules = (await (await pd_client.get("/users/PBOBSM1/notification_rules")).json())["notification_rules"]
    assert rule["id"] not in [r["id"] for r in rules], "rules of a deleted contact method go with it"


async def test_team_membership(pd_client, pd_state):
    assert (await pd_client.put("/teams/PTDBA01/users/PBOBSM1", json={"role": "observer"})).status == 204
    members = (await (await pd_client.get("/teams/PTDBA01/members")).json())["members"]
    assert {"PBOBSM1": "observer"}.items() <= {m["user"]["id"]: m["role"] for m in members}.items()
    user = (await (await pd_client.get("/users/PBOBSM1")).json())["user"]
    assert {t["id"] for t in user["teams"]} == {"PTDBA01", "PTNET01"}
    assert (await pd_client.put("/teams/PTDBA01/users/PBOBSM1", json={"role": "boss"})).status == 400
    assert (await pd_client.delete("/teams/PTDBA01/users/PBOBSM1")).status == 204
    assert (await pd_client.delete("/teams/PTDBA01/users/PBOBSM1")).status == 404
    assert (await pd_client.put("/teams/PTDBA01/escalation_policies/PEPNET1")).status == 204
    ep = (await (await pd_client.get("/escalation_policies/PEPNET1")).json())["escalation_policy"]
    assert "PTDBA01" in [t["id"] for t in ep["teams"]]
    assert (await pd_client.delete("/teams/PTDBA01/escalation_policies/PEPNET1")).status == 204
    assert (await pd_client.put("/teams/PNOPE00/users/PBOBSM1", json={})).status == 404


async def test_escalation_policies_list_their_services_and_refuse_deletion_while_used(pd_client):
    ep = (await (await pd_client.get("/escalation_policies/PEPDB01")).json())["escalation_policy"]
    assert [s["id"] for s in ep["services"]] == ["PSVCDB1"]
    assert ep["escalation_rules"][0]["targets"][0]["type"] == "schedule_reference"
    assert (await pd_client.delete("/escalation_policies/PEPDB01")).status == 400
    resp = await pd_client.post(
        "/escalation_policies",
        json={"escalation_policy": {"type": "escalation_policy", "name": "Empty", "escalation_rules": []}},
    )
    assert resp.status == 400
    resp = await pd_client.post(
        "/escalation_policies",
        json={
            "escalation_policy": {
                "type": "escalation_policy",
                "name": "Ghost",
                "escalation_rules": [
                    {"escalation_delay_in_minutes": 5, "targets": [{"id": "PNOPE00", "type": "user_reference"}]}
                ],
            }
        },
    )
    assert resp.status == 400


async def test_service_status_follows_open_incidents(pd_client, pd_state):
    async def status():
        return (await (await pd_client.get("/services/PSVCDB1")).json())["service"]["status"]

    assert await status() == "active"
    inc = pd_state.create_incident(title="x", service_id="PSVCDB1", from_user="PINTEGR")
    assert await status() == "critical"
    pd_state.acknowledge(inc["id"], "PALICE1")
    assert await status() == "warning"
    pd_state.resolve(inc["id"], "PALICE1")
    assert await status() == "active"


async def test_service_dependencies(pd_client, pd_state):
    rel = {
        "supporting_service": {"id": "PSVCDB1", "type": "service"},
        "dependent_service": {"id": "PBSPAY1", "type": "business_service"},
    }
    resp = await pd_client.post("/service_dependencies/associate", json={"relationships": [rel]})
    assert resp.status == 200
    [created] = (await resp.json())["relationships"]
    assert created["id"] and created["supporting_service"]["id"] == "PSVCDB1"
    again = await (await pd_client.post("/service_dependencies/associate", json={"relationships": [rel]})).json()
    assert again["relationships"][0]["id"] == created["id"], "associating twice does not duplicate"
    tech = await (await pd_client.get("/service_dependencies/technical_services/PSVCDB1")).json()
    biz = await (await pd_client.get("/service_dependencies/business_services/PBSPAY1")).json()
    assert [r["id"] for r in tech["relationships"]] == [r["id"] for r in biz["relationships"]] == [created["id"]]
    reverse = {
        "supporting_service": {"id": "PBSPAY1", "type": "business_service"},
        "dependent_service": {"id": "PSVCDB1", "type": "service"},
    }
    assert (await pd_client.post("/service_dependencies/associate", json={"relationships": [reverse]})).status == 400
    ghost = {
        "supporting_service": {"id": "PNOPE00", "type": "service"},
        "dependent_service": {"id": "PBSPAY1", "type": "business_service"},
    }
    assert (await pd_client.post("/service_dependencies/associate", json={"relationships": [ghost]})).status == 404
    resp = await pd_client.post("/service_dependencies/disassociate", json={"relationships": [rel]})
    assert resp.status == 200
    assert (await pd_client.post("/service_dependencies/disassociate", json={"relationships": [rel]})).status == 404
    assert pd_state.service_dependencies == {}


async def test_dependency_cycles_are_refused(pd_client):
    resp = await pd_client.post(
        "/services",
        json={
            "service": {
                "type": "service",
                "name": "api",
                "escalation_policy": {"id": "PEPDB01", "type": "escalation_policy_reference"},
            }
        },
    )
    api = (await resp.json())["service"]["id"]
    first = {
        "supporting_service": {"id": "PSVCDB1", "type": "service"},
        "dependent_service": {"id": api, "type": "service"},
    }
    back = {
        "supporting_service": {"id": api, "type": "service"},
        "dependent_service": {"id": "PSVCDB1", "type": "service"},
    }
    assert (await pd_client.post("/service_dependencies/associate", json={"relationships": [first]})).status == 200
    assert (await pd_client.post("/service_dependencies/associate", json={"relationships": [back]})).status == 400


async def test_extension_schemas_include_servicenow_v7_and_generic_v2(pd_client):
    body = await (await pd_client.get("/extension_schemas")).json()
    by_id = {s["id"]: s for s in body["extension_schemas"]}
    assert by_id["PJFWPEP"]["label"] == "Generic V2 Webhook"
    assert by_id["PAKM60Z"]["label"] == "ServiceNow (v7)"
    resp = await pd_client.post(
        "/extensions",
        json={
            "extension": {
                "name": "bad",
                "extension_schema": {"id": "PNOPE00", "type": "extension_schema_reference"},
                "extension_objects": [{"id": "PSVCDB1", "type": "service_reference"}],
            }
        },
    )
    assert resp.status == 400


async def test_webhook_subscription_secret_is_only_in_the_create_answer(pd_client):
    body = {
        "webhook_subscription": {
            "type": "webhook_subscription",
            "delivery_method": {"type": "http_delivery_method", "url": "https://example.com/hook"},
            "events": ["incident.triggered"],
            "filter": {"type": "account_reference"},
        }
    }
    created = (await (await pd_client.post("/webhook_subscriptions", json=body)).json())["webhook_subscription"]
    assert isinstance(created["delivery_method"]["secret"], str) and len(created["delivery_method"]["secret"]) >= 16
    listed = (await (await pd_client.get("/webhook_subscriptions")).json())["webhook_subscriptions"]
    assert [s["delivery_method"]["secret"] for s in listed] == [None]
    fetched = (await (await pd_client.get(f"/webhook_subscriptions/{created['id']}")).json())["webhook_subscription"]
    assert fetched["delivery_method"]["secret"] is None
    bad = {"webhook_subscription": {**body["webhook_subscription"], "events": ["incident.exploded"]}}
    assert (await pd_client.post("/webhook_subscriptions", json=bad)).status == 400
    bad = {
        "webhook_subscription": {
            **body["webhook_subscription"],
            "filter": {"type": "service_reference", "id": "PNOPE00"},
        }
    }
    assert (await pd_client.post("/webhook_subscriptions", json=bad)).status == 400
    assert (await pd_client.delete(f"/webhook_subscriptions/{created['id']}")).status == 204
    assert (await pd_client.post(f"/webhook_subscriptions/{created['id']}/enable")).status == 404


# ------------------------------------------------ abilities and legacy features


async def test_responder_requests_need_coordinated_responding(pd_client, pd_state):
    inc = pd_state.create_incident(title="x", service_id="PSVCDB1", from_user="PINTEGR")
    body = {
        "requester_id": "PINTEGR",
        "message": "help",
        "responder_request_targets": [{"responder_request_target": {"id": "PBOBSM1", "type": "user_reference"}}],
    }
    resp = await pd_client.post(f"/incidents/{inc['id']}/responder_requests", json=body)
    assert resp.status == 200
    req = (await resp.json())["responder_request"]
    assert (
        req["responder_request_targets"][0]["responder_request_target"]["incident_responders"][0]["state"] == "pending"
    )
    assert pd_state.incidents[inc["id"]]["incidents_responders"][0]["user"]["id"] == "PBOBSM1"
    pd_state.abilities.remove("coordinated_responding")
    resp = await pd_client.post(f"/incidents/{inc['id']}/responder_requests", json=body)
    assert resp.status == 402
    assert (await resp.json())["error"]["code"] == 2014
    assert (await pd_client.get("/abilities/coordinated_responding")).status == 402
    assert (await pd_client.get("/abilities/teams")).status == 204


async def test_incident_workflow_instances(pd_client, pd_state):
    inc = pd_state.create_incident(title="x", service_id="PSVCDB1", from_user="PINTEGR")
    body = {"incident_workflow_instance": {"incident": {"id": inc["id"], "type": "incident_reference"}}}
    resp = await pd_client.post("/incident_workflows/PWFMAJ1/instances", json=body)
    assert resp.status == 201
    instance = (await resp.json())["incident_workflow_instance"]
    assert instance["incident"]["id"] == inc["id"] and instance["type"] == "incident_workflow_instance"
    assert (await pd_client.post("/incident_workflows/PNOPE00/instances", json=body)).status == 404
    pd_state.abilities.remove("incident_workflows")
    assert (await pd_client.post("/incident_workflows/PWFMAJ1/instances", json=body)).status == 402


async def test_response_plays_exist_only_behind_the_flag(pd_client, pd_state):
    inc = pd_state.create_incident(title="x", service_id="PSVCDB1", from_user="PINTEGR")
    body = {"incident": {"id": inc["id"], "type": "incident_reference"}}
    plays = await (await pd_client.get("/response_plays")).json()
    assert [p["id"] for p in plays["response_plays"]] == ["PRPMAJ1"]
    assert (await pd_client.post("/response_plays/PRPMAJ1/run", json=body)).status == 400, "From is required"
    resp = await pd_client.post("/response_plays/PRPMAJ1/run", json=body, headers=FROM)
    assert resp.status == 200 and (await resp.json()) == {"status": "ok"}
    assert pd_state.response_play_runs[-1]["incident"] == inc["id"]

    pd_state.response_plays_enabled = False
    for method, path in (
        ("GET", "/response_plays"),
        ("GET", "/response_plays/PRPMAJ1"),
        ("POST", "/response_plays/PRPMAJ1/run"),
    ):
        resp = await pd_client.request(method, path, json=body, headers=FROM)
        assert resp.status == 404, path
        assert (await resp.json())["error"]["code"] == 2100


async def test_reset_returns_to_the_seed(pd_client, pd_state):
    pd_state.create_incident(title="x", service_id="PSVCDB1", from_user="PINTEGR")
    await pd_client.delete("/users/PDAVEP1")
    pd_state.rate_limit_per_minute = 1
    pd_state.reset()
    assert pd_state.incidents == {}
    assert "PDAVEP1" in pd_state.users
    assert pd_state.rate_limit_per_minute == 960
    inc = pd_state.create_incident(title="y", service_id="PSVCDB1", from_user="PINTEGR")
    assert inc["incident_number"] == 1


async def test_base_url_rewrites_self_links(pd_client, pd_state):
    inc = pd_state.create_incident(title="x", service_id="PSVCDB1", from_user="PINTEGR")
    pd_state.base_url = "http://127.0.0.1:8765/"
    assert pd_state.incidents[inc["id"]]["self"] == f"http://127.0.0.1:8765/incidents/{inc['id']}"
    assert pd_state.incidents[inc["id"]]["service"]["self"] == "http://127.0.0.1:8765/services/PSVCDB1"
    user = (await (await pd_client.get("/users/PALICE1")).json())["user"]
    assert user["self"] == "http://127.0.0.1:8765/users/PALICE1"
    assert user["teams"][0]["self"].startswith("http://127.0.0.1:8765/")
    created = pd_state.create_incident(title="y", service_id="PSVCDB1", from_user="PINTEGR")
    assert created["self"].startswith("http://127.0.0.1:8765/incidents/")
    assert pd_state.incidents[inc["id"]]["html_url"].startswith("https://"), "web links stay on the web host"
