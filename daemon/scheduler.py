"""A small adapter over APScheduler 3.11's AsyncIOScheduler with the daemon's defaults, and
the election that runs its jobs on one instance of several sharing a store."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog

# APScheduler 3 ships neither type hints nor a py.typed marker; this adapter is the
# one place it is used, so its Any-typed surface stops here.
from apscheduler.jobstores.base import JobLookupError  # type: ignore[import-untyped]
from apscheduler.schedulers.asyncio import AsyncIOScheduler  # type: ignore[import-untyped]

if TYPE_CHECKING:
    from .store.base import Store

log = structlog.get_logger("dutybridge.scheduler")

#: The name of the scheduler's leadership in the store.
LEADERSHIP = "scheduler"
#: A job of an interval trigger is skipped when it last ran (on any instance) less than
#: this share of its interval ago: a new leader's schedule does not repeat the run the
#: old leader made just before dying.
SAME_INTERVAL = 0.9

JOB_DEFAULTS = {"coalesce": True, "max_instances": 1, "misfire_grace_time": 30}


@dataclass(frozen=True)
class Job:
    """A scheduled job, as ``register_jobs`` returns it.

    ``func`` takes no argument and may be a coroutine function; ``trigger`` and
    ``trigger_args`` are APScheduler's (``"interval", {"seconds": 60}``, ``"cron",
    {"minute": "*/5"}``). ``id`` is explicit and unique: a reload replaces by id.
    """

    id: str
    func: Callable[[], Any]
    trigger: str = "interval"
    trigger_args: Mapping[str, Any] = field(default_factory=dict)


class _NoCancelledRuns(logging.Filter):
    """Drops APScheduler's "Error running job" for a run cancelled before it began (its
    executor cancels the runs pending at shutdown): a stop, no failure, and no traceback.
    A run cancelled once begun logs ``scheduled_job_cancelled`` itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, asyncio.CancelledError)


#: APScheduler's executors log as ``apscheduler.executors.<alias>``; the daemon's is "default".
_EXECUTOR_LOGGER = logging.getLogger("apscheduler.executors.default")
if not any(isinstance(f, _NoCancelledRuns) for f in _EXECUTOR_LOGGER.filters):
    _EXECUTOR_LOGGER.addFilter(_NoCancelledRuns())


class Scheduler:
    """The daemon's scheduler: ``add(job)`` (or ``add_job``) with an explicit id.

    Jobs coalesce missed runs, never overlap themselves, get a misfire grace time, run
    with a fresh log context, and a failing run is logged without losing its schedule.
    """

    def __init__(self, **job_defaults: Any) -> None:
        self._scheduler = AsyncIOScheduler(job_defaults={**JOB_DEFAULTS, **job_defaults}, timezone=UTC)
        self.failures: dict[str, int] = {}
        #: Set by ``elect()``: jobs then run only while this instance leads.
        self.election: Election | None = None

    def add_job(
        self,
        func: Callable[..., Any],
        trigger: str = "interval",
        *,
        id: str,
        name: str | None = None,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        **trigger_args: Any,
    ) -> None:
        """Schedule ``func`` (a function or coroutine function) under the unique ``id``.

        ``trigger`` and ``trigger_args`` are APScheduler's (``"interval", seconds=60``,
        ``"cron", minute="*/5"``, ``"date", run_date=...``). Adding an id that exists
        replaces that job (reloads re-register every job).
        """
        if not id:
            raise ValueError("a scheduled job needs an explicit id")
        kwargs = kwargs or {}

        interval = _interval_seconds(trigger, trigger_args)

        async def run() -> None:
            election = self.election
            if election is not None and not election.leading:
                return
            structlog.contextvars.clear_contextvars()
            structlog.contextvars.bind_contextvars(job=id)
            started = time.monotonic()
            try:
                if election is not None and not await election.claim_run(id, interval):
                    return
                log.debug("scheduled_job_started", holder=None if election is None else election.holder)
                result = func(*args, **kwargs)
                if inspect.isawaitable(result):
                    await result
            except asyncio.CancelledError:
                # Stopping mid-run (shutdown, the loop closing) is no failure: one line,
                # instead of APScheduler's "raised an exception" and a traceback.
                log.info("scheduled_job_cancelled", seconds=round(time.monotonic() - started, 3))
                return
            except Exception:
                self.failures[id] = self.failures.get(id, 0) + 1
                log.exception("scheduled_job_failed", seconds=round(time.monotonic() - started, 3))
            else:
                log.debug("scheduled_job_done", seconds=round(time.monotonic() - started, 3))
            finally:
                structlog.contextvars.clear_contextvars()

        # Before start, APScheduler queues duplicates and replaces only at start; make
        # "same id replaces" true at once so job_ids() tells the truth.
        if not self._scheduler.running:
            try:
                self._scheduler.remove_job(id)
            except JobLookupError:
                pass
        self._scheduler.add_job(run, trigger, id=id, name=name or id, replace_existing=True, **trigger_args)

    def add(self, job: Job) -> None:
        self.add_job(job.func, job.trigger, id=job.id, **job.trigger_args)

    def remove_all_jobs(self) -> None:
        self._scheduler.remove_all_jobs()

    def job_ids(self) -> list[str]:
        return [job.id for job in self._scheduler.get_jobs()]

    def start(self) -> None:
        """Start running jobs; needs a running asyncio loop."""
        self._scheduler.start()

    def elect(
        self,
        store: Store,
        lease_seconds: float,
        *,
        holder: str | None = None,
        on_change: Callable[[Election], None] | None = None,
    ) -> Election:
        """Run jobs only while this instance leads among those sharing ``store``; start
        the election (with a running loop). ``await scheduler.stop_election()`` ends it."""
        self.election = Election(store, lease_seconds, holder=holder, on_change=on_change)
        self.election.start()
        return self.election

    async def stop_election(self) -> None:
        election, self.election = self.election, None
        if election is not None:
            await election.stop()

    def shutdown(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)

    @property
    def running(self) -> bool:
        return bool(self._scheduler.running)


