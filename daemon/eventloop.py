"""The event loop `dutybridge run` serves on: uvloop when it is installed (a faster loop,
`pip install 'dutybridge[speedups]'`), asyncio's own otherwise or when asked for.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import structlog

log = structlog.get_logger("dutybridge.eventloop")
T = TypeVar("T")
#: ``DUTYBRIDGE_EVENT_LOOP=asyncio`` keeps asyncio's loop although uvloop is installed
#: (to compare the two, or to rule uvloop out when chasing a bug); ``uvloop`` requires it.
ENV = "DUTYBRIDGE_EVENT_LOOP"
CHOICES = ("auto", "asyncio", "uvloop")


def loop_factory() -> tuple[str, Callable[[], asyncio.AbstractEventLoop] | None]:
    """The loop's name and its factory (None: asyncio's default)."""
    choice = os.environ.get(ENV, "").strip().lower() or "auto"
    if choice not in CHOICES:
        raise ValueError(f"{ENV}={choice!r}: expected one of {', '.join(CHOICES)}")
    if choice == "asyncio" or (choice == "auto" and importlib.util.find_spec("uvloop") is None):
        return "asyncio", None
    try:
        # Imported here, not at the top: uvloop is optional, and only `dutybridge run` uses it.
        import uvloop
    except ImportError as exc:
        if choice == "uvloop":
            raise ValueError(
                f"{ENV}=uvloop but uvloop cannot be imported ({exc}): pip install 'dutybridge[speedups]'"
            ) from exc
        return "asyncio", None
    return "uvloop", uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the loop ``loop_factory`` picks."""
    try:
        name, factory = loop_factory()
    except ValueError as exc:
        main.close()  # never awaited: no "coroutine was never awaited" warning on the way out
        log.error("event_loop_unavailable", problem=str(exc))
        raise SystemExit(2) from exc
    log.info("event_loop", loop=name)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
