"""Write health of a store, for readiness: the last write's outcome, and the worker's
results that could not be written, written again as soon as writes work.
"""

from __future__ import annotations

import collections
from typing import Any

import structlog

from .base import LinkConflictError, Store

log = structlog.get_logger("dutybridge.store")

#: Methods that write; their outcome is the store's write health.
WRITES = frozenset(
    {
        "add_event",
        "claim",
        "complete_and_claim",
        "release_claims",
        "complete",
        "fail",
        "replay",
        "replay_dead",
        "purge_dead",
        "purge_done",
        "put_link",
        "update_link_state",
        "delete_link",
        "set_watermark",
    }
)
#: An event's result that could not be written; written again once writes work. Two
#: kinds: the event's claim would otherwise hold it (and its resource's later events)
#: for the whole lease. (The worker's batched ``complete_and_claim`` keeps its own
#: unrecorded results and sends them again with its next claim.)
RESULTS = ("complete", "fail")
#: Results kept for a retry at most; past it the oldest waits for its lease instead.
MAX_UNWRITTEN = 10_000
#: Where a readiness probe writes when the last write failed (a watermark: one row).
PROBE_WATERMARK = "dutybridge.write_probe"
# Refusals about the data, not the disk: the store wrote fine, it said no.
_LOGICAL = (LinkConflictError, ValueError, LookupError)


class WriteTrackingStore:
    """Any ``Store``, with ``write_ok`` (the last write's outcome) and ``last_write_error``.

    Everything is the wrapped store's; the write methods also record their outcome.
    A ``complete``/``fail`` that raises is remembered (bounded) and written again after
    the next write that succeeds, in the order they failed.
    """

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.write_ok = True
        self.last_write_error: str | None = None
        self._unwritten: collections.OrderedDict[int, tuple[str, tuple[Any, ...], dict[str, Any]]] = (
            collections.OrderedDict()
        )
        self._retrying = False

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name not in WRITES:
            return attr

        async def tracked(*args: Any, **kwargs: Any) -> Any:
            try:
                result = await attr(*args, **kwargs)
            except _LOGICAL:
                raise
            except Exception as exc:
                self._failed(exc)
                if name in RESULTS and args:
                    self._remember(name, args, kwargs)
                raise
            await self._succeeded()
            return result

        return tracked

    def __repr__(self) -> str:
        return f"WriteTrackingStore({self.inner!r})"

    # Dunder methods are looked up on the class, never through __getattr__.
    async def __aenter__(self) -> WriteTrackingStore:
        await self.inner.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.inner.close()

    @property
    def unwritten(self) -> int:
        """Results waiting to be written again."""
        return len(self._unwritten)

    async def probe_write(self) -> bool:
        """Write one row to learn whether writes work again (readiness asks while they
        did not); True when they do."""
        try:
            await self.set_watermark(PROBE_WATERMARK, "ok")
        except Exception:
            return False
        return self.write_ok

    def _failed(self, exc: BaseException) -> None:
        error = f"{type(exc).__name__}: {exc}"[:300]
        if self.write_ok:
            log.error("store_write_failed", error=error, effect="not ready until a write succeeds")
        self.write_ok = False
        self.last_write_error = error

    def _remember(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        event_id = args[0]
        self._unwritten[event_id] = (name, args, kwargs)
        self._unwritten.move_to_end(event_id)
        while len(self._unwritten) > MAX_UNWRITTEN:
            self._unwritten.popitem(last=False)

    async def _succeeded(self) -> None:
        if not self.write_ok:
            log.info("store_write_recovered", unwritten_results=len(self._unwritten))
        self.write_ok = True
        self.last_write_error = None
        if self._unwritten and not self._retrying:
            await self._write_unwritten()

    async def _write_unwritten(self) -> None:
        self._retrying = True
        try:
            while self._unwritten:
                event_id, (name, args, kwargs) = next(iter(self._unwritten.items()))
                try:
                    await getattr(self.inner, name)(*args, **kwargs)
                except _LOGICAL:
                    pass
                except Exception as exc:
                    self._failed(exc)
                    return
                self._unwritten.pop(event_id, None)
                log.info("event_result_written_late", inbox_id=event_id, result=name)
        finally:
            self._retrying = False
