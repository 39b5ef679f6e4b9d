"""The outbound pipeline against a real aiohttp server: hooks, transports, retries, limits."""

from __future__ import annotations

import asyncio
import email.utils
import io
import json
import socket
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict
from structlog.testing import capture_logs

from dutybridge import hookimpl
from dutybridge import logging as dlogging
from dutybridge.http import (
    HookFailed,
    OutboundConnectionError,
    OutboundPipeline,
    OutboundRequest,
    OutboundResponse,
    OutboundTimeout,
    RateLimiter,
    RequestVetoed,
    RetryPolicy,
    retry_after_seconds,
    safe_url,
)
from dutybridge.plugins import make_test_pm
from tests.support.clocks import FakeClock, FakeSleep

SECRET = "s3cr3t-token-value"


class Metrics:
    def __init__(self):
        self.calls: list[tuple[str, str, str, float]] = []

    def outbound(self, service, host, status, seconds):
        self.calls.append((service, host, status, seconds))


class Scripted:
    """A real HTTP server answering each request with the next scripted answer.

    An answer is ``(status, headers, body)``, ``"hang"`` (never answers) or
    ``"reset"`` (closes the connection without answering). The last answer repeats.
    """

    def __init__(self, *answers: Any):
        self.answers = list(answers) or [(200, {}, {"ok": True})]
        self.seen: list[dict[str, Any]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append(
            {
                "method": request.method,
                "path": request.path,
                "headers": request.headers.copy(),
                "query": list(request.query.items()),
                "body": body,
            }
        )
        answer = self.answers[min(len(self.seen) - 1, len(self.answers) - 1)]
        if answer == "hang":
            await asyncio.Event().wait()
        if answer == "reset":
            request.transport.close()
            return web.Response(status=500)
        status, headers, payload = answer
        if isinstance(payload, (dict, list)):
            return web.json_response(payload, status=status, headers=headers)
        return web.Response(status=status, headers=headers, body=payload or b"")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app


@pytest.fixture
async def serve(aiohttp_server):
    async def start(*answers: Any) -> tuple[Scripted, Any]:
        script = Scripted(*answers)
        server = await aiohttp_server(script.app())
        return script, server

    return start


@pytest.fixture
def sleep():
    return FakeSleep()


@pytest.fixture
async def pipeline_factory(sleep):
    made: list[OutboundPipeline] = []

    async def make(*plugins: object, metrics: Any = None, **kwargs: Any) -> OutboundPipeline:
        p = OutboundPipeline(make_test_pm(*plugins), None, metrics=metrics, sleep=sleep, rng=lambda: 0.5, **kwargs)
        await p.start()
        made.append(p)
        return p

    yield make
    for p in made:
        await p.close()


def req(server, method: str = "GET", path: str = "/thing", **kw: Any) -> OutboundRequest:
    kw.setdefault("service", "test")
    kw.setdefault("operation", f"{method} {path}")
    return OutboundRequest(method=method, url=str(server.make_url(path)), **kw)


# -- hooks ---------------------------------------------------------------------------


async def test_outbound_request_hook_adds_a_header_the_server_sees(serve, pipeline_factory):
    script, server = await serve((200, {}, {"ok": True}))

    class AddHeader:
        @hookimpl
        def outbound_request(self, request, ctx):
            request.headers.add("X-Custom", "yes")

    pipeline = await pipeline_factory(AddHeader())
    resp = await pipeline.request(req(server))
    assert resp.status == 200 and resp.json() == {"ok": True}
    assert script.seen[0]["headers"].getall("X-Custom") == ["yes"]


async def test_hooks_run_on_a_fresh_copy_each_attempt(serve, pipeline_factory):
    # An appending hook must not stack headers or params across retries.
    script, server = await serve((503, {}, {}), (503, {}, {}), (200, {}, {"ok": True}))
    seen_attempts = []

    class Appender:
        @hookimpl
        async def outbound_request(self, request, ctx):
            seen_attempts.append(request.extra["attempt"])
            request.headers.add("X-Trace", "t")
            request.params.append(("p", "1"))
            request.json["n"] += 1

    pipeline = await pipeline_factory(Appender())
    original = req(server, "POST", json={"n": 0})
    resp = await pipeline.request(original)
    assert resp.status == 200 and resp.attempts == 3
    assert seen_attempts == [1, 2, 3]
    for seen in script.seen:
        assert seen["headers"].getall("X-Trace") == ["t"]
        assert seen["query"] == [("p", "1")]
        assert json.loads(seen["body"]) == {"n": 1}
    assert original.json == {"n": 0} and "X-Trace" not in original.headers


async def test_send_request_takes_over_and_outbound_response_observes(serve, pipeline_factory):
    script, server = await serve((200, {}, {"from": "server"}))
    observed = []

    class Relay:
        @hookimpl
        async def send_request(self, request, ctx):
            return OutboundResponse(status=201, headers=CIMultiDict({"X-Relay": "1"}), body=b'{"from": "relay"}')

    class Observer:
        @hookimpl
        def outbound_response(self, request, response, ctx):
            observed.append((request.operation, response.status, response.headers.get("X-Relay")))

    pipeline = await pipeline_factory(Relay(), Observer())
    resp = await pipeline.request(req(server, "POST", "/x", json={}))
    assert resp.json() == {"from": "relay"}
    assert observed == [("POST /x", 201, "1")]
    assert script.seen == []  # the direct transport was never used


async def test_send_request_returning_none_falls_back_to_direct(serve, pipeline_factory):
    script, server = await serve((200, {}, {"from": "server"}))

    class Decline:
        @hookimpl
        def send_request(self, request, ctx):
            return None

    pipeline = await pipeline_factory(Decline())
    resp = await pipeline.request(req(server))
    assert resp.json() == {"from": "server"} and len(script.seen) == 1


async def test_hook_receives_ctx_set_after_construction(serve, pipeline_factory):
    _, server = await serve((200, {}, {}))
    got = []

    class Spy:
        @hookimpl
        def outbound_request(self, request, ctx):
            got.append(ctx)

    pipeline = await pipeline_factory(Spy())
    marker = object()
    pipeline.ctx = marker
    await pipeline.request(req(server))
    assert got == [marker]


async def test_json_body_gets_a_content_type(serve, pipeline_factory):
    script, server = await serve((200, {}, {}))
    pipeline = await pipeline_factory()
    await pipeline.request(req(server, "POST", json={"a": 1}))
    assert script.seen[0]["headers"]["Content-Type"] == "application/json"
    assert script.seen[0]["headers"]["User-Agent"].startswith("dutybridge/")


# -- retries ---------------------------------------------------------------------------


async def test_429_with_retry_after_seconds_then_success(serve, pipeline_factory, sleep):
    _script, server = await serve((429, {"Retry-After": "7"}, {}), (200, {}, {"ok": True}))
    pipeline = await pipeline_factory()
    resp = await pipeline.request(req(server, "POST", json={}))  # 429: retried even for POST
    assert resp.status == 200 and resp.attempts == 2
    assert sleep.calls == [7.0]


async def test_429_with_retry_after_http_date(serve, sleep):
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 12, usegmt=True)
    _script, server = await serve((429, {"Retry-After": date}, {}), (200, {}, {}))
    async with OutboundPipeline(make_test_pm(), sleep=sleep, wallclock=lambda: now) as pipeline:
        resp = await pipeline.request(req(server))
    assert resp.status == 200 and sleep.calls == [12.0]


