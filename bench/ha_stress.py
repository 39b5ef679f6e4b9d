"""HA stress: three ``dutybridge run`` on one PostgreSQL, a stream of incidents both ways,
the scheduler's leader killed (SIGKILL) and restarted along the way. Not a test; run:

    .venv/bin/python bench/ha_stress.py [--incidents 1000] [--rate 20] [--kills 3]
        [--store postgresql://postgres@127.0.0.1:5432/test]

It prints how many incidents were synced once, twice or never in each system, the
inbox's final counts, the leaders seen, the poll job's runs and the closest two, and
the wall time from the last incident opened to the last one synced.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dutybridge.store.postgres import PostgresStore
from tests.support import postgres
from tests.support.ha_cluster import Cluster, run_stream, verdict


async def main(args: argparse.Namespace) -> int:
    schema = f"ha_stress_{uuid.uuid4().hex[:8]}"
    url = postgres.with_schema(args.store, schema)
    cluster = Cluster(Path(tempfile.mkdtemp(prefix="dutybridge-ha-")), url)
    started = time.monotonic()
    try:
        await cluster.start()
        pd_born, sn_born, killed = await run_stream(
            cluster, per_side=args.incidents // 2, kills=args.kills, rate=args.rate
        )
        opened = time.monotonic()
        report = await verdict(cluster, pd_born, sn_born, timeout=300)
        synced = time.monotonic() - opened
        async with PostgresStore(url) as store:
            deadline = time.monotonic() + 60
            while (counts := await store.counts())["pending"] + counts["claimed"] and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
            links = len(await store.list_links("incident"))
    finally:
        await cluster.stop()
        await postgres.drop_schema(args.store, schema)
    print(
        f"{len(pd_born)} PagerDuty-born, {len(sn_born)} ServiceNow-born incidents at {args.rate:g}/s; "
        f"killed slots {killed}; wall {time.monotonic() - started:.0f} s"
    )
    print(f"  PagerDuty-born, copies in ServiceNow: {dict(Counter(report['pd_born_in_sn']))}")
    print(f"  ServiceNow-born, copies in PagerDuty: {dict(Counter(report['sn_born_in_pd']))}")
    print(f"  last incident opened -> all synced (+ lease wait for late duplicates): {synced:.1f} s")
    print(f"  inbox at the end: {counts}; incident links: {links}")
    leaders = cluster.leaders_seen()
    print(f"  leaders seen: {len(leaders)}")
    for job, runs in cluster.job_runs().items():
        gaps = [(b[0] - a[0]).total_seconds() for a, b in itertools.pairwise(runs)]
        print(
            f"  job {job}: {len(runs)} runs by {len({h for _, h in runs})} instances, "
            f"closest two {min(gaps):.2f} s apart (interval {cluster.poll_seconds:g} s)"
            if gaps
            else ""
        )
    ok = (
        set(report["pd_born_in_sn"]) == {1}
        and set(report["sn_born_in_pd"]) == {1}
        and counts["dead"] == 0
        and counts["pending"] + counts["claimed"] == 0
    )
    print("verdict:", "every incident synced exactly once, nothing lost" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--incidents", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=20.0, help="incidents opened per second, both systems together")
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--store", default="postgresql://postgres@127.0.0.1:5432/test")
    sys.exit(asyncio.run(main(parser.parse_args())))
