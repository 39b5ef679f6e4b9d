"""Incidents: their store and log entries, creation, rendering, and the events each change
sends out as webhooks (changes themselves: ``incident_changes``; notes and the rest: ``incident_extras``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .errors import PDError, invalid, not_found
from .util import iso

OPEN = ("triggered", "acknowledged")


class IncidentOps:
    """Mixin for :class:`PagerDutyState`: the incident store, log entries and creation."""

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

    def _log(
        self, kind: str, inc: dict, agent: dict, summary: str, ts: float, channel: dict | None = None, **extra: Any
    ) -> dict:
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
        body: dict[str, Any] = {
            "type": "incident",
            "title": title,
            "service": {"id": service_id, "type": "service_reference"},
        }
        if incident_key is not None:
            body["incident_key"] = incident_key
        if urgency is not None:
            body["urgency"] = urgency
        if priority is not None:
            body["priority"] = (
                priority if isinstance(priority, dict) else {"id": priority, "type": "priority_reference"}
            )
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
            raise invalid(
                "Open incident with matching dedup key already exists on this service",
                message="Incident could not be created",
            )
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
            "trigger_log_entry",
            inc,
            agent,
            "Triggered through the API",
            ts,
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

    # ---------------------------------------------------------------- events

    def _emit(
        self,
        event_type: str,
        inc: dict,
        actor: dict | None,
        ts: float,
        *,
        v2: str | None = None,
        entries: list[dict] | None = None,
        data: dict | None = None,
    ) -> None:
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
            out["service"] = (
                self.render_service(self.services[inc["service"]["id"]])
                if inc["service"]["id"] in self.services
                else inc["service"]
            )
        if "escalation_policies" in include and inc["escalation_policy"]["id"] in self.escalation_policies:
            out["escalation_policy"] = self.render_escalation_policy(
                self.escalation_policies[inc["escalation_policy"]["id"]]
            )
        if "teams" in include:
            out["teams"] = [self.teams.get(t["id"], t) for t in inc["teams"]]
        if include & {"assignees", "users"}:
            out["assignments"] = [
                {**a, "assignee": self.users.get(a["assignee"]["id"], a["assignee"])} for a in inc["assignments"]
            ]
        if include & {"acknowledgers", "users"}:
            out["acknowledgements"] = [
                {
                    **a,
                    "acknowledger": self.users.get(a["acknowledger"]["id"], a["acknowledger"])
                    if a["acknowledger"]["type"] == "user_reference"
                    else a["acknowledger"],
                }
                for a in inc["acknowledgements"]
            ]
        if "priorities" in include and inc["priority"]:
            out["priority"] = self.priorities.get(inc["priority"]["id"], inc["priority"])
        if "first_trigger_log_entries" in include and inc["first_trigger_log_entry"]:
            out["first_trigger_log_entry"] = self.log_entries.get(inc["first_trigger_log_entry"]["id"])
        return out

    def incident_time(self, iid: str) -> float:
        return self._incident_ts[iid]