async def test_retry_after_longer_than_max_wait_is_not_waited(serve, pipeline_factory, sleep):
    _script, server = await serve((429, {"Retry-After": "3600"}, {}))
    pipeline = await pipeline_factory()
    resp = await pipeline.request(req(server), retry=RetryPolicy(max_wait=60))
    assert resp.status == 429 and resp.attempts == 1 and sleep.calls == []


async def test_5xx_retries_are_bounded_then_the_last_response_returns(serve, pipeline_factory, sleep):
    script, server = await serve((500, {}, {"error": "boom"}))
    pipeline = await pipeline_factory()
    resp = await pipeline.request(req(server), retry=RetryPolicy(max_retries=3, base_delay=1, max_delay=4))
    assert resp.status == 500 and resp.attempts == 4 and len(script.seen) == 4
    # full jitter with rng()=0.5: half of 1, 2, 4
    assert sleep.calls == [0.5, 1.0, 2.0]


async def test_post_500_is_not_retried_but_503_is(serve, pipeline_factory):
    script, server = await serve((500, {}, {}))
    pipeline = await pipeline_factory()
    resp = await pipeline.request(req(server, "POST", json={}))
    assert resp.status == 500 and len(script.seen) == 1

    script2, server2 = await serve((503, {}, {}), (201, {}, {}))
    resp = await pipeline.request(req(server2, "POST", json={}))
    assert resp.status == 201 and len(script2.seen) == 2


