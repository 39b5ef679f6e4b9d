"""PagerDuty -> ServiceNow: a PagerDuty incident read afresh and its changes written
to the ServiceNow incident it is linked to, or opened there when it is not yet."""

from __future__ import annotations

import contextlib
import copy
import json
from typing import Any

import structlog

from dutybridge.servicenow import ServiceNowError
from dutybridge.store.base import Link, LinkConflictError

from .api import Q
from .core import Direction
from .links import link_key, own_write
from .mapping import SYS_ID
from .notes import pd_notes_to_sn
from .views import KIND, SN_SEEN, TRACK_SN, data_view, mod_count_of, pd_view, render, render_lines, sn_view

log = structlog.get_logger("dutybridge.incident_sync")

#: What a PagerDuty incident is read with before it is linked: its body is in the first trigger.
FIRST_TRIGGER = ["first_trigger_log_entries"]
#: Rows asked for by the lookup before linking; more means duplicates, looked at one query each.
LOOKUP_LIMIT = 20


class PdToSn(Direction):
    """The PagerDuty -> ServiceNow direction (one per ``Engine``)."""

    async def pagerduty_changed(
        self,
        pd_id: str,
        *,
        notes: bool = False,
        force: bool = False,
        data: dict | None = None,
        agent: dict | None = None,
    ) -> bool:
        """Sync PagerDuty incident ``pd_id``. ``data``: the incident as a V3 webhook carried
        it (the state when its event happened), which may spare reading it; ``agent``: who
        resolved it, as its resolve webhook says (for the close notes)."""
        mark = self.locks.seq  # reads from here on are good under the lock while nobody held it
        link = await self.store.get_link(KIND, pd_id=pd_id, include_unlinked=True)
        if not force and self._event_synced(link, data):
            return True
        pre: dict[str, Any] | None = None
        if link is not None:
            keys: tuple[str, ...] = (link_key(link),)
        else:
            about = data if data is not None and "incident_key" in data else None
            if about is None:
                # Read before the lock, to know which one; kept when nobody held it meanwhile.
                pre = await self.api.pd_incident(pd_id, include=FIRST_TRIGGER)
                if pre is None:
                    log.info("pd_incident_not_found", pd_incident=pd_id)
                    return False
                about = pre
            keys = self._lock_keys(pd_id, about)

        async def get_link() -> Link | None:
            return await self.store.get_link(KIND, pd_id=pd_id, include_unlinked=True)

        async def run(link: Link | None, fresh: bool) -> bool:
            if not force and self._event_synced(link, data):
                return True
            if pre is not None and fresh:
                inc: dict[str, Any] | None = pre
            else:
                # Not linked yet: what opening the ServiceNow incident needs (the body) in the same read.
                inc = await self.api.pd_incident(pd_id, include=FIRST_TRIGGER if link is None else None)
            if inc is None:
                return False
            if link is None:
                return await self._sync_unlinked(inc, force=force, notes=notes and not trigger, agent=agent)
            if link.status != "linked":
                log.info("pd_change_not_synced", reason="link is unlinked", pd_incident=pd_id)
                return True
            await self._sync_linked(link, inc, notes=notes, agent=agent)
            return True

        # A note event carrying the incident is the trigger itself (an annotation carries
        # the note): no note comes before it, and each one after has an event of its own.
        trigger = data is not None and notes and not force

        return await self.locks.under_link_lock(keys, get_link, run, mark, link)

    def _event_synced(self, link: Link | None, data: dict[str, Any] | None) -> bool:
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

    def _lock_keys(self, pd_id: str, inc: dict[str, Any]) -> tuple[str, ...]:
        """The lock keys of a PagerDuty incident not linked yet: ``pd:<id>``, and
        ``sn:<incident_key>`` when that could be a ServiceNow sys_id (an incident born
        there, whose handler locks by sys_id). Holding both costs nothing and spares
        asking ServiceNow which it is before taking the lock."""
        key = inc.get("incident_key") or ""
        return (f"pd:{pd_id}", f"sn:{key}") if SYS_ID.match(key) else (f"pd:{pd_id}",)

    async def _sn_lookup(
        self, sys_id: str | None, pd_id: str | None, pd_table: str
    ) -> tuple[str, str, dict[str, Any]] | None:
        """Before linking a PagerDuty incident: the ServiceNow incident it was born from
        (``sys_id``, its incident_key), else the one opened for it already (``pd_id`` in
        correlation_id, or the v7 field, in ``pd_table``; the oldest). Both questions go
        in one query per table (``^NQ``). Returns ("born", table, rec), ("opened", table,
        rec) or None."""
        conf = self.conf
        opened: dict[str, Any] | None = None
        for table in self.core.tables():
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
                rows = await self.api.sn_query(table, query, self.core.sn_fields(table), limit=LOOKUP_LIMIT)
            except ServiceNowError as exc:
                if not by_pd and exc.status in (400, 403):  # a table this instance lacks or hides
                    continue
                raise
            born = next((r for r in rows if sys_id and r.get("sys_id") == sys_id), None)
            if born is None and sys_id and len(rows) >= LOOKUP_LIMIT:
                born = await self.api.sn_get(table, sys_id, self.core.sn_fields(table))  # crowded out: ask directly
            if born is not None:
                return "born", table, born
            if by_pd and pd_id:  # by_pd: pd_id is set
                if len(rows) >= LOOKUP_LIMIT:
                    opened = await self._sn_find_by_pd_id(table, pd_id)  # too many to pick the oldest from
                else:
                    by_corr = [
                        r
                        for r in rows
                        if r.get("correlation_id") == pd_id and r.get("correlation_display") == "PagerDuty"
                    ]
                    v7 = [
                        r
                        for r in rows
                        if conf.v7_fields and table == "incident" and str(r.get(conf.v7_incident_field) or "") == pd_id
                    ]
                    pick = by_corr or v7
                    opened = min(pick, key=lambda r: str(r.get("sys_created_on") or "")) if pick else None
        return ("opened", pd_table, opened) if opened is not None else None

    async def _sync_unlinked(self, inc: dict, *, force: bool, notes: bool = True, agent: dict | None = None) -> bool:
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
        found = (
            await self._sn_lookup(key if born_there else None, inc["id"] if syncs else None, table)
            if (born_there or syncs)
            else None
        )
        if found is not None and found[0] == "born":
            # Born in ServiceNow; its trigger handler did not get to link it.
            _, born_table, rec = found
            with contextlib.suppress(LinkConflictError):
                await self.links.new_link(inc, born_table, rec, origin="sn")
            return True
        if not syncs:
            if manual:
                log.info(
                    "manual_sync_service", detail="waiting for a sync request", pd_incident=inc["id"], service=service
                )
            else:
                log.info(
                    "pd_incident_not_synced",
                    reason="unmapped service and policy",
                    pd_incident=inc["id"],
                    service=service,
                    escalation_policy=ep,
                )
            return False
        if found is not None:
            # Opened earlier (an attempt that failed after the insert, the v7 app, another
            # instance): link it and bring it up to date instead of opening a duplicate.
            try:
                link = await self.links.new_link(inc, table, found[2], origin="pd", pd_snapshot={})
            except LinkConflictError:
                return True
            await self._sync_linked(link, inc, notes=True, agent=agent)
            return True
        rec = await self._create_sn(table, inc, agent)
        # Everything in the new record is our own write: its doorbell needs no read (known
        # before the link is stored, which the doorbell may overtake).
        seen = mod_count_of(rec)
        if seen is not None:
            self.links.remember_seen(rec["sys_id"], {SN_SEEN: seen})
        link = await self.links.new_link(inc, table, rec, origin="pd", sn_seen=seen)
        log.info(
            "sn_incident_opened",
            pd_incident=inc["id"],
            sn_table=table,
            sn_number=rec.get("number"),
            sn_sys_id=rec.get("sys_id"),
        )
        # Notes made before we got to it. Each note has an event of its own (the annotation
        # webhook, the poll's annotate log entry) that reads them once the link exists; so
        # while the poll is on, opening on the trigger's own event leaves them to that.
        if conf.sync_work_notes and (notes or conf.poll_interval_seconds <= 0):
            st = copy.deepcopy(link.state)
            await pd_notes_to_sn(self.core, link, table, st)
        return True

    async def _sn_find_by_pd_id(self, table: str, pd_id: str) -> dict[str, Any] | None:
        conf = self.conf
        rows = await self.api.sn_query(
            table,
            Q().eq("correlation_id", pd_id).eq("correlation_display", "PagerDuty"),
            self.core.sn_fields(table),
            limit=1,
            order_by="sys_created_on",
        )
        if not rows and conf.v7_fields and table == "incident":
            rows = await self.api.sn_query(
                table,
                Q().eq(conf.v7_incident_field, pd_id),
                self.core.sn_fields(table),
                limit=1,
                order_by="sys_created_on",
            )
        return rows[0] if rows else None

    def _sn_priority_for(self, view: dict[str, Any]) -> str | None:
        conf = self.conf
        if view.get("priority"):
            mapped = conf.pd_priority_to_sn().get(view["priority"])
            if mapped:
                return mapped
        return conf.pd_urgency_to_sn().get(view.get("urgency") or "")

    def _impact_urgency(self, priority: str | None) -> dict[str, str]:
        return self.conf.impact_urgency_for(priority)

    async def _resolution(self, inc: dict, agent: dict | None = None) -> tuple[str, str]:
        """(who resolved, their resolution note) of a resolved PagerDuty incident: the
        agent of its newest resolve log entry, else its ``last_status_change_by``, else
        the resolve webhook's ``agent``; "PagerDuty" only when none names anybody."""
        entry: dict = {}
        try:
            resolves = [
                e for e in await self.api.pd_incident_log_entries(inc["id"]) if e.get("type") == "resolve_log_entry"
            ]
            # Resolved, reopened, resolved again: the last resolve is the one that holds
            # (PagerDuty lists newest first; within one second, the list's order decides).
            if resolves:
                entry = max(enumerate(resolves), key=lambda p: (str(p[1].get("created_at") or ""), -p[0]))[1]
        except Exception as exc:
            log.warning("resolution_note_unavailable", pd_incident=inc["id"], error=str(exc))
        for candidate in (entry.get("agent"), inc.get("last_status_change_by"), agent):
            who = await self._agent_name(candidate)
            if who:
                return who, entry.get("note") or ""
        return "PagerDuty", entry.get("note") or ""

    async def _agent_name(self, agent: Any) -> str:
        """The name of a log entry's or webhook's agent: its summary, or for a bare user
        reference the user's name (some accounts send references without a summary)."""
        if not isinstance(agent, dict):
            return ""
        name = agent.get("summary") or agent.get("name")
        if name:
            return str(name)
        if agent.get("type") in ("user_reference", "user") and agent.get("id"):
            user = await self.users.pd_user(str(agent["id"]))
            return str((user or {}).get("name") or (user or {}).get("summary") or "")
        return ""

    def _details(self, inc: dict[str, Any]) -> str:
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

    async def _create_sn(self, table: str, inc: dict, agent: dict | None = None) -> dict:
        conf = self.conf
        view = pd_view(inc)
        states = conf.states(table)
        service = (inc.get("service") or {}).get("id")
        group = self.mapping.group_for_pagerduty(service, view["ep"], None)
        fields: dict[str, Any] = {
            "short_description": (inc.get("title") or inc["id"])[:160],
            "description": render_lines(
                conf.servicenow_description,
                {
                    "details": self._details(inc),
                    "title": inc.get("title"),
                    "html_url": inc.get("html_url"),
                    "service": (inc.get("service") or {}).get("summary"),
                    "id": inc["id"],
                },
            ),
            "correlation_id": inc["id"],
            "correlation_display": "PagerDuty",
            ("caller_id" if table == "incident" else "caller"): await self.core.caller_id(),
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
            who, note = await self._resolution(inc, agent)
            fields.update(
                state=states["resolved"],
                close_code=conf.close_code,
                close_notes=render(conf.close_notes, {"user": who, "resolution": note}),
            )
        if (
            "assigned_to" not in fields
            and not conf.assign_on_ack_only
            and view["status"] != "resolved"
            and view["assignees"]
        ):
            who = await self.users.sn_for_pd(view["assignees"][0])
            if who:
                fields["assigned_to"] = who
        return await self.api.sn_insert(table, fields)

    async def _sync_linked(self, link: Link, inc: dict, *, notes: bool, agent: dict | None = None) -> None:
        conf = self.conf
        st = copy.deepcopy(link.state or {})
        table = st.get("table", "incident")
        old = st.get("pd") or {}
        new = pd_view(inc)
        changed = {k for k in new if old.get(k) != new[k]} if old else set(new)
        if changed:
            rec = await self.api.sn_get(table, link.sn_id, self.core.sn_fields(table, linked=True))
            if rec is None:
                log.warning(
                    "sn_incident_gone", detail="link marked unlinked", sn_sys_id=link.sn_id, pd_incident=link.pd_id
                )
                await self.links.save(link, st, status="unlinked")
                return
            agreed: set[str] = set()
            desired = await self._desired_sn(table, inc, old, new, changed, rec, st, agreed, agent)
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
                log.info(
                    "pd_change_applied_to_sn",
                    pd_incident=link.pd_id,
                    sn_sys_id=link.sn_id,
                    fields=sorted(updates),
                    changed=sorted(changed),
                )
        st["pd"] = self._synced_view(old, new)
        if st != link.state:
            link = await self.links.save(link, st)
        if notes and conf.sync_work_notes:
            await pd_notes_to_sn(self.core, link, table, copy.deepcopy(link.state))

    @staticmethod
    def _synced_view(old: dict, new: dict) -> dict:
        """What of the incident is synced now: all of it, except while it is resolved, when
        only the resolution went to ServiceNow. A policy (assignees, priority) changed
        before a resolve read together with it stays unsynced in the snapshot, so that
        once reopened the group follows; were it recorded, the pair kept two for good."""
        if new.get("status") != "resolved":
            return new
        return {**new, **{k: old.get(k) for k in ("ep", "assignees", "priority", "urgency")}}

    async def _desired_sn(
        self,
        table: str,
        inc: dict,
        old: dict,
        new: dict,
        changed: set[str],
        rec: dict,
        st: dict,
        agreed: set[str],
        agent: dict | None = None,
    ) -> dict:
        """The ServiceNow fields PagerDuty's changes ask for; ``agreed`` gets the tracked
        fields whose wanted value the record has already."""
        conf = self.conf
        states = conf.states(table)
        up: dict[str, str] = {}
        who: str | None  # a name for the resolution note, a sys_id for assigned_to
        done = str(rec.get("state") or "") in states["done"]
        status = new["status"]
        reopened = old.get("status") == "resolved"
        if "status" in changed:
            if status == "resolved" and done:
                agreed.add("state")
            if status == "resolved" and not done:
                who, note = await self._resolution(inc, agent)
                up.update(
                    state=states["resolved"],
                    close_code=conf.close_code,
                    close_notes=render(conf.close_notes, {"user": who, "resolution": note}),
                )
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
            elif group is not None and self.core.move_allowed(st, inc["id"]):
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
