#!/usr/bin/env python3
"""CPU cost of 1,000 incident creations in the ServiceNow sandbox.

    .venv/bin/python bench/sandbox_servicenow.py [N]

Prints, for N POSTs of an incident (default 1,000), the CPU seconds
(``time.process_time``) spent:

1. in the handler alone (mocked requests straight into the POST handler:
   JSON parsing, business rules, journal entry, rendering the answer);
2. through aiohttp's test client (client and server in one process, so this is
   the sandbox's cost plus the client's);
3. by the server alone over real HTTP: the server runs in its own thread and
   reports ``time.thread_time`` for that thread, the client runs in the main one.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import threading
import time

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request

from dutybridge_sandbox.runner import load_seed
from dutybridge_sandbox.servicenow import ServiceNowState, create_app
from dutybridge_sandbox.servicenow.app import USER_KEY

AUTH = {"Authorization": "Basic " + base64.b64encode(b"pagerduty.integration:sandbox-sn-password").decode()}
BODY = {
    "short_description": "Disk full on db-01",
    "description": "Triggered by the bench",
    "impact": "2",
    "urgency": "1",
    "assignment_group": "791d31c38a869b0f335daf24593fd37d",
    "cmdb_ci": "6eb44e1a6c6757691cc51b3f09e7036e",
    "correlation_id": "PD-BENCH",
    "work_notes": "created by the bench",
}


def _state() -> ServiceNowState:
    return ServiceNowState.from_seed(load_seed()["servicenow"])


class _Payload:
    def __init__(self, data: bytes):
        self._chunks = [data, b""]

    def set_read_chunk_size(self, size: int) -> None:
        pass

    async def readany(self) -> bytes:
        return self._chunks.pop(0) if self._chunks else b""


async def handler_alone(n: int) -> float:
    state = _state()
    app = create_app(state)
    post = next(r.handler for r in app.router.routes() if r.method == "POST")
    data = json.dumps(BODY).encode()
    headers = {"Content-Type": "application/json", "Host": "bench.local", **AUTH}
    requests = []
    for _ in range(n):
        request = make_mocked_request(
            "POST",
            "/api/now/table/incident",
            headers=headers,
            match_info={"table": "incident"},
            app=app,
            payload=_Payload(data),
        )
        request[USER_KEY] = "pagerduty.integration"
        requests.append(request)
    start = time.process_time()
    for request in requests:
        response = await post(request)
        assert response.status == 201
    spent = time.process_time() - start
    assert len(state.tables["incident"]) == n
    return spent


async def through_test_client(n: int) -> float:
    state = _state()
    async with TestClient(TestServer(create_app(state))) as client:
        start = time.process_time()
        for _ in range(n):
            response = await client.post("/api/now/table/incident", json=BODY, headers=AUTH)
            assert response.status == 201
            await response.read()
        spent = time.process_time() - start
    assert len(state.tables["incident"]) == n
    return spent


def server_thread_only(n: int) -> float:
    state = _state()
    ready = threading.Event()
    box: dict = {}

    def serve() -> None:
        loop = asyncio.new_event_loop()
        box["loop"] = loop
        runner = web.AppRunner(create_app(state), access_log=None)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        box["port"] = runner.addresses[0][1]
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ready.wait(10)

    async def thread_cpu() -> float:
        return time.thread_time()

    def server_cpu() -> float:
        return asyncio.run_coroutine_threadsafe(thread_cpu(), box["loop"]).result(10)

    async def client() -> float:
        url = f"http://127.0.0.1:{box['port']}/api/now/table/incident"
        async with aiohttp.ClientSession() as http:
            before = server_cpu()
            for _ in range(n):
                async with http.post(url, json=BODY, headers=AUTH) as response:
                    assert response.status == 201
                    await response.read()
            return server_cpu() - before

    spent = asyncio.run(client())
    box["loop"].call_soon_threadsafe(box["loop"].stop)
    thread.join(10)
    assert len(state.tables["incident"]) == n
    return spent


def main(argv: list[str]) -> int:
    n = int(argv[0]) if argv else 1000
    handler = asyncio.run(handler_alone(n))
    client = asyncio.run(through_test_client(n))
    server = server_thread_only(n)
    print(f"ServiceNow sandbox, {n:,} incident creations (CPU seconds, time.process_time):")
    print(f"  handler alone (mocked requests)           {handler:.3f}s  ({handler / n * 1e6:.0f} us each)")
    print(f"  through the test client (client+server)   {client:.3f}s  ({client / n * 1e6:.0f} us each)")
    print(f"  server thread only, over real HTTP        {server:.3f}s  ({server / n * 1e6:.0f} us each)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
