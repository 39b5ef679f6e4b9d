"""Ingest as users run it: `dutybridge run` in its own process against a bare aiohttp handler.

The daemon runs with its worker, default log level (info, JSON lines to a file, as journald
would take them) and metrics; the bare server reads the body and answers 202. Both are
driven by wrk (a client that costs little CPU) with signed V3 bodies of ~1.6 KB, each a
distinct event. Rounds alternate bare and daemon; each round is printed (with the CPU each
server spent per request), then the median ratio. Not a test; run (wrk: `apt-get install wrk`):

    .venv/bin/python bench/daemon_ingest.py [--rounds 3] [--seconds 8] [--connections 32] [--retained 100000]
        [--store-url postgresql://postgres@127.0.0.1:5432/test]

``--retained N`` first stores and handles N events, so the inbox is as 14 days of retention
leave it. ``--store-url`` runs the daemon on that store instead of a SQLite file (a
PostgreSQL URL gets a schema of its own, ``?schema=bench_<random>``, dropped at the end). After the last daemon round it reports how fast the worker drained the backlog.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import SECRET, signed_requests

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent

BARE = """
import sys
from aiohttp import web

async def handler(request):
    await request.read()
    return web.json_response({"status": "accepted"}, status=202)

app = web.Application()
app.router.add_post("/webhooks/pagerduty", handler)
app.router.add_get("/healthz", lambda request: web.json_response({"status": "ok"}))
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""

# Each wrk thread walks its own stride through the bodies, so no event is sent twice.
WRK_SCRIPT = """
local data = dofile(os.getenv("BENCH_DATA"))
local counter = 0
local threads = {}
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
  table.insert(threads, thread)
end
function init(args)
  step = tonumber(os.getenv("BENCH_THREADS"))
  i = tid
end
function request()
  local r = data[(i % #data) + 1]
  i = i + step
  return wrk.format("POST", "/webhooks/pagerduty",
    {["Content-Type"] = "application/json", ["X-PagerDuty-Signature"] = r[2]}, r[1])
end
function response(status, headers, body)
  if status ~= 202 then
    io.stderr:write("unexpected status " .. status .. "\\n")
  end
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {timeout} s")
        time.sleep(0.05)


def write_lua_data(path: Path, count: int) -> None:
    with path.open("w") as f:
        f.write("return {\n")
        for body, headers in signed_requests(count):
            text = body.decode()
            if "]=]" in text:
                raise ValueError("a body holds the Lua long-bracket terminator")
            f.write(f'{{[=[{text}]=], "{headers["X-PagerDuty-Signature"]}"}},\n')
        f.write("}\n")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(
    port: int, data: Path, seconds: float, connections: int, threads: int, pid: int | None = None
) -> tuple[float, float, float, float | None]:
    """requests/s, p50 and p99 latency in ms, and the CPU microseconds process ``pid``
    spent per request meanwhile (None without a pid): on a shared machine requests/s
    measure the neighbours too, the CPU per request much less."""
    script = data.with_suffix(".wrk.lua")
    script.write_text(WRK_SCRIPT)
    env = {**os.environ, "BENCH_DATA": str(data), "BENCH_THREADS": str(threads)}
    cpu_before = cpu_seconds(pid) if pid else 0.0
    out = subprocess.run(
        [
            "wrk",
            "-t",
            str(threads),
            "-c",
            str(connections),
            "-d",
            f"{max(1, round(seconds))}s",
            "--latency",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}/webhooks/pagerduty",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    if out.returncode:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr.strip()[-500:]}")
    cpu = cpu_seconds(pid) - cpu_before if pid else 0.0
    out = out.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    done = int(re.search(r"(\d+) requests in", out).group(1))

    def pct(label: str) -> float:
        m = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    return rps, pct("50"), pct("99"), (cpu / done * 1e6 if pid and done else None)


def daemon_config(folder: Path, port: int, store_url: str | None = None) -> Path:
    import tomli_w

    doc = {
        "daemon": {
            "listen_port": port,
            "store_url": store_url or f"sqlite:///{folder / 'inbox.db'}",
            "log_format": "json",
            "event_retention_days": 14,
        },
        "pagerduty": {"api_key": "bench-key-not-used", "webhook_secrets": [SECRET]},
        "servicenow": {
            "instance_url": "https://bench.service-now.com",
            "username": "bench",
            "password": "bench-password-not-used",
        },
    }
    path = folder / "config.toml"
    path.write_text(tomli_w.dumps(doc))
    path.chmod(0o600)
    return path


def inbox_counts(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {
        m.group(1): float(m.group(2))
        for m in re.finditer(r'^dutybridge_inbox_events\{status="(\w+)"\} ([\d.e+]+)$', text, re.M)
    }


def wait_drained(port: int, timeout: float = 600) -> float:
    """Seconds until nothing is pending or claimed."""
    start = time.monotonic()
    while True:
        counts = inbox_counts(port)
        if not counts.get("pending") and not counts.get("claimed"):
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"inbox not drained after {timeout} s: {counts}")
        time.sleep(0.05)


class Daemon:
    store_url: str | None = None  # set by main() from --store-url

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, free_port()
        self.config = daemon_config(folder, self.port, self.store_url)
        self.log = (folder / "daemon.log").open("ab")

    def __enter__(self) -> Daemon:
        self.proc = subprocess.Popen(
            [str(BIN / "dutybridge"), "run", "--config", str(self.config)], stdout=self.log, stderr=subprocess.STDOUT
        )
        wait_http(f"http://127.0.0.1:{self.port}/healthz")
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        self.log.close()


class Bare:
    def __enter__(self) -> Bare:
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-c", BARE, str(self.port)])
        wait_http(f"http://127.0.0.1:{self.port}/healthz")
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--retained", type=int, default=0, help="handled events in the inbox before the first round")
    p.add_argument("--max-rate", type=int, default=6000, help="bodies made per second of a round (each used once)")
    p.add_argument(
        "--store-url", default=None, help="the daemon's store (default: a SQLite file in a temporary folder)"
    )
    args = p.parse_args(argv)
    schema = None
    if args.store_url and args.store_url.startswith(("postgresql://", "postgres://")):
        schema = f"bench_{os.urandom(4).hex()}"
        Daemon.store_url = f"{args.store_url}{'&' if '?' in args.store_url else '?'}schema={schema}"
    elif args.store_url:
        Daemon.store_url = args.store_url
    try:
        return run_rounds(args)
    finally:
        if schema is not None:
            drop_schema(args.store_url, schema)


def drop_schema(url: str, schema: str) -> None:
    subprocess.run([sys.executable, "-c", DROP_SCHEMA, url, schema], check=True)


DROP_SCHEMA = """
import asyncio, sys, asyncpg
async def main(url, schema):
    conn = await asyncpg.connect(url)
    await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    await conn.close()
