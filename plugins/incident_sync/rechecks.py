"""Rechecks: a ServiceNow record read again once its second is over, for a change
whose doorbell shared an event id with the one before and was dropped."""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import structlog

from dutybridge.events import Event

log = structlog.get_logger("dutybridge.incident_sync")


class Rechecks:
    """The timers of pending rechecks (``engine``: anything with ``conf`` and ``ctx``)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self._rechecks: dict[str, asyncio.TimerHandle] = {}
        self._rechecked: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._tasks: set[asyncio.Task] = set()

    async def close(self) -> None:
        """Stop pending rechecks (the next poll covers what they would have read)."""
        for handle in self._rechecks.values():
            handle.cancel()
        self._rechecks.clear()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def schedule(self, table: str, sys_id: str, stamp: str) -> None:
        """Read the record again once its second is over: a change later in the same
        second rang a doorbell with the same event id, dropped as a duplicate."""
        delay = self.engine.conf.recheck_seconds
        key = f"{table}:{sys_id}:{stamp}:recheck"
        if not delay or not stamp or key in self._rechecks or key in self._rechecked:
            return
        loop = asyncio.get_running_loop()
        self._rechecks[key] = loop.call_later(delay, self._fire, key, table, sys_id, stamp)

    def _fire(self, key: str, table: str, sys_id: str, stamp: str) -> None:
        self._rechecks.pop(key, None)
        self._rechecked[key] = None
        while len(self._rechecked) > 10_000:
            self._rechecked.popitem(last=False)
        task = asyncio.get_running_loop().create_task(self._enqueue(key, table, sys_id, stamp))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _enqueue(self, key: str, table: str, sys_id: str, stamp: str) -> None:
        try:
            await self.engine.ctx.enqueue(
                Event(  # enqueue wakes the worker
                    source="servicenow",
                    type=f"{table}.update",
                    event_id=key,
                    resource=f"servicenow:{table}:{sys_id}",
                    payload={
                        "table": table,
                        "sys_id": sys_id,
                        "operation": "update",
                        "sys_updated_on": stamp,
                        "recheck": True,
                    },
                )
            )
        except Exception as exc:
            log.warning("recheck_not_queued", sn_sys_id=sys_id, error=f"{type(exc).__name__}: {exc}")
