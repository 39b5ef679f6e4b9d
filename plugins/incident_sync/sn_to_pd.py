"""ServiceNow -> PagerDuty: a ServiceNow incident read afresh and its changes written
to the PagerDuty incident it is linked to, or triggered there when it is not yet."""

from __future__ import annotations

import copy
from typing import Any

import structlog

from dutybridge.pagerduty import ALREADY_ACKNOWLEDGED, ALREADY_RESOLVED, PagerDutyError
from dutybridge.store.base import Link, LinkConflictError

from .core import Direction
from .links import link_key, pd_id_of, sn_change_synced
from .notes import sn_notes_to_pd
from .views import KIND, TRACK_SN, mod_count_of, pd_view, render, sn_view

log = structlog.get_logger("dutybridge.incident_sync")

#: PagerDuty's answers to a change it has made already (a person did the same meanwhile).
ALREADY = (ALREADY_RESOLVED, ALREADY_ACKNOWLEDGED)


class SnToPd(Direction):
    """The ServiceNow -> PagerDuty direction (one per ``Engine``)."""

    async def servicenow_changed(
        self, table: str, sys_id: str, updated_on: str | None = None, mod_count: str | None = None
    ) -> bool:
        if self.links.known_synced(sys_id, mod_count):
            return True  # synced, or our own write: see links.sn_change_synced
        mark = self.locks.seq  # reads from here on are good under the lock while nobody held it
        link = await self.store.get_link(KIND, sn_id=sys_id, include_unlinked=True)
        pre: dict[str, Any] | None = None
        if link is not None and link.status == "linked":
            if sn_change_synced(link, mod_count):
                return True
            seen = ((link.state or {}).get("sn") or {}).get("sys_updated_on") or ""
            if updated_on and seen and updated_on < seen:
                return True  # an older change, already covered by a newer read
            keys: tuple[str, ...] = (link_key(link),)
        else:
            # Read before the lock, to know which one; kept when nobody held it meanwhile.
            pre = await self.api.sn_get(table, sys_id, self.core.sn_fields(table))
            if pre is None:
                return False
            pd_id = pd_id_of(self.conf, table, pre)
            keys = (f"pd:{pd_id}" if pd_id else f"sn:{sys_id}",)

        async def get_link() -> Link | None:
            return await self.store.get_link(KIND, sn_id=sys_id, include_unlinked=True)

        async def run(link: Link | None, fresh: bool) -> bool:
            linked = link is not None and link.status == "linked"
            if linked and link is not None and sn_change_synced(link, mod_count):
                return True
            if pre is not None and fresh:
                rec: dict[str, Any] | None = pre
            else:
                rec = await self.api.sn_get(table, sys_id, self.core.sn_fields(table, linked=linked))
            if rec is None:
                return False
            if (
                link is not None
                and linked
                and mod_count is None
                and sn_change_synced(link, str(rec.get("sys_mod_count") or ""))
            ):
                # A doorbell without sys_mod_count (never dropped: see the receiver) whose
                # record, read, is at a version synced already (our own write's echo, a
                # repeat): nothing new, and nothing more to read.
                return True
            if not linked or link is None:  # linked: link is not None
                acted = await self._sync_unlinked(table, rec, link)
            else:
                await self._sync_linked(link, table, rec)
                acted = True
            if acted and mod_count is None:
                # A doorbell without sys_mod_count (an older business rule) is keyed by
                # the second only: a later change in that second may have been dropped.
                self.core.rechecks.schedule(table, sys_id, str(rec.get("sys_updated_on") or ""))
            return acted

        return await self.locks.under_link_lock(keys, get_link, run, mark, link)

    async def _sync_unlinked(self, table: str, rec: dict[str, Any], old: Link | None) -> bool:
        pd_id = pd_id_of(self.conf, table, rec)
        if pd_id and (old is None or old.pd_id != pd_id):
            inc = await self.api.pd_incident(pd_id)
            if inc is not None:
                # Opened from PagerDuty (by us or by the v7 app) but not linked here: adopt it.
                try:
                    await self.links.new_link(inc, table, rec, origin="pd")
                except LinkConflictError:
                    return True
                log.info("existing_pair_linked", pd_incident=pd_id, sn_sys_id=rec["sys_id"])
                return True
        service = self.core.eligible(table, rec)
        if not service:
            return False
        await self._create_pd(table, rec, service)
        return True

    async def _escalation_policy(self, rec: dict[str, Any]) -> str:
        group = self.mapping.group(rec.get("assignment_group"))
        if group is None:
            return ""
        chosen = await self.ctx.hooks.escalation_policy_for(
            group={"sys_id": group.sys_id, "name": group.name},
            priority=str(rec.get("priority") or "") or None,
            ctx=self.ctx,
        )
        return chosen or group.escalation_policy

    def _pd_priority_name(self, sn_priority: str) -> str | None:
        return self.conf.sn_priority_to_pd().get(sn_priority)

    def _pd_urgency(self, sn_priority: str) -> str | None:
        return self.conf.sn_priority_to_urgency().get(sn_priority)

    async def _create_pd(self, table: str, rec: dict[str, Any], service: str) -> None:
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
            "body": {
                "type": "incident_body",
                "details": {
                    "description": render(conf.pagerduty_body, body_values),
                    "servicenow_number": rec.get("number") or "",
                    "servicenow_sys_id": sys_id,
                },
            },
        }
        urgency = self._pd_urgency(priority)
        if urgency:
            incident["urgency"] = urgency
        prio_id = await self.core.pd_priority_id(self._pd_priority_name(priority))
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
        sender = await self.users.from_for_user_name(
            rec.get("sys_created_by") or rec.get("sys_updated_by"), create=conf.create_missing_users
        )
        try:
            inc = await self.api.pd_create_incident(incident, sender)
            created = True
        except PagerDutyError as exc:
            if exc.status != 400:
                raise
            # incident_key is the sys_id: an open incident with it exists already (a race,
            # or an attempt whose answer was lost). Link that one instead of a second.
            found = await self.api.pd_find_incident_by_key(sys_id, service)
            if found is None:
                raise
            inc = found
            created = False
        writes: dict[str, Any] = {"correlation_id": inc["id"], "correlation_display": "PagerDuty"}
        if conf.v7_fields and table == "incident":
            writes[conf.v7_incident_field] = inc["id"]
        # The snapshot starts from "nothing acknowledged" so an incident opened already in
        # progress with an assignee acknowledges right away; its work notes start unseen.
        sn_snap = sn_view(rec)
        sn_snap["state"] = ""
        sn_snap["assignment_group"] = rec.get("assignment_group") or ""
        link = await self.links.new_link(inc, table, rec, origin="sn", sn_snapshot=sn_snap, sn_notes=[])
        log.info(
            "pd_incident_triggered" if created else "pd_incident_linked",
            detail=None if created else "the PagerDuty incident already open for this ServiceNow incident",
            pd_incident=inc["id"],
            sn_sys_id=sys_id,
            sn_number=rec.get("number"),
            service=service,
            escalation_policy=(inc.get("escalation_policy") or {}).get("id"),
        )
        written = await self.api.sn_update(table, sys_id, writes)
        await self._sync_linked(link, table, written or rec, fresh_pd=inc)

    async def _sync_linked(
        self, link: Link, table: str, rec: dict[str, Any], *, fresh_pd: dict[str, Any] | None = None
    ) -> None:
        conf = self.conf
        st = copy.deepcopy(link.state or {})
        old = st.get("sn") or {}
        new = sn_view(rec)
        changed = {k for k in TRACK_SN if old.get(k) != new[k]}
        states = conf.states(table)
        applied: list[str] = []  # what was written to PagerDuty
        pd_resolved = False  # PagerDuty's incident, after our writes, is resolved
        if changed:
            inc = fresh_pd or await self.api.pd_incident(link.pd_id)
            if inc is None:
                log.warning("pd_incident_gone", detail="link marked unlinked", pd_incident=link.pd_id)
                await self.links.save(link, st, status="unlinked")
                return
            unlinked, pd_status = await self._write_changes(
                link, table, rec, inc, old, new, changed, st, states, applied
            )
            pd_resolved = pd_status == "resolved"
            if unlinked:
                st["sn"] = new
                await self.links.save(link, st, status="unlinked")
                return
        st["sn"] = self._synced_view(old, new, states, pd_resolved=pd_resolved)
        held = pd_resolved and new["state"] not in states["done"] and st["sn"] != new
        if held:
            # A change held back for PagerDuty's resolved incident, while ServiceNow's is
            # open: PagerDuty's resolve is on its way here, or PagerDuty was reopened
            # before it came, and then nothing may ring again. This version stays unread
            # (no SN_SEEN), and one recheck reads it again, when it can move the policy.
            self.core.rechecks.schedule(table, link.sn_id, new["sys_updated_on"])
        if applied and conf.sync_work_notes:
            # What went to PagerDuty is recorded before the notes go (a failed note must
            # not make a retry apply the changes twice).
            link = await self.links.save(link, st)
            st = copy.deepcopy(link.state)
        # This version is synced once its work notes are (read after the record): changes
        # up to it need no read again (``links.sn_change_synced``). Recorded only then, so a
        # retry after a failed note still reads.
        await sn_notes_to_pd(self.core, link, st, synced=None if held else mod_count_of(rec))

    @staticmethod
    def _synced_view(old: dict, new: dict, states: dict, *, pd_resolved: bool = False) -> dict:
        """What of the record is synced now: all of it, except while it or PagerDuty's
        incident is resolved, when only its state went to PagerDuty (a resolved incident
        takes no policy or assignee). A group (assignee, priority) changed then stays
        unsynced in the snapshot, so that whoever reopens either side (a person, or our
        own write, whose echo is read) finds it changed and PagerDuty's policy follows;
        were it recorded, the reopened pair would keep two policies for good."""
        if new["state"] not in states["done"] and not pd_resolved:
            return new
        return {**new, **{k: old.get(k, "") for k in ("assignment_group", "assigned_to", "priority")}}

    async def _write_changes(
        self,
        link: Link,
        table: str,
        rec: dict[str, Any],
        inc: dict[str, Any],
        old: dict[str, Any],
        new: dict[str, Any],
        changed: set[str],
        st: dict[str, Any],
        states: dict[str, Any],
        applied: list[str],
    ) -> tuple[bool, str | None]:
        """Write ServiceNow's changes to PagerDuty (each named in ``applied``); whether the
        link is to be unlinked, and the PagerDuty incident's status after the writes."""
        conf = self.conf
        pd_id = link.pd_id
        pdv = pd_view(inc)
        actor = await self.users.from_for_user_name(rec.get("sys_updated_by"), create=conf.create_missing_users)
        was_done = old.get("state") in states["done"]
        is_done = new["state"] in states["done"]

        async def put(changes: dict[str, Any], sender: str | None, touched: tuple[str, ...], what: str) -> None:
            nonlocal inc, pdv
            try:
                inc = await self.api.pd_update_incident(pd_id, changes, sender)
            except PagerDutyError as exc:
                if exc.status == 400 and exc.code in ALREADY:
                    inc = await self.api.pd_incident(pd_id) or inc
                else:
                    raise
            pdv = pd_view(inc)
            applied.append(what)
            snap = st.get("pd") or {}
            # Resolved meanwhile by someone else (a reassignment answers with the incident
            # as it is): that resolve is not our write's echo but a change of theirs, left
            # unsynced for its own event to bring to ServiceNow.
            theirs = pdv["status"] == "resolved" and changes.get("status") != "resolved"
            for k in touched:
                if not (theirs and k in ("status", "ack_by", "assignees")):
                    snap[k] = pdv[k]
            st["pd"] = snap
            log.info("sn_change_applied_to_pd", pd_incident=pd_id, sn_sys_id=link.sn_id, action=what)

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
                await put(
                    {"status": "resolved", "resolution": resolution},
                    actor,
                    ("status", "ack_by", "assignees"),
                    "resolve",
                )
            else:
                agree("status")
            return False, pdv["status"]
        if is_done:
            return False, pdv["status"]
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
                if ep and ep != pdv["ep"] and pdv["status"] != "resolved" and self.core.move_allowed(st, pd_id):
                    await put(
                        {"escalation_policy": {"id": ep, "type": "escalation_policy_reference"}},
                        actor,
                        ("ep", "status", "ack_by"),
                        "reassign to escalation policy",
                    )
                elif ep and ep == pdv["ep"]:
                    agree("ep")
            elif conf.resolve_if_unmapped_group and new["assignment_group"]:
                if pdv["status"] != "resolved":
                    name = (await self.core.group_name(new["assignment_group"])) or "no group"
                    await put(
                        {
                            "status": "resolved",
                            "resolution": f"Reassigned in ServiceNow to {name}, which is not in PagerDuty.",
                        },
                        actor,
                        ("status", "ack_by", "assignees"),
                        "resolve (unmapped group)",
                    )
                log.info(
                    "reassigned_to_unmapped_group",
                    detail="PagerDuty incident resolved and unlinked",
                    pd_incident=pd_id,
                    sn_sys_id=link.sn_id,
                    group=new["assignment_group"],
                )
                return True, pdv["status"]
        elif "priority" in changed and self.mapping.group(new["assignment_group"]) is not None:
            # Priority mapping may route the new priority to another policy; only then
            # move it (a policy someone chose in PagerDuty stays otherwise).
            ep = await self._escalation_policy(rec)
            before = await self._escalation_policy({**rec, "priority": old.get("priority")})
            if (
                ep
                and ep != before
                and ep != pdv["ep"]
                and pdv["status"] != "resolved"
                and self.core.move_allowed(st, pd_id)
            ):
                await put(
                    {"escalation_policy": {"id": ep, "type": "escalation_policy_reference"}},
                    actor,
                    ("ep", "status", "ack_by"),
                    "reassign to the priority's escalation policy",
                )
            elif ep and ep != before and ep == pdv["ep"]:
                agree("ep")
        if "assigned_to" in changed and new["assigned_to"] and pdv["status"] != "resolved":
            uid = await self.users.pd_for_sn(new["assigned_to"], create=conf.create_missing_users)
            if uid and pdv["assignees"] != [uid]:
                await put(
                    {"assignments": [{"assignee": {"id": uid, "type": "user_reference"}}]},
                    actor,
                    ("status", "ack_by", "assignees"),
                    "reassign to user",
                )
            elif uid:
                agree("assignees")
        if (
            new["state"] == states["in_progress"]
            and new["assigned_to"]
            and ({"state", "assigned_to"} & changed)
            and pdv["status"] == "triggered"
        ):
            sender = await self.users.from_for_sys_id(new["assigned_to"], create=conf.create_missing_users) or actor
            await put({"status": "acknowledged"}, sender, ("status", "ack_by"), "acknowledge")
        if "priority" in changed and new["priority"]:
            changes: dict[str, Any] = {}
            prio_id = await self.core.pd_priority_id(self._pd_priority_name(new["priority"]))
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
        return False, pdv["status"]
