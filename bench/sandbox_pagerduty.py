"""PagerDuty sandbox benchmark: CPU seconds for 1,000 incident creations.

Three figures, each ``time.process_time()`` (CPU of this process, not wall time):

* ``http round trip``: 1,000 ``POST /incidents`` through aiohttp's test client over
  loopback; client and server share this process, so this counts both sides;
* ``server process alone``: the sandbox in its own process on loopback, sent the same
  1,000 requests from this one; the CPU that process spent between the first request
  and the last answer (HTTP parsing, middlewares, route, JSON, writing the answer);
* ``state alone``: ``PagerDutyState.create_incident_from_body`` plus JSON encoding;
* ``floor``: a bare aiohttp route (parse the JSON body, answer a small JSON object) in
  its own process, measured like the sandbox process: what aiohttp costs anyway.

Not a test (timings depend on the machine); run:

    .venv/bin/python bench/sandbox_pagerduty.py [--count 1000] [--subscriptions 0]

``--subscriptions N`` adds N account-wide webhook subscriptions (pointing at an unused
port, with delivery never started) to show the cost of building and signing webhooks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from dutybridge_sandbox.pagerduty import DEFAULT_API_KEY, PagerDutyState, create_app, load_seed

HEADERS = {
    "Authorization": f"Token token={DEFAULT_API_KEY}",
    "Accept": "application/vnd.pagerduty+json;version=2",
    "Content-Type": "application/json",
    "From": "integration@acme.example",
}


def body(i: int) -> dict:
    return {
        "incident": {
            "type": "incident",
            "title": f"Benchmark incident {i}",
            "service": {"id": "PSVCDB1", "type": "service_reference"},
            "incident_key": f"bench-{i}",
            "urgency": "high",
            "body": {"type": "incident_body", "details": "created by bench/sandbox_pagerduty.py"},
        }
    }


def fresh_state(subscriptions: int) -> PagerDutyState:
    state = PagerDutyState.from_seed(load_seed())
    state.rate_limit_per_minute = 10**9
    for n in range(subscriptions):
        state.create_webhook_subscription(
            {
                "type": "webhook_subscription",
                "delivery_method": {"type": "http_delivery_method", "url": f"http://127.0.0.1:9/hook{n}"},
                "events": ["incident.triggered"],
                "filter": {"type": "account_reference"},
            }
        )
    return state


async def http_round_trip(count: int, subscriptions: int) -> float:
    state = fresh_state(subscriptions)
    app = create_app(state)
    async with TestClient(TestServer(app)) as client:
        if subscriptions:
            await state.dispatcher.close()  # build and sign webhooks, but deliver none
        start = time.process_time()
        for i in range(count):
            resp = await client.post("/incidents", data=json.dumps(body(i)).encode(), headers=HEADERS)
            assert resp.status == 201, await resp.text()
            await resp.read()
        elapsed = time.process_time() - start
    assert len(state.incidents) == count
    return elapsed


def _bare_app(state: PagerDutyState) -> web.Application:
    """The floor: an aiohttp route that parses the JSON body and answers a small JSON object."""

    async def create(request: web.Request) -> web.Response:
        data = json.loads(await request.read())
        iid = str(len(state.incidents))
        state.incidents[iid] = data
        return web.json_response({"incident": {"id": iid, "type": "incident"}}, status=201)

    app = web.Application()
    app.router.add_post("/incidents", create)
    return app


def _serve(port_queue, result_queue, count: int, subscriptions: int, bare: bool) -> None:
    """Child process: the sandbox on a loopback port; reports its own CPU for ``count`` creations."""

    async def run() -> None:
        state = fresh_state(subscriptions)
        app = _bare_app(state) if bare else create_app(state)
        marks: dict[str, float] = {}
        seen = [0]
        done = asyncio.Event()

        @web.middleware
        async def meter(request, handler):
            if seen[0] == 0:
                marks["start"] = time.process_time()
            response = await handler(request)
            seen[0] += 1
            if seen[0] == count:
                marks["stop"] = time.process_time()
                done.set()
            return response

        app.middlewares.insert(0, meter)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        if subscriptions:
            await state.dispatcher.close()  # build and sign webhooks, but deliver none
        port_queue.put(runner.addresses[0][1])
        await done.wait()
        result_queue.put((marks["stop"] - marks["start"], len(state.incidents)))
        await runner.cleanup()

    asyncio.run(run())


async def server_process_only(count: int, subscriptions: int, bare: bool = False) -> float:
    """CPU of a sandbox process serving ``count`` creations sent from this process over loopback."""
    import multiprocessing as mp

    from aiohttp import ClientSession

    ctx = mp.get_context("spawn")
    port_q, result_q = ctx.Queue(), ctx.Queue()
    proc = ctx.Process(target=_serve, args=(port_q, result_q, count, subscriptions, bare))
    proc.start()
    try:
        port = port_q.get(timeout=30)
        async with ClientSession() as session:
            url = f"http://127.0.0.1:{port}/incidents"
            for i in range(count):
                async with session.post(url, data=json.dumps(body(i)).encode(), headers=HEADERS) as resp:
                    assert resp.status == 201, await resp.text()
                    await resp.read()
        elapsed, created = result_q.get(timeout=30)
        assert created == count
        return elapsed
    finally:
        proc.join(timeout=10)


def state_alone(count: int, subscriptions: int) -> float:
    state = fresh_state(subscriptions)
    bodies = [body(i)["incident"] for i in range(count)]
    start = time.process_time()
    for b in bodies:
        json.dumps({"incident": state.create_incident_from_body(b, "PINTEGR")})
    return time.process_time() - start


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--subscriptions", type=int, default=0)
    args = parser.parse_args()
    n, subs = args.count, args.subscriptions
    rt = await http_round_trip(n, subs)
    ha = await server_process_only(n, subs)
    bare = await server_process_only(n, 0, bare=True)
    st = state_alone(n, subs)
    print(f"{n} incident creations, {subs} webhook subscriptions (CPU seconds, time.process_time):")
    print(f"  http round trip (client + server): {rt:.3f} s  ({rt / n * 1e6:.0f} us each)")
    print(f"  sandbox server process alone:       {ha:.3f} s  ({ha / n * 1e6:.0f} us each)")
    print(f"  state alone (create + json):        {st:.3f} s  ({st / n * 1e6:.0f} us each)")
    print(f"  floor: bare aiohttp JSON route, own process: {bare:.3f} s  ({bare / n * 1e6:.0f} us each)")


if __name__ == "__main__":
    asyncio.run(main())