async def test_idempotent_post_is_retried_on_500(serve, pipeline_factory):
    script, server = await serve((500, {}, {}), (201, {}, {}))
    pipeline = await pipeline_factory()
    resp = await pipeline.request(req(server, "POST", json={}), idempotent=True)
    assert resp.status == 201 and len(script.seen) == 2


async def test_4xx_is_never_retried(serve, pipeline_factory):
    script, server = await serve((400, {}, {}))
    pipeline = await pipeline_factory()
    assert (await pipeline.request(req(server))).status == 400
    assert len(script.seen) == 1


async def test_get_timeout_is_retried_then_raises(serve, pipeline_factory, sleep):
    script, server = await serve("hang")
    metrics = Metrics()
    pipeline = await pipeline_factory(metrics=metrics)
    with pytest.raises(OutboundTimeout) as info:
        await pipeline.request(req(server, timeout=0.05), retry=RetryPolicy(max_retries=2))
    assert info.value.attempts == 3 and info.value.transient
    assert len(script.seen) == 3
    assert [c[2] for c in metrics.calls] == ["timeout"] * 3


async def test_timeout_then_success(serve, pipeline_factory):
    _script, server = await serve("hang", (200, {}, {"ok": 1}))
    pipeline = await pipeline_factory()
    resp = await pipeline.request(req(server, timeout=0.05))
    assert resp.json() == {"ok": 1} and resp.attempts == 2


async def test_post_timeout_is_not_retried_unless_idempotent(serve, pipeline_factory):
    script, server = await serve("hang")
    pipeline = await pipeline_factory()
    with pytest.raises(OutboundTimeout, match="not idempotent"):
        await pipeline.request(req(server, "POST", json={}, timeout=0.05))
    assert len(script.seen) == 1

    script2, server2 = await serve("hang", (201, {}, {}))
    resp = await pipeline.request(req(server2, "POST", json={}, timeout=0.05), idempotent=True)
    assert resp.status == 201 and len(script2.seen) == 2


async def test_connection_reset_retried_only_when_idempotent(serve, pipeline_factory):
    script, server = await serve("reset", (200, {}, {}))
    pipeline = await pipeline_factory()
    resp = await pipeline.request(req(server))
    assert resp.status == 200 and len(script.seen) == 2

    script2, server2 = await serve("reset", (200, {}, {}))
    with pytest.raises(OutboundConnectionError):
        await pipeline.request(req(server2, "POST", json={}))
    assert len(script2.seen) == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_refused_connection_is_retried_even_for_post(pipeline_factory, sleep):
    # Nothing was sent, so repeating a POST cannot duplicate anything.
    pipeline = await pipeline_factory()
    request = OutboundRequest("POST", f"http://127.0.0.1:{_free_port()}/x", service="test", json={})
    with pytest.raises(OutboundConnectionError) as info:
        await pipeline.request(request, retry=RetryPolicy(max_retries=2))
    assert info.value.attempts == 3 and len(sleep.calls) == 2


