"""Escalation policies: who an incident goes to, level by level, and the
``/escalation_policies`` routes."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aiohttp import web

from .api import acting_user, list_param
from .crud import Resource, crud_routes
from .errors import invalid
from .util import name_errors


class EscalationPolicyOps:
    """Mixin for :class:`PagerDutyState`: escalation policies and the users each level reaches."""

    def _norm_targets(self, targets: Any) -> list[dict]:
        if not isinstance(targets, list) or not targets:
            raise invalid("Escalation rules must have at least one target")
        out = []
        for t in targets:
            if not isinstance(t, dict):
                raise invalid("Escalation rule target must be an object")
            ttype = t.get("type", "")
            if ttype in ("user", "user_reference"):
                if t.get("id") not in self.users:
                    raise invalid(f"Escalation rule target user {t.get('id')} not found")
                out.append(self.ref("user", t["id"]))
            elif ttype in ("schedule", "schedule_reference"):
                if t.get("id") not in self.schedules:
                    raise invalid(f"Escalation rule target schedule {t.get('id')} not found")
                out.append(self.ref("schedule", t["id"]))
            else:
                raise invalid("Escalation rule target type must be user_reference or schedule_reference")
        return out

    def _store_escalation_policy(
        self, epid, name, description, rules, team_ids, num_loops=0, handoff="if_has_services"
    ):
        epid = self._claim_id(epid)
        if not isinstance(rules, list) or not rules:
            raise invalid("Escalation policy must have at least one escalation rule")
        norm_rules = []
        for r in rules:
            if not isinstance(r, dict):
                raise invalid("Escalation rule must be an object")
            delay = r.get("escalation_delay_in_minutes", 30)
            if not isinstance(delay, int) or isinstance(delay, bool) or delay < 1:
                raise invalid("Escalation delay in minutes must be a positive integer")
            norm_rules.append(
                {
                    "id": r.get("id") or self.ids.new(),
                    "escalation_delay_in_minutes": delay,
                    "targets": self._norm_targets(r.get("targets")),
                }
            )
        teams = []
        for tid in team_ids:
            if tid not in self.teams:
                raise invalid(f"Team {tid} not found")
            teams.append(self.ref("team", tid))
        ep = {
            "id": epid,
            "type": "escalation_policy",
            "summary": name,
            "self": self._url("escalation_policies", epid),
            "html_url": self._web("escalation_policies", epid),
            "name": name,
            "description": description,
            "num_loops": num_loops,
            "on_call_handoff_notifications": handoff,
            "escalation_rules": norm_rules,
            "teams": teams,
        }
        self.escalation_policies[epid] = ep
        self._refresh_ref("escalation_policy", epid)
        return ep

    def _ep_from_body(self, data: dict, epid: str | None) -> dict:
        errors = []
        if data.get("type") != "escalation_policy":
            errors.append("Escalation policy type must be 'escalation_policy'")
        name = data.get("name")
        errors += name_errors(name, self.escalation_policies, epid)
        if not isinstance(data.get("escalation_rules"), list) or not data.get("escalation_rules"):
            errors.append("Escalation rules can't be empty")
        handoff = data.get("on_call_handoff_notifications", "if_has_services")
        if handoff not in ("if_has_services", "always"):
            errors.append("On call handoff notifications must be 'if_has_services' or 'always'")
        num_loops = data.get("num_loops", 0)
        if not isinstance(num_loops, int) or num_loops < 0 or num_loops > 9:
            errors.append("Num loops must be between 0 and 9")
        teams = data.get("teams", [])
        if not isinstance(teams, list) or not all(isinstance(t, dict) for t in teams):
            errors.append("Teams must be an array of team references")
        elif teams:
            self.require_ability("teams")
        if errors:
            raise invalid(*errors)
        return {
            "name": name,
            "description": data.get("description", ""),
            "rules": data["escalation_rules"],
            "team_ids": [t.get("id") for t in teams],
            "num_loops": num_loops,
            "handoff": handoff,
        }

    def create_escalation_policy(self, data: dict) -> dict:
        d = self._ep_from_body(data, None)
        return self._store_escalation_policy(
            None, d["name"], d["description"], d["rules"], d["team_ids"], d["num_loops"], d["handoff"]
        )

    def update_escalation_policy(self, epid: str, data: dict) -> dict:
        old = self._get(self.escalation_policies, epid, "Escalation Policy")
        merged = {**old, **data}
        merged["type"] = data.get("type", old["type"])
        d = self._ep_from_body(merged, epid)
        return self._store_escalation_policy(
            epid, d["name"], d["description"], d["rules"], d["team_ids"], d["num_loops"], d["handoff"]
        )

    def delete_escalation_policy(self, epid: str) -> None:
        self._get(self.escalation_policies, epid, "Escalation Policy")
        users = [s["name"] for s in self.services.values() if s["escalation_policy"]["id"] == epid]
        if users:
            raise invalid(
                f"Escalation policy is in use by services: {', '.join(users)}", message="Escalation Policy In Use"
            )
        del self.escalation_policies[epid]

    def render_escalation_policy(self, ep: dict, include: Iterable[str] = ()) -> dict:
        include = set(include)
        out = {
            **ep,
            "services": [
                self.ref("service", s["id"]) for s in self.services.values() if s["escalation_policy"]["id"] == ep["id"]
            ],
        }
        if "teams" in include:
            out["teams"] = [self.teams[t["id"]] for t in ep["teams"] if t["id"] in self.teams]
        if "services" in include:
            out["services"] = [self.render_service(self.services[s["id"]]) for s in out["services"]]
        if "targets" in include:
            out["escalation_rules"] = [
                {**r, "targets": [self._full(t) for t in r["targets"]]} for r in ep["escalation_rules"]
            ]
        return out

    def _full(self, ref: dict) -> dict:
        kind = ref["type"].removesuffix("_reference")
        obj = self._store_for(kind).get(ref["id"])
        if obj is None:
            return ref
        if kind == "schedule":
            return self.render_schedule(obj)
        return obj

    def level_targets(self, epid: str, level: int) -> list[str]:
        """User ids a level (1-based) of an escalation policy points at right now."""
        ep = self.escalation_policies[epid]
        rules = ep["escalation_rules"]
        rule = rules[min(level, len(rules)) - 1]
        users: list[str] = []
        for t in rule["targets"]:
            if t["type"] == "user_reference":
                uid = t["id"] if t["id"] in self.users else None
            else:
                uid = self.on_call_for_schedule(t["id"]) if t["id"] in self.schedules else None
            if uid and uid not in users:
                users.append(uid)
        return users


# ------------------------------------------------------------------- routes

routes = web.RouteTableDef()


def _matching(request: web.Request, st, eps: list[dict]) -> list[dict]:
    user_ids = set(list_param(request, "user_ids"))
    if user_ids:
        eps = [
            ep
            for ep in eps
            if any(
                (t["type"] == "user_reference" and t["id"] in user_ids)
                or (t["type"] == "schedule_reference" and user_ids & set(st.schedule_users(t["id"])))
                for r in ep["escalation_rules"]
                for t in r["targets"]
            )
        ]
    team_ids = set(list_param(request, "team_ids"))
    if team_ids:
        eps = [ep for ep in eps if any(t["id"] in team_ids for t in ep["teams"])]
    return eps


crud_routes(
    routes,
    Resource(
        "/escalation_policies/{id}",
        "escalation_policy",
        "escalation_policies",
        get=lambda st, epid: st._get(st.escalation_policies, epid, "Escalation Policy"),
        items=lambda st: st.escalation_policies.values(),
        create=EscalationPolicyOps.create_escalation_policy,
        update=EscalationPolicyOps.update_escalation_policy,
        delete=EscalationPolicyOps.delete_escalation_policy,
        render=EscalationPolicyOps.render_escalation_policy,
        search=("name",),
        select=_matching,
        order="sort_by",
        before_create=lambda request: acting_user(request, required=False),
    ),
)
