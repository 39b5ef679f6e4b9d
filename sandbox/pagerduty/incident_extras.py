"""What people add to an incident besides its status: notes, responder requests, status
updates, snoozing and business-service impacts."""

from __future__ import annotations

from typing import Any

from .errors import PDError, already_resolved, invalid, not_found
from .util import iso

MAX_NOTES = 2000


class IncidentExtraOps:
    """Mixin for :class:`PagerDutyState`: notes, responders, status updates, snooze, impacts."""

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
        entry = self._log(
            "annotate_log_entry",
            inc,
            self._agent(actor, inc),
            "Note added",
            ts,
            note=content,
            channel={"type": "note", "summary": content},
        )
        data = {
            "incident": self.ref("incident", iid),
            "id": nid,
            "content": content,
            "trimmed": False,
            "type": "incident_note",
        }
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
            out_targets.append(
                {
                    "responder_request_target": {
                        "type": f"{kind}_reference",
                        "id": tid,
                        "summary": self.ref(kind, tid)["summary"],
                        "incident_responders": responders,
                    }
                }
            )
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
            if not isinstance(target, dict) or target.get("type") not in (
                "user_reference",
                "escalation_policy_reference",
            ):
                raise invalid("responder_request_targets items need type user_reference or escalation_policy_reference")
            tid = target.get("id")
            result = "not_found"
            for responder in inc["incidents_responders"]:
                match = (
                    (responder["user"]["id"] == tid)
                    if target["type"] == "user_reference"
                    else (tid in responder.get("escalation_policy_requests", []))
                )
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

    def add_status_update(
        self,
        iid: str,
        user: str | dict | None,
        message: str,
        subject: str | None = None,
        html_message: str | None = None,
    ) -> dict:
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
        data = {
            "incident": self.ref("incident", iid),
            "id": update["id"],
            "message": message,
            "trimmed": False,
            "type": "incident_status_update",
        }
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
        self._log(
            "snooze_log_entry",
            inc,
            self._agent(actor, inc),
            f"Snoozed for {duration} seconds",
            ts,
            changed_actions=[{"type": "unacknowledge", "at": iso(ts + duration)}],
        )
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
            out.append(
                {
                    "id": bsid,
                    "name": bs["name"],
                    "type": "business_service",
                    "status": status,
                    "additional_fields": {"highest_impacting_priority": None},
                }
            )
        return out
