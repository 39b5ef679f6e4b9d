"""The PagerDuty client: headers, From, errors, retries, pagination, incident_key dedup.

Edge cases run against small scripted servers; flows run against the sandbox, and
every request the client sends there is validated against PagerDuty's OpenAPI file.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web
from structlog.testing import capture_logs
from yarl import URL

from dutybridge import hookimpl
from dutybridge.config import PagerDutyConfig
from dutybridge.http import OutboundPipeline, OutboundTimeout, RateLimiter
from dutybridge.pagerduty import (
    ALREADY_ACKNOWLEDGED,
    ALREADY_RESOLVED,
    PAGINATION_CEILING,
    PagerDutyAuthError,
    PagerDutyClient,
    PagerDutyError,
    PagerDutyNotFound,
    PagerDutyRateLimited,
)
from dutybridge.plugins import make_test_pm
from tests.support.clocks import FakeClock, FakeSleep
from tests.support.scripted_api import ScriptedApi

KEY = "pd-secret-key-7c1e"
SANDBOX_KEY = "sandbox-pd-full-key"


def pd_config(url: str, **kw: Any) -> PagerDutyConfig:
    kw.setdefault("api_key", KEY)
    return PagerDutyConfig.model_validate({"api_url": url, **kw})


class FakePD(ScriptedApi):
    """A scripted PagerDuty: ``on(method, path, handler)``; an unrouted path is PagerDuty's 404."""

    def __init__(self) -> None:
        super().__init__(ok({"error": {"message": "Not Found", "code": 2100}}, status=404), query_pairs=True)


def ok(payload: Any, status: int = 200, headers: dict | None = None):
    return lambda request, body: web.json_response(payload, status=status, headers=headers)


def pd_error(status: int, message: str, code: int, errors: list[str] | None = None, headers: dict | None = None):
    payload = {"error": {"message": message, "code": code, "errors": errors or []}}
    return lambda request, body: web.json_response(payload, status=status, headers=headers)


@pytest.fixture
def sleep():
    return FakeSleep(FakeClock(0.0))


@pytest.fixture
async def pipeline(sleep):
    async with OutboundPipeline(make_test_pm(), sleep=sleep, rng=lambda: 0.5) as p:
        yield p


@pytest.fixture
async def fake(aiohttp_server):
    fake = FakePD()
    server = await aiohttp_server(fake.app())
    fake.url = str(server.make_url("")).rstrip("/")
    return fake


# -- headers and From -----------------------------------------------------------------------


async def test_read_sends_auth_accept_and_content_type_but_no_from(fake, pipeline):
    fake.on("GET", "/abilities", ok({"abilities": ["teams"]}))
    client = PagerDutyClient(pipeline, pd_config(fake.url, from_email="bot@acme.example"))
    assert await client.list_abilities() == ["teams"]
    h = fake.seen[0]["headers"]
    assert h["Authorization"] == f"Token token={KEY}"
    assert h["Accept"] == "application/vnd.pagerduty+json;version=2"
    assert h["Content-Type"] == "application/json"
    assert "From" not in h


async def test_from_prefers_acting_email_then_config(fake, pipeline):
    fake.on("POST", "/incidents/P1/notes", ok({"note": {"id": "N1", "content": "x"}}))
    client = PagerDutyClient(pipeline, pd_config(fake.url, from_email="bot@acme.example"))
    await client.add_note("P1", "x", acting_email="alice@acme.example")
    await client.add_note("P1", "x")
    assert [s["headers"]["From"] for s in fake.seen] == ["alice@acme.example", "bot@acme.example"]
    assert fake.seen[0]["body"] == {"note": {"content": "x"}}


async def test_from_falls_back_to_default_users_email_looked_up_once(fake, pipeline):
    fake.on("GET", "/users/PINTEGR", ok({"user": {"id": "PINTEGR", "email": "integration@acme.example"}}))
    fake.on("PUT", "/incidents/P1", ok({"incident": {"id": "P1", "status": "acknowledged"}}))
    client = PagerDutyClient(pipeline, pd_config(fake.url, default_user_id="PINTEGR"))
    await asyncio.gather(client.acknowledge("P1"), client.acknowledge("P1"))
    await client.resolve("P1", "fixed")
    lookups = [s for s in fake.seen if s["method"] == "GET"]
    writes = [s for s in fake.seen if s["method"] == "PUT"]
    assert len(lookups) == 1
    assert {s["headers"]["From"] for s in writes} == {"integration@acme.example"}
    assert writes[-1]["body"] == {
        "incident": {"type": "incident_reference", "status": "resolved", "resolution": "fixed"}
    }


