"""Incident sync benchmark: PagerDuty trigger -> ServiceNow incident, through real HTTP.

Three processes on loopback: the sandbox (`python -m dutybridge_sandbox`), the daemon
(`dutybridge run`, SQLite on disk, incident_sync enabled, signed V3 webhooks), and this
driver, which triggers PagerDuty incidents through the sandbox's REST API and watches
ServiceNow's Table API for the incidents the daemon creates. Not a test; run:

    .venv/bin/python bench/incident_sync.py [--rate 100] [--count 500] [--burst 500]

It prints the trigger -> visible latency (p50/p99) at a fixed trigger rate, then the
sustained sync rate (incidents synced per second) when a burst is triggered at once,
each with the CPU time the sandbox, the daemon and this driver spent per incident:
on a shared machine the wall-clock figures measure the neighbours too, the CPU time
per incident much less so.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tomli_w
from aiohttp import ClientSession, ClientTimeout, TCPConnector

PD_KEY = "sandbox-pd-full-key"
UNLIMITED = 10_000_000
SN_USER, SN_PASSWORD = "pagerduty.integration", "sandbox-sn-password"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_http(session: ClientSession, url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            async with session.get(url) as resp:
                if resp.status < 500:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{url} did not come up")
        await asyncio.sleep(0.05)


class Bench:
    def __init__(self, session: ClientSession, pd: str, sn: str):
        self.session, self.pd, self.sn = session, pd, sn
        self.pd_headers = {
            "Authorization": f"Token token={PD_KEY}",
            "Accept": "application/vnd.pagerduty+json;version=2",
            "Content-Type": "application/json",
            "From": "alice.nguyen@acme.example",
        }
        basic = base64.b64encode(f"{SN_USER}:{SN_PASSWORD}".encode()).decode()
        self.sn_headers = {"Authorization": f"Basic {basic}", "Accept": "application/json"}
        self.triggered: dict[str, float] = {}
        self.seen: dict[str, float] = {}
        self.looks = 0  # the watcher's queries

    async def trigger(self, title: str) -> None:
        body = {
            "incident": {"type": "incident", "title": title, "service": {"id": "PSVCDB1", "type": "service_reference"}}
        }
        t0 = time.perf_counter()
        async with self.session.post(f"{self.pd}/incidents", json=body, headers=self.pd_headers) as resp:
            data = await resp.json()
            if resp.status != 201:
                raise SystemExit(f"trigger failed: {resp.status} {data}")
        self.triggered[data["incident"]["id"]] = t0

    async def sn_rows(self, query: str, limit: int) -> list[dict]:
        params = {
            "sysparm_query": query,
            "sysparm_fields": "correlation_id,number",
            "sysparm_limit": str(limit),
            "sysparm_no_count": "true",
        }
        async with self.session.get(
            f"{self.sn}/api/now/table/incident", params=params, headers=self.sn_headers
        ) as resp:
            return (await resp.json())["result"]

    async def watch(self, stop: asyncio.Event) -> None:
        """Poll ServiceNow for incidents opened since the last look.

        Numbers are given in insert order, so each look asks only for those after the
        last seen: a look finds few rows and sorts no others. (Asking for the newest 200
        every time cost the sandbox more than the daemon's own calls.)"""
        newest = await self.sn_rows("ORDERBYDESCnumber", 1)
        last = newest[0]["number"] if newest else ""
        while not stop.is_set():
            rows = await self.sn_rows(f"number>{last}^ORDERBYnumber" if last else "ORDERBYnumber", 1000)
            self.looks += 1
            now = time.perf_counter()
            for row in rows:
                if row["correlation_id"]:
                    self.seen.setdefault(row["correlation_id"], now)
                last = max(last, row["number"])
            if len(rows) < 1000:
                await asyncio.sleep(0.002)

    async def drained(self, daemon: str, timeout: float = 30) -> None:
        """Wait until the daemon's inbox holds nothing pending or claimed (echoes of the
        daemon's own writes may still be handled after every incident is visible)."""
        deadline, calm = time.monotonic() + timeout, 0
        while calm < 3 and time.monotonic() < deadline:  # three looks in a row: none in flight either
            async with self.session.get(f"{daemon}/metrics") as resp:
                text = await resp.text()
            busy = sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("dutybridge_inbox_events{") and ('"pending"' in line or '"claimed"' in line)
            )
            calm = 0 if busy else calm + 1
            await asyncio.sleep(0.05)

    async def look_cost(self, sandbox_pid: int, seconds: float = 0.5) -> float:
        """The sandbox CPU seconds one look of the watcher costs, measured alone (the
        sandbox's Table API scans the whole table for any query, so it grows with it)."""
        stop = asyncio.Event()
        self.looks, start = 0, cpu_seconds(sandbox_pid)
        watcher = asyncio.create_task(self.watch(stop))
        await asyncio.sleep(seconds)
        stop.set()
        await watcher
        return (cpu_seconds(sandbox_pid) - start) / max(self.looks, 1)

    async def run(self, count: int, rate: float | None) -> tuple[list[float], float]:
        self.triggered.clear()
        self.seen.clear()
        self.looks = 0
        stop = asyncio.Event()
        watcher = asyncio.create_task(self.watch(stop))
        start = time.perf_counter()
        tasks = []
        for i in range(count):
            if rate:
                await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(self.trigger(f"bench {i}")))
        await asyncio.gather(*tasks)
        deadline = time.perf_counter() + 120
        while len(set(self.triggered) & set(self.seen)) < count and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
        stop.set()
        await watcher
        done = [self.seen[i] - t for i, t in self.triggered.items() if i in self.seen]
        elapsed = max(self.seen[i] for i in self.triggered if i in self.seen) - start
        if len(done) < count:
            print(f"  only {len(done)} of {count} incidents reached ServiceNow", file=sys.stderr)
        return done, elapsed


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU time each process spends on a phase: what the work costs, whatever else runs
    on the machine (wall-clock figures on a shared machine measure the neighbours too)."""

    def __init__(self, procs: dict[str, int]):
        self.procs = procs
        self.start: dict[str, float] = {}

    def __enter__(self) -> CpuMeter:
        self.start = self.now()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self.now()
        self.used = {name: end[name] - self.start[name] for name in self.procs}

    def now(self) -> dict[str, float]:
        out = {name: cpu_seconds(pid) for name, pid in self.procs.items() if name != "driver"}
        if "driver" in self.procs:
            t = os.times()
            out["driver"] = t.user + t.system
        return out

    def per(self, n: int, watcher: float = 0.0) -> str:
        """CPU ms per incident; ``watcher``: sandbox seconds the driver's looks cost."""
        out = []
        for name in self.procs:
            text = f"{name} {self.used[name] / n * 1000:.2f}"
            if name == "sandbox" and watcher:
                text += f" (of which the watcher's looks {watcher / n * 1000:.2f})"
            out.append(text)
        return ", ".join(out)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def main(args: argparse.Namespace) -> int:
    pd_port, sn_port, daemon_port = free_port(), free_port(), free_port()
    doorbell = secrets.token_hex(16)
    procs: list[subprocess.Popen] = []
    tmp = Path(os.environ.get("BENCH_DIR") or tempfile.mkdtemp(prefix="dutybridge-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        # PagerDuty allows 960 requests a minute per key (16/s): at that budget a sync of
        # a few calls caps throughput at a handful a second, whatever the daemon does.
        # The benchmark measures the daemon, so both sides get a budget out of reach.
        seed_text = (Path(__file__).resolve().parents[1] / "sandbox" / "seed.toml").read_text()
        seed = tmp / "seed.toml"
        seed.write_text(seed_text.replace("rate_limit_per_minute = 960", f"rate_limit_per_minute = {UNLIMITED}"))
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "dutybridge_sandbox",
                    "--seed",
                    str(seed),
                    "--pagerduty-port",
                    str(pd_port),
                    "--servicenow-port",
                    str(sn_port),
                    "--doorbell-url",
                    f"http://127.0.0.1:{daemon_port}/webhooks/servicenow",
                    "--doorbell-token",
                    doorbell,
                ],
                stdout=subprocess.DEVNULL,
            )
        )
        pd, sn = f"http://127.0.0.1:{pd_port}", f"http://127.0.0.1:{sn_port}"
        async with ClientSession(connector=TCPConnector(limit=64), timeout=ClientTimeout(total=30)) as session:
            await wait_http(session, f"{pd}/abilities")
            bench = Bench(session, pd, sn)
            sub = {
                "webhook_subscription": {
                    "type": "webhook_subscription",
                    "events": ["incident.triggered", "incident.acknowledged", "incident.resolved"],
                    "delivery_method": {
                        "type": "http_delivery_method",
                        "url": f"http://127.0.0.1:{daemon_port}/webhooks/pagerduty",
                    },
                    "filter": {"type": "account_reference"},
                }
            }
            async with session.post(f"{pd}/webhook_subscriptions", json=sub, headers=bench.pd_headers) as resp:
                secret = (await resp.json())["webhook_subscription"]["delivery_method"]["secret"]
            config = tmp / "config.toml"
            config.write_text(
                tomli_w.dumps(
                    {
                        "daemon": {
                            "listen_port": daemon_port,
                            "store_url": f"sqlite:///{tmp / 'bench.db'}",
                            "log_level": "warning",
                        },
                        "pagerduty": {
                            "api_url": pd,
                            "api_key": PD_KEY,
                            "default_user_id": "PINTEGR",
                            "webhook_secrets": [secret],
                            "rate_limit_per_minute": UNLIMITED,
                        },
                        "servicenow": {
                            "instance_url": sn,
                            "username": SN_USER,
                            "password": SN_PASSWORD,
                            "doorbell_token": doorbell,
                        },
                        "plugins": {
                            "enabled": ["incident_sync"],
                            "incident_sync": {
                                # The default poll interval: its first pass (setting watermarks) comes a
                                # minute after start, after the benchmark; being on is what lets the
                                # daemon leave notes and webhooks that echo its own writes unread.
                                "links": [{"group": "Database", "service": "PSVCDB1", "escalation_policy": "PEPDB01"}],
                                "poll_interval_seconds": 60.0,
                            },
                        },
                    }
                )
            )
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "dutybridge.cli", "run", "--config", str(config)], stdout=subprocess.DEVNULL
                )
            )
            await wait_http(session, f"http://127.0.0.1:{daemon_port}/healthz")
            await bench.run(20, None)  # warm-up
            meter_procs = {"sandbox": procs[0].pid, "daemon": procs[1].pid, "driver": os.getpid()}

            daemon_url = f"http://127.0.0.1:{daemon_port}"
            with CpuMeter(meter_procs) as cpu:  # to the last echo handled: all a sync costs
                lat, _ = await bench.run(args.count, args.rate)
                looks = bench.looks
                await bench.drained(daemon_url)
            watcher = looks * await bench.look_cost(procs[0].pid)
            print(f"trigger -> ServiceNow incident visible, {args.count} incidents at {args.rate:g}/s:")
            print(
                f"  p50 {pct(lat, 50) * 1000:6.1f} ms   p99 {pct(lat, 99) * 1000:6.1f} ms   "
                f"max {max(lat) * 1000:6.1f} ms   (targets: p50 <= 25 ms, p99 <= 100 ms)"
            )
            print(f"  CPU ms per incident: {cpu.per(args.count, watcher)}")
            summary = {
                "bench": "incident_sync",
                "rate": args.rate,
                "count": args.count,
                "burst": args.burst,
                "latency_p50_ms": round(pct(lat, 50) * 1000, 1),
                "latency_p99_ms": round(pct(lat, 99) * 1000, 1),
                "latency_daemon_cpu_ms": round(cpu.used["daemon"] / args.count * 1000, 2),
            }
            with CpuMeter(meter_procs) as cpu:
                lat, elapsed = await bench.run(args.burst, None)
                looks = bench.looks
                await bench.drained(daemon_url)
            watcher = looks * await bench.look_cost(procs[0].pid)
            print(
                f"burst of {args.burst} triggered at once: {len(lat) / elapsed:6.0f} incidents synced/s "
                f"(p50 {pct(lat, 50) * 1000:.0f} ms, p99 {pct(lat, 99) * 1000:.0f} ms; target >= 500/s)"
            )
            print(f"  CPU ms per incident: {cpu.per(args.burst, watcher)}; wall {elapsed:.2f} s")
            summary.update(
                burst_syncs_per_s=round(len(lat) / elapsed),
                burst_synced=len(lat),
                burst_daemon_cpu_ms=round(cpu.used["daemon"] / args.burst * 1000, 2),
            )
            print(
                "  each sync: sandbox signs and posts a V3 webhook -> daemon verifies, stores (fsync), "
                "dispatches -> reads the incident, creates the ServiceNow incident, writes the link"
            )
            async with session.get(f"http://127.0.0.1:{daemon_port}/metrics") as resp:
                metrics = await resp.text()
            calls = {}
            for line in metrics.splitlines():
                if line.startswith("dutybridge_outbound_requests_total{"):
                    service = line.split('service="')[1].split('"')[0]
                    calls[service] = calls.get(service, 0) + float(line.rsplit(" ", 1)[1])
            synced = 20 + args.count + args.burst
            print(
                "  outbound calls per synced incident: "
                + ", ".join(f"{k} {v / synced:.1f}" for k, v in sorted(calls.items()))
            )
            print(
                f"  machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; PagerDuty rate limit raised on "
                f"both sides (a real key allows 960/min)"
            )
            summary["outbound_calls_per_sync"] = {k: round(v / synced, 1) for k, v in sorted(calls.items())}
            print(json.dumps(summary))  # for bench/results.py
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=100.0, help="triggers per second in the latency run")
    parser.add_argument("--count", type=int, default=500, help="incidents in the latency run")
    parser.add_argument("--burst", type=int, default=500, help="incidents triggered at once in the throughput run")
    sys.exit(asyncio.run(main(parser.parse_args())))