async def test_transport_hook_timeout_error_is_retried(pipeline_factory):
    calls = []

    class FlakyRelay:
        @hookimpl
        async def send_request(self, request, ctx):
            calls.append(request.extra["attempt"])
            if len(calls) == 1:
                raise TimeoutError()
            return OutboundResponse(200, CIMultiDict(), b"{}")

    pipeline = await pipeline_factory(FlakyRelay())
    resp = await pipeline.request(OutboundRequest("GET", "http://relay.invalid/x", service="test"))
    assert resp.status == 200 and calls == [1, 2]


async def test_a_hook_exception_fails_the_request_unretried_naming_the_line(serve, pipeline_factory):
    script, server = await serve((200, {}, {}))

    class Broken:
        @hookimpl
        def outbound_request(self, request, ctx):
            raise KeyError("bug")

    pipeline = await pipeline_factory(Broken())
    with capture_logs() as logs, pytest.raises(HookFailed) as info:
        await pipeline.request(req(server))
    line = Broken.outbound_request.__code__.co_firstlineno + 2
    assert isinstance(info.value.__cause__, KeyError) and info.value.transient
    assert info.value.hook == f"{__file__}:{line}" and f"{__file__}:{line}" in str(info.value)
    assert script.seen == []
    failed = [e for e in logs if e["event"] == "outbound_hook_failed"]
    assert failed and failed[0]["hook"] == f"{__file__}:{line}" and "KeyError" in failed[0]["error"]


async def test_a_veto_stops_the_request_with_the_hooks_message(serve, pipeline_factory):
    script, server = await serve((200, {}, {}))

    class Gate:
        @hookimpl
        async def outbound_request(self, request, ctx):
            raise RequestVetoed("no writes on Sundays")

    pipeline = await pipeline_factory(Gate())
    with pytest.raises(RequestVetoed, match=r"vetoed by hook .*test_http\.py:[0-9]+: no writes on Sundays") as info:
        await pipeline.request(req(server))
    assert not info.value.transient and script.seen == []


async def test_direct_transport_needs_start(serve):
    _, server = await serve((200, {}, {}))
    pipeline = OutboundPipeline(make_test_pm())
    with pytest.raises(RuntimeError, match="not started"):
        await pipeline.request(req(server))


async def test_redirects_are_not_followed(serve, pipeline_factory):
    script, server = await serve((302, {"Location": "http://elsewhere.invalid/"}, b""))
    pipeline = await pipeline_factory()
    resp = await pipeline.request(req(server))
    assert resp.status == 302 and len(script.seen) == 1


# -- metrics and logs --------------------------------------------------------------------


async def test_metrics_record_every_attempt(serve, pipeline_factory):
    _, server = await serve((503, {}, {}), (200, {}, {}))
    metrics = Metrics()
    pipeline = await pipeline_factory(metrics=metrics)
    await pipeline.request(req(server))
    assert [(c[0], c[1], c[2]) for c in metrics.calls] == [("test", "127.0.0.1", "503"), ("test", "127.0.0.1", "200")]
    assert all(c[3] >= 0 for c in metrics.calls)


async def test_metrics_fall_back_to_ctx_metrics(serve, pipeline_factory):
    _, server = await serve((200, {}, {}))
    metrics = Metrics()

    class Ctx:
        pass

    ctx = Ctx()
    ctx.metrics = metrics
    pipeline = await pipeline_factory()
    pipeline.ctx = ctx
    await pipeline.request(req(server))
    assert len(metrics.calls) == 1


async def test_logs_carry_no_headers_query_or_credentials(serve, pipeline_factory):
    _, server = await serve((503, {"ratelimit-remaining": "5"}, {}), (200, {}, {}))
    pipeline = await pipeline_factory()
    url = str(server.make_url("/thing")) + f"?api_key={SECRET}"
    request = OutboundRequest(
        "GET",
        url,
        service="test",
        operation="GET /thing",
        headers=CIMultiDict({"Authorization": f"Token token={SECRET}", "X-Api-Key": SECRET}),
        params=[("token", SECRET)],
    )
    dlogging.configure("info", "json", stream=io.StringIO())  # as the daemon runs: capture_logs must still see debug
    with capture_logs() as logs:
        resp = await pipeline.request(request)
    assert resp.status == 200
    assert SECRET not in repr(logs) and SECRET not in repr(request)
    attempts = [e for e in logs if e["event"] == "outbound_attempt"]
    assert [e["status"] for e in attempts] == ["503", "200"]
    assert attempts[0]["url"] == str(server.make_url("/thing"))
    assert attempts[0]["ratelimit_remaining"] == "5"
    assert all(e["log_level"] == "debug" for e in attempts)


