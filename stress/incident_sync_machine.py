"""Stress the incident-sync state machine: many examples, many seeds, polling on and off.

Not a test (the suite runs the machine at a few examples); run it when changing the sync:

    .venv/bin/python stress/incident_sync_machine.py [--examples 200] [--seeds 20] [--first-seed 1]
        [--polling on,off] [--steps 18]

Each (seed, polling) run is one hypothesis run of ``IncidentSyncMachine`` with that seed;
a failure prints hypothesis' shrunk program (turn it into a deterministic test), appends
the failing check and the daemon's log of that example to ./stress-failures.log, and the
command goes on with the next run. Exit status 1 when any run failed.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import traceback
from pathlib import Path

import structlog
from hypothesis import HealthCheck, seed, settings
from hypothesis.stateful import run_state_machine_as_test

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: ``tests`` is imported

from tests.plugins.incident_sync.test_incident_sync_property import IncidentSyncMachine

#: "on": the daemon's own scheduled poll runs while people act (as in production);
#: "off": only the machine's ``check`` polls.
POLLING = {"on": {"poll_interval_seconds": 1.0}, "off": {"poll_interval_seconds": 0.0}}


#: The daemon's log lines of the example running now (kept in memory, never printed).
EXAMPLE_LOG: list[dict] = []
FAILURES = Path("stress-failures.log")


def keep_logs_quietly() -> None:
    """Nothing on the console (thousands of examples would print millions of lines); the
    running example's lines are kept, to be written out when it fails."""

    def keep(logger: object, method: str, event: dict) -> dict:
        EXAMPLE_LOG.append(dict(event, level=method))
        raise structlog.DropEvent

    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, keep],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
    )
    logging.getLogger().setLevel(logging.ERROR)


class _Recorded(IncidentSyncMachine):
    def __init__(self) -> None:
        EXAMPLE_LOG.clear()
        super().__init__()

    def failed(self, exc: AssertionError) -> None:
        # The first failure of a run is the one worth reading: shrinking replays it.
        with FAILURES.open("a") as out:
            out.write(f"=== {type(self).__name__}: {exc}\n")
            for line in EXAMPLE_LOG:
                out.write(f"{line}\n")


def machine(polling: str) -> type[IncidentSyncMachine]:
    return type(f"IncidentSyncMachinePolling{polling.title()}", (_Recorded,), {"WORLD_SETTINGS": POLLING[polling]})


def run_one(polling: str, seed_value: int, examples: int, steps: int) -> tuple[bool, float]:
    cls = seed(seed_value)(machine(polling))
    started = time.monotonic()
    try:
        run_state_machine_as_test(
            cls,
            settings=settings(
                max_examples=examples,
                stateful_step_count=steps,
                deadline=None,
                database=None,
                derandomize=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            ),
        )
    except Exception:
        traceback.print_exc()
        return False, time.monotonic() - started
    return True, time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=200, help="hypothesis examples per run (default 200)")
    parser.add_argument("--seeds", type=int, default=20, help="runs per polling mode (default 20)")
    parser.add_argument("--first-seed", type=int, default=1, help="the first seed (default 1)")
    parser.add_argument("--steps", type=int, default=18, help="steps per example (default 18, as the suite)")
    parser.add_argument("--polling", default="on,off", help="comma-separated: on, off (default both)")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.polling.split(",") if m.strip()]
    unknown = [m for m in modes if m not in POLLING]
    if unknown or not modes:
        parser.error(f"--polling: expected on and/or off, found {args.polling!r}")
    if args.examples < 1 or args.seeds < 1 or args.steps < 1:
        parser.error("--examples, --seeds and --steps must be at least 1")
    keep_logs_quietly()
    failed: list[tuple[str, int]] = []
    for seed_value in range(args.first_seed, args.first_seed + args.seeds):
        for polling in modes:
            ok, seconds = run_one(polling, seed_value, args.examples, args.steps)
            print(
                f"seed {seed_value} polling {polling}: {'pass' if ok else 'FAIL'} "
                f"({args.examples} examples, {seconds:.0f} s)",
                flush=True,
            )
            if not ok:
                failed.append((polling, seed_value))
    runs = args.seeds * len(modes)
    print(f"{runs - len(failed)}/{runs} runs passed" + (f"; failed: {failed}" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
