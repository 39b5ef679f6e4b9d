"""Every benchmark of issue 8 in one run, written as one table at the top of bench/RESULTS.md.

Runs bench/inbox.py (a short mode), bench/daemon_ingest.py (a fresh inbox, then 100,000
handled events retained), bench/daemon_instructions.py (valgrind), bench/incident_sync.py (the 100/s latency run and a burst) and
bench/links_memory.py, each in its own process, and writes the machine (nproc, CPU model,
Python, SQLite), the date, the commit, the load average around each part and every figure.
The detailed sections below the table in RESULTS.md are kept. Run (wrk: `apt-get install wrk`):

    .venv/bin/python bench/results.py [--tree DIR] [--only ingest,sync,...] [--output FILE | --print]

``--tree DIR`` runs another checkout's benchmarks with that checkout's .venv (a before
figure from an older commit, on the same machine in the same hour).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
BEGIN, END = "<!-- bench/results.py: begin -->", "<!-- bench/results.py: end -->"

#: name -> (script, arguments): the short modes, ~10 minutes in all on 2 cores.
PARTS = {
    "inbox": (
        "inbox.py",
        ["--sizes", "1k,100k", "--claims", "100", "--drain", "5000", "--case-seconds", "5", "--json"],
    ),
    "ingest": ("daemon_ingest.py", ["--rounds", "3", "--seconds", "8"]),
    "ingest_retained": ("daemon_ingest.py", ["--rounds", "3", "--seconds", "8", "--retained", "100000"]),
    "instructions": ("daemon_instructions.py", ["--requests", "1000"]),
    "sync": ("incident_sync.py", ["--rate", "100", "--count", "500", "--burst", "1000"]),
    "memory": ("links_memory.py", ["--links", "100000", "--json"]),
}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


#: Parts whose figure does not move with the load (RSS): they run beside the others,
#: which saves their minutes and adds one busy process to the others' load average.
BESIDE = ("memory",)


class Part:
    """One benchmark in its own process; ``result()`` waits for it and parses its JSON line."""

    def __init__(self, tree: Path, name: str) -> None:
        script, args = PARTS[name]
        self.name, self.load_before, self.started = name, load(), time.monotonic()
        self.proc = subprocess.Popen(
            [str(tree / ".venv" / "bin" / "python"), str(tree / "bench" / script), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tree,
        )

    def result(self) -> dict:
        stdout, stderr = self.proc.communicate()
        result: dict = {
            "load_before": self.load_before,
            "load_after": load(),
            "part_seconds": round(time.monotonic() - self.started),
        }
        lines = [line for line in stdout.splitlines() if line.startswith('{"bench"')]
        if self.proc.returncode or not lines:
            result["error"] = f"exit {self.proc.returncode}: {(stderr or stdout).strip()[-400:]}"
        else:
            result.update(json.loads(lines[-1]))
        print(f"{self.name}: {json.dumps(result)}", file=sys.stderr, flush=True)
        return result


def run_parts(tree: Path, names: list[str]) -> dict[str, dict]:
    beside = {name: Part(tree, name) for name in names if name in BESIDE}
    results = {name: Part(tree, name).result() for name in names if name not in BESIDE}
    results.update({name: part.result() for name, part in beside.items()})
    return {name: results[name] for name in names}


def event_loop(tree: Path) -> str:
    """The loop `dutybridge run` picks in that checkout's venv (daemon/eventloop.py)."""
    code = (
        "import os, importlib.util as u; e = os.environ.get('DUTYBRIDGE_EVENT_LOOP', 'auto'); "
        "print('asyncio' if e == 'asyncio' or u.find_spec('uvloop') is None else 'uvloop')"
    )
    if not (tree / "daemon" / "eventloop.py").exists():
        return "asyncio (no daemon/eventloop.py in this checkout)"
    out = subprocess.run([str(tree / ".venv" / "bin" / "python"), "-c", code], capture_output=True, text=True)
    return out.stdout.strip() or "?"


def git_commit(tree: Path) -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=tree, check=False)
    return out.stdout.strip() or "(not a git checkout)"


def figure(res: dict | None, text) -> str:
    if res is None:
        return "not run"
    if "error" in res:
        return "failed: " + re.sub(r"\s+", " ", res["error"])[:120].replace("|", "/")
    return text(res)


