"""Three ``dutybridge run`` processes on one PostgreSQL, killed with SIGKILL one by one and
restarted while incidents stream in both ways: each synced once, none lost, one scheduler."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from dutybridge.store.postgres import PostgresStore
from tests.support import postgres
from tests.support.ha_cluster import SAME_INTERVAL_SLACK, Cluster, run_stream, verdict

pytestmark = pytest.mark.slow


@pytest.fixture
async def pg_url():
    base, schema = postgres.server_url(), postgres.new_schema()
    try:
        yield postgres.with_schema(base, schema)
    finally:
        await postgres.drop_schema(base, schema)


@pytest.mark.timeout(180)
async def test_three_instances_lose_nothing_and_sync_each_incident_once_through_kills(tmp_path, pg_url):
    cluster = Cluster(tmp_path, pg_url)
    try:
        # Inside the try: a start that fails half-way must not leave its instances
        # running (into the next tests, and on a schema the fixture drops).
        await cluster.start()
        # ~27 s of stream: each leader lives past a takeover and a poll interval.
        pd_born, sn_born, killed = await run_stream(cluster, per_side=40, kills=3, rate=3.0)
        report = await verdict(cluster, pd_born, sn_born, timeout=60)
        async with PostgresStore(pg_url) as store:
            # Echoes and poll events go on arriving; the killed instances' claims come
            # back at lease expiry: the inbox drains (nothing stuck), within a bound.
            deadline = time.monotonic() + 30
            while True:
                counts = await store.counts()
                if counts["pending"] + counts["claimed"] == 0 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            links = await store.list_links("incident")
    finally:
        await cluster.stop()
    assert report["pd_born_in_sn"] == [1] * len(pd_born), "each PagerDuty incident once in ServiceNow"
    assert report["sn_born_in_pd"] == [1] * len(sn_born), "each ServiceNow incident once in PagerDuty"
    assert counts["dead"] == 0 and counts["pending"] == 0 and counts["claimed"] == 0, counts
    assert len(links) == len(pd_born) + len(sn_born)
    # The leader of the moment was killed each time (a restarted one may lead again),
    # and each killed instance came back.
    assert len(killed) == 3 and all(inst.starts == 1 + killed.count(inst.slot) for inst in cluster.instances)
    leaders = cluster.leaders_seen()
    assert len(leaders) >= 3, leaders  # each killed leader was followed by another
    runs_by_job = cluster.job_runs()
    poll = [runs for job, runs in runs_by_job.items() if "poll" in job]
    assert poll and len(poll[0]) >= 3 and len({holder for _, holder in poll[0]}) >= 2, runs_by_job
    for job, runs in runs_by_job.items():
        gaps = [(b[0] - a[0]).total_seconds() for a, b in itertools.pairwise(runs)]
        assert all(g >= cluster.poll_seconds * SAME_INTERVAL_SLACK for g in gaps), (job, gaps)
