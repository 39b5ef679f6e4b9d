"""The ServiceNow sandbox's Table API surface: envelopes, verbs, errors, limits."""

from __future__ import annotations

import pytest
from yarl import URL

from dutybridge_sandbox.faults import FaultInjector

DATABASE = "791d31c38a869b0f335daf24593fd37d"
ALICE = "f164b40bc4b53aa13fb15510f77528f4"


async def test_create_read_update_delete_an_incident(sn_client, sn_admin):
    created = await sn_client.post("/api/now/table/incident", json={"short_description": "Disk full"}, headers=sn_admin)
    assert created.status == 201
    record = (await created.json())["result"]
    sys_id = record["sys_id"]
    assert created.headers["Location"].endswith(f"/api/now/table/incident/{sys_id}")
    assert created.headers["Location"].startswith("http://")

    read = await sn_client.get(URL(created.headers["Location"]).path, headers=sn_admin)
    assert read.status == 200
    assert (await read.json())["result"]["short_description"] == "Disk full"

    patched = await sn_client.patch(
        f"/api/now/table/incident/{sys_id}", json={"short_description": "Disk 95% full"}, headers=sn_admin
    )
    assert patched.status == 200
    assert (await patched.json())["result"]["short_description"] == "Disk 95% full"

    put = await sn_client.put(f"/api/now/table/incident/{sys_id}", json={"description": "on db-01"}, headers=sn_admin)
    assert put.status == 200
    body = (await put.json())["result"]
    assert body["description"] == "on db-01"
    assert body["short_description"] == "Disk 95% full", "PUT updates only the fields it names"

    deleted = await sn_client.delete(f"/api/now/table/incident/{sys_id}", headers=sn_admin)
    assert deleted.status == 204
    assert await deleted.read() == b""
    gone = await sn_client.get(f"/api/now/table/incident/{sys_id}", headers=sn_admin)
    assert gone.status == 404


@pytest.mark.parametrize("prefix", ["/api/now/table", "/api/now/v1/table", "/api/now/v2/table"])
async def test_versioned_paths_answer_like_the_default_one(sn_client, sn_admin, prefix):
    response = await sn_client.get(
        f"{prefix}/sys_user_group", params={"sysparm_query": "name=Database"}, headers=sn_admin
    )
    assert response.status == 200
    assert [g["sys_id"] for g in (await response.json())["result"]] == [DATABASE]


async def test_v1_answers_404_for_an_empty_list_and_v2_an_empty_array(sn_client, sn_admin):
    v1 = await sn_client.get(
        "/api/now/v1/table/incident", params={"sysparm_query": "number=INC9999999"}, headers=sn_admin
    )
    assert v1.status == 404
    v2 = await sn_client.get(
        "/api/now/v2/table/incident", params={"sysparm_query": "number=INC9999999"}, headers=sn_admin
    )
    assert v2.status == 200
    assert (await v2.json())["result"] == []


async def test_every_value_is_a_string(sn_client, sn_admin):
    response = await sn_client.post(
        "/api/now/table/incident",
        json={"short_description": "x", "impact": 2, "urgency": 1, "active": True},
        headers=sn_admin,
    )
    record = (await response.json())["result"]
    for name, value in record.items():
        assert isinstance(value, (str, dict)), name
        if isinstance(value, dict):
            assert all(isinstance(v, str) for v in value.values()), name
    assert record["impact"] == "2"
    assert record["active"] == "true"
    assert record["sys_mod_count"] == "0"


async def test_missing_or_wrong_credentials_answer_401_with_servicenows_body(sn_client, sn_basic):
    for headers in ({}, sn_basic("alice.nguyen", "wrong"), sn_basic("nobody", "password")):
        response = await sn_client.get("/api/now/table/incident", headers=headers)
        assert response.status == 401
        assert await response.json() == {
            "error": {"message": "User Not Authenticated", "detail": "Required to provide Auth information"},
            "status": "failure",
        }
    garbled = await sn_client.get("/api/now/table/incident", headers={"Authorization": "Basic !!!"})
    assert garbled.status == 401


async def test_a_deactivated_user_can_no_longer_authenticate(sn_client, sn_state, sn_itil):
    assert (await sn_client.get("/api/now/table/incident", headers=sn_itil)).status == 200
    sn_state.update("sys_user", ALICE, {"active": False})
    assert (await sn_client.get("/api/now/table/incident", headers=sn_itil)).status == 401