@pytest.mark.parametrize(
    "daemon_level, http_level, logged",
    [("info", None, False), ("debug", None, True), ("info", "debug", True), ("debug", "info", False)],
)
async def test_each_attempt_is_a_debug_line_where_the_levels_let_it_through(
    serve, pipeline_factory, daemon_level, http_level, logged
):
    _, server = await serve((200, {}, {}))
    pipeline = await pipeline_factory()
    buf = io.StringIO()
    dlogging.configure(
        daemon_level, "json", stream=buf, log_levels={"dutybridge.http": http_level} if http_level else {}
    )
    try:
        await pipeline.request(req(server))
    finally:
        dlogging.configure("info", "json", stream=io.StringIO(), log_levels={})
    attempts = [json.loads(line) for line in buf.getvalue().splitlines() if '"outbound_attempt"' in line]
    assert len(attempts) == (1 if logged else 0)
    if logged:
        assert attempts[0]["status"] == "200" and attempts[0]["url"] == str(server.make_url("/thing"))


# -- helpers -------------------------------------------------------------------------------


def test_retry_after_parsing():
    now = 1_700_000_000.0
    assert retry_after_seconds(CIMultiDict({"Retry-After": "3"}), lambda: now) == 3.0
    assert (
        retry_after_seconds(CIMultiDict({"Retry-After": email.utils.formatdate(now + 30, usegmt=True)}), lambda: now)
        == 30.0
    )
    assert (
        retry_after_seconds(CIMultiDict({"Retry-After": email.utils.formatdate(now - 30, usegmt=True)}), lambda: now)
        == 0.0
    )
    assert retry_after_seconds(CIMultiDict({"ratelimit-reset": "20"}), lambda: now) == 20.0
    assert retry_after_seconds(CIMultiDict({"X-RateLimit-Reset": str(int(now) + 45)}), lambda: now) == 45.0
    assert retry_after_seconds(CIMultiDict({"Retry-After": "soon"}), lambda: now) is None
    assert retry_after_seconds(CIMultiDict(), lambda: now) is None


def test_backoff_is_full_jitter_and_capped():
    policy = RetryPolicy(base_delay=1, max_delay=10)
    assert policy.backoff(1, lambda: 1.0) == 1.0
    assert policy.backoff(3, lambda: 1.0) == 4.0
    assert policy.backoff(10, lambda: 1.0) == 10.0
    assert policy.backoff(10, lambda: 0.0) == 0.0


def test_safe_url_drops_credentials_and_query():
    assert safe_url("https://u:p@h.example/a/b?x=1#f") == "https://h.example/a/b"


def test_request_repr_hides_headers():
    r = OutboundRequest("GET", "https://h/", service="s", headers=CIMultiDict({"Authorization": SECRET}))
    assert SECRET not in repr(r)


# -- rate limiter ------------------------------------------------------------------------------


def _headers_response(**headers: str) -> OutboundResponse:
    return OutboundResponse(200, CIMultiDict({k.replace("_", "-"): v for k, v in headers.items()}), b"")


async def test_rate_limiter_bursts_then_paces():
    clock = FakeClock(1000.0)
    sleep = FakeSleep(clock)
    limiter = RateLimiter(120, burst=10, clock=clock, sleep=sleep)  # refills (120-10)/60 per second
    for _ in range(10):
        assert await limiter.acquire() == 0.0
    waited = await limiter.acquire()
    assert waited == pytest.approx(60 / 110)
    assert sleep.calls == [pytest.approx(60 / 110)]


