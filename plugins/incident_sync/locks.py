"""The per-incident locks that serialise a link's handlers, and the count of their
releases that tells whether a read made before waiting is still good."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from dutybridge.store.base import Link, Store

from .links import link_key

T = TypeVar("T")


class Locks:
    """PagerDuty and ServiceNow events of one incident carry different ``resource`` keys,
    so the worker may run them at once; an ``asyncio.Lock`` per link serialises them.
    Before a link exists the key is derived from what both sides can see: a
    ServiceNow-born incident is ``sn:<sys_id>`` (PagerDuty carries it as incident_key),
    a PagerDuty-born one ``pd:<id>`` (ServiceNow carries it as correlation_id).

    On a shared store (several instances) each key is also held through ``store.lock``
    (an advisory lock across instances), and no read made before waiting counts as
    fresh: another instance may have written since, unseen by this one's counters."""

    def __init__(self, store_of: Callable[[], Store | None] = lambda: None) -> None:
        self._store_of = store_of
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        # Lock releases, numbered: which keys were held since a read before the lock.
        self.seq = 0
        self._released: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._released_floor = 0

    @contextlib.asynccontextmanager
    async def locked(self, *keys: str) -> AsyncIterator[None]:
        """Hold the locks of ``keys``, taken in sorted order so that two holders of
        several keys can never wait for each other."""
        async with contextlib.AsyncExitStack() as stack:
            for key in sorted(set(keys)):
                await stack.enter_async_context(self._locked(key))
            yield

    @contextlib.asynccontextmanager
    async def _locked(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[key] = (lock, users + 1)
        store = self._store_of()
        across = store.lock(f"incident_sync:{key}") if store is not None and store.shared else contextlib.nullcontext()
        try:
            async with lock, across:
                try:
                    yield
                finally:
                    self.released_now(key)
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def released_now(self, key: str) -> None:
        self.seq += 1
        self._released[key] = self.seq
        self._released.move_to_end(key)
        while len(self._released) > 10_000:
            _, seq = self._released.popitem(last=False)
            self._released_floor = max(self._released_floor, seq)

    def untouched_since(self, keys: tuple[str, ...], mark: int) -> bool:
        """No handler held any of ``keys`` after ``mark`` (``self.seq`` taken before a
        read): that read is then at least as new as anything applied under them, and
        serves as the read under the lock. A key evicted from the memory counts as
        released as late as the newest eviction."""
        if self._shared(self._store_of()):
            return False
        return all(self._released.get(key, self._released_floor) <= mark for key in keys)

    @staticmethod
    def _shared(store: Store | None) -> bool:
        return store is not None and store.shared

    async def under_link_lock(
        self,
        keys: tuple[str, ...],
        get_link: Callable[[], Awaitable[Link | None]],
        fn: Callable[[Link | None, bool], Awaitable[T]],
        mark: int,
        link: Link | None,
    ) -> T:
        """Run ``fn(link, fresh)`` under the locks of the incident's link, re-keying if the
        link appeared (or its key changed) while waiting. ``link`` was read after ``mark``
        (``self.seq`` then); ``fresh``: no handler held those locks since, so it and any
        read made before waiting are still good (every change to an incident's link, and
        every write about the incident, happens under a key all its handlers share)."""
        for attempt in range(4):
            async with self.locked(*keys):
                fresh = self.untouched_since(keys, mark)
                if not fresh or attempt:
                    link = await get_link()
                if link is None or link_key(link) in keys or attempt == 3:
                    return await fn(link, fresh)
            keys = (link_key(link),)
        raise AssertionError("unreachable")