asyncio.run(main(*sys.argv[1:]))
"""


def run_rounds(args: argparse.Namespace) -> int:
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install wrk (Debian/Ubuntu), then run again", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="dutybridge-ingest-") as tmp:
        folder = Path(tmp)
        bodies = int(args.seconds * args.max_rate)
        results: dict[str, list[tuple[float, float, float, float | None]]] = {"bare": [], "daemon": []}
        if args.retained:
            data = folder / "retained.lua"
            write_lua_data(data, args.retained)
            with Daemon(folder) as d:
                sent = time.monotonic()
                # Enough seconds at a modest rate for every retained body to go out once.
                run_wrk(d.port, data, max(5.0, args.retained / 1500), 8, 1)
                wait_drained(d.port)
                counts = inbox_counts(d.port)
                print(
                    f"retained: {sum(counts.values()):.0f} events handled in {time.monotonic() - sent:.0f} s "
                    f"before the rounds",
                    flush=True,
                )
        drain = None
        for round_no in range(1, args.rounds + 1):
            data = folder / f"round-{round_no}.lua"
            write_lua_data(data, bodies)
            with Bare() as b:
                results["bare"].append(
                    run_wrk(b.port, data, args.seconds, args.connections, args.threads, pid=b.proc.pid)
                )
            with Daemon(folder) as d:
                before = inbox_counts(d.port)
                results["daemon"].append(
                    run_wrk(d.port, data, args.seconds, args.connections, args.threads, pid=d.proc.pid)
                )
                backlog = inbox_counts(d.port)
                pending = backlog.get("pending", 0) + backlog.get("claimed", 0)
                seconds = wait_drained(d.port)
                if pending:
                    drain = (pending, seconds)
                stored = sum(inbox_counts(d.port).values()) - sum(before.values())
            for kind in ("bare", "daemon"):
                rps, p50, p99, cpu_us = results[kind][-1]
                print(
                    f"round {round_no} {kind:>6}: {rps:8.0f} req/s   p50 {p50:6.2f} ms   p99 {p99:7.2f} ms   "
                    f"CPU {cpu_us or 0:5.0f} us/request",
                    flush=True,
                )
            print(
                f"round {round_no}  ratio: {results['daemon'][-1][0] / results['bare'][-1][0]:.2f}x "
                f"({stored:.0f} events stored)",
                flush=True,
            )
        ratios = [d[0] / b[0] for b, d in zip(results["bare"], results["daemon"], strict=True)]
        print(
            json.dumps(
                {
                    "bench": "daemon_ingest",
                    "rounds": args.rounds,
                    "seconds": args.seconds,
                    "connections": args.connections,
                    "retained": args.retained,
                    "store": "sqlite" if not args.store_url else args.store_url.split(":", 1)[0],
                    "bare_rps_median": round(statistics.median(r[0] for r in results["bare"])),
                    "daemon_rps_median": round(statistics.median(r[0] for r in results["daemon"])),
                    "ratio_median": round(statistics.median(ratios), 3),
                    "daemon_p99_ms_median": round(statistics.median(r[2] for r in results["daemon"]), 2),
                    "daemon_cpu_us_per_request_median": round(statistics.median(r[3] or 0 for r in results["daemon"])),
                    "bare_cpu_us_per_request_median": round(statistics.median(r[3] or 0 for r in results["bare"])),
                    "load_average": [round(x, 2) for x in os.getloadavg()],
                    "drain_events_per_s": round(drain[0] / drain[1]) if drain and drain[1] else None,
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
