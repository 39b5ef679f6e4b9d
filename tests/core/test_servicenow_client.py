"""The ServiceNow client: auth, CRUD, pagination, errors, retries, and the Query builder."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from dutybridge.config import ServiceNowConfig
from dutybridge.http import OutboundPipeline, OutboundTimeout
from dutybridge.plugins import make_test_pm
from dutybridge.servicenow import (
    Query,
    ServiceNowAuthError,
    ServiceNowClient,
    ServiceNowError,
    ServiceNowNotFound,
    ServiceNowRateLimited,
)
from tests.support.clocks import FakeSleep
from tests.support.scripted_api import ScriptedApi

PASSWORD = "sn-pa55word-e4d1"
SANDBOX_PASSWORD = "sandbox-sn-password"


def sn_config(url: str, **kw: Any) -> ServiceNowConfig:
    kw.setdefault("username", "pagerduty.integration")
    kw.setdefault("password", PASSWORD)
    return ServiceNowConfig.model_validate({"instance_url": url, **kw})


class FakeSN(ScriptedApi):
    """A scripted ServiceNow: ``on(method, path, handler)``; an unrouted path is the Table API's 404."""

    def __init__(self) -> None:
        super().__init__(sn_error(404, "No Record found", "Record doesn't exist or ACL restricts the record retrieval"))


def sn_error(status: int, message: str, detail: str = "", headers: dict | None = None):
    payload = {"error": {"message": message, "detail": detail}, "status": "failure"}
    return lambda request, body: web.json_response(payload, status=status, headers=headers)


def table_of(
    records: list[dict], *, count: bool = True, links: bool = True, acl_hides: Callable[[dict], bool] = lambda r: False
):
    """A list handler paging ``records`` the way the Table API does."""

    def handler(request, body):
        limit = int(request.query.get("sysparm_limit", "10000"))
        offset = int(request.query.get("sysparm_offset", "0"))
        page = [r for r in records[offset : offset + limit] if not acl_hides(r)]
        headers = {}
        if count:
            headers["X-Total-Count"] = str(len(records))
        if links:
            rels = ['<http://x/?sysparm_offset=0>;rel="first"']
            if offset + limit < len(records):
                rels.append(f'<http://x/?sysparm_offset={offset + limit}>;rel="next"')
            headers["Link"] = ",".join(rels)
        return web.json_response({"result": page}, headers=headers)

    return handler


@pytest.fixture
def sleep():
    return FakeSleep()


@pytest.fixture
async def pipeline(sleep):
    async with OutboundPipeline(make_test_pm(), sleep=sleep, rng=lambda: 0.5) as p:
        yield p


@pytest.fixture
async def fake(aiohttp_server):
    fake = FakeSN()
    server = await aiohttp_server(fake.app())
    fake.url = str(server.make_url("")).rstrip("/")
    return fake


RECORDS = [{"sys_id": f"{i:032x}", "number": f"INC{i:07d}"} for i in range(250)]


# -- requests ---------------------------------------------------------------------------------


async def test_get_sends_basic_auth_accept_and_excludes_reference_links(fake, pipeline):
    fake.on(
        "GET", f"/api/now/table/incident/{'a' * 32}", lambda r, b: web.json_response({"result": {"sys_id": "a" * 32}})
    )
    client = ServiceNowClient(pipeline, sn_config(fake.url))
    record = await client.get("incident", "a" * 32, fields=["sys_id", "assignment_group.name"], display_value="all")
    assert record == {"sys_id": "a" * 32}
    seen = fake.seen[0]
    expected = "Basic " + base64.b64encode(f"pagerduty.integration:{PASSWORD}".encode()).decode()
    assert seen["headers"]["Authorization"] == expected
    assert seen["headers"]["Accept"] == "application/json"
    assert seen["query"] == {
        "sysparm_fields": "sys_id,assignment_group.name",
        "sysparm_display_value": "all",
        "sysparm_exclude_reference_link": "true",
    }


