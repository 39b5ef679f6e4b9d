"""Inbox benchmark: claim latency and worker drain rate at backlogs of 1k to 1M events.

    .venv/bin/python bench/inbox.py [--sizes 1k,10k,100k,1m] [--shapes distinct,hot]
                                    [--claims 300] [--drain 20000] [--results bench/RESULTS.md]

Not a test. Each case builds a database of an older schema (version 2) by bulk INSERT:
``size`` pending events (one resource each, or all of one hot resource) behind an
eighth as many handled ones (retention keeps them); the current store migrates it when
it opens it. Three runs, each on a database built anew: claim latency (claim up to 8,
complete them, repeat: p50/p99 of the claim) on the freshly opened store; the same
after a restart (close, so that ``PRAGMA optimize`` runs, then ``ANALYZE``, reopen),
when the planner has statistics; and after such a restart, a worker with a no-op
plugin draining up to ``--drain`` events (logging JSON to /dev/null as the daemon
would): events per second. Each run stops after ``--case-seconds`` and says how many
samples it took when it took fewer than asked.

``--ingest`` measures instead how long ``add_event`` takes while a worker drains a
backlog: ``--ingest-rate`` events a second, or ``--producers`` callers back to back;
``--scrape`` adds a ``counts()`` every so many seconds, as a Prometheus scrape does.

``--store postgresql://USER@HOST/DB`` measures the PostgreSQL store instead (see
bench/inbox_postgres.py): claim latency, and drain rate with one and three instances.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

from dutybridge import hookimpl
from dutybridge import logging as dlogging
from dutybridge.context import Ctx
from dutybridge.events import Event
from dutybridge.plugins import make_test_pm
from dutybridge.store.migrations import SQLITE_MIGRATIONS
from dutybridge.store.sqlite import SQLiteStore, to_text
from dutybridge.worker import Worker

sys.path.insert(0, str(Path(__file__).resolve().parent))
import inbox_postgres

HOT = "pagerduty:incident:PHOTHOT"
PAYLOAD = '{"event":{"data":{"id":"P1","title":"' + "x" * 180 + '"}}}'


def parse_size(text: str) -> int:
    text = text.strip().lower()
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    number = text[:-1] if scale > 1 else text
    try:
        value = int(float(number) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 1k, 10k, 1m)") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"a size must be positive: {text!r}")
    return value


def build(path: Path, size: int, shape: str) -> None:
    """An old-schema database with ``size`` pending events behind handled history."""
    asyncio.run(_create_old_schema(path))
    now = to_text(datetime.now(UTC))
    history = size // 8

    def rows():
        for i in range(history + size):
            resource = HOT if shape == "hot" else f"pagerduty:incident:P{i}"
            status = "done" if i < history else "pending"
            yield ("pagerduty", f"ev-{i}", "incident.triggered", resource, PAYLOAD, status, now, now)

    with closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA synchronous = OFF")
        with db:
            db.executemany(
                "INSERT INTO events (source, event_id, type, resource, payload, status, received_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows(),
            )


async def _create_old_schema(path: Path) -> None:
    async with SQLiteStore(path, migrations=SQLITE_MIGRATIONS[:2]):
        pass


def pct(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


async def claim_latency(store: SQLiteStore, claims: int, budget: float) -> tuple[float, float, int]:
    """p50 and p99 of a claim in ms, and the number of samples taken.

    Each claim asks for up to 8 events, as the default worker (concurrency 8) does, and
    its events are completed before the next: a hot resource yields one per claim.
    """
    samples: list[float] = []
    stop_at = time.perf_counter() + budget
    while len(samples) < claims and time.perf_counter() < stop_at:
        start = time.perf_counter()
        events = await store.claim("bench", 8, 300)
        samples.append((time.perf_counter() - start) * 1000)
        if not events:
            break
        for ev in events:
            await store.complete(ev.id)
    return pct(samples, 50), pct(samples, 99), len(samples)


class NoOp:
    def __init__(self, target: int) -> None:
        self.target = target
        self.count = 0
        self.reached = asyncio.Event()

    @hookimpl
    async def handle_event(self, event, ctx):
        self.count += 1
        if self.count >= self.target:
            self.reached.set()
        return True


async def drain_rate(store: SQLiteStore, events: int, budget: float) -> tuple[float, int]:
    """Events per second a worker (concurrency 8, the default) handles from the backlog."""
    if events <= 0:
        return float("nan"), 0
    plugin = NoOp(events)
    pm = make_test_pm(plugin)
    worker = Worker(
        store,
        pm,
        Ctx(config=None, pm=pm, store=store),
        concurrency=8,
        max_attempts=5,
        retry_base=1.0,
        retry_max=60.0,
        lease_seconds=300.0,
    )
    start = time.perf_counter()
    await worker.start()
    try:
        async with asyncio.timeout(budget):
            await plugin.reached.wait()
    except TimeoutError:
        pass
    elapsed = time.perf_counter() - start
    handled = plugin.count
    await worker.stop(timeout=5)
    return handled / elapsed, handled


def restart_with_statistics(path: Path) -> int:
    """Open and close (``PRAGMA optimize``), then ``ANALYZE``: the rows of sqlite_stat1."""
    asyncio.run(_open_close(path))
    with closing(sqlite3.connect(path)) as db:
        db.execute("ANALYZE")
        return db.execute("SELECT COUNT(*) FROM sqlite_stat1").fetchone()[0]


async def _open_close(path: Path) -> None:
    async with SQLiteStore(path):
        pass


def remove(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)


async def _fresh(path: Path, args: argparse.Namespace) -> tuple[float, tuple]:
    start = time.perf_counter()
    async with SQLiteStore(path) as store:  # migrates the old schema
        opened = time.perf_counter() - start
        return opened, await claim_latency(store, args.claims, args.case_seconds)


async def _restarted(path: Path, args: argparse.Namespace, drain: bool) -> tuple:
    async with SQLiteStore(path) as store:
        if not drain:
            return await claim_latency(store, args.claims, args.case_seconds)
        pending = (await store.counts())["pending"]
        return await drain_rate(store, min(args.drain, pending), args.case_seconds)


def run_case(path: Path, size: int, shape: str, args: argparse.Namespace) -> dict:
    """Three runs on a new database each: so that one's claims do not shrink the next's backlog."""
    row: dict = {"size": size, "shape": shape}
    t0 = time.perf_counter()
    build(path, size, shape)
    row["build_s"] = time.perf_counter() - t0
    row["open_s"], row["fresh"] = asyncio.run(_fresh(path, args))
    remove(path)
    build(path, size, shape)
    row["stat1"] = restart_with_statistics(path)
    row["restart"] = asyncio.run(_restarted(path, args, drain=False))
    remove(path)
    build(path, size, shape)
    restart_with_statistics(path)
    row["drain"] = asyncio.run(_restarted(path, args, drain=True))
    remove(path)
    return row


async def _ingest_while_draining(path: Path, producers: int, seconds: float, rate: float, scrape: float) -> dict:
    """Events stored while a worker drains the backlog: ``rate`` a second, each by a caller
    of its own (webhooks), or when ``rate`` is 0, ``producers`` callers back to back."""
    async with SQLiteStore(path) as store:
        plugin = NoOp(10**12)
        pm = make_test_pm(plugin)
        worker = Worker(
            store,
            pm,
            Ctx(config=None, pm=pm, store=store),
            concurrency=8,
            max_attempts=5,
            retry_base=1.0,
            retry_max=60.0,
            lease_seconds=300.0,
        )
        latencies: list[float] = []
        stop_at = time.perf_counter() + seconds

        async def produce(k: int) -> None:
            i = 0
            while time.perf_counter() < stop_at:
                start = time.perf_counter()
                await store.add_event(
                    Event(
                        source="bench",
                        type="incident.triggered",
                        event_id=f"in-{k}-{i}",
                        resource=f"pagerduty:incident:N{k}-{i}",
                        payload={"i": i},
                    )
                )
                latencies.append((time.perf_counter() - start) * 1000)
                i += 1

        async def one(i: int) -> None:
            start = time.perf_counter()
            await store.add_event(
                Event(
                    source="bench",
                    type="incident.triggered",
                    event_id=f"in-{i}",
                    resource=f"pagerduty:incident:N{i}",
                    payload={"i": i},
                )
            )
            latencies.append((time.perf_counter() - start) * 1000)

        async def paced() -> None:
            tasks, i, begin = [], 0, time.perf_counter()
            while time.perf_counter() < stop_at:
                tasks.append(asyncio.create_task(one(i)))
                i += 1
                await asyncio.sleep(max(0.0, begin + i / rate - time.perf_counter()))
            await asyncio.gather(*tasks)

        counts_ms: list[float] = []

        async def scraper() -> None:
            # /metrics as Prometheus scrapes it: counts() of every status.
            while scrape > 0 and time.perf_counter() < stop_at:
                begin = time.perf_counter()
                await store.counts()
                counts_ms.append((time.perf_counter() - begin) * 1000)
                await asyncio.sleep(scrape)

        await worker.start()
        start = time.perf_counter()
        load = paced() if rate > 0 else asyncio.gather(*(produce(k) for k in range(producers)))
        await asyncio.gather(load, scraper())
        elapsed = time.perf_counter() - start
        drained = plugin.count
        await worker.stop(timeout=5)
    return {
        "p50": pct(latencies, 50),
        "p99": pct(latencies, 99),
        "max": max(latencies),
        "ingest": len(latencies) / elapsed,
        "drain": drained / elapsed,
        "counts": statistics.median(counts_ms) if counts_ms else None,
    }


def ingest_while_draining(tmp: Path, args: argparse.Namespace) -> str:
    load = (
        f"{args.ingest_rate:g} events/s, each stored by a caller of its own"
        if args.ingest_rate > 0
        else f"{args.producers} callers storing events back to back"
    )
    if args.scrape > 0:
        load += f", counts() every {args.scrape:g} s as /metrics does"
    lines = [
        f"Ingest while the worker drains a backlog of {args.ingest_backlog:,} distinct events "
        f"({load}, {args.ingest_seconds:g} s each):",
        "",
        "| arrangement | add_event p50 ms | p99 ms | max ms | stored events/s | drained events/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    path = tmp / "ingest.db"
    build(path, args.ingest_backlog, "distinct")
    restart_with_statistics(path)
    r = asyncio.run(_ingest_while_draining(path, args.producers, args.ingest_seconds, args.ingest_rate, args.scrape))
    remove(path)
    lines.append(
        f"| one writer connection, one queue | {r['p50']:.2f} | {r['p99']:.2f} | {r['max']:.1f} | "
        f"{r['ingest']:,.0f} | {r['drain']:,.0f} |"
    )
    if r["counts"] is not None:
        lines.append(f"\ncounts() took {r['counts']:.0f} ms (median).")
    return "\n".join(lines)


def fmt_lat(result: tuple[float, float, int], claims: int) -> str:
    p50, p99, n = result
    note = "" if n >= claims else f" (n={n})"
    return f"{p50:8.2f} {p99:8.2f}{note}"


def table(rows: list[dict], claims: int) -> str:
    lines = [
        "| backlog | resources | open+migrate s | claim p50 ms | claim p99 ms | after restart+ANALYZE p50 ms | p99 ms | drain events/s (events) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        f50, f99, fn = r["fresh"]
        a50, a99, an = r["restart"]
        rate, handled = r["drain"]
        fnote = "" if fn >= claims else f" (n={fn})"
        anote = "" if an >= claims else f" (n={an})"
        lines.append(
            f"| {r['size']:,} | {'one hot' if r['shape'] == 'hot' else 'distinct'} | {r['open_s']:.2f} "
            f"| {f50:.2f}{fnote} | {f99:.2f} | {a50:.2f}{anote} | {a99:.2f} | {rate:,.0f} ({handled:,}) |"
        )
    return "\n".join(lines)


def machine() -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            check=False,
        ).stdout.strip()
    except OSError:
        commit = "?"
    return (
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, nproc {os.cpu_count()}, "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, commit {commit or '?'}"
    )


def append_results(args: argparse.Namespace, text: str) -> None:
    if not args.results:
        return
    command = shlex.join(["bench/inbox.py", *sys.argv[1:]])
    with args.results.open("a") as out:
        out.write(f"\n### {args.label or command}\n\n{machine()}\n\n`{command}`\n\n{text}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", default="1k,10k,100k,1m", type=lambda s: [parse_size(x) for x in s.split(",") if x.strip()]
    )
    parser.add_argument(
        "--shapes", default="distinct,hot", type=lambda s: [x.strip() for x in s.split(",") if x.strip()]
    )
    parser.add_argument("--claims", type=int, default=200, help="claims timed per measurement")
    parser.add_argument("--drain", type=int, default=20_000, help="events the worker drains per case")
    parser.add_argument("--case-seconds", type=float, default=20.0, help="time cap per measurement")
    parser.add_argument("--ingest", action="store_true", help="instead: ingest latency while a worker drains a backlog")
    parser.add_argument("--ingest-backlog", type=parse_size, default=100_000)
    parser.add_argument("--ingest-seconds", type=float, default=10.0)
    parser.add_argument("--producers", type=int, default=32)
    parser.add_argument(
        "--ingest-rate",
        type=float,
        default=1000.0,
        help="events/s stored during --ingest (0: --producers callers back to back)",
    )
    parser.add_argument(
        "--scrape",
        type=float,
        default=0.0,
        help="during --ingest, call counts() every SCRAPE seconds (as /metrics does)",
    )
    parser.add_argument("--dir", type=Path, help="where the databases go (default: a temporary folder)")
    parser.add_argument("--results", type=Path, help="append the table to this Markdown file")
    parser.add_argument("--label", default="", help="a heading for the table in --results")
    parser.add_argument("--store", default="", help="postgresql://USER@HOST/DB: measure the PostgreSQL store")
    parser.add_argument("--json", action="store_true", help="also print the rows as one JSON line (bench/results.py)")
    args = parser.parse_args()
    bad = [s for s in args.shapes if s not in ("distinct", "hot")]
    if bad:
        parser.error(f"unknown shape(s) {bad}: use distinct and/or hot")

    with open(os.devnull, "w") as devnull, tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        dlogging.configure(level="info", fmt="json", stream=devnull)
        if args.store:
            rows = []
            for size in args.sizes:
                for shape in args.shapes:
                    row = asyncio.run(inbox_postgres.run_case(args.store, size, shape, args, pct))
                    rows.append(row)
                    print(
                        f"{size:>9,} {shape:<8} claim p50/p99 ms {fmt_lat(row['claim'], args.claims)} | drain "
                        f"1 instance {row['drain1'][0]:,.0f}/s, 3 instances {row['drain3'][0]:,.0f}/s",
                        flush=True,
                    )
            text = inbox_postgres.table(rows, args.claims)
            print()
            print(machine())
            print(text)
            append_results(args, text)
            return
        if args.ingest:
            text = ingest_while_draining(Path(tmp), args)
            print()
            print(machine())
            print(text)
            append_results(args, text)
            return
        rows = []
        for size in args.sizes:
            for shape in args.shapes:
                path = Path(tmp) / f"inbox-{shape}-{size}.db"
                row = run_case(path, size, shape, args)
                rows.append(row)
                print(
                    f"{size:>9,} {shape:<8} built {row['build_s']:5.1f}s open {row['open_s']:5.2f}s "
                    f"claim p50/p99 ms {fmt_lat(row['fresh'], args.claims)} | after ANALYZE "
                    f"({row['stat1']} stat rows) {fmt_lat(row['restart'], args.claims)} | "
                    f"drain {row['drain'][0]:,.0f}/s ({row['drain'][1]:,} events)",
                    flush=True,
                )
        text = table(rows, args.claims)
        if args.json:
            print(json.dumps({"bench": "inbox", "claims": args.claims, "rows": rows}))
        print()
        print(machine())
        print(text)
        append_results(args, text)


if __name__ == "__main__":
    main()
