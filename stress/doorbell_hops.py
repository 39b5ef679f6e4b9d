"""Hop latency of ServiceNow changes whose doorbell carries no sys_mod_count (an older
or hand-written business rule), made in the same second as the daemon's own write.

    .venv/bin/python stress/doorbell_hops.py [--reps 10] [--mod-count]

Per rep: a ServiceNow incident is opened and synced; PagerDuty acknowledges it, the
daemon writes that to ServiceNow, and right after that write a person adds a work note
(hop 1: until the PagerDuty note exists), then resolves it (hop 2: until PagerDuty is
resolved). Prints each hop's median and maximum in ms. Not a test: it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: ``tests`` is imported

from tests.plugins.incident_sync.world import DB_GROUP, start_world, stop_world


async def until(cond, timeout: float = 10.0) -> float:
    """Seconds until ``cond()`` holds (raises after ``timeout``)."""
    started = time.monotonic()
    while not cond():
        if time.monotonic() - started > timeout:
            raise TimeoutError("hop not done within the timeout")
        await asyncio.sleep(0.002)
    return time.monotonic() - started


async def measure(reps: int, mod_count: bool) -> dict[str, list[float]]:
    hops: dict[str, list[float]] = {"work note": [], "resolve": []}
    with tempfile.TemporaryDirectory() as tmp:
        world = await start_world(Path(tmp), sn_clock="real", doorbell_mod_count=mod_count, recheck_seconds=2.0)
        try:
            for n in range(reps):
                rec = world.sn.insert(
                    "incident",
                    {"short_description": f"hop {n}", "assignment_group": DB_GROUP, "impact": "1", "urgency": "1"},
                    user="alice.nguyen",
                )
                await until(lambda rec=rec: world.pd_for(rec["sys_id"]))
                await world.settle()
                [inc] = world.pd_for(rec["sys_id"])
                world.pd.acknowledge(inc["id"], "PBOBSM1")
                await until(
                    lambda rec=rec: world.sn.get("incident", rec["sys_id"])["state"] == "2"
                )  # the daemon's write
                world.sn.update("incident", rec["sys_id"], {"work_notes": f"note {n}"}, user="alice.nguyen")
                hops["work note"].append(await until(lambda inc=inc: world.pd_notes(inc["id"])))
                await world.settle()
                world.sn.update("incident", rec["sys_id"], {"state": "6", "close_notes": "done"}, user="alice.nguyen")
                hops["resolve"].append(
                    await until(lambda inc=inc: world.pd.incidents[inc["id"]]["status"] == "resolved")
                )
                await world.settle()
        finally:
            await stop_world(world)
    return hops


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=10, help="incidents to measure (default 10)")
    parser.add_argument("--mod-count", action="store_true", help="the doorbell sends sys_mod_count (the shipped rule)")
    args = parser.parse_args(argv)
    if args.reps < 1:
        parser.error("--reps must be at least 1")
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    hops = asyncio.run(measure(args.reps, args.mod_count))
    for name, seconds in hops.items():
        ms = sorted(s * 1000 for s in seconds)
        print(
            f"{name} hop: median {statistics.median(ms):.0f} ms, max {ms[-1]:.0f} ms ({len(ms)} reps, "
            f"sys_mod_count {'sent' if args.mod_count else 'not sent'})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
