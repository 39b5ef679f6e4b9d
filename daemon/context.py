"""``ctx``: everything the core offers a plugin, handed to every hook that acts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import pluggy
    from pydantic import BaseModel

    from .config import Config
    from .events import Event, StoredEvent
    from .http import OutboundRequest, OutboundResponse
    from .pagerduty import PagerDutyClient
    from .scheduler import Scheduler
    from .servicenow import ServiceNowClient
    from .store.base import Store


@dataclass
class Ctx:
    """The plugin's view of the running daemon.

    ``config`` is the validated configuration; ``plugin_config(name)`` is one
    plugin's validated ``[plugins.<name>]`` section. ``http`` is the outbound
    pipeline (``await ctx.http.request(OutboundRequest)``) that ``pagerduty`` and
    ``servicenow`` use; no plugin opens an HTTP session of its own. ``enqueue`` puts
    an event into the durable inbox (polling jobs feed what they find through it).
    """

    config: "Config"
    pm: "pluggy.PluginManager"
    store: "Store | None" = None
    http: Any = None  # dutybridge.http.OutboundPipeline
    pagerduty: "PagerDutyClient | None" = None
    servicenow: "ServiceNowClient | None" = None
    scheduler: "Scheduler | None" = None
    metrics: Any = None  # dutybridge.metrics.Metrics
    extras: dict[str, Any] = field(default_factory=dict)

    def plugin_config(self, name: str) -> "BaseModel":
        return self.config.plugin_sections[name]

    async def enqueue(self, event: "Event") -> "StoredEvent | None":
        """Store ``event`` durably in the inbox and wake the worker; None when it is a duplicate."""
        assert self.store is not None, "the store is not open"
        stored = await self.store.add_event(event)
        if stored is not None:
            if self.metrics is not None:
                self.metrics.event_received(event.source, event.type)
            # Whoever produced it (a route, a poll job), the worker should not wait for its next look.
            wake = self.extras.get("wake_worker")
            if wake is not None:
                try:
                    result = wake()
                    if hasattr(result, "__await__"):
                        await result
                except Exception:  # noqa: BLE001 - the event is durable; the worker's poll finds it
                    import structlog

                    structlog.get_logger("dutybridge").exception("waking the worker failed")
        return stored
