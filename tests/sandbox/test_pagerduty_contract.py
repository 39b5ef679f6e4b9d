"""Contract test: drive the PagerDuty sandbox through the operations dutybridge uses and
validate every request sent and every response received against PagerDuty's OpenAPI file."""

from __future__ import annotations

import json
import re

import pytest

from dutybridge_sandbox.pagerduty.app import routes
from tests.support.openapi import load_spec, validate_request, validate_response
from tests.support.reference import webhook_example

FROM = {"From": "integration@acme.example"}
KEY = "sandbox-pd-full-key"


class Contract:
    """Sends requests through the test client; validates both directions."""

    def __init__(self, client):
        self.client = client
        self.seen: list[tuple[str, str, int]] = []

    async def __call__(
        self, method: str, path: str, *, query=None, body=None, headers=None, status: int, check_request: bool = True
    ) -> dict | None:
        hdrs = {"Authorization": f"Token token={KEY}", "Accept": "application/vnd.pagerduty+json;version=2"}
        if body is not None:
            hdrs["Content-Type"] = "application/json"
        hdrs.update(headers or {})
        raw = json.dumps(body).encode() if body is not None else None
        if check_request:
            validate_request(method, path, query, hdrs, raw)
        resp = await self.client.request(method, path, params=query, data=raw, headers=hdrs)
        data = await resp.read()
        assert resp.status == status, f"{method} {path}: {resp.status} {data[:500]!r}"
        validate_response(method, path, query, resp.status, dict(resp.headers), data)
        self.seen.append((method, path, resp.status))
        return json.loads(data) if data else None


@pytest.fixture
def api(pd_client):
    return Contract(pd_client)


async def test_incident_lifecycle_matches_the_openapi_file(api):
    created = await api(
        "POST",
        "/incidents",
        headers=FROM,
        status=201,
        body={
            "incident": {
                "type": "incident",
                "title": "Database latency above 2s",
                "service": {"id": "PSVCDB1", "type": "service_reference"},
                "urgency": "high",
                "incident_key": "snow-INC0010001",
                "body": {"type": "incident_body", "details": {"ci": "db-01"}},
                "priority": {"id": "PPRIO02", "type": "priority_reference"},
                "conference_bridge": {
                    "conference_number": "+1 415-555-1212,,,,1234#",
                    "conference_url": "https://meet.example/abc",
                },
            }
        },
    )
    iid = created["incident"]["id"]
    await api("GET", f"/incidents/{iid}", status=200)
    await api("GET", f"/incidents/{iid}", query={"include[]": "services"}, status=200)
    await api(
        "GET", "/incidents", query={"statuses[]": "triggered", "service_ids[]": "PSVCDB1", "total": "true"}, status=200
    )
    await api("GET", "/incidents", query={"date_range": "all", "sort_by": "created_at:desc", "limit": 5}, status=200)

    await api(
        "PUT",
        f"/incidents/{iid}",
        headers=FROM,
        status=200,
        body={"incident": {"type": "incident_reference", "status": "acknowledged"}},
    )
    await api(
        "PUT",
        f"/incidents/{iid}",
        headers=FROM,
        status=200,
        body={"incident": {"type": "incident_reference", "priority": "P1", "title": "Database down"}},
    )
    await api(
        "PUT",
        f"/incidents/{iid}",
        headers=FROM,
        status=200,
        body={
            "incident": {
                "type": "incident_reference",
                "assignments": [{"assignee": {"id": "PDAVEP1", "type": "user_reference"}}],
            }
        },
    )
    await api(
        "PUT",
        f"/incidents/{iid}",
        headers=FROM,
        status=200,
        body={
            "incident": {
                "type": "incident_reference",
                "escalation_policy": {"id": "PEPDBP1", "type": "escalation_policy_reference"},
            }
        },
    )
    await api(
        "PUT",
        f"/incidents/{iid}",
        headers=FROM,
        status=200,
        body={"incident": {"type": "incident_reference", "escalation_level": 1, "urgency": "low"}},
    )

    await api(
        "POST",
        f"/incidents/{iid}/notes",
        headers=FROM,
        status=200,
        body={"note": {"content": "Work note from ServiceNow"}},
    )
    await api("GET", f"/incidents/{iid}/notes", status=200)
    await api(
        "POST",
        f"/incidents/{iid}/status_updates",
        headers=FROM,
        status=200,
        body={"message": "Failover in progress", "subject": "DB update"},
    )
    await api(
        "POST",
        f"/incidents/{iid}/responder_requests",
        status=200,
        body={
            "requester_id": "PINTEGR",
            "message": "Please join",
            "responder_request_targets": [{"responder_request_target": {"id": "PBOBSM1", "type": "user_reference"}}],
        },
        check_request=False,
    )  # the file's request schema lists targets without the wrapper python-pagerduty sends
    await api("PUT", f"/incidents/{iid}/business_services/PBSPAY1/impacts", status=200, body={"relation": "impacted"})
    await api("GET", f"/incidents/{iid}/business_services/impacts", status=200)

    await api("GET", f"/incidents/{iid}/log_entries", query={"limit": 100}, status=200)
    await api(
        "GET", "/log_entries", query={"since": "2025-02-01T00:00:00Z", "until": "2025-04-01T00:00:00Z"}, status=200
    )

    other = await api(
        "POST",
        "/incidents",
        headers=FROM,
        status=201,
        body={
            "incident": {
                "type": "incident",
                "title": "Replica lag",
                "service": {"id": "PSVCDB1", "type": "service_reference"},
                "assignments": [{"assignee": {"id": "PALICE1", "type": "user_reference"}}],
            }
        },
    )
    await api(
        "PUT",
        f"/incidents/{iid}/merge",
        headers=FROM,
        status=200,
        body={"source_incidents": [{"id": other["incident"]["id"], "type": "incident_reference"}]},
    )
    await api(
        "PUT",
        "/incidents",
        headers=FROM,
        status=200,
        body={
            "incidents": [{"id": iid, "type": "incident_reference", "status": "resolved", "resolution": "Failed over"}]
        },
    )
    await api("GET", f"/incidents/{other['incident']['id']}", status=200)


