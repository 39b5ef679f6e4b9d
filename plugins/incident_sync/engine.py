"""The sync engine: a change on one side, read afresh, applied to the other.

Every event is treated as a doorbell for one incident: the handler re-reads the
incident where it changed and compares it with the state last synced across the
link (``Link.state``). Only what differs from that snapshot is written to the other
side, and the snapshot then records what was written. So a duplicated or replayed
event finds nothing new, an old event delivered late cannot roll newer state back (it
is never applied, the current state is), and the echo of our own write matches the
snapshot and stops there: no loop.

PagerDuty and ServiceNow events of one incident carry different ``resource`` keys,
so the worker may run them at once; an ``asyncio.Lock`` per link serialises them.
Before a link exists the lock key is derived from what both sides can see: a
ServiceNow-born incident is ``sn:<sys_id>`` (PagerDuty carries it as incident_key),
a PagerDuty-born one ``pd:<id>`` (ServiceNow carries it as correlation_id).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import structlog

from dutybridge.events import Event
from dutybridge.store.base import Link, LinkConflictError

from .api import ALREADY, Api, Q, pd_code, status_of
from .mapping import SYS_ID, Mapping, load_mapping
from .users import Users

log = structlog.get_logger("dutybridge.incident_sync")

PLUGIN = "incident_sync"
KIND = "incident"
TABLES = ("incident", "sn_si_incident")
#: The ServiceNow fields whose changes are synced (and kept in the snapshot).
TRACK_SN = ("state", "assignment_group", "assigned_to", "priority")
FROM_SN_PREFIX = "(from ServiceNow:"
PD_SUFFIX = re.compile(r"\(PagerDuty: .+ on .+\)\s*$", re.S)

# V3 and V2 webhook types that change what incident sync mirrors; others are ignored.
PD_TYPES = frozenset({
    "incident.triggered", "incident.acknowledged", "incident.unacknowledged", "incident.reassigned",
    "incident.delegated", "incident.escalated", "incident.resolved", "incident.reopened", "incident.annotated",
    "incident.priority_updated", "incident.service_updated",
    "incident.trigger", "incident.acknowledge", "incident.unacknowledge", "incident.resolve", "incident.assign",
    "incident.escalate", "incident.delegate", "incident.annotate",
})
POLLED = "incident.polled"
SYNC_REQUESTED = "incident.sync_requested"
NOTE_TYPES = frozenset({"incident.annotated", "incident.annotate", "incident.triggered", "incident.trigger",
                        SYNC_REQUESTED})
#: ``Link.state`` key: the ServiceNow record's sys_mod_count up to which every change is
#: synced or was our own write (see ``Engine._sn_change_synced``).
SN_SEEN = "sn_seen"
#: What a PagerDuty incident is read with before it is linked: its body is in the first trigger.
FIRST_TRIGGER = ["first_trigger_log_entries"]
#: Rows asked for by the lookup before linking; more means duplicates, looked at one query each.
LOOKUP_LIMIT = 20


def pd_view(inc: dict) -> dict:
    """The PagerDuty fields incident sync mirrors, as compared across events."""
    acks = [a.get("acknowledger") or {} for a in inc.get("acknowledgements") or []]
    users = [a.get("id") for a in acks if a.get("type") in ("user_reference", "user")]
    prio = inc.get("priority") or {}
    return {
        "status": inc.get("status"),
        "ep": (inc.get("escalation_policy") or {}).get("id"),
        "assignees": [a["assignee"]["id"] for a in inc.get("assignments") or [] if a.get("assignee")],
        "priority": prio.get("summary") or prio.get("name"),
        "urgency": inc.get("urgency"),
        "ack_by": users[-1] if users else None,
    }


def incident_data(data: Any, pd_id: str) -> bool:
    """Whether a V3 webhook's ``event.data`` is the incident ``pd_id`` itself (not a note)."""
    return isinstance(data, dict) and data.get("type") == "incident" and data.get("id") == pd_id


def data_view(data: dict) -> dict:
    """``pd_view``'s fields that a V3 webhook's incident data carries (not who acknowledged)."""
    prio = data.get("priority") or {}
    return {
        "status": data.get("status"),
        "ep": (data.get("escalation_policy") or {}).get("id"),
        "assignees": [a["id"] for a in data.get("assignees") or [] if isinstance(a, dict) and a.get("id")],
        "priority": prio.get("summary") or prio.get("name"),
        "urgency": data.get("urgency"),
    }


def mod_count_of(rec: dict | None) -> int | None:
    """A record's sys_mod_count as a number (None when it has none)."""
    value = str((rec or {}).get("sys_mod_count") or "")
    return int(value) if value.isdigit() else None


def own_write(st: dict, written: dict | None) -> None:
    """After our own write to the ServiceNow record: when it made the version right after
    the last one fully synced (``SN_SEEN``), and the record as written agrees with the
    snapshot in every tracked field, that version holds nothing but our write, so its
    doorbell (our echo) needs no read. Otherwise (a person's change got in between, a
    business rule changed a tracked field, no mod count) the echo is read as before."""
    seen, mod = st.get(SN_SEEN), mod_count_of(written)
    if seen is None or mod is None or mod != seen + 1:
        return
    snap, view = st.get("sn") or {}, sn_view(written or {})
    if all(str(snap.get(k) or "") == view[k] for k in TRACK_SN):
        st[SN_SEEN] = mod


def sn_view(rec: dict) -> dict:
    view = {k: str(rec.get(k) or "") for k in TRACK_SN}
    view["sys_updated_on"] = str(rec.get("sys_updated_on") or "")
    view["sys_mod_count"] = str(rec.get("sys_mod_count") or "0")
    return view


def link_key(link: Link) -> str:
    return f"sn:{link.sn_id}" if (link.state or {}).get("origin") == "sn" else f"pd:{link.pd_id}"


class _Fmt(dict):
    def __missing__(self, key: str) -> str:
        return ""


def render(template: str, values: dict) -> str:
    return template.format_map(_Fmt({k: ("" if v is None else v) for k, v in values.items()}))


