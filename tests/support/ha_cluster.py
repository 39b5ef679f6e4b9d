"""Several ``dutybridge run`` processes on one PostgreSQL behind a small round-robin proxy,
against the sandbox in a process of its own: what the HA process test and bench/ha_stress.py drive.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import tomli_w
from aiohttp import ClientError, ClientSession, ClientTimeout, web

from dutybridge_demo.story import LINKS

PD_KEY = "sandbox-pd-full-key"
SN_USER, SN_PASSWORD = "pagerduty.integration", "sandbox-sn-password"
DATABASE_GROUP = "791d31c38a869b0f335daf24593fd37d"
UNLIMITED = 10_000_000
EVENTS = ["incident.triggered", "incident.acknowledged", "incident.resolved"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Instance:
    slot: int
    port: int
    log: Path
    proc: subprocess.Popen | None = None
    starts: int = 0


@dataclass
class Cluster:
    """``await cluster.start()``, drive it, ``await cluster.stop()``."""

    tmp: Path
    store_url: str
    size: int = 3
    poll_seconds: float = 3.0
    leader_lease_seconds: float = 2.0
    lease_seconds: float = 4.0
    instances: list[Instance] = field(default_factory=list)
    session: ClientSession | None = None
    pd: str = ""
    sn: str = ""
    _sandbox: subprocess.Popen | None = None
    _proxy: web.AppRunner | None = None
    _next: int = 0

    # -- lifecycle ---------------------------------------------------------------
    async def start(self) -> None:
        self.tmp.mkdir(parents=True, exist_ok=True)
        pd_port, sn_port, proxy_port = free_port(), free_port(), free_port()
        self.proxy_url = f"http://127.0.0.1:{proxy_port}"
        doorbell = secrets.token_hex(16)
        seed_text = (Path(__file__).resolve().parents[2] / "sandbox" / "seed.toml").read_text()
        seed = self.tmp / "seed.toml"
        # The daemon is measured, not PagerDuty's per-key budget (16 requests a second).
        seed.write_text(seed_text.replace("rate_limit_per_minute = 960", f"rate_limit_per_minute = {UNLIMITED}"))
        self._sandbox = subprocess.Popen(
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
                f"{self.proxy_url}/webhooks/servicenow",
                "--doorbell-token",
                doorbell,
            ],
            stdout=subprocess.DEVNULL,
        )
        self.pd, self.sn = f"http://127.0.0.1:{pd_port}", f"http://127.0.0.1:{sn_port}"
        self.session = ClientSession(timeout=ClientTimeout(total=30))
        await self._wait_http(f"{self.pd}/abilities")
        await self._start_proxy(proxy_port)
        sub = {
            "webhook_subscription": {
                "type": "webhook_subscription",
                "events": EVENTS,
                "delivery_method": {"type": "http_delivery_method", "url": f"{self.proxy_url}/webhooks/pagerduty"},
                "filter": {"type": "account_reference"},
            }
        }
        async with self.session.post(f"{self.pd}/webhook_subscriptions", json=sub, headers=self.pd_headers) as resp:
            secret = (await resp.json())["webhook_subscription"]["delivery_method"]["secret"]
        self.instances = [Instance(i, free_port(), self.tmp / f"instance{i}.log") for i in range(self.size)]
        for inst in self.instances:
            config = self.tmp / f"config{inst.slot}.toml"
            config.write_text(
                tomli_w.dumps(
                    {
                        "daemon": {
                            "listen_port": inst.port,
                            "store_url": self.store_url,
                            "log_level": "info",
                            "log_format": "json",
                            "log_levels": {"dutybridge.scheduler": "debug"},
                            "lease_seconds": self.lease_seconds,
                            "leader_lease_seconds": self.leader_lease_seconds,
                            "retry_base_seconds": 0.2,
                            "retry_max_seconds": 2.0,
                            "shutdown_timeout": 5.0,
                        },
                        "pagerduty": {
                            "api_url": self.pd,
                            "api_key": PD_KEY,
                            "default_user_id": "PINTEGR",
                            "webhook_secrets": [secret],
                            "rate_limit_per_minute": UNLIMITED,
                        },
                        "servicenow": {
                            "instance_url": self.sn,
                            "username": SN_USER,
                            "password": SN_PASSWORD,
                            "doorbell_token": doorbell,
                        },
                        "plugins": {
                            "enabled": ["incident_sync"],
                            "incident_sync": {"links": LINKS, "poll_interval_seconds": self.poll_seconds},
                        },
                    }
                )
            )
        for inst in self.instances:
            self.launch(inst)
        for inst in self.instances:
            await self._wait_http(f"http://127.0.0.1:{inst.port}/readyz")

    def launch(self, inst: Instance) -> None:
        out = inst.log.open("a")
        inst.proc = subprocess.Popen(
            [sys.executable, "-m", "dutybridge.cli", "run", "--config", str(self.tmp / f"config{inst.slot}.toml")],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env_without_notify(),
        )
        out.close()
        inst.starts += 1

    async def restart(self, inst: Instance) -> None:
        self.launch(inst)
        await self._wait_http(f"http://127.0.0.1:{inst.port}/readyz")

    def kill(self, inst: Instance) -> None:
        if inst.proc is not None:
            inst.proc.send_signal(signal.SIGKILL)
            inst.proc.wait(10)
            inst.proc = None

    async def stop(self) -> None:
        for inst in self.instances:
            if inst.proc is not None:
                inst.proc.send_signal(signal.SIGTERM)
        for inst in self.instances:
            if inst.proc is not None:
                try:
                    inst.proc.wait(20)
                except subprocess.TimeoutExpired:
                    inst.proc.kill()
        if self._proxy is not None:
            await self._proxy.cleanup()
        if self.session is not None:
            await self.session.close()
        if self._sandbox is not None:
            self._sandbox.send_signal(signal.SIGTERM)
            try:
                self._sandbox.wait(10)
            except subprocess.TimeoutExpired:
                self._sandbox.kill()

    async def _wait_http(self, url: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                async with self.session.get(url) as resp:
                    if resp.status < 500:
                        return
            except (OSError, ClientError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not come up within {timeout:g} s")
            await asyncio.sleep(0.05)

    # -- the load balancer -----------------------------------------------------------
    async def _start_proxy(self, port: int) -> None:
        async def forward(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
            # Round robin; an instance that does not answer (killed) is skipped, as a
            # load balancer's health check would take it out.
            for _ in range(len(self.instances) * 2):
                inst = self.instances[self._next % len(self.instances)]
                self._next += 1
                if inst.proc is None:
                    continue
                try:
                    async with self.session.request(
                        request.method, f"http://127.0.0.1:{inst.port}{request.rel_url}", data=body, headers=headers
                    ) as resp:
                        return web.Response(status=resp.status, body=await resp.read(), content_type=resp.content_type)
                except (TimeoutError, OSError, ClientError):
                    continue
            return web.Response(status=502, text="no instance answered")

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", forward)
        self._proxy = web.AppRunner(app, access_log=None)
        await self._proxy.setup()
        await web.TCPSite(self._proxy, "127.0.0.1", port).start()

    # -- the two systems -------------------------------------------------------------
    @property
    def pd_headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Token token={PD_KEY}",
            "Accept": "application/vnd.pagerduty+json;version=2",
            "Content-Type": "application/json",
            "From": "alice.nguyen@acme.example",
        }

    @property
    def sn_headers(self) -> dict[str, str]:
        basic = base64.b64encode(f"{SN_USER}:{SN_PASSWORD}".encode()).decode()
        return {"Authorization": f"Basic {basic}", "Accept": "application/json"}

    async def trigger_pd(self, title: str) -> str:
        body = {
            "incident": {"type": "incident", "title": title, "service": {"id": "PSVCDB1", "type": "service_reference"}}
        }
        async with self.session.post(f"{self.pd}/incidents", json=body, headers=self.pd_headers) as resp:
            data = await resp.json()
            if resp.status != 201:
                raise RuntimeError(f"PagerDuty trigger failed: {resp.status} {data}")
        return data["incident"]["id"]

    async def open_sn(self, title: str) -> str:
        body = {"short_description": title, "impact": "1", "urgency": "1", "assignment_group": DATABASE_GROUP}
        async with self.session.post(f"{self.sn}/api/now/table/incident", json=body, headers=self.sn_headers) as resp:
            data = await resp.json()
            if resp.status != 201:
                raise RuntimeError(f"ServiceNow insert failed: {resp.status} {data}")
        return data["result"]["sys_id"]

    async def pd_incidents(self) -> list[dict]:
        out: list[dict] = []
        offset = 0
        while True:
            async with self.session.get(
                f"{self.pd}/incidents",
                params={"limit": "100", "offset": str(offset), "statuses[]": ["triggered", "acknowledged", "resolved"]},
                headers=self.pd_headers,
            ) as resp:
                data = await resp.json()
            out += data["incidents"]
            if not data.get("more"):
                return out
            offset += len(data["incidents"])

    async def sn_incidents(self) -> list[dict]:
        params = {"sysparm_fields": "sys_id,correlation_id,number", "sysparm_limit": "100000"}
        async with self.session.get(
            f"{self.sn}/api/now/table/incident", params=params, headers=self.sn_headers
        ) as resp:
            return (await resp.json())["result"]

    async def leader(self) -> Instance | None:
        """The instance that says it leads the scheduler, if one does."""
        for inst in self.instances:
            if inst.proc is None:
                continue
            try:
                async with self.session.get(f"http://127.0.0.1:{inst.port}/readyz") as resp:
                    body = await resp.json()
            except (OSError, ClientError, ValueError):
                continue
            if body.get("scheduler", {}).get("leading"):
                return inst
        return None

    # -- what the logs say -----------------------------------------------------------
    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for inst in self.instances:
            for raw in inst.log.read_text().splitlines():
                try:
                    line = json.loads(raw)
                except ValueError:
                    continue
                line["slot"] = inst.slot
                lines.append(line)
        return lines

    def leaders_seen(self) -> list[str]:
        """Every holder that logged itself leader, in the order they first did."""
        seen: list[str] = []
        for line in sorted(self.log_lines(), key=lambda x: x.get("timestamp", "")):
            if line.get("event") == "scheduler_leader" and line.get("leading") and line["this_instance"] not in seen:
                seen.append(line["this_instance"])
        return seen

    def job_runs(self) -> dict[str, list[tuple[datetime, str]]]:
        runs: dict[str, list[tuple[datetime, str]]] = defaultdict(list)
        for line in self.log_lines():
            if line.get("event") == "scheduled_job_started":
                runs[line["job"]].append(
                    (datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00")), line["holder"])
                )
        return {job: sorted(times) for job, times in runs.items()}


async def sync_report(cluster: Cluster, pd_born: list[str], sn_born: list[str]) -> dict[str, Any]:
    """How each incident stands in both systems: the counts a verdict needs."""
    pd = await cluster.pd_incidents()
    sn = await cluster.sn_incidents()
    sn_by_corr: dict[str, int] = defaultdict(int)
    for row in sn:
        if row.get("correlation_id"):
            sn_by_corr[row["correlation_id"]] += 1
    pd_by_key: dict[str, int] = defaultdict(int)
    for inc in pd:
        if inc.get("incident_key"):
            pd_by_key[inc["incident_key"]] += 1
    return {
        "pd_born_in_sn": [sn_by_corr.get(p, 0) for p in pd_born],
        "sn_born_in_pd": [pd_by_key.get(s, 0) for s in sn_born],
    }


def env_without_notify() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}


#: Two runs of one job closer than this share of its interval ran "twice in one interval"
#: (the scheduler skips below 0.9; the rest is the slack of timestamps in the logs).
SAME_INTERVAL_SLACK = 0.8


async def run_stream(
    cluster: Cluster, per_side: int, kills: int, rate: float = 20.0
) -> tuple[list[str], list[str], list[int]]:
    """Open ``per_side`` incidents in each system at ``rate`` a second in all, killing the
    current scheduler leader (SIGKILL) ``kills`` times along the way and restarting it a
    moment later. Returns the PagerDuty-born ids, the ServiceNow-born sys_ids and the
    slots killed."""
    pd_born: list[str] = []
    sn_born: list[str] = []
    killed: list[int] = []
    total = per_side * 2
    kill_at = {int(total * (k + 1) / (kills + 1)) for k in range(kills)}
    for n in range(total):
        if n in kill_at:
            leader = await _wait_for_leader(cluster)
            cluster.kill(leader)
            killed.append(leader.slot)
            # Restarted after the leadership had time to move, as a supervisor would.
            asyncio.get_running_loop().call_later(
                cluster.leader_lease_seconds * 2, lambda i=leader: asyncio.ensure_future(cluster.restart(i))
            )
        if n % 2:
            sn_born.append(await cluster.open_sn(f"HA test incident {n}"))
        else:
            pd_born.append(await cluster.trigger_pd(f"HA test incident {n}"))
        await asyncio.sleep(1 / rate)
    # Every instance up again before the verdict.
    deadline = time.monotonic() + 30
    while any(inst.proc is None for inst in cluster.instances) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    return pd_born, sn_born, killed


async def _wait_for_leader(cluster: Cluster, timeout: float = 20) -> Instance:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        leader = await cluster.leader()
        if leader is not None:
            return leader
        await asyncio.sleep(0.1)
    raise RuntimeError(f"no instance led the scheduler within {timeout:g} s")


async def verdict(cluster: Cluster, pd_born: list[str], sn_born: list[str], timeout: float) -> dict[str, Any]:
    """The sync report once every incident is synced (or at ``timeout``), then a few
    seconds more: a duplicate made late would show then."""
    deadline = time.monotonic() + timeout
    report = await sync_report(cluster, pd_born, sn_born)
    while time.monotonic() < deadline:
        if all(n >= 1 for n in report["pd_born_in_sn"] + report["sn_born_in_pd"]):
            break
        await asyncio.sleep(0.5)
        report = await sync_report(cluster, pd_born, sn_born)
    await asyncio.sleep(cluster.lease_seconds + 1)
    return await sync_report(cluster, pd_born, sn_born)
