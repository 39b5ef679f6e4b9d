"""Scheduler adapter: explicit ids, defaults, failures logged, fresh log context."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

import pytest
import structlog
from structlog.testing import capture_logs

from dutybridge.scheduler import Scheduler


async def test_job_runs_with_fresh_context_and_failure_keeps_schedule():
    scheduler = Scheduler()
    ran = asyncio.Event()
    contexts = []
    runs = {"n": 0}

    async def flaky():
        runs["n"] += 1
        contexts.append(dict(structlog.contextvars.get_contextvars()))
        if runs["n"] == 1:
            raise RuntimeError("first run fails")
        ran.set()

    structlog.contextvars.bind_contextvars(request_id="leaked")
    try:
        with capture_logs() as logs:
            scheduler.add_job(flaky, "interval", id="test.flaky", seconds=0.05)
            scheduler.start()
            await asyncio.wait_for(ran.wait(), 5)
    finally:
        scheduler.shutdown()
        structlog.contextvars.clear_contextvars()
    assert runs["n"] >= 2
    assert all(c == {"job": "test.flaky"} for c in contexts)
    assert scheduler.failures["test.flaky"] == 1
    assert any(e["event"] == "scheduled_job_failed" and e["log_level"] == "error" for e in logs)


async def test_job_needs_an_explicit_id_and_defaults_are_set():
    scheduler = Scheduler()
    with pytest.raises(ValueError, match="explicit id"):
        scheduler.add_job(lambda: None, "interval", id="", seconds=1)
    run_at = datetime.now(UTC) + timedelta(days=1)
    scheduler.add_job(lambda: None, "date", id="a", run_date=run_at)
    scheduler.add_job(lambda: None, "date", id="a", run_date=run_at)  # replaced, not duplicated
    assert scheduler.job_ids() == ["a"]
    scheduler.start()
    try:
        job = scheduler._scheduler.get_job("a")
        assert job.coalesce is True and job.max_instances == 1 and job.misfire_grace_time == 30
    finally:
        scheduler.shutdown()


async def test_a_job_stopped_mid_run_logs_one_line_and_no_traceback(caplog):
    scheduler = Scheduler()
    started = asyncio.Event()

    async def long_poll():
        started.set()
        await asyncio.Event().wait()

    with capture_logs() as logs:
        scheduler.add_job(long_poll, "interval", id="test.long", seconds=0.05)
        scheduler.start()
        await asyncio.wait_for(started.wait(), 5)
        scheduler.shutdown()
        running = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
        for task in running:  # as asyncio.run cancels what is left when the daemon exits
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
    assert [e["event"] for e in logs if e["event"].startswith("scheduled_job")] == [
        "scheduled_job_started",
        "scheduled_job_cancelled",
    ]
    assert not [r for r in caplog.records if r.name.startswith("apscheduler") and r.levelname == "ERROR"]


async def test_a_run_cancelled_before_it_began_logs_no_traceback(caplog):
    # APScheduler's executor cancels the runs it submitted but the loop has not started
    # yet when the scheduler shuts down (seen at the stops of the stress runs).
    scheduler = Scheduler()
    ran = []

    async def poll():
        ran.append(True)

    scheduler.add_job(poll, "interval", id="test.pending", seconds=3600)
    scheduler.start()
    job = scheduler._scheduler.get_job("test.pending")
    executor = scheduler._scheduler._executors["default"]
    executor.submit_job(job, [datetime.now(UTC)])
    # What the scheduler's shutdown does once the loop gets to it (APScheduler queues it
    # with call_soon): here in the same step, so the run's task has not begun.
    executor.shutdown()
    scheduler.shutdown()
    await asyncio.sleep(0.05)  # the cancelled run's callback
    assert not ran
    errors = [r for r in caplog.records if r.name.startswith("apscheduler") and r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