async def test_ids_and_tables_cannot_change_the_path(fake, pipeline):
    client = ServiceNowClient(pipeline, sn_config(fake.url))
    with pytest.raises(ServiceNowNotFound):
        await client.get("incident", "../sys_user/x")
    assert fake.seen[0]["raw_path"].split("?")[0] == "/api/now/table/incident/..%2Fsys_user%2Fx"
    with pytest.raises(ValueError):
        await client.get("sys_user/../incident", "x")


async def test_insert_update_delete(fake, pipeline):
    fake.on(
        "POST",
        "/api/now/table/incident",
        lambda r, b: web.json_response({"result": {"sys_id": "b" * 32, **b}}, status=201),
    )
    fake.on(
        "PATCH",
        f"/api/now/table/incident/{'b' * 32}",
        lambda r, b: web.json_response({"result": {"sys_id": "b" * 32, **b}}),
    )
    fake.on("DELETE", f"/api/now/table/incident/{'b' * 32}", lambda r, b: web.Response(status=204))
    client = ServiceNowClient(pipeline, sn_config(fake.url))
    created = await client.insert("incident", {"short_description": "Disk full"})
    assert created == {"sys_id": "b" * 32, "short_description": "Disk full"}
    updated = await client.update("incident", "b" * 32, {"state": "2"})
    assert updated["state"] == "2"
    assert await client.delete("incident", "b" * 32) is True
    assert await client.delete("incident", "c" * 32, missing_ok=True) is False
    assert [s["method"] for s in fake.seen] == ["POST", "PATCH", "DELETE", "DELETE"]
    assert fake.seen[0]["headers"]["Content-Type"] == "application/json"
    assert fake.seen[0]["body"] == {"short_description": "Disk full"}


# -- pagination ----------------------------------------------------------------------------------


async def test_query_pages_until_x_total_count(fake, pipeline):
    fake.on("GET", "/api/now/table/incident", table_of(RECORDS, links=False))
    client = ServiceNowClient(pipeline, sn_config(fake.url))
    result = client.query("incident", Query().eq("active", True), order_by="number")
    rows = [r async for r in result]
    assert [r["number"] for r in rows] == [r["number"] for r in RECORDS]
    assert result.total == 250 and result.pages == 3
    assert [(s["query"]["sysparm_offset"], s["query"]["sysparm_limit"]) for s in fake.seen] == [
        ("0", "100"),
        ("100", "100"),
        ("200", "100"),
    ]
    assert fake.seen[0]["query"]["sysparm_query"] == "active=true^ORDERBYnumber"


async def test_query_follows_link_rel_next_without_a_count(fake, pipeline):
    fake.on("GET", "/api/now/table/incident", table_of(RECORDS[:200], count=False))
    client = ServiceNowClient(pipeline, sn_config(fake.url), page_size=100)
    rows = await client.list("incident")
    # exactly 200 rows: pages at 0 and 100; the second has no rel=next, so no third request
    assert len(rows) == 200 and len(fake.seen) == 2


async def test_query_without_headers_stops_on_a_short_page(fake, pipeline):
    fake.on("GET", "/api/now/table/incident", table_of(RECORDS[:150], count=False, links=False))
    client = ServiceNowClient(pipeline, sn_config(fake.url))
    assert len(await client.list("incident")) == 150 and len(fake.seen) == 2


async def test_acl_short_pages_do_not_end_the_query(fake, pipeline):
    # Row ACLs drop records after the limit applies: a page comes back short while
    # X-Total-Count still counts them, and the next offset must skip the hidden ones too.
    hidden = {RECORDS[i]["sys_id"] for i in range(0, 250, 7)}
    fake.on("GET", "/api/now/table/incident", table_of(RECORDS, acl_hides=lambda r: r["sys_id"] in hidden))
    client = ServiceNowClient(pipeline, sn_config(fake.url))
    rows = await client.list("incident")
    assert [r["sys_id"] for r in rows] == [r["sys_id"] for r in RECORDS if r["sys_id"] not in hidden]
    assert len(fake.seen) == 3


async def test_limit_and_page_size(fake, pipeline):
    fake.on("GET", "/api/now/table/incident", table_of(RECORDS))
    client = ServiceNowClient(pipeline, sn_config(fake.url))
    rows = await client.list("incident", limit=130, page_size=50)
    assert len(rows) == 130
    assert [s["query"]["sysparm_limit"] for s in fake.seen] == ["50", "50", "30"]
    first = await client.first("incident", "number=INC0000000")
    assert first == RECORDS[0]