async def test_ids_are_quoted_into_one_path_segment(fake, pipeline):
    client = PagerDutyClient(pipeline, pd_config(fake.url))
    with pytest.raises(PagerDutyNotFound):
        await client.get_incident("../users/PX")
    assert fake.seen[0]["raw_path"] == "/incidents/..%2Fusers%2FPX"


# -- errors -------------------------------------------------------------------------------------


async def test_errors_are_typed_and_carry_pagerdutys_message(fake, pipeline):
    fake.on("GET", "/incidents/PGONE", pd_error(404, "Not Found", 2100))
    fake.on("GET", "/abilities", pd_error(401, "Authentication failed", 2006))
    fake.on(
        "PUT",
        "/incidents/PDONE",
        pd_error(400, "Incident Already Resolved", ALREADY_RESOLVED, ["Incident Already Resolved"]),
    )
    client = PagerDutyClient(pipeline, pd_config(fake.url, from_email="bot@acme.example"))
    with pytest.raises(PagerDutyNotFound) as nf:
        await client.get_incident("PGONE")
    assert nf.value.status == 404 and nf.value.code == 2100 and not nf.value.transient
    with pytest.raises(PagerDutyAuthError):
        await client.list_abilities()
    with pytest.raises(PagerDutyError) as done:
        await client.resolve("PDONE")
    assert done.value.code == ALREADY_RESOLVED and done.value.status == 400
    assert "Incident Already Resolved" in str(done.value) and "PUT /incidents/{id}" in str(done.value)


async def test_5xx_retries_are_bounded_then_the_error_carries_pagerdutys_message(fake, pipeline, sleep):
    fake.on("GET", "/incidents/P1", pd_error(500, "An internal error has occurred", 2000))
    client = PagerDutyClient(pipeline, pd_config(fake.url, max_retries=2))
    with pytest.raises(PagerDutyError) as info:
        await client.get_incident("P1")
    assert len(fake.seen) == 3 and len(sleep.calls) == 2
    err = info.value
    assert err.status == 500 and err.code == 2000 and err.attempts == 3 and err.transient
    assert "An internal error has occurred" in str(err)


async def test_429_honours_ratelimit_reset_then_succeeds(fake, pipeline, sleep):
    # One fake clock for the pipeline's wait and the limiter: the retry waits out the
    # server's window once, and the limiter (told remaining=0) adds no second wait.
    answers = iter(
        [
            web.json_response(
                {"error": {"message": "Rate Limit Exceeded", "code": 2020}},
                status=429,
                headers={"ratelimit-limit": "960", "ratelimit-remaining": "0", "ratelimit-reset": "7"},
            ),
            web.json_response({"abilities": []}),
        ]
    )
    fake.on("GET", "/abilities", lambda r, b: next(answers))
    limiter = RateLimiter(960, clock=sleep.clock, sleep=sleep)
    client = PagerDutyClient(pipeline, pd_config(fake.url), limiter=limiter)
    assert await client.list_abilities() == []
    assert sleep.calls == [7.0]


async def test_429_after_all_retries_is_rate_limited_error(fake, pipeline):
    fake.on("POST", "/incidents/P1/notes", pd_error(429, "Rate Limit Exceeded", 2020))  # no headers: backoff
    client = PagerDutyClient(pipeline, pd_config(fake.url, max_retries=1, from_email="bot@acme.example"))
    with pytest.raises(PagerDutyRateLimited) as info:
        await client.add_note("P1", "hello")
    assert info.value.code == 2020 and info.value.transient and len(fake.seen) == 2


async def test_note_is_not_retried_after_a_timeout(fake, pipeline):
    async def hang(request, body):
        await asyncio.Event().wait()

    fake.on("POST", "/incidents/P1/notes", hang)
    client = PagerDutyClient(pipeline, pd_config(fake.url, timeout_seconds=0.05, from_email="bot@acme.example"))
    with pytest.raises(OutboundTimeout):
        await client.add_note("P1", "once only")
    assert len(fake.seen) == 1


async def test_no_secret_in_errors_reprs_or_logs(fake, pipeline):
    fake.on("GET", "/abilities", pd_error(401, "Authentication failed", 2006))
    fake.on("GET", "/incidents/P1", pd_error(503, "Unavailable", 2000))
    client = PagerDutyClient(pipeline, pd_config(fake.url, max_retries=1))
    with capture_logs() as logs:
        with pytest.raises(PagerDutyAuthError) as a:
            await client.list_abilities()
        with pytest.raises(PagerDutyError) as b:
            await client.get_incident("P1")
    for text in (str(a.value), repr(a.value), str(b.value), repr(b.value), repr(client), repr(logs)):
        assert KEY not in text
    assert logs  # the attempts were logged, just without the key


