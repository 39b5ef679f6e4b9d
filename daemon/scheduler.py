"""A small adapter over APScheduler 3.11's AsyncIOScheduler with the daemon's defaults."""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

import structlog

# APScheduler 3 ships neither type hints nor a py.typed marker; this adapter is the
# one place it is used, so its Any-typed surface stops here.
from apscheduler.jobstores.base import JobLookupError  # type: ignore[import-untyped]
from apscheduler.schedulers.asyncio import AsyncIOScheduler  # type: ignore[import-untyped]

log = structlog.get_logger("dutybridge.scheduler")

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


class Scheduler:
    """The daemon's scheduler: ``add(job)`` (or ``add_job``) with an explicit id.

    Jobs coalesce missed runs, never overlap themselves, get a misfire grace time, run
    with a fresh log context, and a failing run is logged without losing its schedule.
    """

    def __init__(self, **job_defaults: Any) -> None:
        self._scheduler = AsyncIOScheduler(job_defaults={**JOB_DEFAULTS, **job_defaults}, timezone=UTC)
        self.failures: dict[str, int] = {}

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

        async def run() -> None:
            structlog.contextvars.clear_contextvars()
            structlog.contextvars.bind_contextvars(job=id)
            started = time.monotonic()
            try:
                result = func(*args, **kwargs)
                if inspect.isawaitable(result):
                    await result
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

    def shutdown(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)

    @property
    def running(self) -> bool:
        return bool(self._scheduler.running)
