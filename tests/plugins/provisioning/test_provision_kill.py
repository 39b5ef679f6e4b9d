"""A bulk run killed (SIGKILL) half way, then run again: everything is provisioned once,
every object recorded, every webhook's secret stored."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dutybridge_sandbox.faults import FaultInjector
from tests.plugins.incident_sync.world import ALICE_SN
from tests.plugins.provisioning.world import outcomes

pytestmark = pytest.mark.slow

GROUPS = 12
CLI = "import sys; from dutybridge.cli import main; sys.exit(main(sys.argv[1:]))"


async def test_killed_half_way_then_run_again(make_world):
    world = await make_world(concurrency=2)
    for i in range(GROUPS):
        world.sn.insert("sys_user_group", {"name": f"Ops {i:02d}", "manager": ALICE_SN})
    # Slow enough that the kill lands between the first and the last group.
    world.pd.faults = FaultInjector.parse("latency_ms=60")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            CLI,
            "provision",
            "groups",
            "--query",
            "nameSTARTSWITHOps",
            "--config",
            str(world.config_path),
            "-q",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await world.wait_for(lambda: _linked(world, 2), timeout=60, what="some groups provisioned")
    finally:
        proc.kill()
        proc.wait()
    done_before = len(await _ops_links(world))
    assert 2 <= done_before < GROUPS

    world.pd.faults = FaultInjector()
    code, lines, err = await world.cli("provision", "groups", "--query", "nameSTARTSWITHOps")
    assert code == 0, err
    statuses = [o["status"] for o in outcomes(lines, "group")]
    assert statuses.count("skipped") >= done_before and len(statuses) == GROUPS
    names = [f"Ops {i:02d}" for i in range(GROUPS)]
    assert sorted(e["name"] for e in world.pd.escalation_policies.values() if e["name"].startswith("Ops")) == names
    services = [s for s in world.pd.services.values() if s["name"].startswith("Ops")]
    assert sorted(s["name"] for s in services) == names
    secrets = {lk.state["service"]: lk for lk in await world.store.list_links("pd_webhook_secret")}
    for service in services:
        [sub] = [s for s in world.pd.webhook_subscriptions.values() if s["filter"].get("id") == service["id"]]
        assert secrets[service["id"]].pd_id == sub["id"]
        assert secrets[service["id"]].state["secret"] == world.pd.subscription_secret(sub["id"])
    assert len(await _ops_links(world)) == GROUPS


async def _ops_links(world):
    return [lk for lk in await world.store.list_links("group") if lk.state.get("name", "").startswith("Ops")]


async def _linked(world, n):
    return len(await _ops_links(world)) >= n