# -- pagination ---------------------------------------------------------------------------------


async def test_paginate_stops_when_more_is_false(fake, pipeline):
    users = [{"id": f"PU{i:03d}", "email": f"u{i}@acme.example"} for i in range(230)]

    def page(request, body):
        limit, offset = int(request.query["limit"]), int(request.query["offset"])
        chunk = users[offset : offset + limit]
        return web.json_response(
            {"users": chunk, "limit": limit, "offset": offset, "more": offset + len(chunk) < len(users), "total": None}
        )

    fake.on("GET", "/users", page)
    client = PagerDutyClient(pipeline, pd_config(fake.url))
    got = await client.list_users()
    assert [u["id"] for u in got] == [u["id"] for u in users] and not got.truncated
    assert [dict(s["query"])["offset"] for s in fake.seen] == ["0", "100", "200"]
    assert all(dict(s["query"])["limit"] == "100" for s in fake.seen)


async def test_paginate_stops_cleanly_at_the_10000_ceiling(fake, pipeline):
    def always_more(request, body):
        limit, offset = int(request.query["limit"]), int(request.query["offset"])
        if offset + limit > PAGINATION_CEILING:
            return web.json_response(
                {
                    "error": {
                        "message": "Invalid Input Provided",
                        "code": 2001,
                        "errors": ["Offset must be less than 10001."],
                    }
                },
                status=400,
            )
        return web.json_response(
            {
                "incidents": [{"id": f"P{offset + i}"} for i in range(limit)],
                "limit": limit,
                "offset": offset,
                "more": True,
                "total": None,
            }
        )

    fake.on("GET", "/incidents", always_more)
    client = PagerDutyClient(pipeline, pd_config(fake.url))
    with capture_logs() as logs:
        pages = client.paginate("/incidents", "incidents", {"statuses[]": ["triggered"]})
        count = 0
        async for _ in pages:
            count += 1
    assert count == PAGINATION_CEILING and pages.truncated
    offsets = [int(dict(s["query"])["offset"]) for s in fake.seen]
    assert len(offsets) == 100 and offsets[-1] == 9900
    assert all(
        int(dict(s["query"])["offset"]) + int(dict(s["query"])["limit"]) <= PAGINATION_CEILING for s in fake.seen
    )
    assert ("statuses[]", "triggered") in fake.seen[0]["query"]
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert warnings and warnings[0]["event"] == "pagination_truncated"


async def test_list_results_say_when_truncated(fake, pipeline):
    def always_more(request, body):
        limit, offset = int(request.query["limit"]), int(request.query["offset"])
        return web.json_response(
            {
                "log_entries": [{"id": f"L{offset + i}"} for i in range(limit)],
                "limit": limit,
                "offset": offset,
                "more": True,
                "total": None,
            }
        )

    fake.on("GET", "/incidents/P1/log_entries", always_more)
    client = PagerDutyClient(pipeline, pd_config(fake.url))
    entries = await client.list_log_entries("P1", since="2025-01-01T00:00:00Z")
    assert len(entries) == PAGINATION_CEILING and entries.truncated
    assert ("since", "2025-01-01T00:00:00Z") in fake.seen[0]["query"]


# -- rate limiter ---------------------------------------------------------------------------------


async def test_limiter_learns_from_pagerduty_headers(fake, pipeline):
    fake.on(
        "GET",
        "/abilities",
        ok({"abilities": []}, headers={"ratelimit-limit": "960", "ratelimit-remaining": "0", "ratelimit-reset": "30"}),
    )
    clock_now = [0.0]
    waits: list[float] = []

    async def fake_sleep(seconds):
        waits.append(seconds)
        clock_now[0] += seconds

    limiter = RateLimiter(960, clock=lambda: clock_now[0], sleep=fake_sleep)
    client = PagerDutyClient(pipeline, pd_config(fake.url), limiter=limiter)
    await client.list_abilities()
    await client.list_abilities()  # the server said none remain: wait out its window first
    assert waits == [pytest.approx(30.0)]


# -- incidents ------------------------------------------------------------------------------------


