"""What both sync directions share: the clients, the mapping, the user cache, locks,
links and rechecks, and the lookups kept until the configuration is reloaded."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, cast

import structlog

from dutybridge.context import NotReady

from .api import Api
from .health import PollHealth
from .links import Links
from .locks import Locks
from .mapping import SYS_ID, Mapping, load_mapping
from .rechecks import Rechecks
from .users import Users
from .views import PLUGIN, TABLES

if TYPE_CHECKING:  # pragma: no cover
    from dutybridge.context import Ctx
    from dutybridge.store.base import Store

    from .config import IncidentSyncConfig

log = structlog.get_logger("dutybridge.incident_sync")


class Core:
    """One per daemon (held by the ``IncidentSync`` plugin object, as the ``Engine`` built on it)."""

    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx
        self.api = Api(ctx)
        self.users = Users(self)
        self.mapping = Mapping()
        self.locks = Locks(lambda: ctx.store)
        self.links = Links(ctx)
        self.rechecks = Rechecks(self)
        self.poll_health = PollHealth()  # kept across reloads: a failing part stays shown
        self._loaded = False
        self._generation = 0  # of the configuration: stale() counts reloads
        self._load_lock = asyncio.Lock()
        self._priorities: dict[str | None, str] | None = None  # PD priority name -> id
        self._caller: str | None = None
        self._group_names: dict[str, str] = {}

    @property
    def conf(self) -> IncidentSyncConfig:
        # Read on every use, so a SIGHUP reload applies to the next event. The section
        # under PLUGIN is the model this plugin registered for it; ctx cannot say so.
        return cast("IncidentSyncConfig", self.ctx.plugin_config(PLUGIN))

    @property
    def store(self) -> Store:
        if self.ctx.store is None:
            raise NotReady("the store is not open")
        return self.ctx.store

    # -- set-up ------------------------------------------------------------------
    async def refresh(self, *, write: bool = True) -> Mapping:
        async with self._load_lock:
            return await self._load(write=write)

    async def _load(self, *, write: bool = True) -> Mapping:
        generation = self._generation
        self.mapping = await load_mapping(self.ctx, self.api, self.conf, write=write)
        self._loaded = generation == self._generation  # a reload meanwhile (stale()) reads again
        # What was looked up under the old configuration is looked up again.
        self.users.clear()
        self._priorities = None
        self._caller = None
        self._group_names.clear()
        for problem in self.mapping.problems:
            log.warning("link_problem", problem=problem)
        log.info("links_loaded", groups=len(self.mapping.groups), cis=len(self.mapping.cis))
        return self.mapping

    async def ensure_loaded(self) -> None:
        if not self._loaded:
            async with self._load_lock:
                if not self._loaded:  # events that waited here share the one load
                    await self._load()

    def stale(self) -> None:
        """The configuration was reloaded: read the links again before the next event."""
        self._generation += 1
        self._loaded = False

    async def close(self) -> None:
        """Stop pending rechecks (the next poll covers what they would have read)."""
        await self.rechecks.close()

    # -- what is read, and where ---------------------------------------------------
    def tables(self) -> tuple[str, ...]:
        """The incident tables in use: sn_si_incident only when some service opens security incidents."""
        conf = self.conf
        security = conf.incident_type == "security_incident" or any(
            o.incident_type == "security_incident" for o in conf.service_options
        )
        return TABLES if security else ("incident",)

    def sn_fields(self, table: str, *, linked: bool = False) -> list[str]:
        """The fields read of an incident: all a new link or a new PagerDuty incident
        uses (its body template), or for a linked one only what syncing a change uses."""
        conf = self.conf
        if linked:
            fields = [
                "sys_id",
                "number",
                "state",
                "impact",
                "urgency",
                "priority",
                "assignment_group",
                "assigned_to",
                "correlation_id",
                "correlation_display",
                "close_code",
                "close_notes",
                "sys_updated_on",
                "sys_updated_by",
                "sys_mod_count",
            ]
        else:
            fields = [
                "sys_id",
                "number",
                "short_description",
                "description",
                "state",
                "impact",
                "urgency",
                "priority",
                "assignment_group",
                "assigned_to",
                "cmdb_ci",
                "correlation_id",
                "correlation_display",
                "close_code",
                "close_notes",
                "sys_updated_on",
                "sys_updated_by",
                "sys_created_by",
                "sys_created_on",
                "sys_mod_count",
                "opened_by",
            ]
        if conf.v7_fields and table == "incident":
            fields.append(conf.v7_incident_field)
        return fields

    def eligible(self, table: str, rec: dict[str, Any]) -> str:
        """The service a not-yet-linked ServiceNow incident triggers on, or '' when it does not."""
        conf = self.conf
        if str(rec.get("state") or "") in conf.states(table)["done"]:
            return ""
        if str(rec.get("priority") or "") not in conf.trigger_priority_list():
            return ""
        return self.mapping.service_for(conf.mapping_mode, rec.get("assignment_group"), rec.get("cmdb_ci"))

    # -- looked up once per configuration ----------------------------------------
    async def caller_id(self) -> str:
        """The sys_id of the caller set on incidents opened from PagerDuty."""
        if self._caller is None:
            conf = self.conf
            ref = conf.caller or self.ctx.config.servicenow.username
            if SYS_ID.match(ref):
                self._caller = ref
            else:
                row = await self.users.sn_user_by_name(ref)
                self._caller = row["sys_id"] if row else ""
        return self._caller

    async def pd_priority_id(self, name: str | None) -> str | None:
        """The id of PagerDuty's priority called ``name`` (None when it has none)."""
        if not name:
            return None
        if self._priorities is None:
            try:
                self._priorities = {p.get("name") or p.get("summary"): p["id"] for p in await self.api.pd_priorities()}
            except Exception as exc:
                log.info("pd_priorities_unavailable", error=str(exc))
                self._priorities = {}
        return self._priorities.get(name)

    async def group_name(self, sys_id: str) -> str:
        """A ServiceNow group's name (its sys_id when it cannot be read)."""
        if not sys_id:
            return ""
        known = self.mapping.group(sys_id)
        if known is not None and known.name:
            return known.name
        if sys_id not in self._group_names:  # kept until the next reload
            row = await self.api.sn_get("sys_user_group", sys_id, ["name"])
            self._group_names[sys_id] = (row or {}).get("name") or sys_id
        return self._group_names[sys_id]

    # -- the loop bound ------------------------------------------------------------
    def move_allowed(self, st: dict[str, Any], pd_id: str) -> bool:
        """Count one group/policy change for this incident; False past the loop bound."""
        conf = self.conf
        now = time.time()
        moves = [t for t in st.get("moves", []) if now - t < conf.reassignment_window_seconds]
        if len(moves) >= conf.max_reassignments:
            if not st.get("loop_logged"):
                log.warning(
                    "reassignment_loop_bound_reached",
                    reason="assignment no longer synced for this incident (automation on both sides keeps moving it)",
                    pd_incident=pd_id,
                    moves=len(moves),
                    window_seconds=conf.reassignment_window_seconds,
                )
                st["loop_logged"] = True
            st["moves"] = moves
            return False
        moves.append(now)
        st["moves"] = moves
        return True


class Direction:
    """A sync direction's handle on the ``Core`` (its mapping is read at each use: a
    reload replaces it)."""

    def __init__(self, core: Core) -> None:
        self.core = core

    @property
    def ctx(self) -> Ctx:
        return self.core.ctx

    @property
    def conf(self) -> IncidentSyncConfig:
        return self.core.conf

    @property
    def api(self) -> Api:
        return self.core.api

    @property
    def users(self) -> Users:
        return self.core.users

    @property
    def mapping(self) -> Mapping:
        return self.core.mapping

    @property
    def store(self) -> Store:
        return self.core.store

    @property
    def links(self) -> Links:
        return self.core.links

    @property
    def locks(self) -> Locks:
        return self.core.locks