def _interval_seconds(trigger: str, trigger_args: Mapping[str, Any]) -> float | None:
    if trigger != "interval":
        return None
    units = {"weeks": 604800, "days": 86400, "hours": 3600, "minutes": 60, "seconds": 1}
    return float(sum(trigger_args.get(unit, 0) * factor for unit, factor in units.items())) or None


class Election:
    """One leader among the instances sharing a store, by a lease row renewed every third
    of ``lease_seconds``: when the leader dies another takes over within ``lease_seconds``
    plus a third of it. The leader stops counting itself leader once its last renewal is
    ``lease_seconds`` old, before anyone may take over (and whatever the clocks say: the
    database's decides the takeover, this process's monotonic clock the stepping down).
    """

    def __init__(
        self,
        store: Store,
        lease_seconds: float,
        *,
        holder: str | None = None,
        on_change: Callable[[Election], None] | None = None,
    ) -> None:
        self.store = store
        self.lease_seconds = lease_seconds
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.leader: str | None = None
        self._on_change = on_change
        self._valid_until = 0.0  # monotonic
        self._task: asyncio.Task[None] | None = None
        self._was_leading = False

    @property
    def leading(self) -> bool:
        return time.monotonic() < self._valid_until

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="scheduler election")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task})
        if self._was_leading:
            # Handing over at once: the next instance need not wait out the lease.
            with contextlib.suppress(Exception):
                await self.store.resign_leadership(LEADERSHIP, self.holder)
            self._valid_until = 0.0
            self._changed(None)

    async def _run(self) -> None:
        while True:
            await self.campaign()
            await asyncio.sleep(self.lease_seconds / 3)

    async def campaign(self) -> None:
        """One round: take or renew the leadership, note who leads."""
        asked = time.monotonic()
        try:
            won = await self.store.take_leadership(LEADERSHIP, self.holder, self.lease_seconds)
            leader = self.holder if won else await self.store.leader(LEADERSHIP)
        except Exception as exc:
            log.warning("scheduler_election_failed", error=f"{type(exc).__name__}: {exc}")
            if not self.leading:
                self._changed(None)
            return
        if won:
            # Counted from before the request: the term the database granted began later.
            self._valid_until = asked + self.lease_seconds
        else:
            self._valid_until = 0.0
        self._changed(leader)

    def _changed(self, leader: str | None) -> None:
        leading = self.leading
        if leader != self.leader or leading != self._was_leading:
            log.info("scheduler_leader", leader=leader, this_instance=self.holder, leading=leading)
        self.leader, self._was_leading = leader, leading
        if self._on_change is not None:
            self._on_change(self)

    async def claim_run(self, job_id: str, interval: float | None) -> bool:
        """Whether this run of ``job_id`` goes ahead: not if it ran less than
        ``SAME_INTERVAL`` of its interval ago on any instance. Records this run."""
        name = f"scheduler.last_run.{job_id}"
        now = datetime.now(UTC)
        if interval is not None:
            last = await self.store.get_watermark(name)
            if last is not None:
                when = datetime.fromisoformat(last.split(" ", 1)[0])
                if (now - when).total_seconds() < interval * SAME_INTERVAL:
                    log.info("scheduled_job_skipped", reason="ran on another instance in this interval", last_run=last)
                    return False
        await self.store.set_watermark(name, f"{now.isoformat()} {self.holder}")
        return True
