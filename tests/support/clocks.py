"""A settable clock and an instant sleep for tests: pass them where the code takes a
``clock`` callable (wall-clock ``datetime`` or monotonic float) or a ``sleep`` coroutine.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Generic, TypeVar

T = TypeVar("T", datetime, float)

START = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


class FakeClock(Generic[T]):
    """Returns ``now`` when called; only the test moves it (``advance`` or setting ``now``)."""

    def __init__(self, now: T = START) -> None:  # type: ignore[assignment]
        self.now: T = now

    def __call__(self) -> T:
        return self.now

    def advance(self, seconds: float) -> None:
        if isinstance(self.now, datetime):
            self.now = self.now + timedelta(seconds=seconds)
        else:
            self.now = self.now + seconds


class FakeSleep:
    """An ``asyncio.sleep`` stand-in: records the waits asked for and returns at once,
    moving ``clock`` (when given) on by each wait, as time would."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.calls: list[float] = []
        self.clock = clock

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        if self.clock is not None:
            self.clock.advance(seconds)
        await asyncio.sleep(0)