async def test_create_incident_body(fake, pipeline):
    fake.on(
        "POST", "/incidents", lambda r, b: web.json_response({"incident": {"id": "PNEW", **b["incident"]}}, status=201)
    )
    client = PagerDutyClient(pipeline, pd_config(fake.url, from_email="bot@acme.example"))
    inc = await client.create_incident(
        "Disk full",
        "PSVC1",
        urgency="high",
        body_details="details",
        incident_key="k1",
        escalation_policy_id="PEP1",
        priority_id="PPRI1",
        conference_bridge={"conference_url": "https://meet.example/x"},
    )
    assert inc["id"] == "PNEW"
    assert fake.seen[0]["body"] == {
        "incident": {
            "type": "incident",
            "title": "Disk full",
            "service": {"id": "PSVC1", "type": "service_reference"},
            "urgency": "high",
            "body": {"type": "incident_body", "details": "details"},
            "incident_key": "k1",
            "escalation_policy": {"id": "PEP1", "type": "escalation_policy_reference"},
            "priority": {"id": "PPRI1", "type": "priority_reference"},
            "conference_bridge": {"conference_url": "https://meet.example/x"},
        }
    }
    with pytest.raises(ValueError):
        await client.create_incident("x", "PSVC1", escalation_policy_id="PEP1", assignee_ids=["PU1"])


async def test_create_incident_with_key_is_retried_after_timeout_and_finds_the_first(fake, pipeline):
    # The first POST is processed but its answer is lost; the retry is rejected as a
    # duplicate key; the client returns the incident the first POST created.
    calls = {"n": 0}
    existing = {"id": "PFIRST", "incident_key": "k1", "status": "triggered", "service": {"id": "PSVC1"}}

    async def create(request, body):
        calls["n"] += 1
        if calls["n"] == 1:
            await asyncio.Event().wait()
        return web.json_response(
            {
                "error": {
                    "message": "Invalid Input Provided",
                    "code": 2001,
                    "errors": ["Open incident with key 'k1' already exists"],
                }
            },
            status=400,
        )

    def find(request, body):
        assert request.query["incident_key"] == "k1" and request.query["date_range"] == "all"
        return web.json_response({"incidents": [existing], "limit": 100, "offset": 0, "more": False, "total": None})

    fake.on("POST", "/incidents", create)
    fake.on("GET", "/incidents", find)
    client = PagerDutyClient(pipeline, pd_config(fake.url, timeout_seconds=0.1, from_email="bot@acme.example"))
    inc = await client.create_incident("Disk full", "PSVC1", incident_key="k1")
    assert inc["id"] == "PFIRST" and calls["n"] == 2


async def test_create_incident_400_without_a_match_is_raised(fake, pipeline):
    fake.on("POST", "/incidents", pd_error(400, "Invalid Input Provided", 2001, ["Service not found"]))
    fake.on("GET", "/incidents", ok({"incidents": [], "limit": 100, "offset": 0, "more": False, "total": None}))
    client = PagerDutyClient(pipeline, pd_config(fake.url, from_email="bot@acme.example"))
    with pytest.raises(PagerDutyError, match="Service not found"):
        await client.create_incident("x", "PNOPE", incident_key="k2")


async def test_reassign_needs_exactly_one_target(fake, pipeline):
    fake.on("PUT", "/incidents/P1", lambda r, b: web.json_response({"incident": {"id": "P1", **b["incident"]}}))
    client = PagerDutyClient(pipeline, pd_config(fake.url, from_email="bot@acme.example"))
    inc = await client.reassign("P1", user_ids=["PU1"])
    assert inc["assignments"] == [{"assignee": {"id": "PU1", "type": "user_reference"}}]
    with pytest.raises(ValueError):
        await client.reassign("P1")
    with pytest.raises(ValueError):
        await client.reassign("P1", "PEP1", ["PU1"])


# -- against the sandbox, validated against the OpenAPI file ------------------------------------


class OpenAPIRecorder:
    """Validates every PagerDuty request the client sends against the OpenAPI file."""

    def __init__(self):
        from tests.support.openapi import validate_request

        self.validate = validate_request
        self.checked: list[str] = []

    @hookimpl
    def outbound_request(self, request, ctx):
        if request.service != "pagerduty":
            return
        self.validate(
            request.method, URL(request.url).path, request.params, dict(request.headers), request.body_bytes()
        )
        self.checked.append(request.operation)