async def test_directory_resources_match_the_openapi_file(api):
    await api("GET", "/users", query={"query": "alice"}, status=200)
    # (no include[]=contact_methods here: the User schema only allows contact method references)
    await api("GET", "/users/PALICE1", status=200)
    user = await api(
        "POST",
        "/users",
        headers=FROM,
        status=201,
        body={
            "user": {"type": "user", "name": "Erin Garcia", "email": "erin.garcia@acme.example", "role": "limited_user"}
        },
    )
    uid = user["user"]["id"]
    await api(
        "PUT",
        f"/users/{uid}",
        status=200,
        body={"user": {"type": "user", "name": "Erin Garcia", "email": "erin.garcia@acme.example", "job_title": "DBA"}},
    )
    cm = await api(
        "POST",
        f"/users/{uid}/contact_methods",
        status=201,
        body={
            "contact_method": {
                "type": "phone_contact_method",
                "label": "Mobile",
                "address": "4155550105",
                "country_code": 1,
            }
        },
    )
    await api("GET", f"/users/{uid}/contact_methods", status=200)
    await api("GET", f"/users/{uid}/contact_methods/{cm['contact_method']['id']}", status=200)
    rule = await api(
        "POST",
        f"/users/{uid}/notification_rules",
        status=201,
        body={
            "notification_rule": {
                "type": "assignment_notification_rule",
                "start_delay_in_minutes": 0,
                "urgency": "high",
                "contact_method": {"id": cm["contact_method"]["id"], "type": "phone_contact_method_reference"},
            }
        },
    )
    await api("GET", f"/users/{uid}/notification_rules", status=200)
    await api("GET", f"/users/{uid}/notification_rules/{rule['notification_rule']['id']}", status=200)

    await api("GET", "/teams", query={"query": "data"}, status=200)
    await api("GET", "/teams/PTDBA01", status=200)
    team = await api("POST", "/teams", status=201, body={"team": {"type": "team", "name": "Payments"}})
    tid = team["team"]["id"]
    await api("PUT", f"/teams/{tid}/users/{uid}", status=204, body={"role": "responder"})
    await api("GET", f"/teams/{tid}/members", status=200)
    await api("PUT", f"/teams/{tid}/escalation_policies/PEPDB01", status=204)
    await api("DELETE", f"/teams/{tid}/users/{uid}", status=204)

    await api("GET", "/escalation_policies", query={"query": "Database"}, status=200)
    await api("GET", "/escalation_policies/PEPDB01", status=200)
    ep = await api(
        "POST",
        "/escalation_policies",
        status=201,
        body={
            "escalation_policy": {
                "type": "escalation_policy",
                "name": "Payments",
                "escalation_rules": [
                    {"escalation_delay_in_minutes": 15, "targets": [{"id": uid, "type": "user_reference"}]}
                ],
                "teams": [{"id": tid, "type": "team_reference"}],
            }
        },
    )
    epid = ep["escalation_policy"]["id"]
    await api(
        "PUT",
        f"/escalation_policies/{epid}",
        status=200,
        body={
            "escalation_policy": {
                "type": "escalation_policy",
                "name": "Payments on-call",
                "escalation_rules": [
                    {"escalation_delay_in_minutes": 10, "targets": [{"id": "PSCHDB1", "type": "schedule_reference"}]}
                ],
            }
        },
    )

    await api("GET", "/services", query={"query": "Data"}, status=200)
    await api("GET", "/services/PSVCDB1", status=200)
    svc = await api(
        "POST",
        "/services",
        status=201,
        body={
            "service": {
                "type": "service",
                "name": "payments-api",
                "escalation_policy": {"id": epid, "type": "escalation_policy_reference"},
            }
        },
    )
    sid = svc["service"]["id"]
    await api(
        "PUT",
        f"/services/{sid}",
        status=200,
        body={
            "service": {
                "type": "service",
                "description": "API",
                "escalation_policy": {"id": epid, "type": "escalation_policy_reference"},
            }
        },
    )

    await api("GET", "/schedules", status=200)
    await api("GET", "/schedules/PSCHDB1", status=200)
    await api("GET", "/priorities", status=200)
    await api("GET", "/abilities", status=200)

    await api("GET", "/business_services", status=200)
    await api("GET", "/business_services/PBSPAY1", status=200)
    await api(
        "POST",
        "/service_dependencies/associate",
        status=200,
        body={
            "relationships": [
                {
                    "supporting_service": {"id": sid, "type": "service"},
                    "dependent_service": {"id": "PBSPAY1", "type": "business_service"},
                }
            ]
        },
    )
    await api("GET", f"/service_dependencies/technical_services/{sid}", status=200)
    await api("GET", "/service_dependencies/business_services/PBSPAY1", status=200)
    await api(
        "POST",
        "/service_dependencies/disassociate",
        status=200,
        body={
            "relationships": [
                {
                    "supporting_service": {"id": sid, "type": "service"},
                    "dependent_service": {"id": "PBSPAY1", "type": "business_service"},
                }
            ]
        },
    )

    await api("GET", "/extension_schemas", status=200)
    await api("GET", "/extension_schemas/PAKM60Z", status=200)
    ext = await api(
        "POST",
        "/extensions",
        status=201,
        body={
            "extension": {
                "name": "ServiceNow",
                "endpoint_url": "https://acme.service-now.com/api/x_pd_integration/pagerduty2sn",
                "extension_schema": {"id": "PAKM60Z", "type": "extension_schema_reference"},
                "extension_objects": [{"id": sid, "type": "service_reference"}],
                "config": {"snow_user": "pagerduty.integration", "sync_options": "manual_sync"},
            }
        },
    )
    await api("GET", "/extensions", query={"extension_object_id": sid}, status=200)
    await api("POST", f"/extensions/{ext['extension']['id']}/enable", status=200)
    await api("DELETE", f"/extensions/{ext['extension']['id']}", status=204)

    await api("DELETE", f"/services/{sid}", status=204)
    await api("DELETE", f"/escalation_policies/{epid}", status=204)
    await api("DELETE", f"/teams/{tid}", status=204)
    await api("DELETE", f"/users/{uid}", status=204)


