"""Fault injection: parsing, scoping, determinism, and each kind of misbehaviour on the wire."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web

from dutybridge_sandbox.faults import FaultInjector, FaultSpecError, faults_middleware


def faulty_app(holder: dict) -> web.Application:
    async def ok(request):
        return web.json_response({"ok": True})

    app = web.Application(
        middlewares=[faults_middleware(lambda: holder["faults"], lambda status: {"error": {"status": status}})]
    )
    app.router.add_route("*", "/{tail:.*}", ok)
    return app


@pytest.mark.parametrize(
    "spec, message",
    [
        ("bogus=1", "unknown key 'bogus'"),
        ("error_rate=lots", "error_rate expects a float, found 'lots'"),
        ("error_rate=1.5", "error_rate is a fraction between 0 and 1"),
        ("latency_ms=-5", "latency_ms must not be negative"),
        ("GET /a /b: error_rate=1", "scope must be 'PATH' or 'METHOD PATH'"),
        ("error_rate", "expected key=value"),
    ],
)
def test_bad_specs_name_the_rule_and_the_problem(spec, message):
    with pytest.raises(FaultSpecError, match=message):
        FaultInjector.parse(spec)


def test_scoped_rules_override_global_ones_for_matching_routes():
    f = FaultInjector.parse(
        "seed=3; error_rate=0.1; latency_ms=20ms\nPOST /incidents*: error_rate=0.9, timeout_rate=0.5"
    )
    assert f.seed == 3
    post = f.settings_for("POST", "/incidents/P1/notes")
    assert (post.error_rate, post.timeout_rate, post.latency_ms) == (0.9, 0.5, 20)
    get = f.settings_for("GET", "/incidents")
    assert (get.error_rate, get.timeout_rate) == (0.1, 0.0)
    assert not FaultInjector.parse("").active and FaultInjector.parse("error_rate=0").active


async def statuses(aiohttp_client, spec: str, n: int) -> tuple[list[int], FaultInjector]:
    holder = {"faults": FaultInjector.parse(spec)}
    client = await aiohttp_client(faulty_app(holder))
    out = []
    for i in range(n):
        resp = await client.get(f"/items/{i}")
        out.append(resp.status)
    return out, holder["faults"]


async def test_same_seed_same_faults_different_seed_different_faults(aiohttp_client):
    a, fa = await statuses(aiohttp_client, "seed=11; error_rate=0.3", 200)
    b, _ = await statuses(aiohttp_client, "seed=11; error_rate=0.3", 200)
    c, _ = await statuses(aiohttp_client, "seed=12; error_rate=0.3", 200)
    assert a == b and a != c
    errors = [s for s in a if s != 200]
    assert set(errors) <= {500, 502, 503} and 20 < len(errors) < 100  # about 30% of 200
    assert fa.injected["error"] == len(errors)


async def test_burst_of_429_with_retry_after_and_the_sides_error_body(aiohttp_client):
    holder = {"faults": FaultInjector.parse("burst429_rate=1, burst429_len=3")}
    client = await aiohttp_client(faulty_app(holder))
    first = await client.get("/x")
    assert first.status == 429 and first.headers["Retry-After"] == "1"
    assert await first.json() == {"error": {"status": 429}}
    assert [(await client.get("/x")).status for _ in range(2)] == [429, 429]
    assert holder["faults"].injected["429"] == 3


async def test_timeout_holds_the_request_until_the_client_gives_up(aiohttp_client):
    holder = {"faults": FaultInjector.parse("timeout_rate=1, hang_seconds=30")}
    client = await aiohttp_client(faulty_app(holder))
    with pytest.raises(asyncio.TimeoutError):
        await client.get("/slow", timeout=aiohttp.ClientTimeout(total=0.2))
    assert holder["faults"].injected["timeout"] == 1


async def test_reset_closes_the_connection_without_an_answer(aiohttp_client):
    holder = {"faults": FaultInjector.parse("reset_rate=1")}
    client = await aiohttp_client(faulty_app(holder))
    with pytest.raises(aiohttp.ClientError):
        await client.get("/reset")
    assert holder["faults"].injected["reset"] == 1


async def test_latency_is_added_and_counted(aiohttp_client):
    holder = {"faults": FaultInjector.parse("latency_ms=5")}
    client = await aiohttp_client(faulty_app(holder))
    assert (await client.get("/x")).status == 200
    assert holder["faults"].injected["latency"] == 1


async def test_the_outbound_pipeline_rides_out_injected_faults(aiohttp_client):
    """The daemon's retry policy against the sandbox's faults: every call ends answered."""
    from dutybridge.http import OutboundPipeline, OutboundRequest, RetryPolicy
    from dutybridge.plugins import make_test_pm

    holder = {
        "faults": FaultInjector.parse("seed=5; error_rate=0.3; reset_rate=0.1; burst429_rate=0.05, burst429_len=2")
    }
    client = await aiohttp_client(faulty_app(holder))
    slept: list[float] = []

    async def no_wait(seconds: float) -> None:
        slept.append(seconds)

    retries = 0
    async with OutboundPipeline(make_test_pm(), None, sleep=no_wait) as pipeline:
        for i in range(40):
            resp = await pipeline.request(
                OutboundRequest("GET", str(client.make_url(f"/items/{i}")), service="sandbox"),
                retry=RetryPolicy(max_retries=10),
            )
            assert resp.status == 200
            retries += resp.attempts - 1
    injected = holder["faults"].injected
    assert injected["error"] > 0 and injected["reset"] > 0 and injected["429"] > 0
    # Each 5xx and 429 answer costs one more attempt; a reset may instead be absorbed by
    # aiohttp's own single retry of a dropped keep-alive connection.
    assert injected["error"] + injected["429"] <= retries <= injected["error"] + injected["429"] + injected["reset"]
