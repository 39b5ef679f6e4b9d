"""Incidents: creation, the status machine, assignment, notes, log entries, and the
events each change sends out as webhooks.

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

Every change goes through :meth:`IncidentOps.update_incident` (the HTTP route and the
Python helpers alike), which validates all of a request before changing anything.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from .errors import PDError, already_acknowledged, already_resolved, invalid, not_found
from .util import iso

MAX_NOTES = 2000
MAX_BULK_UPDATE = 250
OPEN = ("triggered", "acknowledged")


class IncidentOps:
    """Mixin for :class:`PagerDutyState` holding everything incident-shaped."""

    # ----------------------------------------------------------------- store

    def _init_incident_store(self) -> None:
        self.incidents: dict[str, dict] = {}
        self.log_entries: dict[str, dict] = {}
        self._log_ts: dict[str, float] = {}
        self._incident_logs: dict[str, list[str]] = {}
        self.notes: dict[str, dict[str, dict]] = {}
        self.status_updates: dict[str, list[dict]] = {}
        self._open_by_service: dict[str, dict[str, str]] = {}
        self._open_keys: dict[tuple[str, str], str] = {}
        self._last_incident_at: dict[str, float] = {}
        self._incident_ts: dict[str, float] = {}
        self._escalation_level: dict[str, int] = {}
        self._bs_impacts: dict[str, dict[str, str]] = {}
        self._next_number = int(self._seed.get("first_incident_number", 1))

    # ------------------------------------------------------------- log entries

    def _log(self, kind: str, inc: dict, agent: dict, summary: str, ts: float, channel: dict | None = None,
             **extra: Any) -> dict:
        leid = self.ids.new("R", 26)
        iid = inc["id"]
        entry = {
            "id": leid,
            "type": kind,
            "summary": summary,
            "self": f"{self.api_url}/log_entries/{leid}",
            "html_url": f"{self.web_url}/incidents/{iid}/log_entries/{leid}",
            "created_at": iso(ts),
            "agent": agent,
            "channel": channel or {"type": "api"},
            "service": inc["service"],
            "incident": self.ref("incident", iid),
            "teams": list(inc["teams"]),
            "contexts": [],
        }
        if extra:
            entry.update(extra)
        self.log_entries[leid] = entry
        self._log_ts[leid] = ts
        self._incident_logs[iid].append(leid)
        return entry

    def incident_log_entries(self, iid: str) -> list[dict]:
        """Newest first, as PagerDuty lists them."""
        self._incident(iid)
        return [self.log_entries[le] for le in reversed(self._incident_logs[iid])]

    def all_log_entries(self, since: float | None = None, until: float | None = None) -> list[dict]:
        out = []
        for leid, ts in reversed(self._log_ts.items()):
            if (since is None or ts >= since) and (until is None or ts < until):
                out.append(self.log_entries[leid])
        return out

    def log_entry_time(self, leid: str) -> float:
        return self._log_ts[leid]

    # ----------------------------------------------------------------- helpers

    def _incident(self, iid: str) -> dict:
        inc = self.incidents.get(iid)
        if inc is None:
            raise not_found("Incident")
        return inc

    def _actor(self, who: str | dict | None) -> dict | None:
        return self.resolve_user(who)

    def _agent(self, user: dict | None, inc: dict) -> dict:
        return self.ref("user", user["id"]) if user else inc["service"]

    def _set_open(self, inc: dict) -> None:
        sid = inc["service"]["id"]
        self._open_by_service.setdefault(sid, {})[inc["id"]] = inc["status"]
        key = (sid, inc["incident_key"])
        self._open_keys.setdefault(key, inc["id"])

    def _set_closed(self, inc: dict) -> None:
        sid = inc["service"]["id"]
        self._open_by_service.get(sid, {}).pop(inc["id"], None)
        key = (sid, inc["incident_key"])
        if self._open_keys.get(key) == inc["id"]:
            del self._open_keys[key]

    def _assign(self, inc: dict, user_ids: list[str], ts: float, via: str) -> list[dict]:
        stamp = iso(ts)
        inc["assignments"] = [{"at": stamp, "assignee": self.ref("user", uid)} for uid in user_ids]
        inc["assigned_via"] = via
        return [a["assignee"] for a in inc["assignments"]]

    def _teams_for(self, service: dict, epid: str) -> list[dict]:
        teams = list(service["teams"])
        ep = self.escalation_policies.get(epid)
        if ep:
            seen = {t["id"] for t in teams}
            teams.extend(t for t in ep["teams"] if t["id"] not in seen)
        return teams

    def _touch(self, inc: dict, ts: float) -> None:
        inc["updated_at"] = iso(ts)

    def _status_change(self, inc: dict, status: str, ts: float, by: dict) -> None:
        inc["status"] = status
        stamp = iso(ts)
        inc["last_status_change_at"] = stamp
        inc["last_status_change_by"] = by
        inc["updated_at"] = stamp

    def _user_refs(self, refs: Any, field: str) -> list[str]:
        if not isinstance(refs, list) or not refs:
            raise invalid(f"{field} must be a non-empty array")
        out = []
        for a in refs:
            assignee = a.get("assignee") if isinstance(a, dict) else None
            if not isinstance(assignee, dict) or assignee.get("type") not in ("user_reference", "user"):
                raise invalid(f"{field}: each item needs an assignee user_reference")
            if assignee.get("id") not in self.users:
                raise PDError(400, 1007, "Assigned To User Not Found", [f"User {assignee.get('id')} not found"])
            if assignee["id"] not in out:
                out.append(assignee["id"])
        return out

    def _priority_from(self, value: Any) -> dict | None:
        if value is None:
            return None
        if isinstance(value, str):
            for p in self.priorities.values():  # highest first (seed order)
                if p["name"] == value:
                    return self.ref("priority", p["id"])
            raise PDError(400, 1020, "Invalid Priority", [f"Priority {value!r} not found"])
        if isinstance(value, dict) and value.get("id") in self.priorities:
            return self.ref("priority", value["id"])
        raise PDError(400, 1020, "Invalid Priority", ["Priority not found"])

    @staticmethod
    def _conference_bridge(value: Any) -> dict | None:
        if value is None:
            return None
        if not isinstance(value, dict) or not all(
            isinstance(value.get(k), str) for k in ("conference_number", "conference_url") if k in value
        ):
            raise invalid("conference_bridge must be an object with conference_number and conference_url strings")
        return {k: value[k] for k in ("conference_number", "conference_url") if k in value}

    # ---------------------------------------------------------------- creation

    def create_incident(
        self,
        *,
        title: str,
        service_id: str,
        from_user: str | dict | None = None,
        incident_key: str | None = None,
        urgency: str | None = None,
        priority: Any = None,
        body_details: Any = None,
        assignee_ids: Iterable[str] | None = None,
        escalation_policy_id: str | None = None,
        conference_bridge: dict | None = None,
        incident_type: str | None = None,
    ) -> dict:
        """Create an incident as ``from_user`` would through ``POST /incidents``."""
        body: dict[str, Any] = {"type": "incident", "title": title, "service": {"id": service_id, "type": "service_reference"}}
        if incident_key is not None:
            body["incident_key"] = incident_key
        if urgency is not None:
            body["urgency"] = urgency
        if priority is not None:
            body["priority"] = priority if isinstance(priority, dict) else {"id": priority, "type": "priority_reference"}
        if body_details is not None:
            body["body"] = {"type": "incident_body", "details": body_details}
        if assignee_ids:
            body["assignments"] = [{"assignee": {"id": u, "type": "user_reference"}} for u in assignee_ids]
        if escalation_policy_id:
            body["escalation_policy"] = {"id": escalation_policy_id, "type": "escalation_policy_reference"}
        if conference_bridge is not None:
            body["conference_bridge"] = conference_bridge
        if incident_type is not None:
            body["incident_type"] = {"name": incident_type}
        return self.create_incident_from_body(body, from_user)

    def create_incident_from_body(self, data: Any, from_user: str | dict | None) -> dict:
        """The ``incident`` object of a ``POST /incidents`` body."""
        actor = self._actor(from_user)
        if not isinstance(data, dict):
            raise invalid("incident must be an object")
        errors = []
        if data.get("type") != "incident":
            errors.append("Incident type must be 'incident'")
        title = data.get("title")
        if not isinstance(title, str) or not title.strip():
            errors.append("Title can't be blank")
        sref = data.get("service")
        service = self.services.get(sref.get("id")) if isinstance(sref, dict) else None
        if service is None:
            errors.append("Service not found" if isinstance(sref, dict) else "Service can't be blank")
        urgency = data.get("urgency")
        if urgency is not None and urgency not in ("high", "low"):
            errors.append("Urgency must be 'high' or 'low'")
        if "assignments" in data and "escalation_policy" in data:
            errors.append("Assignments and escalation_policy cannot both be specified")
        key = data.get("incident_key")
        if key is not None and (not isinstance(key, str) or not key):
            errors.append("Incident key must be a non-empty string")
        if errors:
            raise invalid(*errors)
        if service["status"] == "disabled":
            raise invalid("Service is disabled", message="Incident could not be created")
        assignees = self._user_refs(data["assignments"], "assignments") if "assignments" in data else None
        epid = service["escalation_policy"]["id"]
        if "escalation_policy" in data:
            epref = data["escalation_policy"]
            if not isinstance(epref, dict) or epref.get("id") not in self.escalation_policies:
                raise PDError(400, 1014, "Escalation Policy Not Found", ["Escalation policy not found"])
            epid = epref["id"]
        priority = self._priority_from(data["priority"]) if data.get("priority") is not None else None
        bridge = self._conference_bridge(data.get("conference_bridge"))
        details = None
        if "body" in data:
            b = data["body"]
            if not isinstance(b, dict):
                raise invalid("body must be an object of type incident_body")
            details = b.get("details")
        if key is not None and (service["id"], key) in self._open_keys:
            raise invalid("Open incident with matching dedup key already exists on this service",
                          message="Incident could not be created")
        if urgency is None:
            rule = service.get("incident_urgency_rule") or {}
            urgency = rule.get("urgency") if rule.get("urgency") in ("high", "low") else "high"

        ts = self.now()
        stamp = iso(ts)
        iid = self.ids.new()
        number = self._next_number
        self._next_number += 1
        teams = self._teams_for(service, epid)
        inc = {
            "id": iid,
            "type": "incident",
            "summary": f"[#{number}] {title}",
            "self": f"{self.api_url}/incidents/{iid}",
            "html_url": f"{self.web_url}/incidents/{iid}",
            "incident_number": number,
            "title": title,
            "created_at": stamp,
            "updated_at": stamp,
            "status": "triggered",
            "incident_key": key if key is not None else self.ids.hex(32),
            "service": self.ref("service", service["id"]),
            "assignments": [],
            "assigned_via": "escalation_policy",
            "last_status_change_at": stamp,
            "last_status_change_by": self.ref("service", service["id"]),
            "resolved_at": None,
            "first_trigger_log_entry": None,
            "alert_counts": {"all": 0, "triggered": 0, "resolved": 0},
            "is_mergeable": True,
            "incident_type": {"name": (data.get("incident_type") or {}).get("name") or "incident_default"},
            "escalation_policy": self.ref("escalation_policy", epid),
            "teams": teams,
            "pending_actions": [],
            "acknowledgements": [],
            "priority": priority,
            "resolve_reason": None,
            "incidents_responders": [],
            "responder_requests": [],
            "urgency": urgency,
        }
        if bridge:
            inc["conference_bridge"] = bridge
        # The body's details are not echoed on the incident: "For incidents manually created
        # in PagerDuty, the description is available in the first log entry in
        # channel.details" (09-V2-Overview.md).
        self.incidents[iid] = inc
        self._incident_logs[iid] = []
        self.notes[iid] = {}
        self._incident_ts[iid] = ts
        self._escalation_level[iid] = 1
        self._last_incident_at[service["id"]] = ts
        agent = self._agent(actor, inc)
        trigger = self._log(
            "trigger_log_entry", inc, agent, "Triggered through the API", ts,
            {"type": "api", "summary": title, "subject": title, "details": details, "details_omitted": False},
            event_details={"description": title},
        )
        inc["first_trigger_log_entry"] = {
            "id": trigger["id"],
            "type": "trigger_log_entry_reference",
            "summary": trigger["summary"],
            "self": trigger["self"],
            "html_url": trigger["html_url"],
        }
        if assignees is not None:
            refs = self._assign(inc, assignees, ts, "direct_assignment")
        else:
            refs = self._assign(inc, self.level_targets(epid, 1), ts, "escalation_policy")
        assign_entry = None
        if refs:
            names = ", ".join(r["summary"] for r in refs)
            assign_entry = self._log("assign_log_entry", inc, agent, f"Assigned to {names}.", ts, assignees=list(refs))
        self._set_open(inc)
        self._emit("incident.triggered", inc, actor, ts, v2="incident.trigger", entries=[trigger])
        # "When a user creates an incident assigned to themselves, the incident will be
        # created in the Acknowledged state" (15-Incident-Creation-API.md).
        if actor is not None and assignees == [actor["id"]]:
            self._do_acknowledge(inc, actor, ts)
        return inc

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
            raise PDError(413, 2001, "Invalid Input Provided",
                          [f"A maximum of {MAX_BULK_UPDATE} incidents may be updated at a time"])
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
                raise invalid("Open incident with matching dedup key already exists on this service",
                              message="Incident could not be reopened")
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
            if bridge and bridge.get("conference_number") else [],
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
            "delegate_log_entry", inc, self._agent(actor, inc),
            f"Reassigned to {inc['escalation_policy']['summary']}", ts, assignees=list(refs),
        )
        self._emit("incident.delegated", inc, actor, ts, v2="incident.delegate", entries=[entry])

    def _do_escalate(self, inc: dict, level: int, actor: dict | None, ts: float) -> None:
        epid = inc["escalation_policy"]["id"]
        self._escalation_level[inc["id"]] = level
        self._back_to_triggered(inc, ts)
        refs = self._assign(inc, self.level_targets(epid, level), ts, "escalation_policy")
        self._touch(inc, ts)
        names = ", ".join(r["summary"] for r in refs) or "nobody"
        entry = self._log("escalate_log_entry", inc, self._agent(actor, inc),
                          f"Escalated to level {level}: {names}", ts, assignees=list(refs))
        self._emit("incident.escalated", inc, actor, ts, v2="incident.escalate", entries=[entry])

    def _do_reassign(self, inc: dict, user_ids: list[str], actor: dict | None, ts: float) -> None:
        self._back_to_triggered(inc, ts)
        refs = self._assign(inc, user_ids, ts, "direct_assignment")
        self._touch(inc, ts)
        who = f" by {actor['name']}" if actor else ""
        entry = self._log("assign_log_entry", inc, self._agent(actor, inc),
                          f"Assigned to {', '.join(r['summary'] for r in refs)}{who}.", ts, assignees=list(refs))
        self._emit("incident.reassigned", inc, actor, ts, v2="incident.assign", entries=[entry])

    def _do_acknowledge(self, inc: dict, actor: dict | None, ts: float) -> None:
        by = self._agent(actor, inc)
        inc["acknowledgements"] = inc["acknowledgements"] + [{"at": iso(ts), "acknowledger": by}]
        self._status_change(inc, "acknowledged", ts, by)
        self._open_by_service[inc["service"]["id"]][inc["id"]] = "acknowledged"
        timeout = self.services[inc["service"]["id"]].get("acknowledgement_timeout")
        entry = self._log("acknowledge_log_entry", inc, by, f"Acknowledged by {by['summary']}", ts,
                          acknowledgement_timeout=timeout)
        self._emit("incident.acknowledged", inc, actor, ts, v2="incident.acknowledge", entries=[entry])

    def _do_unacknowledge(self, inc: dict, actor: dict | None, ts: float) -> None:
        inc["acknowledgements"] = []
        self._status_change(inc, "triggered", ts, inc["service"])
        self._open_by_service[inc["service"]["id"]][inc["id"]] = "triggered"
        by = self._agent(actor, inc)
        entry = self._log("unacknowledge_log_entry", inc, by, f"Unacknowledged by {by['summary']}", ts)
        self._emit("incident.unacknowledged", inc, actor, ts, v2="incident.unacknowledge", entries=[entry])

    def _do_resolve(self, inc: dict, actor: dict | None, resolution: str | None, ts: float,
                    resolve_reason: dict | None = None) -> None:
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

    def _do_reopen(self, inc: dict, status: str, actor: dict | None, assignees: list[str] | None,
                   epid: str | None, ts: float) -> None:
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
        entry = self._log("trigger_log_entry", inc, by, f"Reopened by {by['summary']}", ts,
                          {"type": "api", "summary": "Reopened"}, event_details={"description": inc["title"]})
        if refs:
            self._log("assign_log_entry", inc, by, f"Assigned to {', '.join(r['summary'] for r in refs)}.", ts,
                      assignees=list(refs))
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

    # ------------------------------------------------------------------ notes

    def add_note(self, iid: str, user: str | dict | None, content: str) -> dict:
        """``POST /incidents/{id}/notes`` as ``user``."""
        actor = self._actor(user)
        inc = self._incident(iid)
        if not isinstance(content, str) or not content.strip():
            raise invalid("Content can't be blank")
        notes = self.notes[iid]
        if len(notes) >= MAX_NOTES:
            raise invalid(f"An incident can have at most {MAX_NOTES} notes")
        ts = self.now()
        nid = self.ids.new()
        note = {
            "id": nid,
            "user": self.ref("user", actor["id"]) if actor else None,
            "channel": {"summary": "The PagerDuty website or APIs"},
            "content": content,
            "created_at": iso(ts),
            "updated_at": iso(ts),
        }
        if note["user"] is None:
            del note["user"]
        notes[nid] = note
        self._touch(inc, ts)
        entry = self._log("annotate_log_entry", inc, self._agent(actor, inc), "Note added", ts, note=content,
                          channel={"type": "note", "summary": content})
        data = {"incident": self.ref("incident", iid), "id": nid, "content": content, "trimmed": False,
                "type": "incident_note"}
        self._emit("incident.annotated", inc, actor, ts, v2="incident.annotate", entries=[entry], data=data)
        return note

    def update_note(self, iid: str, nid: str, user: str | dict | None, content: str) -> dict:
        self._actor(user)
        self._incident(iid)
        note = self.notes[iid].get(nid)
        if note is None:
            raise not_found("Note")
        if not isinstance(content, str) or not content.strip():
            raise invalid("Content can't be blank")
        note["content"] = content
        note["updated_at"] = iso(self.now())
        return note

    def delete_note(self, iid: str, nid: str) -> None:
        self._incident(iid)
        if self.notes[iid].pop(nid, None) is None:
            raise not_found("Note")

    def list_notes(self, iid: str) -> list[dict]:
        self._incident(iid)
        return list(self.notes[iid].values())

    # ------------------------------------------------------------- responders

    def add_responder_request(self, iid: str, requester_id: Any, message: Any, targets: Any) -> dict:
        self.require_ability("coordinated_responding")
        inc = self._incident(iid)
        errors = []
        requester = self.users.get(requester_id) if isinstance(requester_id, str) else None
        if requester is None:
            errors.append("requester_id must be an existing user id")
        if not isinstance(message, str) or not message:
            errors.append("message can't be blank")
        if not isinstance(targets, list) or not targets:
            errors.append("responder_request_targets must be a non-empty array")
        if errors:
            raise invalid(*errors)
        if inc["status"] == "resolved":
            raise already_resolved()
        ts = self.now()
        stamp = iso(ts)
        req_ref = self.ref("user", requester["id"])
        inc_ref = self.ref("incident", iid)
        parsed = []
        for item in targets:
            target = item.get("responder_request_target", item) if isinstance(item, dict) else None
            if not isinstance(target, dict):
                raise invalid("responder_request_targets items must be objects")
            ttype, tid = target.get("type"), target.get("id")
            if ttype in ("user_reference", "user") and tid in self.users:
                parsed.append(("user", tid, [tid], None))
            elif ttype in ("escalation_policy_reference", "escalation_policy") and tid in self.escalation_policies:
                parsed.append(("escalation_policy", tid, self.level_targets(tid, 1), tid))
            else:
                raise invalid(f"Responder request target {tid!r} not found")
        out_targets = []
        new_responders = []
        for kind, tid, user_ids, epid in parsed:
            responders = []
            for uid in user_ids:
                responder = {
                    "state": "pending",
                    "user": self.ref("user", uid),
                    "incident": inc_ref,
                    "updated_at": stamp,
                    "message": message,
                    "requester": req_ref,
                    "requested_at": stamp,
                }
                if epid:
                    responder["escalation_policy_requests"] = [epid]
                responders.append(responder)
                new_responders.append((responder, epid))
            out_targets.append({
                "responder_request_target": {
                    "type": f"{kind}_reference",
                    "id": tid,
                    "summary": self.ref(kind, tid)["summary"],
                    "incident_responders": responders,
                }
            })
        request = {
            "id": self.ids.new(),
            "incident": inc_ref,
            "requester": req_ref,
            "requested_at": stamp,
            "message": message,
            "responder_request_targets": out_targets,
        }
        inc["responder_requests"] = inc["responder_requests"] + [request]
        inc["incidents_responders"] = inc["incidents_responders"] + [r for r, _ in new_responders]
        self._touch(inc, ts)
        for responder, epid in new_responders:
            data = {
                "incident": inc_ref,
                "user": responder["user"],
                "escalation_policy": self.ref("escalation_policy", epid) if epid else None,
                "message": message,
                "state": "pending",
                "type": "incident_responder",
            }
            self._emit("incident.responder.added", inc, requester, ts, data=data)
        return request

    def cancel_responder_requests(self, iid: str, requester_id: Any, targets: Any) -> list[dict]:
        self.require_ability("coordinated_responding")
        inc = self._incident(iid)
        if not isinstance(requester_id, str) or requester_id not in self.users:
            raise invalid("requester_id must be an existing user id")
        if not isinstance(targets, list) or not targets:
            raise invalid("responder_request_targets must be a non-empty array")
        results = []
        for target in targets:
            if not isinstance(target, dict) or target.get("type") not in ("user_reference", "escalation_policy_reference"):
                raise invalid("responder_request_targets items need type user_reference or escalation_policy_reference")
            tid = target.get("id")
            result = "not_found"
            for responder in inc["incidents_responders"]:
                match = (responder["user"]["id"] == tid) if target["type"] == "user_reference" else (
                    tid in responder.get("escalation_policy_requests", []))
                if match:
                    if responder["state"] == "pending":
                        responder["state"] = "user_cancelled"
                        responder["updated_at"] = iso(self.now())
                        result = "cancelled"
                    elif result == "not_found":
                        result = responder["state"] if responder["state"] in ("joined", "declined") else "cancelled"
            results.append({"type": target["type"], "id": tid, "result": result})
        return results

    # ---------------------------------------------------------- status updates

    def add_status_update(self, iid: str, user: str | dict | None, message: str, subject: str | None = None,
                          html_message: str | None = None) -> dict:
        actor = self._actor(user)
        inc = self._incident(iid)
        if not isinstance(message, str) or not message.strip():
            raise invalid("message can't be blank")
        ts = self.now()
        update = {
            "id": self.ids.new(),
            "message": message,
            "created_at": iso(ts),
            "sender": self.ref("user", actor["id"]) if actor else None,
        }
        if update["sender"] is None:
            del update["sender"]
        if subject is not None:
            update["subject"] = subject
        if html_message is not None:
            update["html_message"] = html_message
        self.status_updates.setdefault(iid, []).append(update)
        self._touch(inc, ts)
        data = {"incident": self.ref("incident", iid), "id": update["id"], "message": message, "trimmed": False,
                "type": "incident_status_update"}
        self._emit("incident.status_update_published", inc, actor, ts, data=data)
        return update

    # ---------------------------------------------------------------- snooze

    def snooze(self, iid: str, user: str | dict | None, duration: Any) -> dict:
        actor = self._actor(user)
        inc = self._incident(iid)
        if not isinstance(duration, int) or isinstance(duration, bool) or not 1 <= duration <= 7 * 86400:
            raise PDError(400, 1013, "Snooze Duration is Invalid", ["duration must be between 1 and 604800 seconds"])
        if inc["status"] == "resolved":
            raise already_resolved()
        if inc["status"] != "acknowledged":
            raise PDError(400, 1012, "Incident is not Acknowledged", ["Only acknowledged incidents can be snoozed"])
        ts = self.now()
        inc["pending_actions"] = [{"type": "unacknowledge", "at": iso(ts + duration)}]
        self._touch(inc, ts)
        self._log("snooze_log_entry", inc, self._agent(actor, inc), f"Snoozed for {duration} seconds", ts,
                  changed_actions=[{"type": "unacknowledge", "at": iso(ts + duration)}])
        return inc

    # ------------------------------------------------ business service impacts

    def set_business_service_impact(self, iid: str, bsid: str, relation: Any) -> str:
        self._incident(iid)
        if bsid not in self.business_services:
            raise not_found("Business Service")
        if relation not in ("impacted", "not_impacted"):
            raise invalid("relation must be 'impacted' or 'not_impacted'")
        self._bs_impacts.setdefault(iid, {})[bsid] = relation
        return relation

    def business_service_impacts(self, iid: str) -> list[dict]:
        inc = self._incident(iid)
        manual = self._bs_impacts.get(iid, {})
        impacted = {b: "impacted" for b in self.business_services_depending_on(inc["service"]["id"])}
        impacted.update(manual)
        out = []
        for bsid, status in impacted.items():
            bs = self.business_services.get(bsid)
            if bs is None or status != "impacted" or inc["status"] == "resolved":
                continue
            out.append({"id": bsid, "name": bs["name"], "type": "business_service", "status": status,
                        "additional_fields": {"highest_impacting_priority": None}})
        return out

    # ------------------------------------------------ workflows / response plays

    def start_workflow(self, workflow_id: str, incident_id: Any, by: str | dict | None = None) -> dict:
        self.require_ability("incident_workflows")
        wf = self.incident_workflows.get(workflow_id)
        if wf is None:
            raise not_found("Incident Workflow")
        if not isinstance(incident_id, str):
            raise invalid("incident_workflow_instance.incident.id is required")
        inc = self._incident(incident_id)
        actor = self._actor(by)
        ts = self.now()
        instance_id = self.ids.new()
        instance = {"id": instance_id, "type": "incident_workflow_instance", "incident": self.ref("incident", inc["id"])}
        self.workflow_instances[instance_id] = {**instance, "incident_workflow": self.ref("incident_workflow", workflow_id)}
        data = {
            "id": instance_id,
            "type": "incident_workflow_instance",
            "summary": wf["name"],
            "incident_workflow": self.ref("incident_workflow", workflow_id),
            "workflow_trigger": None,
            "incident": self.ref("incident", inc["id"]),
            "service": inc["service"],
        }
        self._emit("incident.workflow.started", inc, actor, ts, data=data)
        self._emit("incident.workflow.completed", inc, actor, ts, data=dict(data))
        return instance

    def run_response_play(self, play_id: str, incident_id: Any, by: str | dict | None) -> dict:
        if not self.response_plays_enabled or play_id not in self.response_plays:
            raise not_found("Response Play")
        self.require_ability("response_plays")
        actor = self._actor(by)
        if not isinstance(incident_id, str):
            raise invalid("incident.id is required")
        inc = self._incident(incident_id)
        run = {"response_play": play_id, "incident": inc["id"], "by": actor["id"] if actor else None,
               "at": iso(self.now())}
        self.response_play_runs.append(run)
        return {"status": "ok"}

    # ---------------------------------------------------------------- events

    def _emit(self, event_type: str, inc: dict, actor: dict | None, ts: float, *, v2: str | None = None,
              entries: list[dict] | None = None, data: dict | None = None) -> None:
        if not self.webhook_subscriptions and not self.extensions:
            return
        self.dispatcher.incident_event(event_type, inc, actor, ts, data=data, v2_event=v2, log_entries=entries or [])

    def _emit_service_event(self, event_type: str, service: dict) -> None:
        if self.webhook_subscriptions:
            self.dispatcher.service_event(event_type, service, self.now())

    # -------------------------------------------------------------- rendering

    def render_incident(self, inc: dict, include: Iterable[str] = ()) -> dict:
        include = set(include)
        if not include:
            return inc
        out = dict(inc)
        if "services" in include:
            out["service"] = self.render_service(self.services[inc["service"]["id"]]) \
                if inc["service"]["id"] in self.services else inc["service"]
        if "escalation_policies" in include and inc["escalation_policy"]["id"] in self.escalation_policies:
            out["escalation_policy"] = self.render_escalation_policy(self.escalation_policies[inc["escalation_policy"]["id"]])
        if "teams" in include:
            out["teams"] = [self.teams.get(t["id"], t) for t in inc["teams"]]
        if include & {"assignees", "users"}:
            out["assignments"] = [{**a, "assignee": self.users.get(a["assignee"]["id"], a["assignee"])}
                                  for a in inc["assignments"]]
        if include & {"acknowledgers", "users"}:
            out["acknowledgements"] = [
                {**a, "acknowledger": self.users.get(a["acknowledger"]["id"], a["acknowledger"])
                 if a["acknowledger"]["type"] == "user_reference" else a["acknowledger"]}
                for a in inc["acknowledgements"]
            ]
        if "priorities" in include and inc["priority"]:
            out["priority"] = self.priorities.get(inc["priority"]["id"], inc["priority"])
        if "first_trigger_log_entries" in include and inc["first_trigger_log_entry"]:
            out["first_trigger_log_entry"] = self.log_entries.get(inc["first_trigger_log_entry"]["id"])
        return out

    def incident_time(self, iid: str) -> float:
        return self._incident_ts[iid]