@pytest.fixture
async def sandbox(aiohttp_server):
    pytest.importorskip("dutybridge_sandbox.pagerduty")
    from dutybridge_sandbox.pagerduty import PagerDutyState, create_app, load_seed

    state = PagerDutyState.from_seed(load_seed())
    server = await aiohttp_server(create_app(state))
    recorder = OpenAPIRecorder()
    async with OutboundPipeline(make_test_pm(recorder), sleep=FakeSleep()) as pipeline:
        config = pd_config(str(server.make_url("")).rstrip("/"), api_key=SANDBOX_KEY, default_user_id="PINTEGR")
        yield PagerDutyClient(pipeline, config), recorder


async def test_incident_flow_against_the_sandbox(sandbox):
    client, recorder = sandbox
    inc = await client.create_incident(
        "Database latency above 2s",
        "PSVCDB1",
        urgency="high",
        body_details={"servicenow": "INC0010001"},
        incident_key="snow-INC0010001",
        priority_id="PPRIO02",
    )
    again = await client.create_incident("Database latency above 2s", "PSVCDB1", incident_key="snow-INC0010001")
    assert again["id"] == inc["id"]
    assert (await client.get_incident(inc["id"]))["title"] == "Database latency above 2s"
    note = await client.add_note(inc["id"], "work note from ServiceNow", acting_email="alice.nguyen@acme.example")
    assert note["content"] == "work note from ServiceNow"
    assert [n["content"] for n in await client.list_notes(inc["id"])] == ["work note from ServiceNow"]
    await client.acknowledge(inc["id"])
    with pytest.raises(PagerDutyError) as already:
        await client.acknowledge(inc["id"])
    assert already.value.code == ALREADY_ACKNOWLEDGED and already.value.status == 400
    await client.reassign(inc["id"], escalation_policy_id="PEPDB01")
    await client.update_incident(inc["id"], {"title": "Database latency above 3s"})
    await client.create_status_update(inc["id"], "We are on it")
    resolved = await client.resolve(inc["id"], "restarted the pool")
    assert resolved["status"] == "resolved"
    with pytest.raises(PagerDutyError) as twice:
        await client.resolve(inc["id"])
    assert twice.value.code == ALREADY_RESOLVED
    entries = await client.list_log_entries(inc["id"])
    assert entries and not entries.truncated
    found = await client.list_incidents(statuses=["resolved"], service_ids=["PSVCDB1"], date_range="all")
    assert inc["id"] in [i["id"] for i in found]
    assert "POST /incidents" in recorder.checked and "PUT /incidents/{id}" in recorder.checked


async def test_directory_reads_against_the_sandbox(sandbox):
    client, recorder = sandbox
    assert (await client.get_user("PALICE1"))["email"] == "alice.nguyen@acme.example"
    assert (await client.find_user_by_email("BOB.SMITH@acme.example"))["id"] == "PBOBSM1"
    assert await client.find_user_by_email("nobody@acme.example") is None
    users = await client.list_users()
    assert {"PINTEGR", "PALICE1"} <= {u["id"] for u in users}
    assert [p["id"] for p in await client.list_priorities()][:1] == ["PPRIO01"]
    assert (await client.get_service("PSVCDB1"))["id"] == "PSVCDB1"
    assert (await client.get_escalation_policy("PEPDB01"))["id"] == "PEPDB01"
    assert "coordinated_responding" in await client.list_abilities()
    created = await client.create_user("Erin Example", "erin@acme.example", role="user")
    assert created["email"] == "erin@acme.example"
    with pytest.raises(PagerDutyNotFound):
        await client.get_user("PNOSUCH")
    assert len(recorder.checked) >= 9


async def test_responder_request_against_the_sandbox(sandbox):
    client, _ = sandbox
    inc = await client.create_incident("Network down", "PSVCNET", incident_key="net-1")
    rr = await client.create_responder_request(
        inc["id"], "PINTEGR", "Please join", user_ids=["PBOBSM1"], escalation_policy_ids=["PEPDB01"]
    )
    assert rr["message"] == "Please join"


async def test_wrong_key_against_the_sandbox(sandbox):
    client, _ = sandbox
    bad = PagerDutyClient(client.pipeline, pd_config(client.base_url, api_key="wrong-key-123"))
    with pytest.raises(PagerDutyAuthError) as info:
        await bad.list_abilities()
    assert info.value.code == 2006 and "wrong-key-123" not in str(info.value)


async def test_the_openapi_check_is_live(sandbox):
    # Without any From source a note lacks the header the file requires: the
    # recorder must catch it before the request leaves.
    client, _ = sandbox
    no_from = PagerDutyClient(client.pipeline, pd_config(client.base_url, api_key=SANDBOX_KEY))
    with pytest.raises(AssertionError, match="From"):
        await no_from.add_note("PANYID1", "hello")
