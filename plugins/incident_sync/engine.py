"""The sync engine's front: each event routed to its direction (PagerDuty ->
ServiceNow, ServiceNow -> PagerDuty), and the names the rest of the plugin uses."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dutybridge.events import Event

from .core import Core
from .links import own_write
from .pd_to_sn import FIRST_TRIGGER, LOOKUP_LIMIT, PdToSn
from .sn_to_pd import SnToPd
from .views import KIND, PLUGIN, SN_SEEN, TABLES, TRACK_SN, incident_data, pd_view, sn_view

if TYPE_CHECKING:  # pragma: no cover
    from dutybridge.context import Ctx

__all__ = [
    "FIRST_TRIGGER",
    "KIND",
    "LOOKUP_LIMIT",
    "NOTE_TYPES",
    "PD_TYPES",
    "PLUGIN",
    "POLLED",
    "SN_SEEN",
    "SYNC_REQUESTED",
    "TABLES",
    "TRACK_SN",
    "Engine",
    "own_write",
    "pd_view",
    "sn_view",
]

# PagerDuty event types (V3 names; the core normalises V2's) that change what incident
# sync mirrors; others are ignored.
PD_TYPES = frozenset(
    {
        "incident.triggered",
        "incident.acknowledged",
        "incident.unacknowledged",
        "incident.reassigned",
        "incident.delegated",
        "incident.escalated",
        "incident.resolved",
        "incident.reopened",
        "incident.annotated",
        "incident.priority_updated",
        "incident.service_updated",
    }
)
POLLED = "incident.polled"
#: Another plugin changed the group/CI links in the store (provisioning sends it).
LINKS_CHANGED = "links.changed"
SYNC_REQUESTED = "incident.sync_requested"
NOTE_TYPES = frozenset({"incident.annotated", "incident.triggered", SYNC_REQUESTED})


class Engine(Core):
    """A change on one side, read afresh, applied to the other.

    Every event is treated as a doorbell for one incident: the handler re-reads the
    incident where it changed and compares it with the state last synced across the
    link (``Link.state``). Only what differs from that snapshot is written to the other
    side, and the snapshot then records what was written. So a duplicated or replayed
    event finds nothing new, an old event delivered late cannot roll newer state back (it
    is never applied, the current state is), and the echo of our own write matches the
    snapshot and stops there: no loop. Handlers of one incident are serialised by
    ``locks``; the two directions share only the ``Core`` they are given.
    """

    def __init__(self, ctx: Ctx) -> None:
        super().__init__(ctx)
        self.pd_to_sn = PdToSn(self)
        self.sn_to_pd = SnToPd(self)

    async def handle(self, event: Event) -> bool:
        await self.ensure_loaded()
        if event.type == LINKS_CHANGED:
            # Provisioning (or an operator's tool) changed the store's group/CI links.
            await self.refresh()
            return True
        sn = event.servicenow
        if sn is not None:
            if sn.table in TABLES:
                if sn.operation == "delete":
                    return False
                return await self.servicenow_changed(sn.table, sn.sys_id, sn.sys_updated_on, mod_count=sn.sys_mod_count)
            if sn.table in ("sys_user_group", "cmdb_ci") and self.conf.v7_fields:
                await self.refresh()
                return True
            return False
        if event.type in (POLLED, SYNC_REQUESTED) and event.resource.startswith("pagerduty:incident:"):
            # incident_sync's own events: a poll's finding, a manual sync request.
            pd_id = event.resource.rsplit(":", 1)[1]
            notes = event.type == SYNC_REQUESTED or bool(event.payload.get("notes"))
            return await self.pagerduty_changed(pd_id, notes=notes, force=event.type == SYNC_REQUESTED)
        pd = event.pagerduty
        if pd is None or pd.resource_type != "incident" or pd.type not in PD_TYPES:
            return False
        # A V3 webhook carries the incident as it was when the event happened; a V2
        # message's incident is of another shape, so that incident is re-read instead.
        data = pd.data if pd.webhook_version == 3 and incident_data(pd.data, pd.id) else None
        # Who resolved, as the webhook says: for the close notes when the incident read
        # names nobody (no last_status_change_by, no readable resolve log entry).
        agent = pd.agent if pd.type == "incident.resolved" else None
        return await self.pagerduty_changed(pd.id, notes=pd.type in NOTE_TYPES, data=data, agent=agent)

    async def pagerduty_changed(
        self,
        pd_id: str,
        *,
        notes: bool = False,
        force: bool = False,
        data: dict | None = None,
        agent: dict | None = None,
    ) -> bool:
        """Sync PagerDuty incident ``pd_id`` to ServiceNow (see ``PdToSn.pagerduty_changed``)."""
        return await self.pd_to_sn.pagerduty_changed(pd_id, notes=notes, force=force, data=data, agent=agent)

    async def servicenow_changed(
        self, table: str, sys_id: str, updated_on: str | None = None, mod_count: str | None = None
    ) -> bool:
        """Sync ServiceNow record ``sys_id`` to PagerDuty (see ``SnToPd.servicenow_changed``)."""
        return await self.sn_to_pd.servicenow_changed(table, sys_id, updated_on, mod_count=mod_count)