async def test_users_without_the_role_get_403(sn_client, sn_itil):
    # ITIL users may not read security incidents nor write users.
    read = await sn_client.get("/api/now/table/sn_si_incident", headers=sn_itil)
    assert read.status == 403
    body = await read.json()
    assert body["status"] == "failure"
    assert body["error"]["message"] == "User Not Authorized"

    write = await sn_client.patch(f"/api/now/table/sys_user/{ALICE}", json={"phone": "1"}, headers=sn_itil)
    assert write.status == 403
    assert await write.json() == {
        "error": {"message": "Operation Failed", "detail": "ACL Exception Update Failed due to security constraints"},
        "status": "failure",
    }
    insert = await sn_client.post("/api/now/table/sys_user_group", json={"name": "x"}, headers=sn_itil)
    assert (await insert.json())["error"]["detail"] == "ACL Exception Insert Failed due to security constraints"


async def test_reading_a_parent_table_hides_rows_of_classes_the_user_may_not_read(sn_client, sn_state, sn_itil):
    incident = sn_state.insert("incident", {"short_description": "ordinary"})
    security = sn_state.insert("sn_si_incident", {"short_description": "secret"})
    response = await sn_client.get("/api/now/table/task", headers=sn_itil, params={"sysparm_fields": "number"})
    assert [r["number"] for r in (await response.json())["result"]] == [incident["number"]]
    assert response.headers["X-Total-Count"] == "2", "the count is taken before row ACLs, as on an instance"
    assert (await sn_client.get(f"/api/now/table/task/{security['sys_id']}", headers=sn_itil)).status == 404
    refused = await sn_client.patch(f"/api/now/table/task/{security['sys_id']}", json={"state": "16"}, headers=sn_itil)
    assert refused.status == 403
    assert sn_state.get("sn_si_incident", security["sys_id"])["state"] == "10"


async def test_input_display_value_accepts_choice_labels(sn_client, sn_admin):
    created = await sn_client.post(
        "/api/now/table/incident",
        params={"sysparm_input_display_value": "true"},
        json={"state": "In Progress", "impact": "1 - High", "urgency": "1 - High"},
        headers=sn_admin,
    )
    record = (await created.json())["result"]
    assert (record["state"], record["priority"]) == ("2", "1")


async def test_a_user_with_no_roles_can_do_nothing(sn_client, sn_basic):
    nobody = sn_basic("no.roles", "password")
    assert (await sn_client.get("/api/now/table/incident", headers=nobody)).status == 403
    assert (await sn_client.post("/api/now/table/incident", json={}, headers=nobody)).status == 403


async def test_itil_users_may_work_incidents_and_their_name_is_on_the_write(sn_client, sn_state, sn_itil, sn_basic):
    response = await sn_client.post("/api/now/table/incident", json={"short_description": "by alice"}, headers=sn_itil)
    assert response.status == 201
    record = (await response.json())["result"]
    assert record["sys_created_by"] == "alice.nguyen"
    assert record["sys_updated_by"] == "alice.nguyen"
    assert record["opened_by"]["value"] == ALICE
    bob = sn_basic("bob.smith", "password")
    await sn_client.patch(f"/api/now/table/incident/{record['sys_id']}", json={"state": "2"}, headers=bob)
    assert sn_state.get("incident", record["sys_id"])["sys_updated_by"] == "bob.smith"


async def test_unknown_record_answers_404_with_servicenows_body(sn_client, sn_admin):
    missing = "0" * 32
    for method in ("GET", "PATCH", "PUT", "DELETE"):
        response = await sn_client.request(
            method, f"/api/now/table/incident/{missing}", json={"state": "2"}, headers=sn_admin
        )
        assert response.status == 404, method
        assert await response.json() == {
            "error": {
                "message": "No Record found",
                "detail": "Record doesn't exist or ACL restricts the record retrieval",
            },
            "status": "failure",
        }


