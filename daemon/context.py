"""``ctx``: everything the core offers a plugin, handed to every hook that acts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog

from .hooks import Hooks, hooks_of

if TYPE_CHECKING:  # pragma: no cover
    import pluggy
    from pydantic import BaseModel

    from .config import Config
    from .events import Event, StoredEvent
    from .http import OutboundPipeline
    from .metrics import Metrics
    from .pagerduty import PagerDutyClient
    from .scheduler import Scheduler
    from .servicenow import ServiceNowClient
    from .store.base import Store

log = structlog.get_logger("dutybridge")


class NotReady(RuntimeError):
    """A part of ``ctx`` was used before the core made it (e.g. the store in a command
    that runs without one)."""


@dataclass
class Ctx:
    """The plugin's view of the running daemon.

    ``config`` is the validated configuration; ``plugin_config(name)`` is one
    plugin's validated ``[plugins.<name>]`` section. ``hooks`` calls other plugins'
    hooks, typed (``await ctx.hooks.escalation_policy_for(...)``). ``http`` is the
    outbound pipeline that ``pagerduty`` and ``servicenow`` use; no plugin opens an
    HTTP session of its own. ``enqueue`` puts an event into the durable inbox (poll
    jobs feed what they find through it) and wakes the worker. A plugin keeps its own
    state on its own plugin object, not on ``ctx``.
    """

    config: Config
    pm: pluggy.PluginManager
    store: Store | None = None
    http: OutboundPipeline | None = None
    pagerduty: PagerDutyClient | None = None
    servicenow: ServiceNowClient | None = None
    scheduler: Scheduler | None = None
    metrics: Metrics | None = None
    #: Set by the running worker: tells it that events are waiting.
    waker: Callable[[], None] | None = None
    hooks: Hooks = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.hooks = hooks_of(self.pm)

    def plugin_config(self, name: str) -> BaseModel:
        return self.config.plugin_sections[name]

    def wake_worker(self) -> None:
        """Tell the worker that new events are waiting (no-op without a running worker:
        it finds them on its next look)."""
        if self.waker is None:
            return
        try:
            self.waker()
        except Exception:
            log.exception("worker_wake_failed")

    async def enqueue(self, event: Event) -> StoredEvent | None:
        """Store ``event`` durably in the inbox and wake the worker; None when it is a duplicate."""
        if self.store is None:
            raise NotReady("the store is not open")
        stored = await self.store.add_event(event)
        if stored is not None:
            if self.metrics is not None:
                self.metrics.event_received(event.source, event.type)
            # Whoever produced it (a route, a poll job), the worker should not wait for its next look.
            self.wake_worker()
        return stored