class Engine:
    """One per daemon (``ctx.extras["incident_sync"]``): locks, the mapping, user cache."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.api = Api(ctx)
        self.users = Users(self)
        self.mapping = Mapping()
        self._loaded = False
        self._generation = 0  # of the configuration: stale() counts reloads
        self._load_lock = asyncio.Lock()
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        # Lock releases, numbered: which keys were held since a read before the lock.
        self._seq = 0
        self._released: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._released_floor = 0
        # sys_id -> SN_SEEN as last saved: "changes up to this version are synced" stays
        # true, so a doorbell at or below it needs not even the link (bounded, oldest out).
        self._sn_seen: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._priorities: dict[str, str] | None = None  # PD priority name -> id
        self._caller: str | None = None
        self._group_names: dict[str, str] = {}
        self._rechecks: dict[str, asyncio.TimerHandle] = {}
        self._rechecked: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._tasks: set[asyncio.Task] = set()

    @property
    def conf(self) -> Any:
        # Read on every use, so a SIGHUP reload applies to the next event.
        return self.ctx.plugin_config(PLUGIN)

    @property
    def store(self) -> Any:
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
            log.warning("incident_sync: link problem", problem=problem)
        log.info("incident_sync: links loaded", groups=len(self.mapping.groups), cis=len(self.mapping.cis))
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
        for handle in self._rechecks.values():
            handle.cancel()
        self._rechecks.clear()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- rechecks ------------------------------------------------------------------
    def _schedule_recheck(self, table: str, sys_id: str, stamp: str) -> None:
        """Read the record again once its second is over: a change later in the same
        second rang a doorbell with the same event id, dropped as a duplicate."""
        delay = self.conf.recheck_seconds
        key = f"{table}:{sys_id}:{stamp}:recheck"
        if not delay or not stamp or key in self._rechecks or key in self._rechecked:
            return
        loop = asyncio.get_running_loop()
        self._rechecks[key] = loop.call_later(delay, self._fire_recheck, key, table, sys_id, stamp)

    def _fire_recheck(self, key: str, table: str, sys_id: str, stamp: str) -> None:
        self._rechecks.pop(key, None)
        self._rechecked[key] = None
        while len(self._rechecked) > 10_000:
            self._rechecked.popitem(last=False)
        task = asyncio.get_running_loop().create_task(self._enqueue_recheck(key, table, sys_id, stamp))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _enqueue_recheck(self, key: str, table: str, sys_id: str, stamp: str) -> None:
        try:
            await self.ctx.enqueue(Event(  # enqueue wakes the worker
                source="servicenow", type=f"{table}.update", event_id=key, resource=f"servicenow:{table}:{sys_id}",
                payload={"table": table, "sys_id": sys_id, "operation": "update", "sys_updated_on": stamp,
                         "recheck": True}))
        except Exception as exc:  # noqa: BLE001 - the poll reads it instead
            log.warning("incident_sync: recheck not queued", sn_sys_id=sys_id, error=f"{type(exc).__name__}: {exc}")

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
        try:
            async with lock:
                try:
                    yield
                finally:
                    self._released_now(key)
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def _released_now(self, key: str) -> None:
        self._seq += 1
        self._released[key] = self._seq
        self._released.move_to_end(key)
        while len(self._released) > 10_000:
            _, seq = self._released.popitem(last=False)
            self._released_floor = max(self._released_floor, seq)

    def _untouched_since(self, keys: tuple[str, ...], mark: int) -> bool:
        """No handler held any of ``keys`` after ``mark`` (``self._seq`` taken before a
        read): that read is then at least as new as anything applied under them, and
        serves as the read under the lock. A key evicted from the memory counts as
        released as late as the newest eviction."""
        return all(self._released.get(key, self._released_floor) <= mark for key in keys)

    async def _under_link_lock(self, keys: tuple[str, ...], get_link, fn, mark: int, link: Link | None) -> Any:
        """Run ``fn(link, fresh)`` under the locks of the incident's link, re-keying if the
        link appeared (or its key changed) while waiting. ``link`` was read after ``mark``
        (``self._seq`` then); ``fresh``: no handler held those locks since, so it and any
        read made before waiting are still good (every change to an incident's link, and
        every write about the incident, happens under a key all its handlers share)."""
        for attempt in range(4):
            async with self.locked(*keys):
                fresh = self._untouched_since(keys, mark)
                if not fresh or attempt:
                    link = await get_link()
                if link is None or link_key(link) in keys or attempt == 3:
                    return await fn(link, fresh)
            keys = (link_key(link),)
        raise AssertionError("unreachable")

    def _remember_seen(self, sn_id: str, state: dict) -> None:
        seen = state.get(SN_SEEN)
        if isinstance(seen, int) and seen > self._sn_seen.get(sn_id, -1):
            self._sn_seen[sn_id] = seen
            self._sn_seen.move_to_end(sn_id)
            while len(self._sn_seen) > 50_000:
                self._sn_seen.popitem(last=False)

    async def _save(self, link: Link, state: dict, status: str | None = None) -> Link:
        await self.store.update_link_state(KIND, link.pd_id, state, status=status)
        self._remember_seen(link.sn_id, state)
        # A copy: callers go on changing ``state`` and compare it with what was saved.
        return Link(kind=KIND, pd_id=link.pd_id, sn_id=link.sn_id, state=copy.deepcopy(state),
                    status=status or link.status, created_at=link.created_at)

    # -- events ------------------------------------------------------------------
    async def handle(self, event: Any) -> bool:
        await self.ensure_loaded()
        if event.source == "servicenow":
            table = event.payload.get("table")
            if table in TABLES:
                if event.payload.get("operation") == "delete":
                    return False
                return await self.servicenow_changed(table, event.payload["sys_id"], event.payload.get("sys_updated_on"),
                                                     mod_count=event.payload.get("sys_mod_count"))
            if table in ("sys_user_group", "cmdb_ci") and self.conf.v7_fields:
                await self.refresh()
                return True
            return False
        if event.source in ("pagerduty", PLUGIN) and event.resource.startswith("pagerduty:incident:"):
            if event.type not in PD_TYPES and event.type not in (POLLED, SYNC_REQUESTED):
                return False
            pd_id = event.resource.rsplit(":", 1)[1]
            notes = event.type in NOTE_TYPES or bool(event.payload.get("notes"))
            # A V3 webhook carries the incident as it was when the event happened.
            data = (event.payload.get("event") or {}).get("data") if event.source == "pagerduty" else None
            return await self.pagerduty_changed(pd_id, notes=notes, force=event.type == SYNC_REQUESTED,
                                                data=data if incident_data(data, pd_id) else None)
        return False

    # ============================================================================
    # PagerDuty -> ServiceNow
    # ============================================================================
    async def pagerduty_changed(self, pd_id: str, *, notes: bool = False, force: bool = False,
                                data: dict | None = None) -> bool:
        """Sync PagerDuty incident ``pd_id``. ``data``: the incident as a V3 webhook carried
        it (the state when its event happened), which may spare reading it."""
        mark = self._seq  # reads from here on are good under the lock while nobody held it
        link = await self.store.get_link(KIND, pd_id=pd_id, include_unlinked=True)
        if not force and self._pd_event_synced(link, data):
            return True
        pre: dict | None = None
        if link is not None:
            keys: tuple[str, ...] = (link_key(link),)
        else:
            about = data if data is not None and "incident_key" in data else None
            if about is None:
                # Read before the lock, to know which one; kept when nobody held it meanwhile.
                pre = await self.api.pd_incident(pd_id, include=FIRST_TRIGGER)
                if pre is None:
                    log.info("incident_sync: PagerDuty incident not found", pd_incident=pd_id)
                    return False
                about = pre
            keys = self._pd_keys(pd_id, about)

        async def get_link() -> Link | None:
            return await self.store.get_link(KIND, pd_id=pd_id, include_unlinked=True)

        async def run(link: Link | None, fresh: bool) -> bool:
            if not force and self._pd_event_synced(link, data):
                return True
            if pre is not None and fresh:
                inc: dict | None = pre
            else:
                # Not linked yet: what opening the ServiceNow incident needs (the body) in the same read.
                inc = await self.api.pd_incident(pd_id, include=FIRST_TRIGGER if link is None else None)
            if inc is None:
                return False
            if link is None:
                return await self._pd_unlinked(inc, force=force, notes=notes and not trigger)
            if link.status != "linked":
                log.info("incident_sync: link is unlinked; PagerDuty change not synced", pd_incident=pd_id)
                return True
            await self._pd_to_sn(link, inc, notes=notes)
            return True

        # A note event carrying the incident is the trigger itself (an annotation carries
        # the note): no note comes before it, and each one after has an event of its own.
        trigger = data is not None and notes and not force

        return await self._under_link_lock(keys, get_link, run, mark, link)

    def _pd_event_synced(self, link: Link | None, data: dict | None) -> bool:
        """Whether the event's own view of the incident is what was last synced: then it
        brings nothing (the echo of our own write, a duplicate, a replay) and needs no read.

        Safe because every later change has an event of its own, read in its turn. An
        urgency change has none: the poll's sweep of open incidents finds it (as it finds
        one made after the last event), so without the poll nothing is skipped. Only a V3
        event carrying the incident and all five fields compared qualifies; an
        annotation carries a note, not this.
        """
        if link is None or link.status != "linked" or data is None or self.conf.poll_interval_seconds <= 0:
            return False
        snap = (link.state or {}).get("pd")
        if not snap or not all(k in data for k in ("status", "escalation_policy", "assignees", "priority", "urgency")):
            return False
        view = data_view(data)
        return all(k in snap and snap[k] == v for k, v in view.items())

    def _pd_keys(self, pd_id: str, inc: dict) -> tuple[str, ...]:
        """The lock keys of a PagerDuty incident not linked yet: ``pd:<id>``, and
        ``sn:<incident_key>`` when that could be a ServiceNow sys_id (an incident born
        there, whose handler locks by sys_id). Holding both costs nothing and spares
        asking ServiceNow which it is before taking the lock."""
        key = inc.get("incident_key") or ""
        return (f"pd:{pd_id}", f"sn:{key}") if SYS_ID.match(key) else (f"pd:{pd_id}",)

    def tables(self) -> tuple[str, ...]:
        """The incident tables in use: sn_si_incident only when some service opens security incidents."""
        conf = self.conf
        security = conf.incident_type == "security_incident" or any(
            o.incident_type == "security_incident" for o in conf.service_options)
        return TABLES if security else ("incident",)

    def _sn_fields(self, table: str, *, linked: bool = False) -> list[str]:
        """The fields read of an incident: all a new link or a new PagerDuty incident
        uses (its body template), or for a linked one only what syncing a change uses."""
        conf = self.conf
        if linked:
            fields = ["sys_id", "number", "state", "impact", "urgency", "priority", "assignment_group", "assigned_to",
                      "correlation_id", "correlation_display", "close_code", "close_notes", "sys_updated_on",
                      "sys_updated_by", "sys_mod_count"]
        else:
            fields = ["sys_id", "number", "short_description", "description", "state", "impact", "urgency", "priority",
                      "assignment_group", "assigned_to", "cmdb_ci", "correlation_id", "correlation_display",
                      "close_code", "close_notes", "sys_updated_on", "sys_updated_by", "sys_created_by",
                      "sys_created_on", "sys_mod_count", "opened_by"]
        if conf.v7_fields and table == "incident":
            fields.append(conf.v7_incident_field)
        return fields

    async def _sn_lookup(self, sys_id: str | None, pd_id: str | None, pd_table: str) -> tuple[str, str, dict] | None:
        """Before linking a PagerDuty incident: the ServiceNow incident it was born from
        (``sys_id``, its incident_key), else the one opened for it already (``pd_id`` in
        correlation_id, or the v7 field, in ``pd_table``; the oldest). Both questions go
        in one query per table (``^NQ``). Returns ("born", table, rec), ("opened", table,
        rec) or None."""
        conf = self.conf
        opened: dict | None = None
        for table in self.tables():
            by_pd = bool(pd_id) and table == pd_table
            if not sys_id and not by_pd:
                continue
            query = Q()
            if sys_id:
                query.eq("sys_id", sys_id)
            if by_pd:
                if sys_id:
                    query.new_query()
                query.eq("correlation_id", pd_id).eq("correlation_display", "PagerDuty")
                if conf.v7_fields and table == "incident":
                    query.new_query().eq(conf.v7_incident_field, pd_id)
            try:
                rows = await self.api.sn_query(table, query, self._sn_fields(table), limit=LOOKUP_LIMIT)
            except Exception as exc:
                if not by_pd and status_of(exc) in (400, 403):  # a table this instance lacks or hides
                    continue
                raise
            born = next((r for r in rows if sys_id and r.get("sys_id") == sys_id), None)
            if born is None and sys_id and len(rows) >= LOOKUP_LIMIT:
                born = await self.api.sn_get(table, sys_id, self._sn_fields(table))  # crowded out: ask directly
            if born is not None:
                return "born", table, born
            if by_pd:
                if len(rows) >= LOOKUP_LIMIT:
                    opened = await self._sn_find_by_pd_id(table, pd_id)  # too many to pick the oldest from
                else:
                    by_corr = [r for r in rows if r.get("correlation_id") == pd_id
                               and r.get("correlation_display") == "PagerDuty"]
                    v7 = [r for r in rows if conf.v7_fields and table == "incident"
                          and str(r.get(conf.v7_incident_field) or "") == pd_id]
                    pick = by_corr or v7
                    opened = min(pick, key=lambda r: str(r.get("sys_created_on") or "")) if pick else None
        return ("opened", pd_table, opened) if opened is not None else None

    async def _pd_unlinked(self, inc: dict, *, force: bool, notes: bool = True) -> bool:
        conf = self.conf
        service = (inc.get("service") or {}).get("id")
        ep = (inc.get("escalation_policy") or {}).get("id")
        key = inc.get("incident_key") or ""
        mapped = self.mapping.is_mapped_incident(service, ep)
        # PagerDuty's own incident keys are 32 hex digits too: only ask ServiceNow when the
        # incident could have been triggered from there (a mapped service or policy).
        born_there = bool(SYS_ID.match(key)) and mapped
        manual = conf.sync_option_for(service) == "manual"
        syncs = force or (mapped and not manual)
        table = conf.table_for(service)
        found = await self._sn_lookup(key if born_there else None, inc["id"] if syncs else None, table) \
            if (born_there or syncs) else None
        if found is not None and found[0] == "born":
            # Born in ServiceNow; its trigger handler did not get to link it.
            _, born_table, rec = found
            with contextlib.suppress(LinkConflictError):
                await self._new_link(inc, born_table, rec, origin="sn")
            return True
        if not syncs:
            if manual:
                log.info("incident_sync: manual sync service; waiting for a sync request", pd_incident=inc["id"],
                         service=service)
            else:
                log.info("incident_sync: PagerDuty incident on an unmapped service and policy; not synced",
                         pd_incident=inc["id"], service=service, escalation_policy=ep)
            return False
        if found is not None:
            # Opened earlier (an attempt that failed after the insert, the v7 app, another
            # instance): link it and bring it up to date instead of opening a duplicate.
            try:
                link = await self._new_link(inc, table, found[2], origin="pd", pd_snapshot={})
            except LinkConflictError:
                return True
            await self._pd_to_sn(link, inc, notes=True)
            return True
        rec = await self._create_sn(table, inc)
        # Everything in the new record is our own write: its doorbell needs no read (known
        # before the link is stored, which the doorbell may overtake).
        seen = mod_count_of(rec)
        if seen is not None:
            self._remember_seen(rec["sys_id"], {SN_SEEN: seen})
        link = await self._new_link(inc, table, rec, origin="pd", sn_seen=seen)
        log.info("incident_sync: ServiceNow incident opened", pd_incident=inc["id"], sn_table=table,
                 sn_number=rec.get("number"), sn_sys_id=rec.get("sys_id"))
        # Notes made before we got to it. Each note has an event of its own (the annotation
        # webhook, the poll's annotate log entry) that reads them once the link exists; so
        # while the poll is on, opening on the trigger's own event leaves them to that.
        if conf.sync_work_notes and (notes or conf.poll_interval_seconds <= 0):
            st = copy.deepcopy(link.state)
            await self._pd_notes_to_sn(link, table, st)
        return True

    async def _sn_find_by_pd_id(self, table: str, pd_id: str) -> dict | None:
        conf = self.conf
        rows = await self.api.sn_query(table, Q().eq("correlation_id", pd_id).eq("correlation_display", "PagerDuty"),
                                       self._sn_fields(table), limit=1, order_by="sys_created_on")
        if not rows and conf.v7_fields and table == "incident":
            rows = await self.api.sn_query(table, Q().eq(conf.v7_incident_field, pd_id), self._sn_fields(table),
                                           limit=1, order_by="sys_created_on")
        return rows[0] if rows else None

    async def _new_link(self, inc: dict, table: str, rec: dict, *, origin: str, pd_snapshot: dict | None = None,
                        sn_snapshot: dict | None = None, sn_notes: list[str] | None = None,
                        sn_seen: int | None = None) -> Link:
        state: dict[str, Any] = {
            "table": table,
            "origin": origin,
            "pd": pd_view(inc) if pd_snapshot is None else pd_snapshot,
            "sn": sn_view(rec) if sn_snapshot is None else sn_snapshot,
            "pd_notes": [],
            "sn_notes": sn_notes or [],
            "moves": [],
        }
        if sn_seen is not None:
            state[SN_SEEN] = sn_seen
        try:
            link = await self.store.put_link(Link(kind=KIND, pd_id=inc["id"], sn_id=rec["sys_id"], state=state))
            self._remember_seen(link.sn_id, state)
            return link
        except LinkConflictError:
            existing = await self.store.get_link(KIND, sn_id=rec["sys_id"])
            log.warning("incident_sync: ServiceNow incident already linked to another PagerDuty incident; "
                        "not linking a second", sn_sys_id=rec["sys_id"], pd_incident=inc["id"],
                        linked_to=existing.pd_id if existing else None)
            raise

    async def _caller_id(self) -> str:
        if self._caller is None:
            conf = self.conf
            ref = conf.caller or self.ctx.config.servicenow.username
            if SYS_ID.match(ref):
                self._caller = ref
            else:
                row = await self.users.sn_user_by_name(ref)
                self._caller = row["sys_id"] if row else ""
        return self._caller

    def _sn_priority_for(self, view: dict) -> str | None:
        conf = self.conf
        if view.get("priority"):
            mapped = conf.pd_priority_to_sn().get(view["priority"])
            if mapped:
                return mapped
        return conf.pd_urgency_to_sn().get(view.get("urgency") or "")

    def _impact_urgency(self, priority: str | None) -> dict:
        return self.conf.impact_urgency_for(priority)

    async def _resolution(self, inc: dict) -> tuple[str, str]:
        """(who resolved, their resolution note) of a resolved PagerDuty incident."""
        who = (inc.get("last_status_change_by") or {}).get("summary") or "PagerDuty"
        note = ""
        try:
            for entry in await self.api.pd_incident_log_entries(inc["id"]):
                if entry.get("type") == "resolve_log_entry":
                    note = entry.get("note") or ""
                    who = (entry.get("agent") or {}).get("summary") or who
                    break
        except Exception as exc:  # noqa: BLE001 - the note is a nicety, the state is not
            log.warning("incident_sync: resolution note unavailable", pd_incident=inc["id"], error=str(exc))
        return who, note

    def _details(self, inc: dict) -> str:
        # PagerDuty keeps an incident's body in its first trigger log entry (channel.details).
        details = (inc.get("body") or {}).get("details")
        if details is None:
            first = inc.get("first_trigger_log_entry") or {}
            details = (first.get("channel") or {}).get("details")
        if details is None or details == "":
            return inc.get("title") or ""
        if isinstance(details, str):
            return details
        if isinstance(details, dict) and isinstance(details.get("description"), str) and len(details) == 1:
            return details["description"]
        return json.dumps(details, indent=2, sort_keys=True)

    async def _create_sn(self, table: str, inc: dict) -> dict:
        conf = self.conf
        view = pd_view(inc)
        states = conf.states(table)
        service = (inc.get("service") or {}).get("id")
        group = self.mapping.group_for_pagerduty(service, view["ep"], None)
        fields: dict[str, Any] = {
            "short_description": (inc.get("title") or inc["id"])[:160],
            "description": render(conf.servicenow_description, {
                "details": self._details(inc), "title": inc.get("title"), "html_url": inc.get("html_url"),
                "service": (inc.get("service") or {}).get("summary"), "id": inc["id"]}),
            "correlation_id": inc["id"],
            "correlation_display": "PagerDuty",
            ("caller_id" if table == "incident" else "caller"): await self._caller_id(),
            **self._impact_urgency(self._sn_priority_for(view)),
        }
        if group is not None:
            fields["assignment_group"] = group.sys_id
        if conf.v7_fields and table == "incident":
            fields[conf.v7_incident_field] = inc["id"]
        if conf.mapping_mode == "cis_and_assignment_groups":
            ci = self.mapping.ci_for_service(service)
            if ci is not None:
                fields["cmdb_ci"] = ci.sys_id
        if view["status"] == "acknowledged":
            fields["state"] = states["in_progress"]
            who = await self.users.sn_for_pd(view["ack_by"])
            if who:
                fields["assigned_to"] = who
        elif view["status"] == "resolved":
            who, note = await self._resolution(inc)
            fields.update(state=states["resolved"], close_code=conf.close_code,
                          close_notes=render(conf.close_notes, {"user": who, "resolution": note}))
        if "assigned_to" not in fields and not conf.assign_on_ack_only and view["status"] != "resolved" and view["assignees"]:
            who = await self.users.sn_for_pd(view["assignees"][0])
            if who:
                fields["assigned_to"] = who
        return await self.api.sn_insert(table, fields)

    async def _pd_to_sn(self, link: Link, inc: dict, *, notes: bool) -> None:
        conf = self.conf
        st = copy.deepcopy(link.state or {})
        table = st.get("table", "incident")
        old = st.get("pd") or {}
        new = pd_view(inc)
        changed = {k for k in new if old.get(k) != new[k]} if old else set(new)
        if changed:
            rec = await self.api.sn_get(table, link.sn_id, self._sn_fields(table, linked=True))
            if rec is None:
                log.warning("incident_sync: ServiceNow incident gone; link marked unlinked", sn_sys_id=link.sn_id,
                            pd_incident=link.pd_id)
                await self._save(link, st, status="unlinked")
                return
            agreed: set[str] = set()
            desired = await self._desired_sn(table, inc, old, new, changed, rec, st, agreed)
            updates = {k: v for k, v in desired.items() if str(rec.get(k) or "") != str(v)}
            # What ServiceNow has already (a person did the same there, its doorbell maybe
            # still on the way) is synced: recorded, so that doorbell compares with it, not
            # with an older value (which a later change back would equal, leaving
            # PagerDuty behind for good).
            snap, have = st.get("sn") or {}, sn_view(rec)
            for k in TRACK_SN:
                if k in agreed or (k in desired and k not in updates):
                    snap[k] = have[k]
            if {"impact", "urgency"} & set(desired) and not {"impact", "urgency"} & set(updates):
                snap["priority"] = have["priority"]
            st["sn"] = snap
            if updates:
                written = await self.api.sn_update(table, link.sn_id, updates)
                view = sn_view(written)
                for k in TRACK_SN:
                    if k in updates or (k == "priority" and ({"impact", "urgency"} & set(updates))):
                        snap[k] = view[k]
                st["sn"] = snap
                own_write(st, written)
                log.info("incident_sync: PagerDuty change applied to ServiceNow", pd_incident=link.pd_id,
                         sn_sys_id=link.sn_id, fields=sorted(updates), changed=sorted(changed))
        st["pd"] = new
        if st != link.state:
            link = await self._save(link, st)
        if notes and conf.sync_work_notes:
            await self._pd_notes_to_sn(link, table, copy.deepcopy(link.state))

    async def _desired_sn(self, table: str, inc: dict, old: dict, new: dict, changed: set[str], rec: dict,
                          st: dict, agreed: set[str]) -> dict:
        """The ServiceNow fields PagerDuty's changes ask for; ``agreed`` gets the tracked
        fields whose wanted value the record has already."""
        conf = self.conf
        states = conf.states(table)
        up: dict[str, str] = {}
        done = str(rec.get("state") or "") in states["done"]
        status = new["status"]
        reopened = old.get("status") == "resolved"
        if "status" in changed:
            if status == "resolved" and done:
                agreed.add("state")
            if status == "resolved" and not done:
                who, note = await self._resolution(inc)
                up.update(state=states["resolved"], close_code=conf.close_code,
                          close_notes=render(conf.close_notes, {"user": who, "resolution": note}))
            elif status == "acknowledged" and (reopened or not done):
                # A ServiceNow incident resolved meanwhile stays resolved: only a reopen in
                # PagerDuty reopens it (its resolution then reaches PagerDuty in turn).
                up["state"] = states["in_progress"]
                who = await self.users.sn_for_pd(new["ack_by"])
                if who:
                    up["assigned_to"] = who
            elif status == "triggered" and done and reopened:
                up["state"] = states["reopened"]
        if status == "resolved":
            return up
        if "ep" in changed:
            service = (inc.get("service") or {}).get("id")
            group = self.mapping.group_for_pagerduty(service, new["ep"], str(rec.get("assignment_group") or ""))
            if group is not None and group.sys_id == rec.get("assignment_group"):
                agreed.add("assignment_group")
            elif group is not None and self._move_allowed(st, inc["id"]):
                up["assignment_group"] = group.sys_id
        if not conf.assign_on_ack_only and "assignees" in changed and new["assignees"] and "assigned_to" not in up:
            who = await self.users.sn_for_pd(new["assignees"][0])
            if who:
                up["assigned_to"] = who
        if "priority" in changed or ("urgency" in changed and not new.get("priority")):
            wanted = self._sn_priority_for(new)
            if wanted and wanted != str(rec.get("priority") or ""):
                up.update(self._impact_urgency(wanted))
            elif wanted:
                agreed.add("priority")
        return up

    def _move_allowed(self, st: dict, pd_id: str) -> bool:
        """Count one group/policy change for this incident; False past the loop bound."""
        conf = self.conf
        now = time.time()
        moves = [t for t in st.get("moves", []) if now - t < conf.reassignment_window_seconds]
        if len(moves) >= conf.max_reassignments:
            if not st.get("loop_logged"):
                log.warning("incident_sync: reassignment loop bound reached; assignment no longer synced for this "
                            "incident (automation on both sides keeps moving it)", pd_incident=pd_id,
                            moves=len(moves), window_seconds=conf.reassignment_window_seconds)
                st["loop_logged"] = True
            st["moves"] = moves
            return False
        moves.append(now)
        st["moves"] = moves
        return True

    async def _pd_notes_to_sn(self, link: Link, table: str, st: dict) -> None:
        notes = await self.api.pd_notes(link.pd_id)
        seen = set(st.get("pd_notes", []))
        fresh = sorted((n for n in notes if n.get("id") not in seen), key=lambda n: (n.get("created_at") or "", n["id"]))
        if not fresh:
            return
        journal: list[dict] | None = None
        for note in fresh:
            seen.add(note["id"])
            content = note.get("content") or ""
            if content.startswith(FROM_SN_PREFIX) or not content.strip():
                st["pd_notes"] = sorted(seen)
                continue  # mirrored from ServiceNow by us: never back
            who = (note.get("user") or {}).get("summary") or "PagerDuty"
            text = f"{content} (PagerDuty: {who} on {note.get('created_at')})"
            if journal is None:
                journal = await self.api.sn_journal(link.sn_id)
            if not any(j.get("value") == text for j in journal):
                own_write(st, await self.api.sn_update(table, link.sn_id, {"work_notes": text}))
                log.info("incident_sync: PagerDuty note copied to a work note", pd_incident=link.pd_id, note=note["id"])
            st["pd_notes"] = sorted(seen)
            link = await self._save(link, st)
        if st != link.state:
            await self._save(link, st)

    # ============================================================================
    # ServiceNow -> PagerDuty
    # ============================================================================
    async def servicenow_changed(self, table: str, sys_id: str, updated_on: str | None = None,
                                 mod_count: str | None = None) -> bool:
        if mod_count is not None and str(mod_count).isdigit() and int(mod_count) <= self._sn_seen.get(sys_id, -1):
            return True  # synced, or our own write: see _sn_change_synced
        mark = self._seq  # reads from here on are good under the lock while nobody held it
        link = await self.store.get_link(KIND, sn_id=sys_id, include_unlinked=True)
        pre: dict | None = None
        if link is not None and link.status == "linked":
            if self._sn_change_synced(link, mod_count):
                return True
            seen = ((link.state or {}).get("sn") or {}).get("sys_updated_on") or ""
            if updated_on and seen and updated_on < seen:
                return True  # an older change, already covered by a newer read
            keys: tuple[str, ...] = (link_key(link),)
        else:
            # Read before the lock, to know which one; kept when nobody held it meanwhile.
            pre = await self.api.sn_get(table, sys_id, self._sn_fields(table))
            if pre is None:
                return False
            pd_id = self._pd_id_of(table, pre)
            keys = (f"pd:{pd_id}" if pd_id else f"sn:{sys_id}",)

        async def get_link() -> Link | None:
            return await self.store.get_link(KIND, sn_id=sys_id, include_unlinked=True)

        async def run(link: Link | None, fresh: bool) -> bool:
            linked = link is not None and link.status == "linked"
            if linked and self._sn_change_synced(link, mod_count):
                return True
            if pre is not None and fresh:
                rec = pre
            else:
                rec = await self.api.sn_get(table, sys_id, self._sn_fields(table, linked=linked))
            if rec is None:
                return False
            if not linked:
                acted = await self._sn_unlinked(table, rec, link)
            else:
                await self._sn_to_pd(link, table, rec)
                acted = True
            if acted and mod_count is None:
                # A doorbell without sys_mod_count (an older business rule) is keyed by
                # the second only: a later change in that second may have been dropped.
                self._schedule_recheck(table, sys_id, str(rec.get("sys_updated_on") or ""))
            return acted

        return await self._under_link_lock(keys, get_link, run, mark, link)

    @staticmethod
    def _sn_change_synced(link: Link, mod_count: str | None) -> bool:
        """Whether the change a doorbell (or poll event) names is synced already: its
        sys_mod_count is at most ``SN_SEEN``, the version up to which every change was read
        and synced (a record read, then its work notes) or was our own write (``own_write``).
        Each later change rings with its own count, so skipping this one loses nothing,
        and the echo of our own write costs no read. Without a count: read, as before."""
        if mod_count is None or not str(mod_count).isdigit():
            return False
        seen = (link.state or {}).get(SN_SEEN)
        return isinstance(seen, int) and int(mod_count) <= seen

    def _pd_id_of(self, table: str, rec: dict) -> str | None:
        conf = self.conf
        if rec.get("correlation_display") == "PagerDuty" and rec.get("correlation_id"):
            return str(rec["correlation_id"])
        if conf.v7_fields and table == "incident" and rec.get(conf.v7_incident_field):
            return str(rec[conf.v7_incident_field])
        return None

    def _eligible(self, table: str, rec: dict) -> str:
        """The service a not-yet-linked ServiceNow incident triggers on, or '' when it does not."""
        conf = self.conf
        if str(rec.get("state") or "") in conf.states(table)["done"]:
            return ""
        if str(rec.get("priority") or "") not in conf.trigger_priority_list():
            return ""
        return self.mapping.service_for(conf.mapping_mode, rec.get("assignment_group"), rec.get("cmdb_ci"))

    async def _sn_unlinked(self, table: str, rec: dict, old: Link | None) -> bool:
        pd_id = self._pd_id_of(table, rec)
        if pd_id and (old is None or old.pd_id != pd_id):
            inc = await self.api.pd_incident(pd_id)
            if inc is not None:
                # Opened from PagerDuty (by us or by the v7 app) but not linked here: adopt it.
                try:
                    await self._new_link(inc, table, rec, origin="pd")
                except LinkConflictError:
                    return True
                log.info("incident_sync: linked an existing pair", pd_incident=pd_id, sn_sys_id=rec["sys_id"])
                return True
        service = self._eligible(table, rec)
        if not service:
            return False
        await self._create_pd(table, rec, service)
        return True

    async def _escalation_policy(self, rec: dict) -> str:
        group = self.mapping.group(rec.get("assignment_group"))
        if group is None:
            return ""
        chosen = await self.ctx.hooks.escalation_policy_for(group={"sys_id": group.sys_id, "name": group.name},
                                                            priority=str(rec.get("priority") or "") or None,
                                                            ctx=self.ctx)
        return chosen or group.escalation_policy

    async def _pd_priority_id(self, name: str | None) -> str | None:
        if not name:
            return None
        if self._priorities is None:
            try:
                self._priorities = {p.get("name") or p.get("summary"): p["id"] for p in await self.api.pd_priorities()}
            except Exception as exc:  # noqa: BLE001 - accounts without priorities answer 4xx
                log.info("incident_sync: PagerDuty priorities unavailable", error=str(exc))
                self._priorities = {}
        return self._priorities.get(name)

    def _pd_priority_name(self, sn_priority: str) -> str | None:
        return self.conf.sn_priority_to_pd().get(sn_priority)

    def _pd_urgency(self, sn_priority: str) -> str | None:
        return self.conf.sn_priority_to_urgency().get(sn_priority)

    async def _create_pd(self, table: str, rec: dict, service: str) -> None:
        conf = self.conf
        sys_id = rec["sys_id"]
        priority = str(rec.get("priority") or "")
        journal = await self.api.sn_journal(sys_id) if "{work_notes}" in conf.pagerduty_body else []
        body_values = dict(rec)
        body_values["work_notes"] = journal[-1]["value"] if journal else ""
        incident: dict[str, Any] = {
            "type": "incident",
            "title": (rec.get("short_description") or rec.get("number") or sys_id)[:1024],
            "service": {"id": service, "type": "service_reference"},
            "incident_key": sys_id,
            # PagerDuty's OpenAPI types body.details as an object: the text goes in "description".
            "body": {"type": "incident_body", "details": {
                "description": render(conf.pagerduty_body, body_values),
                "servicenow_number": rec.get("number") or "", "servicenow_sys_id": sys_id}},
        }
        urgency = self._pd_urgency(priority)
        if urgency:
            incident["urgency"] = urgency
        prio_id = await self._pd_priority_id(self._pd_priority_name(priority))
        if prio_id:
            incident["priority"] = {"id": prio_id, "type": "priority_reference"}
        assignee = None
        if rec.get("assigned_to"):
            assignee = await self.users.pd_for_sn(rec["assigned_to"], create=conf.create_missing_users)
        ep = await self._escalation_policy(rec)
        if assignee:
            incident["assignments"] = [{"assignee": {"id": assignee, "type": "user_reference"}}]
        elif ep:
            incident["escalation_policy"] = {"id": ep, "type": "escalation_policy_reference"}
        sender = await self.users.from_for_user_name(rec.get("sys_created_by") or rec.get("sys_updated_by"),
                                                     create=conf.create_missing_users)
        try:
            inc = await self.api.pd_create_incident(incident, sender)
            created = True
        except Exception as exc:
            if status_of(exc) != 400:
                raise
            # incident_key is the sys_id: an open incident with it exists already (a race,
            # or an attempt whose answer was lost). Link that one instead of a second.
            inc = await self.api.pd_find_incident_by_key(sys_id, service)
            if inc is None:
                raise
            created = False
        writes: dict[str, Any] = {"correlation_id": inc["id"], "correlation_display": "PagerDuty"}
        if conf.v7_fields and table == "incident":
            writes[conf.v7_incident_field] = inc["id"]
        # The snapshot starts from "nothing acknowledged" so an incident opened already in
        # progress with an assignee acknowledges right away; its work notes start unseen.
        sn_snap = sn_view(rec)
        sn_snap["state"] = ""
        sn_snap["assignment_group"] = rec.get("assignment_group") or ""
        link = await self._new_link(inc, table, rec, origin="sn", sn_snapshot=sn_snap, sn_notes=[])
        log.info("incident_sync: PagerDuty incident triggered" if created else "incident_sync: linked the PagerDuty "
                 "incident already open for this ServiceNow incident", pd_incident=inc["id"], sn_sys_id=sys_id,
                 sn_number=rec.get("number"), service=service, escalation_policy=(inc.get("escalation_policy") or {}).get("id"))
        written = await self.api.sn_update(table, sys_id, writes)
        await self._sn_to_pd(link, table, written or rec, fresh_pd=inc)

    async def _sn_to_pd(self, link: Link, table: str, rec: dict, *, fresh_pd: dict | None = None) -> None:
        conf = self.conf
        st = copy.deepcopy(link.state or {})
        old = st.get("sn") or {}
        new = sn_view(rec)
        changed = {k for k in TRACK_SN if old.get(k) != new[k]}
        states = conf.states(table)
        applied: list[str] = []  # what was written to PagerDuty
        if changed:
            inc = fresh_pd or await self.api.pd_incident(link.pd_id)
            if inc is None:
                log.warning("incident_sync: PagerDuty incident gone; link marked unlinked", pd_incident=link.pd_id)
                await self._save(link, st, status="unlinked")
                return
            unlinked = await self._apply_sn_changes(link, table, rec, inc, old, new, changed, st, states, applied)
            if unlinked:
                st["sn"] = new
                await self._save(link, st, status="unlinked")
                return
        st["sn"] = new
        if applied and conf.sync_work_notes:
            # What went to PagerDuty is recorded before the notes go (a failed note must
            # not make a retry apply the changes twice).
            link = await self._save(link, st)
            st = copy.deepcopy(link.state)
        # This version is synced once its work notes are (read after the record): changes
        # up to it need no read again (``_sn_change_synced``). Recorded only then, so a
        # retry after a failed note still reads.
        await self._sn_notes_to_pd(link, st, synced=mod_count_of(rec))

    async def _apply_sn_changes(self, link: Link, table: str, rec: dict, inc: dict, old: dict, new: dict,
                                changed: set[str], st: dict, states: dict, applied: list[str]) -> bool:
        """Write ServiceNow's changes to PagerDuty (each named in ``applied``); True when
        the link is to be unlinked."""
        conf = self.conf
        pd_id = link.pd_id
        pdv = pd_view(inc)
        actor = await self.users.from_for_user_name(rec.get("sys_updated_by"), create=conf.create_missing_users)
        was_done = old.get("state") in states["done"]
        is_done = new["state"] in states["done"]

        async def put(changes: dict, sender: str | None, touched: tuple[str, ...], what: str) -> None:
            nonlocal inc, pdv
            try:
                inc = await self.api.pd_update_incident(pd_id, changes, sender)
            except Exception as exc:
                if status_of(exc) == 400 and pd_code(exc) in ALREADY:
                    inc = await self.api.pd_incident(pd_id) or inc
                else:
                    raise
            pdv = pd_view(inc)
            applied.append(what)
            snap = st.get("pd") or {}
            for k in touched:
                snap[k] = pdv[k]
            st["pd"] = snap
            log.info("incident_sync: ServiceNow change applied to PagerDuty", pd_incident=pd_id, sn_sys_id=link.sn_id,
                     action=what)

        def agree(*keys: str) -> None:
            # ServiceNow asks for what PagerDuty has already (a person did the same there,
            # its event maybe still on the way): that is synced. Recorded, so that event
            # compares with it, not with an older value (which a later change back in
            # PagerDuty would equal, leaving ServiceNow behind for good).
            snap = st.get("pd") or {}
            for k in keys:
                snap[k] = pdv[k]
            st["pd"] = snap

        if "state" in changed and is_done and not was_done:
            if pdv["status"] != "resolved":
                resolution = rec.get("close_notes") or f"Resolved in ServiceNow ({rec.get('number') or link.sn_id})."
                await put({"status": "resolved", "resolution": resolution}, actor, ("status", "ack_by", "assignees"),
                          "resolve")
            else:
                agree("status")
            return False
        if is_done:
            return False
        if "state" in changed and was_done and pdv["status"] == "resolved":
            reopen: dict[str, Any] = {"status": "triggered"}
            uid = await self.users.pd_for_sn(new["assigned_to"], create=conf.create_missing_users)
            if uid:
                # Reopened to its ServiceNow assignee, not back to the policy's on-call.
                reopen["assignments"] = [{"assignee": {"id": uid, "type": "user_reference"}}]
            # Assignees set from ServiceNow's assignee are ServiceNow's already: recorded, so
            # the echo does not read ServiceNow to find them equal.
            await put(reopen, actor, ("status", "ack_by", "assignees") if uid else ("status", "ack_by"), "reopen")
        if "assignment_group" in changed:
            group = self.mapping.group(new["assignment_group"])
            if group is not None:
                ep = await self._escalation_policy(rec)
                if ep and ep != pdv["ep"] and pdv["status"] != "resolved" and self._move_allowed(st, pd_id):
                    await put({"escalation_policy": {"id": ep, "type": "escalation_policy_reference"}}, actor,
                              ("ep", "status", "ack_by"), "reassign to escalation policy")
                elif ep and ep == pdv["ep"]:
                    agree("ep")
            elif conf.resolve_if_unmapped_group and new["assignment_group"]:
                if pdv["status"] != "resolved":
                    name = (await self._group_name(new["assignment_group"])) or "no group"
                    await put({"status": "resolved",
                               "resolution": f"Reassigned in ServiceNow to {name}, which is not in PagerDuty."},
                              actor, ("status", "ack_by", "assignees"), "resolve (unmapped group)")
                log.info("incident_sync: reassigned to an unmapped group; PagerDuty incident resolved and unlinked",
                         pd_incident=pd_id, sn_sys_id=link.sn_id, group=new["assignment_group"])
                return True
        elif "priority" in changed and self.mapping.group(new["assignment_group"]) is not None:
            # Priority mapping may route the new priority to another policy; only then
            # move it (a policy someone chose in PagerDuty stays otherwise).
            ep = await self._escalation_policy(rec)
            before = await self._escalation_policy({**rec, "priority": old.get("priority")})
            if (ep and ep != before and ep != pdv["ep"] and pdv["status"] != "resolved"
                    and self._move_allowed(st, pd_id)):
                await put({"escalation_policy": {"id": ep, "type": "escalation_policy_reference"}}, actor,
                          ("ep", "status", "ack_by"), "reassign to the priority's escalation policy")
            elif ep and ep != before and ep == pdv["ep"]:
                agree("ep")
        if "assigned_to" in changed and new["assigned_to"] and pdv["status"] != "resolved":
            uid = await self.users.pd_for_sn(new["assigned_to"], create=conf.create_missing_users)
            if uid and pdv["assignees"] != [uid]:
                await put({"assignments": [{"assignee": {"id": uid, "type": "user_reference"}}]}, actor,
                          ("status", "ack_by", "assignees"), "reassign to user")
            elif uid:
                agree("assignees")
        if (new["state"] == states["in_progress"] and new["assigned_to"] and ({"state", "assigned_to"} & changed)
                and pdv["status"] == "triggered"):
            sender = await self.users.from_for_sys_id(new["assigned_to"], create=conf.create_missing_users) or actor
            await put({"status": "acknowledged"}, sender, ("status", "ack_by"), "acknowledge")
        if "priority" in changed and new["priority"]:
            changes: dict[str, Any] = {}
            prio_id = await self._pd_priority_id(self._pd_priority_name(new["priority"]))
            if prio_id and pdv["priority"] != self._pd_priority_name(new["priority"]):
                changes["priority"] = {"id": prio_id, "type": "priority_reference"}
            elif prio_id:
                agree("priority")
            urgency = self._pd_urgency(new["priority"])
            if urgency and urgency != pdv["urgency"] and pdv["status"] != "resolved":
                changes["urgency"] = urgency
            elif urgency and urgency == pdv["urgency"]:
                agree("urgency")
            if changes:
                await put(changes, actor, ("priority", "urgency"), "priority")
        return False

    async def _group_name(self, sys_id: str) -> str:
        if not sys_id:
            return ""
        known = self.mapping.group(sys_id)
        if known is not None and known.name:
            return known.name
        if sys_id not in self._group_names:  # kept until the next reload
            row = await self.api.sn_get("sys_user_group", sys_id, ["name"])
            self._group_names[sys_id] = (row or {}).get("name") or sys_id
        return self._group_names[sys_id]

    async def _sn_notes_to_pd(self, link: Link, st: dict, *, synced: int | None = None) -> None:
        """Copy new work notes to PagerDuty notes (when notes sync), then save ``st``;
        ``synced``: the record's version read before, now synced whole (``SN_SEEN``)."""
        fresh: list[dict] = []
        seen: set[str] = set()
        if self.conf.sync_work_notes:
            journal = await self.api.sn_journal(link.sn_id)
            seen = set(st.get("sn_notes", []))
            fresh = [j for j in journal if j["sys_id"] not in seen]
        integration = self.ctx.config.servicenow.username
        pd_notes: list[dict] | None = None
        for entry in fresh:
            seen.add(entry["sys_id"])
            value = entry.get("value") or ""
            if entry.get("sys_created_by") == integration or PD_SUFFIX.search(value) or not value.strip():
                st["sn_notes"] = sorted(seen)
                continue  # our own write, or a PagerDuty note mirrored here: never back
            name = await self.users.display_name(entry.get("sys_created_by"))
            content = f"{FROM_SN_PREFIX} {name}) {value}"
            if pd_notes is None:
                pd_notes = await self.api.pd_notes(link.pd_id)
            existing = next((n for n in pd_notes if n.get("content") == content), None)
            if existing is None:
                sender = await self.users.from_for_user_name(entry.get("sys_created_by"))
                note = await self.api.pd_add_note(link.pd_id, content, sender)
                log.info("incident_sync: work note copied to a PagerDuty note", pd_incident=link.pd_id,
                         note=note.get("id"))
            else:
                note = existing
            pd_seen = set(st.get("pd_notes", []))
            if note.get("id"):
                pd_seen.add(note["id"])
            st["pd_notes"] = sorted(pd_seen)
            st["sn_notes"] = sorted(seen)
            link = await self._save(link, st)
        if synced is not None and synced > st.get(SN_SEEN, -1):
            st[SN_SEEN] = synced
        if st != link.state:
            await self._save(link, st)