async def test_unknown_table_and_unknown_path_answer_400(sn_client, sn_admin):
    table = await sn_client.get("/api/now/table/u_no_such_table", headers=sn_admin)
    assert table.status == 400
    assert (await table.json())["error"]["message"] == "Invalid table u_no_such_table"
    path = await sn_client.get("/api/now/v9/table/incident", headers=sn_admin)
    assert path.status == 400
    assert (await path.json())["status"] == "failure"
    other = await sn_client.get("/api/now/stats", headers=sn_admin)
    assert other.status == 400


async def test_an_unsupported_method_answers_405(sn_client, sn_admin):
    response = await sn_client.post(f"/api/now/table/incident/{'0' * 32}", json={}, headers=sn_admin)
    assert response.status == 405
    assert (await response.json())["status"] == "failure"


async def test_bad_json_answers_400_with_servicenows_body(sn_client, sn_admin):
    for body in (b"{not json", b"[1, 2]"):
        response = await sn_client.post(
            "/api/now/table/incident", data=body, headers={"Content-Type": "application/json", **sn_admin}
        )
        assert response.status == 400
        payload = await response.json()
        assert payload["status"] == "failure"
        assert payload["error"]["message"] == "Exception while reading request"
    assert (await sn_client.get("/api/now/table/incident", headers=sn_admin)).headers["X-Total-Count"] == "0"


async def test_x_no_response_body_suppresses_the_record(sn_client, sn_admin):
    response = await sn_client.post(
        "/api/now/table/incident",
        json={"short_description": "quiet"},
        headers={"X-no-response-body": "true", **sn_admin},
    )
    assert response.status == 201
    assert await response.read() == b""
    assert "Location" in response.headers


async def test_hourly_rate_limit_answers_429_with_servicenows_headers(sn_client, sn_state, sn_admin, sn_itil):
    sn_state.rate_limit_per_hour = 3
    for _ in range(3):
        ok = await sn_client.get("/api/now/table/sys_user_group", headers=sn_admin)
        assert ok.status == 200
        assert ok.headers["X-RateLimit-Limit"] == "3"
    limited = await sn_client.get("/api/now/table/sys_user_group", headers=sn_admin)
    assert limited.status == 429
    reset = int(limited.headers["X-RateLimit-Reset"])
    now = int(sn_state.now().timestamp())
    assert reset % 3600 == 0 and 0 < reset - now <= 3600
    assert int(limited.headers["Retry-After"]) == reset - now
    assert len(limited.headers["X-RateLimit-Rule"]) == 32
    assert await limited.json() == {
        "error": {
            "message": "Rate limit exceeded",
            "detail": "Rate limit of 3 requests per hour for Table API exceeded",
        },
        "status": "failure",
    }
    # The limit is per user, and the next hour starts afresh.
    assert (await sn_client.get("/api/now/table/sys_user_group", headers=sn_itil)).status == 200
    sn_state.advance(reset - now)
    assert (await sn_client.get("/api/now/table/sys_user_group", headers=sn_admin)).status == 200


async def test_no_rate_limit_headers_when_the_limit_is_off(sn_client, sn_admin):
    response = await sn_client.get("/api/now/table/sys_user_group", headers=sn_admin)
    assert "X-RateLimit-Limit" not in response.headers


async def test_injected_faults_use_servicenows_error_body(sn_client, sn_state, sn_admin):
    sn_state.faults = FaultInjector.parse("GET /api/now/table/incident*: error_rate=1")
    failed = await sn_client.get("/api/now/table/incident", headers=sn_admin)
    assert failed.status in (500, 502, 503)
    assert (await failed.json())["status"] == "failure"
    assert (await sn_client.get("/api/now/table/sys_user", headers=sn_admin)).status == 200
    sn_state.faults = FaultInjector.parse("burst429_rate=1, burst429_len=1")
    burst = await sn_client.get("/api/now/table/sys_user", headers=sn_admin)
    assert burst.status == 429
    assert (await burst.json())["error"]["message"] == "Rate limit exceeded"


async def test_bearer_tokens_authenticate_when_configured(sn_client, sn_state):
    sn_state.oauth_tokens["tok-123"] = "alice.nguyen"
    ok = await sn_client.get("/api/now/table/incident", headers={"Authorization": "Bearer tok-123"})
    assert ok.status == 200
    bad = await sn_client.get("/api/now/table/incident", headers={"Authorization": "Bearer nope"})
    assert bad.status == 401
