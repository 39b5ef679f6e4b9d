"""Technical services, business services and the dependencies between them, and their
routes (``/services``, ``/business_services``, ``/service_dependencies``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aiohttp import web

from .api import json_response, list_param, read_body, state_of
from .crud import Resource, crud_routes
from .errors import invalid, not_found
from .util import iso, name_errors


class ServiceOps:
    """Mixin for :class:`PagerDutyState`: services, business services and dependencies."""

    def _store_service(self, sid: str | None, data: dict, created: float) -> dict:
        sid = self._claim_id(sid)
        epid = data["escalation_policy"]
        epid = epid.get("id") if isinstance(epid, dict) else epid
        teams = [t.get("id") if isinstance(t, dict) else t for t in data.get("teams", [])]
        service = {
            "id": sid,
            "type": "service",
            "summary": data["name"],
            "self": self._url("services", sid),
            "html_url": self._web("service-directory", sid),
            "name": data["name"],
            "description": data.get("description", ""),
            "auto_resolve_timeout": data.get("auto_resolve_timeout", 14400),
            "acknowledgement_timeout": data.get("acknowledgement_timeout", 1800),
            "created_at": iso(created),
            "status": data.get("status", "active"),
            "escalation_policy": self.ref("escalation_policy", epid),
            "teams": [self.ref("team", t) for t in teams if t in self.teams],
            "integrations": [],
            "incident_urgency_rule": data.get("incident_urgency_rule", {"type": "constant", "urgency": "high"}),
            "scheduled_actions": data.get("scheduled_actions", []),
            "addons": [],
            "alert_creation": data.get("alert_creation", "create_alerts_and_incidents"),
        }
        if data.get("support_hours"):
            service["support_hours"] = data["support_hours"]
        self.services[sid] = service
        self._refresh_ref("service", sid)
        return service

    def _validate_service(self, data: dict, sid: str | None = None) -> None:
        errors = []
        if data.get("type") != "service":
            errors.append("Service type must be 'service'")
        errors += name_errors(data.get("name"), self.services, sid)
        ep = data.get("escalation_policy")
        if not isinstance(ep, dict) or ep.get("id") not in self.escalation_policies:
            errors.append("Escalation policy not found")
        for key in ("auto_resolve_timeout", "acknowledgement_timeout"):
            value = data.get(key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                errors.append(f"{key} must be a non-negative integer or null")
        rule = data.get("incident_urgency_rule")
        if rule is not None and (
            not isinstance(rule, dict) or rule.get("type") not in ("constant", "use_support_hours")
        ):
            errors.append("Incident urgency rule type must be 'constant' or 'use_support_hours'")
        if data.get("alert_creation", "create_alerts_and_incidents") not in (
            "create_incidents",
            "create_alerts_and_incidents",
        ):
            errors.append("Alert creation must be 'create_incidents' or 'create_alerts_and_incidents'")
        for t in data.get("teams", []) or []:
            if not isinstance(t, dict) or t.get("id") not in self.teams:
                errors.append("Team not found")
        if errors:
            raise invalid(*errors)

    def create_service(self, data: dict) -> dict:
        self._validate_service(data)
        service = self._store_service(None, data, self.now())
        self._emit_service_event("service.created", service)
        return service

    def update_service(self, sid: str, data: dict) -> dict:
        old = self._get(self.services, sid, "Service")
        merged = {**old, **data}
        merged["type"] = data.get("type", "service")
        self._validate_service(merged, sid)
        for key in (
            "name",
            "description",
            "auto_resolve_timeout",
            "acknowledgement_timeout",
            "incident_urgency_rule",
            "alert_creation",
            "scheduled_actions",
            "support_hours",
        ):
            if key in data:
                old[key] = data[key]
        if data.get("status") in ("active", "disabled", "maintenance"):
            old["status"] = "disabled" if data["status"] == "disabled" else "active"
        if "escalation_policy" in data:
            old["escalation_policy"] = self.ref("escalation_policy", data["escalation_policy"]["id"])
        if "teams" in data:
            old["teams"] = [self.ref("team", t["id"]) for t in data["teams"]]
        old["summary"] = old["name"]
        self._refresh_ref("service", sid)
        self._emit_service_event("service.updated", old)
        return old

    def delete_service(self, sid: str) -> None:
        service = self._get(self.services, sid, "Service")
        self._emit_service_event("service.deleted", service)
        del self.services[sid]
        for rid, rel in list(self.service_dependencies.items()):
            if sid in (rel["supporting_service"]["id"], rel["dependent_service"]["id"]):
                del self.service_dependencies[rid]
        for ext in self.extensions.values():
            ext["extension_objects"] = [o for o in ext["extension_objects"] if o["id"] != sid]

    def render_service(self, service: dict, include: Iterable[str] = ()) -> dict:
        out = dict(service)
        if service["status"] not in ("disabled", "maintenance"):
            statuses = self._open_by_service.get(service["id"])
            if statuses:
                out["status"] = "critical" if "triggered" in statuses.values() else "warning"
            else:
                out["status"] = "active"
        last = self._last_incident_at.get(service["id"])
        if last is not None:
            out["last_incident_timestamp"] = iso(last)
        include = set(include)
        if "escalation_policies" in include:
            ep = self.escalation_policies.get(service["escalation_policy"]["id"])
            if ep:
                out["escalation_policy"] = self.render_escalation_policy(ep)
        if "teams" in include:
            out["teams"] = [self.teams[t["id"]] for t in service["teams"] if t["id"] in self.teams]
        return out

    # -------------------------------------------------------- business services

    def _store_business_service(self, bid: str | None, data: dict) -> dict:
        bid = self._claim_id(bid)
        team = data.get("team")
        tid = team.get("id") if isinstance(team, dict) else team
        bs = {
            "id": bid,
            "type": "business_service",
            "summary": data["name"],
            "self": self._url("business_services", bid),
            "html_url": self._web("business-services", bid),
            "name": data["name"],
            "description": data.get("description", ""),
            "point_of_contact": data.get("point_of_contact", ""),
            "team": {"id": tid, "type": "team_reference", "self": self._url("teams", tid)} if tid else None,
        }
        self.business_services[bid] = bs
        self._refresh_ref("business_service", bid)
        return bs

    def _validate_business_service(self, data: dict, bid: str | None = None) -> None:
        errors = []
        errors += name_errors(data.get("name"), self.business_services, bid)
        team = data.get("team")
        if isinstance(team, dict) and team.get("id") and team["id"] not in self.teams:
            errors.append("Team not found")
        if errors:
            raise invalid(*errors)

    def create_business_service(self, data: dict) -> dict:
        self._validate_business_service(data)
        return self._store_business_service(None, data)

    def update_business_service(self, bid: str, data: dict) -> dict:
        old = self._get(self.business_services, bid, "Business Service")
        merged = {**old, **data}
        self._validate_business_service(merged, bid)
        return self._store_business_service(bid, merged)

    def delete_business_service(self, bid: str) -> None:
        self._get(self.business_services, bid, "Business Service")
        del self.business_services[bid]
        for rid, rel in list(self.service_dependencies.items()):
            if bid in (rel["supporting_service"]["id"], rel["dependent_service"]["id"]):
                del self.service_dependencies[rid]

    # ------------------------------------------------------ service dependencies

    _DEP_TYPES = {
        "service": "service",
        "service_reference": "service",
        "technical_service": "service",
        "technical_service_reference": "service",
        "business_service": "business_service",
        "business_service_reference": "business_service",
    }
    MAX_DEPENDENCIES_PER_SERVICE = 2000

    def _dep_end(self, end: Any, role: str) -> tuple[str, str]:
        if not isinstance(end, dict) or not isinstance(end.get("id"), str):
            raise invalid(f"{role} must be an object with id and type")
        kind = self._DEP_TYPES.get(end.get("type", ""))
        if kind is None:
            raise invalid(f"{role}.type must be 'service' or 'business_service'")
        store = self.services if kind == "service" else self.business_services
        if end["id"] not in store:
            raise not_found("Service" if kind == "service" else "Business Service")
        return kind, end["id"]

    def _parse_relationships(self, relationships: Any) -> list[tuple[tuple[str, str], tuple[str, str]]]:
        if not isinstance(relationships, list) or not relationships:
            raise invalid("relationships must be a non-empty array")
        pairs = []
        for rel in relationships:
            if not isinstance(rel, dict):
                raise invalid("relationship must be an object")
            sup = self._dep_end(rel.get("supporting_service"), "supporting_service")
            dep = self._dep_end(rel.get("dependent_service"), "dependent_service")
            if sup == dep:
                raise invalid("A service cannot depend on itself")
            if dep[0] == "service" and sup[0] == "business_service":
                raise invalid("A technical service cannot depend on a business service")
            pairs.append((sup, dep))
        return pairs

    def _find_dependency(self, sup: tuple[str, str], dep: tuple[str, str]) -> str | None:
        for rid, rel in self.service_dependencies.items():
            if (rel["supporting_service"]["id"], rel["dependent_service"]["id"]) == (sup[1], dep[1]):
                return rid
        return None

    def associate_dependencies(self, relationships: Any) -> list[dict]:
        pairs = self._parse_relationships(relationships)
        out = []
        for sup, dep in pairs:
            rid = self._find_dependency(sup, dep)
            if rid is None:
                if self._would_cycle(sup[1], dep[1]):
                    raise invalid("Dependency would create a cycle")
                for sid in (sup[1], dep[1]):
                    if (
                        sum(
                            sid in (r["supporting_service"]["id"], r["dependent_service"]["id"])
                            for r in self.service_dependencies.values()
                        )
                        >= self.MAX_DEPENDENCIES_PER_SERVICE
                    ):
                        raise invalid(f"Service {sid} already has {self.MAX_DEPENDENCIES_PER_SERVICE} dependencies")
                rid = self.ids.new("D", 14)
                self.service_dependencies[rid] = {
                    "id": rid,
                    "type": "service_dependency",
                    "supporting_service": {"id": sup[1], "type": sup[0]},
                    "dependent_service": {"id": dep[1], "type": dep[0]},
                }
            out.append(self.service_dependencies[rid])
        return out

    def _would_cycle(self, supporting: str, dependent: str) -> bool:
        # A cycle appears if `dependent` already (transitively) supports `supporting`.
        stack, seen = [supporting], set()
        while stack:
            node = stack.pop()
            if node == dependent:
                return True
            if node in seen:
                continue
            seen.add(node)
            stack.extend(
                r["dependent_service"]["id"]
                for r in self.service_dependencies.values()
                if r["supporting_service"]["id"] == node
            )
        # supporting's dependents reaching `dependent` means no cycle; check the other direction.
        stack, seen = [dependent], set()
        while stack:
            node = stack.pop()
            if node in seen:
                continue
            seen.add(node)
            for r in self.service_dependencies.values():
                if r["supporting_service"]["id"] == node:
                    if r["dependent_service"]["id"] == supporting:
                        return True
                    stack.append(r["dependent_service"]["id"])
        return False

    def disassociate_dependencies(self, relationships: Any) -> list[dict]:
        pairs = self._parse_relationships(relationships)
        found = []
        for sup, dep in pairs:
            rid = self._find_dependency(sup, dep)
            if rid is None:
                raise not_found("Service dependency")
            found.append(rid)
        return [self.service_dependencies.pop(rid) for rid in found]

    def dependencies_of(self, kind: str, sid: str) -> list[dict]:
        store = self.services if kind == "service" else self.business_services
        self._get(store, sid, "Service" if kind == "service" else "Business Service")
        return [
            r
            for r in self.service_dependencies.values()
            if sid in (r["supporting_service"]["id"], r["dependent_service"]["id"])
        ]

    def business_services_depending_on(self, sid: str) -> list[str]:
        """Business services that (transitively) depend on technical service ``sid``."""
        out: list[str] = []
        stack, seen = [sid], set()
        while stack:
            node = stack.pop()
            if node in seen:
                continue
            seen.add(node)
            for r in self.service_dependencies.values():
                if r["supporting_service"]["id"] == node:
                    dep = r["dependent_service"]
                    if dep["type"] == "business_service" and dep["id"] not in out:
                        out.append(dep["id"])
                    stack.append(dep["id"])
        return out


# ------------------------------------------------------------------- routes

routes = web.RouteTableDef()


def _matching(request: web.Request, st, services: list[dict]) -> list[dict]:
    name = request.query.get("name")
    if name:
        services = [s for s in services if s["name"] == name]
    team_ids = set(list_param(request, "team_ids"))
    if team_ids:
        services = [s for s in services if any(t["id"] in team_ids for t in s["teams"])]
    return services


crud_routes(
    routes,
    Resource(
        "/services/{id}",
        "service",
        "services",
        get=lambda st, sid: st._get(st.services, sid, "Service"),
        items=lambda st: st.services.values(),
        create=ServiceOps.create_service,
        update=ServiceOps.update_service,
        delete=ServiceOps.delete_service,
        render=ServiceOps.render_service,
        search=("name",),
        select=_matching,
        order="sort_by",
    ),
)
crud_routes(
    routes,
    Resource(
        "/business_services/{id}",
        "business_service",
        "business_services",
        get=lambda st, bid: st._get(st.business_services, bid, "Business Service"),
        items=lambda st: st.business_services.values(),
        create=ServiceOps.create_business_service,
        update=ServiceOps.update_business_service,
        delete=ServiceOps.delete_business_service,
        created_status=200,  # what this create has always answered; clients may check it
    ),
)


@routes.post("/service_dependencies/associate")
async def associate_dependencies(request):
    data = await read_body(request)
    return json_response({"relationships": state_of(request).associate_dependencies(data.get("relationships"))})


@routes.post("/service_dependencies/disassociate")
async def disassociate_dependencies(request):
    data = await read_body(request)
    return json_response({"relationships": state_of(request).disassociate_dependencies(data.get("relationships"))})


@routes.get("/service_dependencies/technical_services/{id}")
async def technical_service_dependencies(request):
    return json_response({"relationships": state_of(request).dependencies_of("service", request.match_info["id"])})


@routes.get("/service_dependencies/business_services/{id}")
async def business_service_dependencies(request):
    return json_response(
        {"relationships": state_of(request).dependencies_of("business_service", request.match_info["id"])}
    )