async def test_webhook_subscriptions_match_the_openapi_file(api):
    body = webhook_example("pd-v3-create-subscription-request.json")
    body["webhook_subscription"]["filter"] = {"id": "PSVCDB1", "type": "service_reference"}
    created = await api("POST", "/webhook_subscriptions", status=200, body=body)
    wid = created["webhook_subscription"]["id"]
    await api("GET", "/webhook_subscriptions", status=200)
    await api("GET", f"/webhook_subscriptions/{wid}", status=200)
    await api(
        "PUT",
        f"/webhook_subscriptions/{wid}",
        status=200,
        body={
            "webhook_subscription": {
                "events": ["incident.triggered", "incident.resolved"],
                "description": "fewer events",
            }
        },
    )
    await api("POST", f"/webhook_subscriptions/{wid}/enable", status=200)
    await api("DELETE", f"/webhook_subscriptions/{wid}", status=204)


async def test_workflows_match_the_openapi_file(api):
    inc = await api(
        "POST",
        "/incidents",
        headers=FROM,
        status=201,
        body={
            "incident": {
                "type": "incident",
                "title": "Network down",
                "service": {"id": "PSVCNET", "type": "service_reference"},
            }
        },
    )
    await api("GET", "/incident_workflows", status=200)
    await api(
        "POST",
        "/incident_workflows/PWFMAJ1/instances",
        status=201,
        body={"incident_workflow_instance": {"incident": {"id": inc["incident"]["id"], "type": "incident_reference"}}},
    )