# -- errors and retries ------------------------------------------------------------------------------


async def test_errors_are_typed_and_carry_message_and_detail(fake, pipeline):
    fake.on(
        "GET",
        "/api/now/table/sys_user",
        sn_error(401, "User Not Authenticated", "Required to provide Auth information"),
    )
    fake.on(
        "POST",
        "/api/now/table/incident",
        sn_error(403, "Operation Failed", "ACL Exception Insert Failed due to security constraints"),
    )
    fake.on("PATCH", f"/api/now/table/incident/{'d' * 32}", sn_error(400, "Invalid state", "state 99 is not a choice"))
    client = ServiceNowClient(pipeline, sn_config(fake.url))
    with pytest.raises(ServiceNowNotFound) as nf:
        await client.get("incident", "e" * 32)
    assert nf.value.status == 404 and nf.value.message == "No Record found" and "ACL" in nf.value.detail
    with pytest.raises(ServiceNowAuthError) as auth:
        await client.list("sys_user")
    assert auth.value.status == 401 and "Required to provide Auth information" in str(auth.value)
    with pytest.raises(ServiceNowAuthError):
        await client.insert("incident", {})
    with pytest.raises(ServiceNowError) as bad:
        await client.update("incident", "d" * 32, {"state": "99"})
    assert bad.value.status == 400 and not bad.value.transient


async def test_html_answer_is_a_clear_error(fake, pipeline):
    fake.on(
        "GET",
        "/api/now/table/incident",
        lambda r, b: web.Response(
            text="<html><body>Your instance is hibernating</body></html>", content_type="text/html"
        ),
    )
    client = ServiceNowClient(pipeline, sn_config(fake.url))
    with pytest.raises(ServiceNowError, match="not JSON.*hibernating"):
        await client.list("incident")


async def test_429_honours_retry_after(fake, pipeline, sleep):
    answers = iter(
        [sn_error(429, "Too Many Requests", "rate limit rule", headers={"Retry-After": "9"}), table_of(RECORDS[:3])]
    )
    fake.on("GET", "/api/now/table/incident", lambda r, b: next(answers)(r, b))
    client = ServiceNowClient(pipeline, sn_config(fake.url))
    assert len(await client.list("incident")) == 3
    assert sleep.calls == [9.0]


async def test_hourly_rate_limit_is_not_waited_out_in_the_call(fake, pipeline, sleep):
    fake.on("GET", "/api/now/table/incident", sn_error(429, "Too Many Requests", "", headers={"Retry-After": "1800"}))
    client = ServiceNowClient(pipeline, sn_config(fake.url))
    with pytest.raises(ServiceNowRateLimited) as info:
        await client.list("incident")
    assert info.value.retry_after == 1800.0 and info.value.transient and sleep.calls == []


async def test_5xx_reads_are_retried_a_bounded_number_of_times(fake, pipeline):
    fake.on("GET", "/api/now/table/incident", sn_error(500, "Internal error", "boom"))
    client = ServiceNowClient(pipeline, sn_config(fake.url, max_retries=2))
    with pytest.raises(ServiceNowError) as info:
        await client.list("incident")
    assert len(fake.seen) == 3 and info.value.attempts == 3 and "Internal error" in str(info.value)


async def _hang(request, body):
    await asyncio.Event().wait()


async def test_insert_is_not_retried_after_a_timeout(fake, pipeline):
    fake.on("POST", "/api/now/table/incident", _hang)
    client = ServiceNowClient(pipeline, sn_config(fake.url, timeout_seconds=0.05))
    with pytest.raises(OutboundTimeout):
        await client.insert("incident", {"short_description": "x"})
    assert len(fake.seen) == 1


