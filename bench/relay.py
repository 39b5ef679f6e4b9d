"""Relay benchmark: the latency `dutybridge relay` adds to an outbound call, against a direct one.

Three processes on loopback: a bare aiohttp upstream, a real `dutybridge relay`, and this
driver, whose outbound pipeline (mid_proxy enabled, mode relay, target "bench") sends
each call either through the relay (service "bench") or directly (service "direct"),
alternating, so both see the same machine. Not a test; run:

    .venv/bin/python bench/relay.py [--requests 2000] [--concurrency 1] [--body-bytes 2048]

It prints p50/p99/mean per call for each way and the difference: the relay's cost is the
extra hop (envelope, HMAC both ways, nonce check, a second pooled connection) per call.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import structlog
import tomli_w

from dutybridge.app import command_context, load
from dutybridge.http import OutboundRequest

SECRET = "bench-relay-secret-8c7b6a5f4e"

UPSTREAM = """
import sys
from aiohttp import web
body = b"x" * int(sys.argv[2])
async def answer(request):
    await request.read()
    return web.Response(body=body, content_type="application/json")
app = web.Application()
app.router.add_route("*", "/{tail:.*}", answer)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=lambda *a: print("ready", flush=True),
            access_log=None)
"""


async def _spawn(*argv: str, ready: str, env: dict | None = None) -> tuple[asyncio.subprocess.Process, str]:
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env
    )
    async with asyncio.timeout(30):
        while True:
            line = (await process.stdout.readline()).decode()
            if not line:
                raise SystemExit(f"{argv[:3]} exited before it was ready")
            if line.startswith(ready):
                asyncio.get_running_loop().create_task(_drain(process))
                return process, line.strip()


async def _drain(process: asyncio.subprocess.Process) -> None:
    while await process.stdout.readline():
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stats(samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return f"p50 {statistics.median(ms):7.3f} ms  p99 {p99:7.3f} ms  mean {statistics.fmean(ms):7.3f} ms"


async def main(requests: int, concurrency: int, body_bytes: int) -> None:
    folder = Path(tempfile.mkdtemp(prefix="dutybridge-relay-bench-"))
    port = _free_port()
    upstream, _ = await _spawn(sys.executable, "-c", UPSTREAM, str(port), str(body_bytes), ready="ready")
    relay_toml = folder / "relay.toml"
    relay_toml.write_text(
        tomli_w.dumps({"relay": {"listen_port": 0, "secret": "env:BENCH_RELAY_SECRET", "allowed_hosts": ["127.0.0.1"]}})
    )
    relay, line = await _spawn(
        sys.executable,
        "-m",
        "dutybridge.cli",
        "relay",
        "--config",
        str(relay_toml),
        ready="relay listening on",
        env={**os.environ, "BENCH_RELAY_SECRET": SECRET},
    )
    relay_url = line.split()[-1]
    os.environ["BENCH_RELAY_SECRET"] = SECRET
    config_path = folder / "config.toml"
    config_path.write_text(
        tomli_w.dumps(
            {
                "daemon": {"store_url": "sqlite:///bench.db", "log_level": "warning"},
                "pagerduty": {"api_key": "env:BENCH_RELAY_SECRET"},
                "servicenow": {
                    "instance_url": "http://127.0.0.1:9",
                    "username": "u",
                    "password": "env:BENCH_RELAY_SECRET",
                },
                "plugins": {
                    "enabled": ["mid_proxy"],
                    "mid_proxy": {
                        "mode": "relay",
                        "targets": ["bench"],
                        "relay_urls": [relay_url],
                        "relay_secret": "env:BENCH_RELAY_SECRET",
                    },
                },
            }
        )
    )
    config, pm = load(config_path)
    url = f"http://127.0.0.1:{port}/api/now/table/incident"
    payload = {"short_description": "x" * 200}
    times: dict[str, list[float]] = {"direct": [], "bench": []}
    try:
        async with command_context(config, pm, store=False) as ctx:

            async def one(service: str, record: bool) -> None:
                started = time.perf_counter()
                resp = await ctx.http.request(
                    OutboundRequest("POST", url, service=service, json=payload), idempotent=True
                )
                if resp.status != 200:
                    raise SystemExit(f"{service}: HTTP {resp.status}")
                if record:
                    times[service].append(time.perf_counter() - started)

            for i in range(100):  # warm both pools
                await one("direct" if i % 2 else "bench", False)
            for start in range(0, requests, concurrency):
                batch = min(concurrency, requests - start)
                for service in ("direct", "bench") if start % 2 else ("bench", "direct"):
                    await asyncio.gather(*(one(service, True) for _ in range(batch)))
    finally:
        for process in (relay, upstream):
            process.terminate()
            await process.wait()
    direct, relayed = times["direct"], times["bench"]
    print(f"{requests} POSTs each way, concurrency {concurrency}, {body_bytes}-byte answers, loopback")
    print(f"direct  {_stats(direct)}")
    print(f"relay   {_stats(relayed)}")
    added_p50 = (statistics.median(relayed) - statistics.median(direct)) * 1000
    added_p99 = (sorted(relayed)[int(len(relayed) * 0.99)] - sorted(direct)[int(len(direct) * 0.99)]) * 1000
    print(f"added   p50 {added_p50:7.3f} ms  p99 {added_p99:7.3f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--body-bytes", type=int, default=2048)
    args = parser.parse_args()
    # The pipeline logs each attempt at debug: printing 4000 lines would be the benchmark.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    asyncio.run(main(args.requests, args.concurrency, args.body_bytes))
