"""Ingest benchmark: the real PagerDuty webhook route against a bare aiohttp handler.

The real route verifies the signature, parses the envelope and commits the event to a
SQLite inbox (WAL, synchronous=FULL) before answering; the bare one reads the body and
answers 202. Each server runs in its own process on loopback, so the client's CPU
does not count against it. Not a test; run:

    .venv/bin/python bench/ingest.py [--requests 2000] [--concurrency 16] [--rounds 1] [--db-dir DIR]

Besides requests/s it prints the CPU each side spends per request: the server's (all
its threads) and the client's. On a small machine the two share the cores, so their sum
bounds requests/s; on a shared one requests/s swings from run to run, and --rounds N
alternates bare and real N times and prints the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import hashlib
import hmac
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
import uuid

from aiohttp import ClientSession, TCPConnector, web

SECRET = "bench-webhook-secret-0123456789"

# Shaped like PagerDuty's documented incident.triggered example (about 1.6 KB).
EVENT = {
    "event": {
        "id": "",
        "event_type": "incident.triggered",
        "resource_type": "incident",
        "occurred_at": "2020-10-02T18:45:22.169Z",
        "agent": {
            "html_url": "https://acme.pagerduty.com/users/PLH1HKV",
            "id": "PLH1HKV",
            "self": "https://api.pagerduty.com/users/PLH1HKV",
            "summary": "Tenex Engineer",
            "type": "user_reference",
        },
        "client": {"name": "PagerDuty"},
        "data": {
            "id": "",
            "type": "incident",
            "self": "https://api.pagerduty.com/incidents/PGR0VU2",
            "html_url": "https://acme.pagerduty.com/incidents/PGR0VU2",
            "number": 2,
            "status": "triggered",
            "incident_key": "d3640fbd41094207a1c11e58e46b1662",
            "created_at": "2020-04-09T15:16:27Z",
            "title": "A little bump in the road",
            "service": {
                "html_url": "https://acme.pagerduty.com/services/PF9KMXH",
                "id": "PF9KMXH",
                "self": "https://api.pagerduty.com/services/PF9KMXH",
                "summary": "API Service",
                "type": "service_reference",
            },
            "assignees": [
                {
                    "html_url": "https://acme.pagerduty.com/users/PTUXL6G",
                    "id": "PTUXL6G",
                    "self": "https://api.pagerduty.com/users/PTUXL6G",
                    "summary": "User 123",
                    "type": "user_reference",
                }
            ],
            "escalation_policy": {
                "html_url": "https://acme.pagerduty.com/escalation_policies/PUS0KTE",
                "id": "PUS0KTE",
                "self": "https://api.pagerduty.com/escalation_policies/PUS0KTE",
                "summary": "Default",
                "type": "escalation_policy_reference",
            },
            "teams": [
                {
                    "html_url": "https://acme.pagerduty.com/teams/PFCVPS0",
                    "id": "PFCVPS0",
                    "self": "https://api.pagerduty.com/teams/PFCVPS0",
                    "summary": "Engineering",
                    "type": "team_reference",
                }
            ],
            "priority": {
                "html_url": "https://acme.pagerduty.com/account/incident_priorities",
                "id": "PSO75BM",
                "self": "https://api.pagerduty.com/priorities/PSO75BM",
                "summary": "P1",
                "type": "priority_reference",
            },
            "urgency": "high",
            "conference_bridge": {
                "conference_number": "+1 1234123412,,987654321#",
                "conference_url": "https://example.com",
            },
            "resolve_reason": None,
        },
    }
}


def signed_requests(n: int) -> list[tuple[bytes, dict[str, str]]]:
    """``n`` distinct events (so each is stored, none a duplicate), signed like PagerDuty's."""
    out = []
    for i in range(n):
        doc = copy.deepcopy(EVENT)
        doc["event"]["id"] = str(uuid.uuid4())
        doc["event"]["data"]["id"] = f"PB{i % 500:05d}"  # many incidents, a few events each
        body = json.dumps(doc).encode()
        sig = "v1=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        out.append(
            (
                body,
                {"Content-Type": "application/json", "X-PagerDuty-Signature": sig, "X-Webhook-Id": str(uuid.uuid4())},
            )
        )
    return out


# -- the two servers, each in a child process ------------------------------------------
def _bare_app() -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"status": "accepted"}, status=202)

    app = web.Application()
    app.router.add_post("/webhooks/pagerduty", handler)
    return app


def _real_app(db_path: str, store_class: str) -> web.Application:
    import importlib

    from dutybridge.config import validate
    from dutybridge.context import Ctx
    from dutybridge.logging import configure
    from dutybridge.metrics import Metrics
    from dutybridge.server import add_routes
    from dutybridge.web import CTX_KEY

    module, _, name = store_class.partition(":")
    store_type = getattr(importlib.import_module(module), name)
    # Production logs one JSON line per webhook; format them, write them nowhere.
    configure("info", "json", stream=open(os.devnull, "w"))
    config = validate(
        {
            "pagerduty": {"api_key": "bench", "webhook_secrets": [SECRET]},
            "servicenow": {"instance_url": "https://bench.service-now.com", "username": "u", "password": "p"},
        },
        {},
    )
    ctx = Ctx(config=config, pm=None, store=store_type(db_path), metrics=Metrics())
    app = web.Application(client_max_size=config.daemon.max_body_bytes)
    app[CTX_KEY] = ctx
    add_routes(app)

    async def store_ctx(app: web.Application):
        await ctx.store.open()
        yield
        await ctx.store.close()

    app.cleanup_ctx.append(store_ctx)
    return app


