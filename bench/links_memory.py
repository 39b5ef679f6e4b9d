"""Memory with many incident links: the process's RSS once N links are stored and read.

Stores N incident links through the store API the way incident_sync creates them
(``Links.new_link``: both snapshots, notes, moves), then reads each back the way a sync
does (``get_link`` by PagerDuty id, by ServiceNow id, then ``Links.save``: ``--reads`` of
them, spread over all N, as a sync is a few milliseconds each), on SQLite on disk. Prints the RSS (VmRSS) and peak (VmHWM) after the imports, after the writes and
after the reads. Not a test; run:

    .venv/bin/python bench/links_memory.py [--links 100000] [--json]

The links live in the database: incident_sync keeps none of them in memory, only the
bounded map of ServiceNow versions known synced (``Links._sn_seen``, 50,000 entries),
which this bench fills as the daemon would.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from dutybridge.store.sqlite import SQLiteStore
from dutybridge_plugins.incident_sync.links import Links
from dutybridge_plugins.incident_sync.views import KIND


def status_kb() -> dict[str, int]:
    """VmRSS and VmHWM of this process, in KiB (Linux /proc)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def incident(i: int) -> dict:
    return {
        "id": f"Q{i:013d}",
        "status": "triggered",
        "urgency": "high",
        "escalation_policy": {"id": "PEPDB01", "type": "escalation_policy_reference"},
        "assignments": [{"assignee": {"id": "PUSR001", "type": "user_reference"}}],
        "priority": {"summary": "P2", "name": "P2"},
        "acknowledgements": [],
    }


def record(i: int) -> dict:
    return {
        "sys_id": f"{i:032x}",
        "state": "1",
        "assignment_group": "a" * 32,
        "assigned_to": "",
        "priority": "2",
        "sys_updated_on": "2026-12-04 04:00:00",
        "sys_mod_count": "1",
    }


async def run(count: int, reads: int, folder: Path) -> dict:
    gc.collect()
    marks = {"imports": status_kb()}
    store = SQLiteStore(folder / "links.db")
    await store.open()
    links = Links(SimpleNamespace(store=store))
    try:
        started = time.perf_counter()
        for i in range(count):
            await links.new_link(incident(i), "incident", record(i), origin="pd", sn_seen=1)
        write_s = time.perf_counter() - started
        gc.collect()
        marks["stored"] = status_kb()
        started = time.perf_counter()
        step = max(1, count // max(1, reads))
        for i in range(0, count, step):
            by_pd = await store.get_link(KIND, pd_id=f"Q{i:013d}", include_unlinked=True)
            by_sn = await store.get_link(KIND, sn_id=f"{i:032x}", include_unlinked=True)
            if by_pd is None or by_sn is None or by_pd.pd_id != by_sn.pd_id:
                raise RuntimeError(f"link {i} not read back")
            state = dict(by_pd.state)
            state["sn_seen"] = 2
            await links.save(by_pd, state)
        read_s = time.perf_counter() - started
        gc.collect()
        marks["read"] = status_kb()
        stored = len(await store.list_links(KIND))
        marks["listed"] = status_kb()  # list_links(KIND): what a CLI listing would cost, not the daemon
    finally:
        await store.close()
    return {
        "bench": "links_memory",
        "links": count,
        "reads": len(range(0, count, step)),
        "stored": stored,
        "rss_mb_imports": round(marks["imports"]["VmRSS"] / 1024, 1),
        "rss_mb_after_writes": round(marks["stored"]["VmRSS"] / 1024, 1),
        "rss_mb_after_reads": round(marks["read"]["VmRSS"] / 1024, 1),
        "peak_mb_through_reads": round(marks["read"]["VmHWM"] / 1024, 1),
        "rss_mb_after_list_all": round(marks["listed"]["VmRSS"] / 1024, 1),
        "sn_seen_remembered": len(links._sn_seen),
        "write_s": round(write_s, 1),
        "read_s": round(read_s, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--links", type=int, default=100_000)
    parser.add_argument("--reads", type=int, default=20_000, help="links read back and saved, spread over all")
    parser.add_argument("--json", action="store_true", help="print one JSON line only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dutybridge-links-") as tmp:
        result = asyncio.run(run(args.links, args.reads, Path(tmp)))
    if args.json:
        print(json.dumps(result))
        return 0
    print(
        f"{result['links']:,} incident links stored in {result['write_s']} s, {result['reads']:,} read "
        f"(by both ids) and saved in {result['read_s']} s"
    )
    print(
        f"  RSS MB: after imports {result['rss_mb_imports']}, after writes {result['rss_mb_after_writes']}, "
        f"after reads {result['rss_mb_after_reads']} (peak {result['peak_mb_through_reads']}; target <= 150)"
    )
    print(
        f"  versions remembered (bounded): {result['sn_seen_remembered']:,}; RSS after list_links of all "
        f"{result['stored']:,}: {result['rss_mb_after_list_all']} MB (a CLI listing, not the daemon's path)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
