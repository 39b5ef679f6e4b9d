"""How many add_event + claim + complete cycles per second the SQLite store does here.

    .venv/bin/python bench/store_throughput.py [--cycles N] [--resources R] [--path FILE]

Each cycle is three committed (fsynced) transactions, as in the daemon: the
receiver's add, the worker's claim, the worker's complete. A second figure batches
claims (limit 32) the way a busy worker does.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from dutybridge.events import Event
from dutybridge.store.sqlite import SQLiteStore


async def one_by_one(store: SQLiteStore, cycles: int, resources: int, prefix: str) -> float:
    start = time.perf_counter()
    for i in range(cycles):
        await store.add_event(
            Event(
                source="bench",
                type="incident.triggered",
                event_id=f"{prefix}{i}",
                resource=f"r:{i % resources}",
                payload={"i": i, "title": "x" * 200},
            )
        )
        [claimed] = await store.claim("bench", 1, 60)
        await store.complete(claimed.id)
    return cycles / (time.perf_counter() - start)


async def batched(store: SQLiteStore, cycles: int, resources: int, prefix: str) -> float:
    start = time.perf_counter()
    for i in range(cycles):
        await store.add_event(
            Event(
                source="bench",
                type="incident.triggered",
                event_id=f"{prefix}{i}",
                resource=f"r:{i % resources}",
                payload={"i": i, "title": "x" * 200},
            )
        )
    done = 0
    while done < cycles:
        for ev in await store.claim("bench", 32, 60):
            await store.complete(ev.id)
            done += 1
    return cycles / (time.perf_counter() - start)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=2000)
    parser.add_argument("--resources", type=int, default=50)
    parser.add_argument("--path", type=Path, help="database file (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.path or Path(tmp) / "bench.db"
        async with SQLiteStore(path) as store:
            rate = await one_by_one(store, args.cycles, args.resources, "a")
            print(
                f"one at a time: {rate:,.0f} add+claim+complete cycles/s "
                f"({args.cycles} cycles, {args.resources} resources, synchronous=FULL, {path})"
            )
            rate = await batched(store, args.cycles, args.resources, "b")
            print(f"claims of 32:  {rate:,.0f} events/s (add, then claim+complete)")


if __name__ == "__main__":
    asyncio.run(main())