async def _cpu(request: web.Request) -> web.Response:
    # The server process's CPU seconds (all threads: aiosqlite's too), read by the client
    # around the timed run; steadier than requests/s on a busy machine.
    return web.Response(text=repr(time.process_time()))


def _serve(kind: str, db_path: str, store_class: str, ports: mp.Queue, stop: mp.Event) -> None:
    async def main() -> None:
        app = _bare_app() if kind == "bare" else _real_app(db_path, store_class)
        app.router.add_get("/_bench/cpu", _cpu)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        ports.put(runner.addresses[0][1])
        while not stop.is_set():
            await asyncio.sleep(0.05)
        await runner.cleanup()

    asyncio.run(main())


# -- the client ------------------------------------------------------------------------
async def drive(
    port: int, requests: list[tuple[bytes, dict[str, str]]], concurrency: int
) -> tuple[float, float, list[float], float]:
    """Send every request with ``concurrency`` in flight: elapsed seconds, server CPU
    seconds, each request's latency, and the client's own CPU seconds."""
    url = f"http://127.0.0.1:{port}/webhooks/pagerduty"
    latencies: list[float] = []
    pending = iter(requests)
    async with ClientSession(connector=TCPConnector(limit=concurrency)) as session:

        async def cpu() -> float:
            async with session.get(f"http://127.0.0.1:{port}/_bench/cpu") as resp:
                return float(await resp.text())

        async def worker() -> None:
            for body, headers in pending:
                t0 = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as resp:
                    answer = await resp.read()
                    if resp.status != 202 or b'"accepted"' not in answer:
                        raise RuntimeError(f"unexpected answer {resp.status}: {answer[:200]!r}")
                latencies.append(time.perf_counter() - t0)

        cpu_start = await cpu()
        client_start = time.process_time()
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
        client_cpu = time.process_time() - client_start
        return elapsed, await cpu() - cpu_start, latencies, client_cpu


def run_one(
    kind: str, db_path: str, store_class: str, warmup: list, timed: list, concurrency: int
) -> tuple[float, float, list[float], float]:
    ctx = mp.get_context("spawn")
    ports, stop = ctx.Queue(), ctx.Event()
    proc = ctx.Process(target=_serve, args=(kind, db_path, store_class, ports, stop), daemon=True)
    proc.start()
    try:
        port = ports.get(timeout=30)
        asyncio.run(drive(port, warmup, concurrency))
        return asyncio.run(drive(port, timed, concurrency))
    finally:
        stop.set()
        proc.join(10)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--rounds", type=int, default=1, help="alternate bare and real this many times; medians at the end")
    p.add_argument("--db-dir", default=None, help="folder for the SQLite file (default: a temporary folder)")
    p.add_argument(
        "--store",
        default="dutybridge.store.sqlite:SQLiteStore",
        help="the store class, module:Class, built with the database path (to compare store designs)",
    )
    args = p.parse_args(argv)

    # kind -> one (requests/s, server CPU s/req, client CPU s/req) per round
    results: dict[str, list[tuple[float, float, float]]] = {"bare": [], "real": []}
    with tempfile.TemporaryDirectory(dir=args.db_dir, prefix="dutybridge-bench-") as tmp:
        for round_no in range(args.rounds):
            for kind in ("bare", "real"):
                db_path = os.path.join(tmp, f"inbox-{round_no}.db")
                reqs = signed_requests(args.warmup + args.requests)
                elapsed, cpu, lat, client = run_one(
                    kind, db_path, args.store, reqs[: args.warmup], reqs[args.warmup :], args.concurrency
                )
                lat.sort()
                results[kind].append((args.requests / elapsed, cpu / args.requests, client / args.requests))
                rps, server_us, client_us = (
                    results[kind][-1][0],
                    cpu / args.requests * 1e6,
                    client / args.requests * 1e6,
                )
                print(
                    f"{kind:>4}: {rps:8.0f} req/s   server CPU {server_us:5.0f} us/req   client CPU {client_us:5.0f} us/req   "
                    f"p50 {statistics.median(lat) * 1000:6.2f} ms   p99 {lat[int(len(lat) * 0.99) - 1] * 1000:6.2f} ms"
                )
    print(
        f"{args.requests} requests, concurrency {args.concurrency}, after {args.warmup} warm-up requests"
        + (f", {args.rounds} rounds (medians below)" if args.rounds > 1 else "")
    )
    bare = [statistics.median(col) for col in zip(*results["bare"])]
    real = [statistics.median(col) for col in zip(*results["real"])]
    print(
        f"real/bare: {real[0] / bare[0]:.2f}x requests/s (target >= 0.6x); "
        f"{bare[1] / real[1]:.2f}x by server CPU per request; "
        f"{(bare[1] + bare[2]) / (real[1] + real[2]):.2f}x by server + client CPU per request"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