async def test_update_is_retried_after_a_timeout_unless_it_writes_a_journal_field(fake, pipeline):
    calls = {"n": 0}

    async def flaky(request, body):
        calls["n"] += 1
        if calls["n"] == 1:
            await asyncio.Event().wait()
        return web.json_response({"result": {"sys_id": "f" * 32, **body}})

    fake.on("PATCH", f"/api/now/table/incident/{'f' * 32}", flaky)
    client = ServiceNowClient(pipeline, sn_config(fake.url, timeout_seconds=0.05))
    assert (await client.update("incident", "f" * 32, {"state": "6"}))["state"] == "6"
    assert calls["n"] == 2

    fake.on("PATCH", f"/api/now/table/incident/{'9' * 32}", _hang)
    with pytest.raises(OutboundTimeout):
        await client.update("incident", "9" * 32, {"work_notes": "once only"})
    assert sum(1 for s in fake.seen if s["path"].endswith("9" * 32)) == 1


async def test_no_password_in_errors_reprs_or_logs(fake, pipeline):
    fake.on("GET", "/api/now/table/incident", sn_error(503, "Service Unavailable"))
    fake.on(
        "GET",
        "/api/now/table/sys_user",
        sn_error(401, "User Not Authenticated", "Required to provide Auth information"),
    )
    client = ServiceNowClient(pipeline, sn_config(fake.url, max_retries=1))
    encoded = base64.b64encode(f"pagerduty.integration:{PASSWORD}".encode()).decode()
    with capture_logs() as logs:
        with pytest.raises(ServiceNowError) as a:
            await client.list("incident")
        with pytest.raises(ServiceNowAuthError) as b:
            await client.list("sys_user")
    for text in (str(a.value), repr(a.value), str(b.value), repr(b.value), repr(client), repr(logs)):
        assert PASSWORD not in text and encoded not in text
    assert logs


# -- the query builder --------------------------------------------------------------------------------


def test_query_builder_encodes_terms():
    since = datetime(2025, 3, 1, 14, 0, 0, tzinfo=timezone(timedelta(hours=2)))
    q = (
        Query()
        .eq("assignment_group", "abc")
        .and_()
        .gte("sys_updated_on", since)
        .or_()
        .is_empty("assigned_to")
        .in_("state", ["1", "2"])
        .not_in("priority", [4, 5])
        .ne("active", False)
        .like("short_description", "disk")
        .starts_with("number", "INC")
        .order_by("sys_updated_on")
        .order_by("number", desc=True)
    )
    assert str(q) == (
        "assignment_group=abc^sys_updated_on>=2025-03-01 12:00:00^ORassigned_toISEMPTY"
        "^stateIN1,2^priorityNOT IN4,5^active!=false^short_descriptionLIKEdisk"
        "^numberSTARTSWITHINC^ORDERBYsys_updated_on^ORDERBYDESCnumber"
    )
    assert str(Query().eq("a", 1).new_query().eq("b", 2)) == "a=1^NQb=2"
    assert str(Query().order_by("number")) == "ORDERBYnumber"
    assert str(Query().eq("caller_id.email", "a@b.example")) == "caller_id.email=a@b.example"


def test_query_builder_escapes_carets_so_values_cannot_add_terms():
    q = Query().eq("short_description", "x^ORactive=false^NQsys_id!=")
    assert str(q) == "short_description=x^^ORactive=false^^NQsys_id!="


@pytest.mark.parametrize(
    "build",
    [
        lambda: Query().eq("short_description", "javascript:gs.getUserID()"),
        lambda: Query().eq("short_description", "  JavaScript:1"),
        lambda: Query().eq("short_description", "ends with a caret^"),
        lambda: Query().in_("sys_id", ["a", "b,c"]),
        lambda: Query().in_("sys_id", []),
        lambda: Query().eq("state^ORactive", "1"),
        lambda: Query().eq("bad field", "1"),
        lambda: Query().eq("state", None),
        lambda: Query().or_(),
        lambda: Query().order_by("x^y"),
    ],
)
def test_query_builder_refuses_what_would_inject(build):
    with pytest.raises(ValueError):
        build()


# -- against the sandbox -------------------------------------------------------------------------------


