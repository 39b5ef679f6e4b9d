"""Provisioning benchmark: 5,000 users, 500 groups and 2,000 CIs with dependencies into
the PagerDuty sandbox, whose rate limit is set to a known budget.

The sandbox runs in its own process (seeded with the generated organisation); the
provisioning plugin runs here, through the outbound pipeline and its rate limiter, as
``dutybridge provision`` would. Printed: PagerDuty requests per minute achieved over the
budget (target >= 0.9), 429s received (target <= 1), wall time per phase and in all.
Not a test (timings depend on the machine); run:

    .venv/bin/python bench/provision.py [--budget 12000] [--scale 1.0]

``--scale 0.1`` provisions a tenth of each set, for a quick look.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import tomli_w

from dutybridge import hookimpl
from dutybridge.app import command_context, load
from dutybridge.logging import configure as configure_logging
from dutybridge_plugins.provisioning.actions import run_command
from dutybridge_plugins.provisioning.run import Run

API_KEY = "bench-pd-key"
SN_USER, SN_PASSWORD = "pagerduty.integration", "bench-sn-password"


def sys_id(*parts: object) -> str:
    return hashlib.md5(":".join(map(str, parts)).encode()).hexdigest()


def organisation(users: int, groups: int, cis: int, budget: int) -> dict:
    """The seed: people (each with a mobile number), groups of ten with a manager, and CI
    trees (one business service over nine technical CIs, three levels deep)."""
    sn_users = [
        {
            "sys_id": sys_id("integration"),
            "user_name": SN_USER,
            "name": "PagerDuty Integration",
            "email": "integration@bench.example",
            "active": True,
            "roles": ["admin"],
            "password": SN_PASSWORD,
        }
    ]
    for i in range(users):
        sn_users.append(
            {
                "sys_id": sys_id("user", i),
                "user_name": f"user{i}",
                "name": f"User {i}",
                "first_name": "User",
                "last_name": str(i),
                "email": f"user{i}@bench.example",
                "mobile_phone": f"+1 415 555 {i % 10000:04d}",
                "active": True,
                "roles": ["itil"],
                "password": "password",
            }
        )
    sn_groups = []
    for g in range(groups):
        members = [sys_id("user", (g * 10 + k) % max(users, 1)) for k in range(10)] if users else []
        sn_groups.append(
            {
                "sys_id": sys_id("group", g),
                "name": f"Team {g:04d}",
                "active": True,
                "manager": members[0] if members else "",
                "members": members,
            }
        )
    sn_cis, rels = [], []
    rel_type = sys_id("rel", "depends")
    for c in range(cis):
        root, pos = divmod(c, 10)
        cls, cat = ("cmdb_ci_service", "Business Service") if pos == 0 else ("cmdb_ci_appl", "Software")
        sn_cis.append(
            {
                "sys_id": sys_id("ci", c),
                "sys_class_name": cls,
                "name": f"ci-{c:05d}",
                "category": cat,
                "assignment_group": sys_id("group", c % max(groups, 1)) if groups else "",
            }
        )
        if pos:
            parent = root * 10 + (0 if pos <= 3 else (pos - 1) // 3)  # 1-3 under the root, 4-9 under 1-2
            rels.append({"parent": sys_id("ci", parent), "child": sys_id("ci", c), "type": rel_type})
    return {
        "pagerduty": {
            "api_keys": [{"key": API_KEY, "read_only": False}],
            "rate_limit_per_minute": budget,
            "abilities": ["teams"],
            "users": [
                {
                    "id": "PBENCH1",
                    "name": "Integration",
                    "email": "integration@bench.example",
                    "role": "admin",
                    "time_zone": "UTC",
                }
            ],
        },
        "servicenow": {
            "instance_name": "bench",
            "rate_limit_per_hour": 0,
            "users": sn_users,
            "groups": sn_groups,
            "cis": sn_cis,
            "rel_types": [{"sys_id": rel_type, "name": "Depends on::Used by"}],
            "relationships": rels,
        },
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Counter:
    """Counts the PagerDuty responses the outbound pipeline received (every attempt)."""

    def __init__(self) -> None:
        self.requests = 0
        self.rate_limited = 0
        self.first: float | None = None
        self.last = 0.0

    @hookimpl
    def outbound_response(self, request, response, ctx) -> None:
        if request.service != "pagerduty":
            return
        now = time.monotonic()
        self.first = self.first if self.first is not None else now
        self.last = now
        self.requests += 1
        if response.status == 429:
            self.rate_limited += 1


async def wait_up(url: str) -> None:
    async with aiohttp.ClientSession() as s:
        for _ in range(300):
            try:
                async with s.get(url) as r:
                    if r.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"the sandbox did not come up at {url}")


async def bench(budget: int, scale: float, concurrency: int, client_budget: int) -> None:
    users, groups, cis = int(5000 * scale), int(500 * scale), int(2000 * scale) // 10 * 10
    with tempfile.TemporaryDirectory(prefix="dutybridge-bench-") as tmp:
        folder = Path(tmp)
        (folder / "seed.json").write_text(json.dumps(organisation(users, groups, cis, budget)))
        pd_port, sn_port, port = free_port(), free_port(), free_port()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dutybridge_sandbox",
                "--seed",
                str(folder / "seed.json"),
                "--pagerduty-port",
                str(pd_port),
                "--servicenow-port",
                str(sn_port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            await wait_up(f"http://127.0.0.1:{pd_port}/abilities")
            doc = {
                "daemon": {
                    "listen_port": port,
                    "public_url": f"http://127.0.0.1:{port}",
                    "log_level": "error",
                    "store_url": f"sqlite:///{folder / 'bench.db'}",
                },
                "pagerduty": {
                    "api_url": f"http://127.0.0.1:{pd_port}",
                    "api_key": API_KEY,
                    "default_user_id": "PBENCH1",
                    "rate_limit_per_minute": client_budget or budget,
                },
                "servicenow": {
                    "instance_url": f"http://127.0.0.1:{sn_port}",
                    "username": SN_USER,
                    "password": SN_PASSWORD,
                },
                "plugins": {
                    "enabled": ["provisioning"],
                    "provisioning": {"concurrency": concurrency, "mapping_mode": "cis_and_assignment_groups"},
                },
            }
            (folder / "config.toml").write_text(tomli_w.dumps(doc))
            counter = Counter()
            config, pm = load(folder / "config.toml", extra_plugins=[counter])
            configure_logging("error", "console", stream=sys.stderr)
            print(
                f"budget {budget} PagerDuty requests/min (client rate_limit_per_minute "
                f"{client_budget or budget}); {users} users, {groups} groups, {cis} CIs; concurrency {concurrency}"
            )
            started = time.monotonic()
            async with command_context(config, pm) as ctx:
                roots = [f"ci-{c:05d}" for c in range(0, cis, 10)]
                phases = [
                    ("users", {"all": True}),
                    ("groups", {"all": True}),
                    ("cis", {"refs": roots, "as_": "business", "with_dependencies": True}),
                ]
                for what, extra in phases:
                    args = {
                        "refs": [],
                        "all": False,
                        "query": "",
                        "group": "",
                        "as_user": "",
                        "custom": False,
                        "plan": False,
                        "as_": "technical",
                        "with_dependencies": False,
                        **extra,
                    }
                    run = Run(
                        ctx, ctx.plugin_config("provisioning"), out=io.StringIO(), err=io.StringIO(), interactive=False
                    )
                    t0, n0 = time.monotonic(), counter.requests
                    code = await run_command(run, what, args, confirm=lambda n: True)
                    counts = dict(run.counts())
                    print(
                        f"  {what:6} {time.monotonic() - t0:7.1f} s  {counter.requests - n0:6} requests  "
                        f"exit {code}  {counts}"
                    )
            wall = time.monotonic() - started
            span = (counter.last - counter.first) if counter.first is not None else 0.0
            per_minute = counter.requests / span * 60 if span else 0.0
            print(f"wall time {wall:.1f} s; {counter.requests} PagerDuty requests in {span:.1f} s")
            print(f"requests/min {per_minute:.0f} over budget {budget}: {per_minute / budget:.3f} (target >= 0.9)")
            print(f"429s received: {counter.rate_limited} (target <= 1)")
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=int, default=12000, help="PagerDuty requests per minute (sandbox and client)")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of 5,000 users / 500 groups / 2,000 CIs")
    parser.add_argument("--concurrency", type=int, default=64, help="objects provisioned at once")
    parser.add_argument(
        "--client-budget",
        type=int,
        default=0,
        help="[pagerduty] rate_limit_per_minute of the client (default: the budget)",
    )
    args = parser.parse_args()
    asyncio.run(bench(args.budget, args.scale, args.concurrency, args.client_budget))


if __name__ == "__main__":
    main()
