"""Hostile clients against `dutybridge run`: slow clients, and file-descriptor exhaustion.

The daemon runs as a subprocess on loopback (its own config in a temporary folder, no
upstream needed); this driver opens the connections and samples, once a second, what
the daemon holds (its open sockets from /proc, its RSS) and how fast /healthz answers.
Bounded in count (at most --connections) and time (--seconds per scenario). Run:

    .venv/bin/python bench/hostile.py [--connections 300] [--seconds 12]

slow: a third silent, a third with half a request line, a third with a 1 MB body of a
declared 1,048,000 bytes under a bad signature, never finished. fd: the daemon started
with a file limit of 600 (as the issue's probe did) and 620 silent sockets.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tomli_w
from aiohttp import ClientSession, ClientTimeout

TOKEN = "bench-doorbell-token"
SECRET = "bench-webhook-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(folder: Path, port: int, daemon: dict) -> Path:
    (folder / "state").mkdir(exist_ok=True)
    config = {
        "daemon": {"listen_port": port, "store_url": "sqlite:///state/dutybridge.db", "log_format": "json", **daemon},
        "pagerduty": {
            "api_url": "http://127.0.0.1:9",
            "api_key": "bench-pd-key",
            "webhook_secrets": [SECRET],
            "max_retries": 0,
            "timeout_seconds": 1.0,
        },
        "servicenow": {
            "instance_url": "http://127.0.0.1:9",
            "username": "bench",
            "password": "bench-password",
            "doorbell_token": TOKEN,
            "max_retries": 0,
            "timeout_seconds": 1.0,
        },
        # Its doorbell tables are the ones a doorbell may name; nothing upstream answers.
        "plugins": {"enabled": ["incident_sync"], "incident_sync": {"poll_interval_seconds": 0}},
    }
    path = folder / "config.toml"
    path.write_text(tomli_w.dumps(config))
    path.chmod(0o600)
    return path


def start(path: Path, log: Path, nofile: int | None) -> subprocess.Popen:
    def limit() -> None:
        if nofile:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    exe = Path(sys.executable).with_name("dutybridge")
    return subprocess.Popen(
        [str(exe), "run", "-c", str(path)], stdout=log.open("w"), stderr=subprocess.STDOUT, preexec_fn=limit
    )


def held_sockets(pid: int) -> int:
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                count += 1
        except OSError:
            pass
    return count


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def healthz(session: ClientSession, url: str) -> float | None:
    """Latency in ms, None when it did not answer within 5 s."""
    started = time.perf_counter()
    try:
        async with session.get(f"{url}/healthz") as resp:
            await resp.read()
            if resp.status != 200:
                return None
    except (TimeoutError, OSError):
        return None
    return (time.perf_counter() - started) * 1000


async def wait_up(session: ClientSession, url: str) -> None:
    deadline = time.monotonic() + 30
    while await healthz(session, url) is None:
        if time.monotonic() > deadline:
            raise SystemExit("the daemon did not come up")
        await asyncio.sleep(0.1)


async def open_clients(port: int, count: int, mix: bool) -> list[asyncio.StreamWriter]:
    writers = []
    body = b"x" * (1_048_000 - 48_000)
    for i in range(count):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            continue
        kind = i % 3 if mix else 0
        if kind == 1:
            writer.write(b"POST /webhooks/pagerduty HTTP/1.1\r\nHost: x\r\nContent-Le")
        elif kind == 2:
            writer.write(
                b"POST /webhooks/pagerduty HTTP/1.1\r\nHost: x\r\nX-PagerDuty-Signature: v1="
                + b"0" * 64
                + b"\r\nContent-Length: 1048000\r\n\r\n"
                + body
            )
        writers.append(writer)
    return writers


async def scenario(name: str, *, connections: int, seconds: float, mix: bool, nofile: int | None, daemon: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        port = free_port()
        log = folder / "daemon.log"
        proc = start(write_config(folder, port, daemon), log, nofile)
        url = f"http://127.0.0.1:{port}"
        try:
            async with ClientSession(timeout=ClientTimeout(total=5)) as session:
                await wait_up(session, url)
                base_rss = rss_mib(proc.pid)
                print(f"\n== {name}: {connections} connections, limits {daemon}, file limit {nofile or 'default'}")
                print(f"   idle daemon: {held_sockets(proc.pid)} sockets, RSS {base_rss:.0f} MiB")
                writers = await open_clients(port, connections, mix)
                print(f"   opened {len(writers)} client connections")
                print("   t(s)  sockets held  RSS MiB  healthz ms (p50/max, failed)")
                started = time.monotonic()
                peak_rss, peak_held = base_rss, 0
                while time.monotonic() - started < seconds:
                    lat = [await healthz(session, url) for _ in range(4)]
                    ok = [x for x in lat if x is not None]
                    held, rss = held_sockets(proc.pid), rss_mib(proc.pid)
                    peak_rss, peak_held = max(peak_rss, rss), max(peak_held, held)
                    p50 = f"{statistics.median(ok):.1f}/{max(ok):.1f}" if ok else "-"
                    print(
                        f"   {time.monotonic() - started:4.0f}  {held:12d}  {rss:7.0f}  {p50} ({len(lat) - len(ok)} failed)"
                    )
                    await asyncio.sleep(1.0)
                async with session.post(
                    f"{url}/webhooks/servicenow",
                    headers={"Authorization": f"Bearer {TOKEN}"},
                    json={
                        "table": "incident",
                        "sys_id": "0" * 32,
                        "operation": "update",
                        "sys_updated_on": "2024-03-05 14:07:09",
                    },
                ) as resp:
                    doorbell = resp.status
                for writer in writers:
                    writer.transport.abort()
        finally:
            proc.terminate()
            proc.wait(30)
        lines = log.read_text().splitlines()
        tracebacks = sum("Traceback" in line or '"exception"' in line for line in lines)
        accept = sum('"accept_failed"' in line for line in lines)
        print(
            f"   peak: {peak_held} sockets, RSS {peak_rss:.0f} MiB (+{peak_rss - base_rss:.0f}); a valid doorbell "
            f"then: {doorbell}; daemon log: {len(lines)} lines, {tracebacks} with a traceback, "
            f"{accept} accept_failed"
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=12.0)
    args = parser.parse_args()
    connections = min(args.connections, 1000)
    seconds = min(args.seconds, 60.0)
    # The driver holds its own ends of the sockets.
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    fast = {"header_timeout_seconds": 5.0, "body_timeout_seconds": 5.0, "keepalive_timeout_seconds": 5.0}
    await scenario("slow clients", connections=connections, seconds=seconds, mix=True, nofile=None, daemon=fast)
    await scenario("fd exhaustion", connections=620, seconds=seconds, mix=False, nofile=600, daemon=fast)


if __name__ == "__main__":
    asyncio.run(main())