async def test_error_answers_match_the_openapi_file(api, pd_state, pd_clock):
    await api(
        "POST",
        "/incidents",
        headers=FROM,
        status=400,
        body={"incident": {"type": "incident", "title": "", "service": {"id": "PSVCDB1", "type": "service_reference"}}},
        check_request=False,
    )
    await api("GET", "/incidents", headers={"Authorization": "Token token=wrong"}, status=401, check_request=False)
    await api("GET", "/incidents/PNOSUCH", status=404)
    await api("GET", "/users/PNOSUCH", status=404)
    await api("GET", "/escalation_policies/PNOSUCH", status=404)
    await api(
        "PUT",
        "/incidents/PNOSUCH",
        headers=FROM,
        status=404,
        body={"incident": {"type": "incident_reference", "status": "acknowledged"}},
    )
    pd_clock.advance(61)  # a fresh rate-limit window, then a budget of one request
    pd_state.rate_limit_per_minute = 1
    await api("GET", "/users", status=200)
    await api("GET", "/users", status=429)
    await api("GET", "/incidents", status=429)


async def test_less_common_operations_match_the_openapi_file(api, pd_state):
    inc = await api(
        "POST",
        "/incidents",
        headers=FROM,
        status=201,
        body={
            "incident": {
                "type": "incident",
                "title": "Cache misses",
                "service": {"id": "PSVCDB1", "type": "service_reference"},
                "body": {"type": "incident_body", "details": "A string body, as 15-Incident-Creation-API.md sends it"},
            }
        },
        check_request=False,
    )  # the file types body.details as an object; the docs send a string
    iid = inc["incident"]["id"]
    await api("GET", f"/incidents/{iid}/log_entries", status=200)
    await api(
        "PUT",
        f"/incidents/{iid}",
        headers=FROM,
        status=200,
        body={"incident": {"type": "incident_reference", "status": "acknowledged"}},
    )
    await api("POST", f"/incidents/{iid}/snooze", headers=FROM, status=201, body={"duration": 3600})
    note = await api("POST", f"/incidents/{iid}/notes", headers=FROM, status=200, body={"note": {"content": "a"}})
    nid = note["note"]["id"]
    await api("PUT", f"/incidents/{iid}/notes/{nid}", headers=FROM, status=200, body={"note": {"content": "b"}})
    await api("DELETE", f"/incidents/{iid}/notes/{nid}", status=204)
    pd_state.add_responder_request(iid, "PINTEGR", "join", [{"id": "PBOBSM1", "type": "user_reference"}])
    await api(
        "PUT",
        f"/incidents/{iid}/responder_requests/cancel",
        status=200,
        body={"requester_id": "PINTEGR", "responder_request_targets": [{"id": "PBOBSM1", "type": "user_reference"}]},
    )
    entries = await api("GET", "/log_entries", status=200)
    await api("GET", f"/log_entries/{entries['log_entries'][0]['id']}", status=200)
    await api("GET", "/incidents", query={"include[]": "assignees"}, status=200)

    sched = await api(
        "POST",
        "/schedules",
        status=201,
        body={
            "schedule": {
                "type": "schedule",
                "name": "Network on-call",
                "time_zone": "Europe/London",
                "schedule_layers": [
                    {
                        "start": "2025-01-06T09:00:00Z",
                        "rotation_virtual_start": "2025-01-06T09:00:00Z",
                        "rotation_turn_length_seconds": 86400,
                        "users": [
                            {"user": {"id": "PBOBSM1", "type": "user_reference"}},
                            {"user": {"id": "PCAROL1", "type": "user_reference"}},
                        ],
                    }
                ],
            }
        },
    )
    sid = sched["schedule"]["id"]
    await api(
        "PUT",
        f"/schedules/{sid}",
        status=200,
        body={"schedule": {"type": "schedule", "name": "Network primary", "time_zone": "Europe/London"}},
    )
    await api("GET", f"/schedules/{sid}/users", status=200)
    await api("DELETE", f"/schedules/{sid}", status=204)

    bs = await api(
        "POST",
        "/business_services",
        status=200,
        body={"business_service": {"name": "Customer Portal", "description": "Web portal", "point_of_contact": "Bob"}},
    )
    bid = bs["business_service"]["id"]
    await api("PUT", f"/business_services/{bid}", status=200, body={"business_service": {"description": "Portal"}})
    await api("DELETE", f"/business_services/{bid}", status=204)
    await api(
        "PUT",
        "/teams/PTNET01",
        status=200,
        body={"team": {"type": "team", "name": "Network", "description": "Routers"}},
    )
    cms = await api("GET", "/users/PBOBSM1/contact_methods", status=200)
    cid = cms["contact_methods"][0]["id"]
    await api(
        "PUT",
        f"/users/PBOBSM1/contact_methods/{cid}",
        status=200,
        body={"contact_method": {"type": "email_contact_method", "label": "Work", "address": "bob.smith@acme.example"}},
    )
    await api("GET", "/incident_workflows/PWFMAJ1", status=200)
    wid = await api(
        "POST",
        "/webhook_subscriptions",
        status=200,
        body={
            "webhook_subscription": {
                "type": "webhook_subscription",
                "events": ["incident.triggered"],
                "filter": {"type": "account_reference"},
                "delivery_method": {"type": "http_delivery_method", "url": "http://127.0.0.1:9/never"},
            }
        },
    )
    await api("POST", f"/webhook_subscriptions/{wid['webhook_subscription']['id']}/ping", status=202)