@pytest.fixture
async def sandbox(aiohttp_server):
    pytest.importorskip("dutybridge_sandbox.servicenow")
    import tomllib
    from importlib import resources

    from dutybridge_sandbox.servicenow import ServiceNowState, create_app

    seed = tomllib.loads((resources.files("dutybridge_sandbox") / "seed.toml").read_text())["servicenow"]
    state = ServiceNowState.from_seed(seed)
    server = await aiohttp_server(create_app(state))
    async with OutboundPipeline(make_test_pm(), sleep=FakeSleep()) as pipeline:
        url = str(server.make_url("")).rstrip("/")
        yield ServiceNowClient(pipeline, sn_config(url, password=SANDBOX_PASSWORD)), url, state


async def test_crud_and_queries_against_the_sandbox(sandbox):
    client, _, _ = sandbox
    user = await client.first("sys_user", Query().eq("user_name", "pagerduty.integration"), fields=["sys_id", "email"])
    assert user["email"] == "integration@acme.example"
    groups = await client.list("sys_user_group", fields=["sys_id", "name"], order_by="name")
    assert groups and [g["name"] for g in groups] == sorted((g["name"] for g in groups), key=str.lower)

    created = await client.insert(
        "incident",
        {"short_description": "Disk ^ORfull", "urgency": "1", "impact": "1", "assignment_group": groups[0]["sys_id"]},
    )
    sys_id = created["sys_id"]
    assert created["assignment_group"] == groups[0]["sys_id"]  # a plain sys_id, not {"link", "value"}
    found = await client.list("incident", Query().eq("short_description", "Disk ^ORfull"), fields=["sys_id"])
    assert [r["sys_id"] for r in found] == [sys_id]

    await client.update("incident", sys_id, {"state": "2", "work_notes": "from PagerDuty"})
    record = await client.get("incident", sys_id, fields=["state", "number"], display_value=True)
    assert record["state"] == "In Progress" and record["number"].startswith("INC")
    assert await client.delete("incident", sys_id) is True
    with pytest.raises(ServiceNowNotFound):
        await client.get("incident", sys_id)


async def test_pagination_against_the_sandbox(sandbox):
    client, _, state = sandbox
    for i in range(23):
        await client.insert("incident", {"short_description": f"bulk {i:02d}"})
    result = client.query(
        "incident",
        Query().starts_with("short_description", "bulk"),
        page_size=10,
        order_by="short_description",
        fields=["short_description"],
    )
    rows = [r async for r in result]
    assert [r["short_description"] for r in rows] == [f"bulk {i:02d}" for i in range(23)]
    assert result.total == 23 and result.pages == 3


async def test_wrong_password_against_the_sandbox(sandbox):
    client, url, _ = sandbox
    bad = ServiceNowClient(client.pipeline, sn_config(url, password="not-the-password"))
    with pytest.raises(ServiceNowAuthError) as info:
        await bad.list("incident", limit=1)
    assert info.value.status == 401 and "not-the-password" not in str(info.value)


def test_link_header_with_unencoded_commas_in_fields_is_parsed():
    from dutybridge.servicenow import _links

    base = "https://acme.service-now.com/api/now/table/incident?sysparm_fields=sys_id,number,state&sysparm_limit=2"
    header = (
        f'<{base}&sysparm_offset=0>;rel="first",<{base}&sysparm_offset=2>;rel="next",'
        f'<{base}&sysparm_offset=8>;rel="last"'
    )
    links = _links(header)
    assert links["next"].endswith("sysparm_fields=sys_id,number,state&sysparm_limit=2&sysparm_offset=2")
    assert set(links) == {"first", "next", "last"}


async def test_pagination_with_several_fields_against_the_sandbox(sandbox):
    # The sandbox, like ServiceNow, leaves sysparm_fields' commas unencoded in Link URLs.
    client, _, _ = sandbox
    for i in range(23):
        await client.insert("incident", {"short_description": f"multi {i:02d}"})
    result = client.query(
        "incident",
        Query().starts_with("short_description", "multi"),
        page_size=10,
        order_by="short_description",
        fields=["short_description", "number", "state"],
    )
    rows = [r async for r in result]
    assert len(rows) == 23 and result.pages == 3
    assert all(set(r) == {"short_description", "number", "state"} for r in rows)