async def test_rate_limiter_never_exceeds_the_minute_budget():
    clock = FakeClock(1000.0)
    sleep = FakeSleep(clock)
    limiter = RateLimiter(960, clock=clock, sleep=sleep)
    start = clock.now
    times = []
    for _ in range(2000):
        await limiter.acquire()
        times.append(clock.now - start)
    # any 60-second window holds at most 960 requests
    j = 0
    for i, t in enumerate(times):
        while times[j] <= t - 60:
            j += 1
        assert i - j + 1 <= 960


async def test_rate_limiter_tightened_by_server_headers():
    clock = FakeClock(1000.0)
    sleep = FakeSleep(clock)
    limiter = RateLimiter(960, clock=clock, sleep=sleep)
    limiter.observe(_headers_response(ratelimit_remaining="2", ratelimit_reset="30"))
    assert await limiter.acquire() == 0.0
    assert await limiter.acquire() == 0.0
    waited = await limiter.acquire()  # the server's window is spent: wait for its reset
    assert waited == pytest.approx(30.0)


async def test_rate_limiter_keeps_the_lowest_count_within_a_window_and_resets_on_a_new_one():
    clock = FakeClock(1000.0)
    limiter = RateLimiter(960, clock=clock, sleep=FakeSleep(clock))
    limiter.observe(_headers_response(ratelimit_remaining="5", ratelimit_reset="30"))
    limiter.observe(_headers_response(ratelimit_remaining="50", ratelimit_reset="29"))  # a late answer
    assert limiter._server_remaining == 5
    clock.now += 31
    limiter.observe(_headers_response(ratelimit_remaining="900", ratelimit_reset="59"))
    assert limiter._server_remaining == 900


async def test_rate_limiter_serves_concurrent_waiters():
    clock = FakeClock(1000.0)
    sleep = FakeSleep(clock)
    limiter = RateLimiter(60, burst=1, clock=clock, sleep=sleep)  # one token per 60/59 s after the first
    results = await asyncio.gather(*(limiter.acquire() for _ in range(5)))
    assert results[0] == 0.0 and all(r > 0 for r in results[1:])
    assert clock.now - 1000.0 == pytest.approx(4 * 60 / 59)


async def test_pipeline_uses_the_limiter_per_attempt(serve, pipeline_factory):
    _, server = await serve((503, {"ratelimit-remaining": "0", "ratelimit-reset": "10"}, {}), (200, {}, {}))

    class Spy:
        def __init__(self):
            self.acquired = 0
            self.observed = []

        async def acquire(self):
            self.acquired += 1
            return 0.0

        def observe(self, response):
            self.observed.append(response.status)

    spy = Spy()
    pipeline = await pipeline_factory()
    await pipeline.request(req(server), limiter=spy)
    assert spy.acquired == 2 and spy.observed == [503, 200]


async def test_closing_twice_and_reopening(pipeline_factory):
    pipeline = await pipeline_factory()
    await pipeline.close()
    await pipeline.close()
    await pipeline.start()
    assert isinstance(pipeline.session, aiohttp.ClientSession)


def test_safe_url_keeps_a_hostless_url_and_drops_credentials_and_queries():
    from dutybridge.redact import safe_url

    assert safe_url("sqlite:////var/lib/dutybridge/inbox.db") == "sqlite:////var/lib/dutybridge/inbox.db"
    assert safe_url("https://bob:pw@api.example/x?token=1#f") == "https://api.example/x"
    assert safe_url("sqlite:///rel.db?mode=ro") == "sqlite:///rel.db"


async def test_rate_limiter_sustains_nearly_the_whole_budget_and_never_exceeds_it():
    clock = FakeClock(0.0)
    limiter = RateLimiter(1200, clock=clock, sleep=FakeSleep(clock))
    sent: list[float] = []
    for _ in range(3000):  # two and a half minutes' worth at the full budget
        await limiter.acquire()
        sent.append(clock())
    # No 60-second window holds more than the budget...
    j = 0
    for i, t in enumerate(sent):
        while sent[j] <= t - 60:
            j += 1
        assert i - j + 1 <= 1200
    # ...and a long run gets at least 0.9 of it.
    assert 3000 / (sent[-1] / 60) >= 0.9 * 1200
