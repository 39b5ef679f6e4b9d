"""The incident status machine: ``PUT /incidents/{id}`` (and the Python helpers that act
as a user would) validated as a whole, then applied; merging incidents too."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from .errors import PDError, already_acknowledged, already_resolved, invalid
from .incidents import OPEN
from .util import iso

MAX_BULK_UPDATE = 250


class IncidentChangeOps:
    """Mixin for :class:`PagerDutyState`: every change to an incident.

    Status machine (``PUT /incidents/{id}``, OpenAPI text for ``status``):

    * triggered -> acknowledged (acknowledge) -> resolved (resolve); triggered -> resolved.
    * acknowledged -> triggered: unacknowledge (acknowledgements cleared).
    * resolved -> triggered | acknowledged: *reopen* ("If the incident is currently
      resolved, setting the status to "triggered" or "acknowledged" will reopen it").
    * resolved -> resolved, and any reassignment/escalation/urgency change on a resolved
      incident: 400, code 1001 "Incident Already Resolved".
    * acknowledged -> acknowledged by a user who already acknowledged: 400, code 1002.
    * Reassigning, escalating or delegating an acknowledged incident puts it back to
      triggered (PagerDuty notifies the new assignees).

    Every change goes through :meth:`update_incident` (the HTTP route and the Python
    helpers alike), which validates all of a request before changing anything.
    """

    # ---------------------------------------------------------------- updating

    def update_incident(self, iid: str, changes: Any, from_user: str | dict | None) -> dict:
        """Apply the ``incident`` object of a ``PUT /incidents/{id}`` body."""
        actor = self._actor(from_user)
        inc = self._incident(iid)
        apply = self._plan_update(inc, changes, actor)
        apply()
        return inc

    def update_incidents(self, updates: Any, from_user: str | dict | None) -> list[dict]:
        """``PUT /incidents``: validate every item first, then apply them in order."""
        actor = self._actor(from_user)
        if not isinstance(updates, list) or not updates:
            raise invalid("incidents must be a non-empty array")
        if len(updates) > MAX_BULK_UPDATE:
            raise PDError(
                413,
                2001,
                "Invalid Input Provided",
                [f"A maximum of {MAX_BULK_UPDATE} incidents may be updated at a time"],
            )
        plans = []
        for item in updates:
            if not isinstance(item, dict) or not isinstance(item.get("id"), str):
                raise invalid("each incident needs an id")
            inc = self._incident(item["id"])
            plans.append((inc, self._plan_update(inc, item, actor)))
        for _, apply in plans:
            apply()
        return [inc for inc, _ in plans]

    def acknowledge(self, iid: str, user: str | dict) -> dict:
        return self.update_incident(iid, {"type": "incident_reference", "status": "acknowledged"}, user)

    def unacknowledge(self, iid: str, user: str | dict) -> dict:
        return self.update_incident(iid, {"type": "incident_reference", "status": "triggered"}, user)

    def resolve(self, iid: str, user: str | dict, resolution: str | None = None) -> dict:
        changes = {"type": "incident_reference", "status": "resolved"}
        if resolution is not None:
            changes["resolution"] = resolution
        return self.update_incident(iid, changes, user)

    def reopen(self, iid: str, user: str | dict, status: str = "triggered") -> dict:
        if self._incident(iid)["status"] != "resolved":
            raise invalid("Only resolved incidents can be reopened")
        return self.update_incident(iid, {"type": "incident_reference", "status": status}, user)

    def reassign(self, iid: str, user_ids: Iterable[str], by: str | dict) -> dict:
        assignments = [{"assignee": {"id": u, "type": "user_reference"}} for u in user_ids]
        return self.update_incident(iid, {"type": "incident_reference", "assignments": assignments}, by)

    def escalate(self, iid: str, level: int, by: str | dict) -> dict:
        return self.update_incident(iid, {"type": "incident_reference", "escalation_level": level}, by)

    def delegate(self, iid: str, escalation_policy_id: str, by: str | dict) -> dict:
        ref = {"id": escalation_policy_id, "type": "escalation_policy_reference"}
        return self.update_incident(iid, {"type": "incident_reference", "escalation_policy": ref}, by)

    def set_priority(self, iid: str, priority: str | dict | None, by: str | dict) -> dict:
        value = priority
        if isinstance(priority, str) and priority in self.priorities:
            value = {"id": priority, "type": "priority_reference"}
        return self.update_incident(iid, {"type": "incident_reference", "priority": value}, by)

    def set_urgency(self, iid: str, urgency: str, by: str | dict) -> dict:
        return self.update_incident(iid, {"type": "incident_reference", "urgency": urgency}, by)

    def set_conference_bridge(self, iid: str, number: str | None, url: str | None, by: str | dict) -> dict:
        bridge = {k: v for k, v in (("conference_number", number), ("conference_url", url)) if v is not None}
        return self.update_incident(iid, {"type": "incident_reference", "conference_bridge": bridge}, by)

    def set_title(self, iid: str, title: str, by: str | dict) -> dict:
        return self.update_incident(iid, {"type": "incident_reference", "title": title}, by)

    def _plan_update(self, inc: dict, changes: Any, actor: dict | None) -> Callable[[], None]:
        """Validate ``changes`` against ``inc``; return the function that applies them."""
        if not isinstance(changes, dict):
            raise invalid("incident must be an object")
        if changes.get("type") not in ("incident", "incident_reference"):
            raise invalid("Incident type must be 'incident' or 'incident_reference'")
        steps: list[Callable[[float], None]] = []
        status = changes.get("status")
        current = inc["status"]
        if status is not None and status not in ("triggered", "acknowledged", "resolved"):
            raise PDError(400, 1003, "Invalid Status Provided", [f"Status {status!r} is not valid"])
        reopening = current == "resolved" and status in ("triggered", "acknowledged")
        if current == "resolved" and not reopening:
            if status == "resolved" or any(
                k in changes for k in ("assignments", "escalation_level", "escalation_policy", "urgency", "service")
            ):
                raise already_resolved()
        if "assignments" in changes and "escalation_policy" in changes:
            raise invalid("Assignments and escalation_policy cannot both be specified")

        if "title" in changes:
            title = changes["title"]
            if not isinstance(title, str) or not title.strip():
                raise invalid("Title can't be blank")
            if title != inc["title"]:
                steps.append(lambda ts: self._do_title(inc, title, ts))
        if "incident_type" in changes:
            itype = changes["incident_type"]
            name = itype.get("name") if isinstance(itype, dict) else None
            if not isinstance(name, str) or not name:
                raise invalid("incident_type must be an object with a name")
            if name != inc["incident_type"]["name"]:
                steps.append(lambda ts: self._do_incident_type(inc, name, actor, ts))
        if "urgency" in changes:
            urgency = changes["urgency"]
            if urgency not in ("high", "low"):
                raise invalid("Urgency must be 'high' or 'low'")
            if urgency != inc["urgency"]:
                steps.append(lambda ts: self._do_urgency(inc, urgency, actor, ts))
        if "priority" in changes:
            priority = self._priority_from(changes["priority"])
            current_id = inc["priority"]["id"] if inc["priority"] else None
            if (priority["id"] if priority else None) != current_id:
                steps.append(lambda ts: self._do_priority(inc, priority, actor, ts))
        if "conference_bridge" in changes:
            bridge = self._conference_bridge(changes["conference_bridge"])
            if bridge != inc.get("conference_bridge"):
                steps.append(lambda ts: self._do_bridge(inc, bridge, actor, ts))
        if "service" in changes:
            sref = changes["service"]
            if not isinstance(sref, dict) or sref.get("id") not in self.services:
                raise invalid("Service not found")
            if sref["id"] != inc["service"]["id"]:
                steps.append(lambda ts: self._do_service(inc, sref["id"], actor, ts))

        assignees = self._user_refs(changes["assignments"], "assignments") if "assignments" in changes else None
        epid = None
        if "escalation_policy" in changes:
            epref = changes["escalation_policy"]
            if not isinstance(epref, dict) or epref.get("id") not in self.escalation_policies:
                raise PDError(400, 1014, "Escalation Policy Not Found", ["Escalation policy not found"])
            epid = epref["id"]
        level = changes.get("escalation_level")
        if level is not None:
            rules = self.escalation_policies[epid or inc["escalation_policy"]["id"]]["escalation_rules"]
            if not isinstance(level, int) or isinstance(level, bool) or not 1 <= level <= len(rules):
                raise PDError(400, 1006, "Cannot Escalate", [f"Escalation level must be between 1 and {len(rules)}"])

        if reopening:
            if (inc["service"]["id"], inc["incident_key"]) in self._open_keys:
                raise invalid(
                    "Open incident with matching dedup key already exists on this service",
                    message="Incident could not be reopened",
                )
            steps.append(lambda ts: self._do_reopen(inc, status, actor, assignees, epid, ts))
        else:
            if epid is not None and (epid != inc["escalation_policy"]["id"] or level is None):
                steps.append(lambda ts: self._do_delegate(inc, epid, actor, ts))
            if level is not None:
                steps.append(lambda ts: self._do_escalate(inc, level, actor, ts))
            if assignees is not None:
                steps.append(lambda ts: self._do_reassign(inc, assignees, actor, ts))
            if status == "acknowledged":
                if actor is not None and any(a["acknowledger"]["id"] == actor["id"] for a in inc["acknowledgements"]):
                    raise already_acknowledged()
                if current == "acknowledged" and actor is None:
                    raise already_acknowledged()
                steps.append(lambda ts: self._do_acknowledge(inc, actor, ts))
            elif status == "triggered" and current == "acknowledged":
                steps.append(lambda ts: self._do_unacknowledge(inc, actor, ts))
            elif status == "resolved":
                resolution = changes.get("resolution")
                if resolution is not None and not isinstance(resolution, str):
                    raise invalid("Resolution must be a string")
                steps.append(lambda ts: self._do_resolve(inc, actor, resolution, ts))

        def apply() -> None:
            ts = self.now()
            for step in steps:
                step(ts)

        return apply

    # ------------------------------------------------------------ the changes

    def _do_title(self, inc: dict, title: str, ts: float) -> None:
        inc["title"] = title
        inc["summary"] = f"[#{inc['incident_number']}] {title}"
        self._refresh_ref("incident", inc["id"])
        self._touch(inc, ts)

    def _do_incident_type(self, inc: dict, name: str, actor: dict | None, ts: float) -> None:
        inc["incident_type"] = {"name": name}
        self._touch(inc, ts)
        self._emit("incident.incident_type.changed", inc, actor, ts)

    def _do_urgency(self, inc: dict, urgency: str, actor: dict | None, ts: float) -> None:
        inc["urgency"] = urgency
        self._touch(inc, ts)
        self._log("urgency_change_log_entry", inc, self._agent(actor, inc), f"Urgency changed to {urgency}", ts)

    def _do_priority(self, inc: dict, priority: dict | None, actor: dict | None, ts: float) -> None:
        inc["priority"] = priority
        self._touch(inc, ts)
        self._emit("incident.priority_updated", inc, actor, ts)

    def _do_bridge(self, inc: dict, bridge: dict | None, actor: dict | None, ts: float) -> None:
        if bridge:
            inc["conference_bridge"] = bridge
        else:
            inc.pop("conference_bridge", None)
        self._touch(inc, ts)
        data = {
            "incident": self.ref("incident", inc["id"]),
            "conference_numbers": [{"label": "", "number": bridge["conference_number"]}]
            if bridge and bridge.get("conference_number")
            else [],
            "conference_url": (bridge or {}).get("conference_url", ""),
            "type": "incident_conference_bridge",
        }
        self._emit("incident.conference_bridge.updated", inc, actor, ts, data=data)

    def _do_service(self, inc: dict, sid: str, actor: dict | None, ts: float) -> None:
        was_open = inc["status"] in OPEN
        if was_open:
            self._set_closed(inc)
        inc["service"] = self.ref("service", sid)
        inc["teams"] = self._teams_for(self.services[sid], inc["escalation_policy"]["id"])
        if was_open:
            self._set_open(inc)
        self._touch(inc, ts)
        self._emit("incident.service_updated", inc, actor, ts)

    def _back_to_triggered(self, inc: dict, ts: float) -> None:
        if inc["status"] == "acknowledged":
            inc["acknowledgements"] = []
            self._status_change(inc, "triggered", ts, inc["service"])
            self._open_by_service[inc["service"]["id"]][inc["id"]] = "triggered"

    def _do_delegate(self, inc: dict, epid: str, actor: dict | None, ts: float) -> None:
        inc["escalation_policy"] = self.ref("escalation_policy", epid)
        inc["teams"] = self._teams_for(self.services[inc["service"]["id"]], epid)
        self._escalation_level[inc["id"]] = 1
        self._back_to_triggered(inc, ts)
        refs = self._assign(inc, self.level_targets(epid, 1), ts, "escalation_policy")
        self._touch(inc, ts)
        entry = self._log(
            "delegate_log_entry",
            inc,
            self._agent(actor, inc),
            f"Reassigned to {inc['escalation_policy']['summary']}",
            ts,
            assignees=list(refs),
        )
        self._emit("incident.delegated", inc, actor, ts, v2="incident.delegate", entries=[entry])

    def _do_escalate(self, inc: dict, level: int, actor: dict | None, ts: float) -> None:
        epid = inc["escalation_policy"]["id"]
        self._escalation_level[inc["id"]] = level
        self._back_to_triggered(inc, ts)
        refs = self._assign(inc, self.level_targets(epid, level), ts, "escalation_policy")
        self._touch(inc, ts)
        names = ", ".join(r["summary"] for r in refs) or "nobody"
        entry = self._log(
            "escalate_log_entry",
            inc,
            self._agent(actor, inc),
            f"Escalated to level {level}: {names}",
            ts,
            assignees=list(refs),
        )
        self._emit("incident.escalated", inc, actor, ts, v2="incident.escalate", entries=[entry])

    def _do_reassign(self, inc: dict, user_ids: list[str], actor: dict | None, ts: float) -> None:
        self._back_to_triggered(inc, ts)
        refs = self._assign(inc, user_ids, ts, "direct_assignment")
        self._touch(inc, ts)
        who = f" by {actor['name']}" if actor else ""
        entry = self._log(
            "assign_log_entry",
            inc,
            self._agent(actor, inc),
            f"Assigned to {', '.join(r['summary'] for r in refs)}{who}.",
            ts,
            assignees=list(refs),
        )
        self._emit("incident.reassigned", inc, actor, ts, v2="incident.assign", entries=[entry])

    def _do_acknowledge(self, inc: dict, actor: dict | None, ts: float) -> None:
        by = self._agent(actor, inc)
        inc["acknowledgements"] = inc["acknowledgements"] + [{"at": iso(ts), "acknowledger": by}]
        self._status_change(inc, "acknowledged", ts, by)
        self._open_by_service[inc["service"]["id"]][inc["id"]] = "acknowledged"
        timeout = self.services[inc["service"]["id"]].get("acknowledgement_timeout")
        entry = self._log(
            "acknowledge_log_entry", inc, by, f"Acknowledged by {by['summary']}", ts, acknowledgement_timeout=timeout
        )
        self._emit("incident.acknowledged", inc, actor, ts, v2="incident.acknowledge", entries=[entry])

    def _do_unacknowledge(self, inc: dict, actor: dict | None, ts: float) -> None:
        inc["acknowledgements"] = []
        self._status_change(inc, "triggered", ts, inc["service"])
        self._open_by_service[inc["service"]["id"]][inc["id"]] = "triggered"
        by = self._agent(actor, inc)
        entry = self._log("unacknowledge_log_entry", inc, by, f"Unacknowledged by {by['summary']}", ts)
        self._emit("incident.unacknowledged", inc, actor, ts, v2="incident.unacknowledge", entries=[entry])

    def _do_resolve(
        self, inc: dict, actor: dict | None, resolution: str | None, ts: float, resolve_reason: dict | None = None
    ) -> None:
        by = self._agent(actor, inc)
        self._status_change(inc, "resolved", ts, by)
        inc["resolved_at"] = iso(ts)
        inc["assignments"] = []
        inc["acknowledgements"] = []
        inc["pending_actions"] = []
        if resolve_reason is not None:
            inc["resolve_reason"] = resolve_reason
        self._set_closed(inc)
        extra = {"note": resolution} if resolution else {}
        entry = self._log("resolve_log_entry", inc, by, f"Resolved by {by['summary']}", ts, **extra)
        self._emit("incident.resolved", inc, actor, ts, v2="incident.resolve", entries=[entry])

    def _do_reopen(
        self, inc: dict, status: str, actor: dict | None, assignees: list[str] | None, epid: str | None, ts: float
    ) -> None:
        if epid is not None:
            inc["escalation_policy"] = self.ref("escalation_policy", epid)
            inc["teams"] = self._teams_for(self.services[inc["service"]["id"]], epid)
        self._escalation_level[inc["id"]] = 1
        inc["resolved_at"] = None
        inc["resolve_reason"] = None
        inc["reopened_at"] = iso(ts)
        self._status_change(inc, "triggered", ts, inc["service"])
        # "When reopening an incident to the "acknowledged" status, it will be assigned to the current user."
        if status == "acknowledged" and actor is not None:
            refs = self._assign(inc, [actor["id"]], ts, "direct_assignment")
        elif assignees is not None:
            refs = self._assign(inc, assignees, ts, "direct_assignment")
        else:
            refs = self._assign(inc, self.level_targets(inc["escalation_policy"]["id"], 1), ts, "escalation_policy")
        self._set_open(inc)
        by = self._agent(actor, inc)
        entry = self._log(
            "trigger_log_entry",
            inc,
            by,
            f"Reopened by {by['summary']}",
            ts,
            {"type": "api", "summary": "Reopened"},
            event_details={"description": inc["title"]},
        )
        if refs:
            self._log(
                "assign_log_entry",
                inc,
                by,
                f"Assigned to {', '.join(r['summary'] for r in refs)}.",
                ts,
                assignees=list(refs),
            )
        self._emit("incident.reopened", inc, actor, ts, v2="incident.trigger", entries=[entry])
        if status == "acknowledged":
            self._do_acknowledge(inc, actor, ts)

    # ------------------------------------------------------------------ merge

    def merge_incidents(self, target_id: str, source_refs: Any, from_user: str | dict | None) -> dict:
        actor = self._actor(from_user)
        target = self._incident(target_id)
        if not isinstance(source_refs, list) or not source_refs:
            raise invalid("source_incidents must be a non-empty array")
        if target["status"] == "resolved":
            raise already_resolved()
        sources = []
        for ref in source_refs:
            if not isinstance(ref, dict) or ref.get("type") not in ("incident_reference", "incident"):
                raise invalid("source_incidents items must be incident references")
            src = self._incident(ref.get("id", ""))
            if src["id"] == target_id:
                raise invalid("An incident cannot be merged into itself")
            if src["resolve_reason"] is not None:
                raise PDError(400, 1019, "Incident Already Merged", [f"Incident {src['id']} was already merged"])
            if src["status"] == "resolved":
                raise already_resolved()
            sources.append(src)
        ts = self.now()
        reason = {"type": "merge_resolve_reason", "incident": self.ref("incident", target_id)}
        for src in sources:
            self._do_resolve(src, actor, None, ts, resolve_reason=reason)
            target["alert_counts"] = {
                k: target["alert_counts"][k] + src["alert_counts"][k] for k in ("all", "triggered", "resolved")
            }
        self._touch(target, ts)
        return target