def rows(results: dict[str, dict]) -> list[tuple[str, str, str, str]]:
    """(what, figure, target, load average before/after) for the table."""
    out: list[tuple[str, str, str, str]] = []

    def add(name: str, what: str, target: str, text) -> None:
        res = results.get(name)
        if res is None:
            return
        out.append((what, figure(res, text), target, f"{res['load_before']} / {res['load_after']}"))

    for r in (results.get("inbox") or {}).get("rows", []):
        shape = "one hot resource" if r["shape"] == "hot" else "distinct resources"
        size = f"{r['size']:,}"
        out.append(
            (
                f"inbox {size} pending, {shape}: claim p50 / p99 (after restart+ANALYZE)",
                f"{r['restart'][0]:.2f} / {r['restart'][1]:.2f} ms (fresh {r['fresh'][0]:.2f} / {r['fresh'][1]:.2f})",
                "p50 < 5 ms",
                f"{results['inbox']['load_before']} / {results['inbox']['load_after']}",
            )
        )
        out.append(
            (
                f"inbox {size} pending, {shape}: worker drain (no-op plugin)",
                f"{r['drain'][0]:,.0f} events/s ({r['drain'][1]:,} events)",
                ">= 1,000/s" if r["shape"] == "hot" else ">= 3,000/s",
                f"{results['inbox']['load_before']} / {results['inbox']['load_after']}",
            )
        )
    if "error" in results.get("inbox", {}):
        add("inbox", "inbox", "", lambda r: "")
    for name, label in (("ingest", "fresh inbox"), ("ingest_retained", "100,000 handled events retained")):
        add(
            name,
            f"ingest, `dutybridge run` vs bare aiohttp ({label}): median ratio of 3 rounds",
            ">= 0.4x",
            lambda r: (
                f"{r['ratio_median']:.2f}x ({r['daemon_rps_median']:,} vs {r['bare_rps_median']:,} req/s, "
                f"daemon p99 {r['daemon_p99_ms_median']} ms; CPU per request: daemon "
                f"{r.get('daemon_cpu_us_per_request_median', '?')} us, bare {r.get('bare_cpu_us_per_request_median', '?')} us)"
            ),
        )
        add(
            name,
            f"worker drain after the ingest rounds ({label})",
            ">= 3,000/s",
            lambda r: f"{r['drain_events_per_s']:,} events/s" if r.get("drain_events_per_s") else "no backlog left",
        )
    add(
        "instructions",
        "instructions a signed webhook costs (callgrind, 1,000 one after another; the load does not move them)",
        "(the ratio: >= 0.4x)",
        lambda r: (
            f"daemon {r['daemon_instructions_per_request'] / 1e6:.2f}M, bare aiohttp "
            f"{r['bare_instructions_per_request'] / 1e6:.2f}M: ratio {r['ratio']:.2f}x"
        ),
    )
    add(
        "sync",
        "incident sync, burst: synced/s",
        ">= 500/s",
        lambda r: f"{r['burst_syncs_per_s']:,}/s ({r['burst_synced']:,} of {r['burst']:,})",
    )
    add(
        "sync",
        "incident sync, burst: daemon CPU per synced incident",
        "toward 1.5 ms",
        lambda r: f"{r['burst_daemon_cpu_ms']:.2f} ms",
    )
    add(
        "sync",
        "incident sync at 100/s: trigger -> visible p50 / p99",
        "unchanged or better (6.1 / 9.5 ms quiet)",
        lambda r: (
            f"{r['latency_p50_ms']:.1f} / {r['latency_p99_ms']:.1f} ms (daemon CPU {r['latency_daemon_cpu_ms']:.2f} ms each)"
        ),
    )
    add(
        "memory",
        "RSS with 100,000 incident links stored and read (links_memory.py)",
        "<= 150 MB",
        lambda r: (
            f"{r['rss_mb_after_reads']} MB (peak {r['peak_mb_through_reads']}; after imports {r['rss_mb_imports']}; "
            f"a list_links() of all of them, which only a CLI listing asks: {r['rss_mb_after_list_all']} MB)"
        ),
    )
    return out


def table(tree: Path, results: dict[str, dict], started: datetime, command: str) -> str:
    lines = [
        BEGIN,
        "## Summary (regenerated by `bench/results.py`)",
        "",
        f"{started:%Y-%m-%d %H:%M} UTC, commit {git_commit(tree)}; nproc {os.cpu_count()}, {cpu_model()}, "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, event loop of `dutybridge run`: "
        f"{event_loop(tree)}. The machine is shared: wall-clock figures move with the load average "
        "(1/5/15 min, before / after each part); CPU per request or incident much less. "
        f"{', '.join(BESIDE)} runs beside the other parts (RSS does not depend on the load).",
        "",
        f"`{command}`",
        "",
        "| measure | figure | target | load before / after |",
        "|---|---|---|---|",
        *(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows(results)),
        END,
    ]
    return "\n".join(lines)


def write(output: Path, text: str) -> None:
    old = output.read_text() if output.exists() else "# Benchmark results\n"
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        new = head + text + rest.split(END, 1)[1]
    else:  # after the title, above the detailed sections
        title, sep, body = old.partition("\n")
        new = f"{title}{sep}\n{text}\n{body}"
    output.write_text(new)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, default=HERE.parent, help="the checkout whose benchmarks run")
    parser.add_argument(
        "--only",
        type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
        default=list(PARTS),
        help=f"parts to run, of {','.join(PARTS)}",
    )
    parser.add_argument("--output", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--print", action="store_true", help="print the table instead of writing --output")
    args = parser.parse_args()
    unknown = [p for p in args.only if p not in PARTS]
    if unknown:
        parser.error(f"unknown part(s) {unknown}: choose from {', '.join(PARTS)}")
    tree = args.tree.resolve()
    if not (tree / ".venv" / "bin" / "python").exists():
        parser.error(f"{tree} has no .venv: run `python3 tasks.py bootstrap` there first")
    started = datetime.now(UTC)
    results = run_parts(tree, args.only)
    command = " ".join(["bench/results.py", *sys.argv[1:]])
    text = table(tree, results, started, command)
    if args.print:
        print(text)
    else:
        write(args.output, text)
        print(f"wrote {args.output}", file=sys.stderr)
    return 0 if not any("error" in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