async def test_permission_answers_match_the_openapi_file(api, pd_state):
    inc = await api(
        "POST",
        "/incidents",
        headers=FROM,
        status=201,
        body={
            "incident": {"type": "incident", "title": "x", "service": {"id": "PSVCDB1", "type": "service_reference"}}
        },
    )
    read_only = {"Authorization": "Token token=sandbox-pd-read-only-key"}
    await api(
        "PUT",
        f"/incidents/{inc['incident']['id']}",
        headers={**read_only, **FROM},
        status=403,
        body={"incident": {"type": "incident_reference", "status": "resolved"}},
    )
    pd_state.abilities.remove("incident_workflows")
    await api("GET", "/incident_workflows", status=402)
    await api(
        "POST",
        "/users",
        status=400,
        check_request=False,
        body={"user": {"type": "user", "name": "No From", "email": "nofrom@acme.example"}},
    )


def test_every_sandbox_route_is_in_the_vendored_openapi_file():
    # The vendored file is a subset cut along the sandbox's routes: a route added since
    # would fail validation as an unknown path, far from the cause; name it here instead.
    def template(path):
        return re.sub(r"\{[^}]*\}", "{}", path)

    described = {template(p) for p in load_spec()["paths"]}
    # Response plays left PagerDuty's file on 2025-09-09; the sandbox keeps them behind a flag.
    retired = {"/response_plays", "/response_plays/{}", "/response_plays/{}/run"}
    missing = {template(r.path) for r in routes} - described - retired
    assert not missing, (
        f"sandbox routes missing from the vendored OpenAPI file (rerun scripts/vendor_openapi.py): {sorted(missing)}"
    )
