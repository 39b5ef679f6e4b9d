"""``bench/inbox.py --store postgresql://...``: claim latency and drain rate of the PostgreSQL
store at a backlog, with one instance and with three sharing the inbox.

Each case gets a schema of its own (dropped after): ``size`` pending events (one resource
each, or all of one hot resource) behind an eighth as many handled ones, inserted in bulk
with the heads computed once as migration 3 computes them, then ANALYZE. Claim latency:
claim up to 8, complete them, repeat (p50/p99). Drain: ``instances`` stores, each with a
worker (concurrency 8) and a no-op plugin, in this one process (they share its CPU and
event loop: on two cores the database's side of the contention is what three separate
processes would add), until ``--drain`` events are handled: events per second.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import asyncpg

from dutybridge import hookimpl
from dutybridge.context import Ctx
from dutybridge.plugins import make_test_pm
from dutybridge.store.postgres import PostgresStore
from dutybridge.store.postgres_url import split_url
from dutybridge.worker import Worker

HOT = "pagerduty:incident:PHOTHOT"
PAYLOAD = '{"event":{"data":{"id":"P1","title":"' + "x" * 180 + '"}}}'


def with_schema(url: str, schema: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}schema={schema}"


async def build(url: str, size: int, shape: str) -> None:
    async with PostgresStore(url) as store, store.connection() as conn, conn.transaction():
        history = size // 8
        resource = f"'{HOT}'" if shape == "hot" else "'pagerduty:incident:P' || g"
        # The trigger keeps heads row by row; for a bulk load the heads are computed
        # once afterwards, as migration 3 computes them for an existing inbox.
        await conn.execute("ALTER TABLE events DISABLE TRIGGER inbox_heads_follow")
        await conn.execute(
            f"""
            INSERT INTO events (source, event_id, type, resource, payload, status, received_at, updated_at)
            SELECT 'pagerduty', 'ev-' || g, 'incident.triggered', {resource}, $1::jsonb,
                   CASE WHEN g < $2 THEN 'done' ELSE 'pending' END, now(), now()
            FROM generate_series(0, $3 - 1) AS g""",
            PAYLOAD,
            history,
            history + size,
        )
        await conn.execute("""
            INSERT INTO inbox_heads (resource, event_id, due_at)
            SELECT DISTINCT ON (resource) resource, id, NULL FROM events
            WHERE status = 'pending' ORDER BY resource, id""")
        await conn.execute("ALTER TABLE events ENABLE TRIGGER inbox_heads_follow")
    async with PostgresStore(url) as store, store.connection() as conn:
        await conn.execute("ANALYZE")


class NoOp:
    def __init__(self, target: int) -> None:
        self.target, self.count, self.reached = target, 0, asyncio.Event()

    @hookimpl
    async def handle_event(self, event: Any, ctx: Any) -> bool:
        self.count += 1
        if self.count >= self.target:
            self.reached.set()
        return True


async def claim_latency(url: str, claims: int, budget: float, pct) -> tuple[float, float, int]:
    samples: list[float] = []
    async with PostgresStore(url) as store:
        stop_at = time.perf_counter() + budget
        while len(samples) < claims and time.perf_counter() < stop_at:
            start = time.perf_counter()
            events = await store.claim("bench", 8, 300)
            samples.append((time.perf_counter() - start) * 1000)
            if not events:
                break
            await store.complete_and_claim([(e.id, "done") for e in events], "bench", 0, 300)
    return pct(samples, 50), pct(samples, 99), len(samples)


async def drain_rate(url: str, instances: int, events: int, budget: float) -> tuple[float, int]:
    plugin = NoOp(events)
    stores = [PostgresStore(url) for _ in range(instances)]
    workers = []
    for i, store in enumerate(stores):
        await store.open()
        pm = make_test_pm(plugin) if i == 0 else make_test_pm(Relay(plugin))
        workers.append(
            Worker(
                store,
                pm,
                Ctx(config=None, pm=pm, store=store),
                concurrency=8,
                max_attempts=5,
                retry_base=1.0,
                retry_max=60.0,
                lease_seconds=300.0,
                owner=f"bench-{i}",
            )
        )
    start = time.perf_counter()
    for worker in workers:
        await worker.start()
    try:
        async with asyncio.timeout(budget):
            await plugin.reached.wait()
    except TimeoutError:
        pass
    elapsed = time.perf_counter() - start
    handled = plugin.count
    for worker in workers:
        await worker.stop(timeout=5)
    for store in stores:
        await store.close()
    return handled / elapsed, handled


class Relay:
    """The same counting plugin for another plugin manager (one object registers once)."""

    def __init__(self, target: NoOp) -> None:
        self.target = target

    @hookimpl
    async def handle_event(self, event: Any, ctx: Any) -> bool:
        return await self.target.handle_event(event, ctx)


async def drop(url: str, schema: str) -> None:
    dsn, _ = split_url(url)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def run_case(base: str, size: int, shape: str, args: Any, pct) -> dict:
    row: dict = {"size": size, "shape": shape}
    for key, instances in (("claim", 0), ("drain1", 1), ("drain3", 3)):
        schema = f"bench_{uuid.uuid4().hex[:8]}"
        url = with_schema(base, schema)
        try:
            t0 = time.perf_counter()
            await build(url, size, shape)
            row.setdefault("build_s", time.perf_counter() - t0)
            if instances == 0:
                row[key] = await claim_latency(url, args.claims, args.case_seconds, pct)
            else:
                row[key] = await drain_rate(url, instances, min(args.drain, size), args.case_seconds)
        finally:
            await drop(base, schema)
    return row


def table(rows: list[dict], claims: int) -> str:
    lines = [
        "| backlog | resources | claim p50 ms | claim p99 ms | drain, 1 instance events/s (events) "
        "| drain, 3 instances events/s (events) |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        p50, p99, n = r["claim"]
        note = "" if n >= claims else f" (n={n})"
        lines.append(
            f"| {r['size']:,} | {'one hot' if r['shape'] == 'hot' else 'distinct'} | {p50:.2f}{note} "
            f"| {p99:.2f} | {r['drain1'][0]:,.0f} ({r['drain1'][1]:,}) | {r['drain3'][0]:,.0f} ({r['drain3'][1]:,}) |"
        )
    return "\n".join(lines)
