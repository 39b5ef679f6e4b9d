"""Incident workflows and (retired) response plays: defining them, running them on an
incident, and the ``/incident_workflows`` and ``/response_plays`` routes."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .api import acting_user, json_response, read_body, read_wrapped, state_of
from .crud import Resource, crud_routes
from .errors import invalid, not_found
from .util import iso


class WorkflowOps:
    """Mixin for :class:`PagerDutyState`: incident workflows and response plays."""

    def _new_workflow(self, wid: str, data: dict, created: float) -> dict:
        return {
            "id": wid,
            "type": "incident_workflow",
            "summary": data["name"],
            "self": self._url("incident_workflows", wid),
            "html_url": self._web("incident-workflows/workflows", wid),
            "name": data["name"],
            "description": data.get("description", ""),
            "created_at": iso(created),
            "is_enabled": bool(data.get("is_enabled", True)),
            "steps": data.get("steps", []),
        }

    def create_incident_workflow(self, data: dict) -> dict:
        self.require_ability("incident_workflows")
        if not isinstance(data.get("name"), str) or not data["name"].strip():
            raise invalid("Name can't be blank")
        wid = self.ids.new()
        wf = self._new_workflow(wid, data, self.now())
        self.incident_workflows[wid] = wf
        return wf

    def delete_incident_workflow(self, wid: str) -> None:
        self.require_ability("incident_workflows")
        self._get(self.incident_workflows, wid, "Incident Workflow")
        del self.incident_workflows[wid]

    def _new_response_play(self, rid: str, data: dict) -> dict:
        return {
            "id": rid,
            "type": "response_play",
            "summary": data["name"],
            "self": self._url("response_plays", rid),
            "html_url": self._web("response_plays", rid),
            "name": data["name"],
            "description": data.get("description", ""),
            "team": None,
            "subscribers": [],
            "subscribers_message": None,
            "responders": [],
            "responders_message": None,
            "runnability": "services",
            "conference_number": data.get("conference_number"),
            "conference_url": data.get("conference_url"),
            "conference_type": data.get("conference_type", "none"),
        }

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
        instance = {
            "id": instance_id,
            "type": "incident_workflow_instance",
            "incident": self.ref("incident", inc["id"]),
        }
        self.workflow_instances[instance_id] = {
            **instance,
            "incident_workflow": self.ref("incident_workflow", workflow_id),
        }
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
        run = {
            "response_play": play_id,
            "incident": inc["id"],
            "by": actor["id"] if actor else None,
            "at": iso(self.now()),
        }
        self.response_play_runs.append(run)
        return {"status": "ok"}


# ------------------------------------------------------------------- routes

routes = web.RouteTableDef()

crud_routes(
    routes,
    Resource(
        "/incident_workflows/{id}",
        "incident_workflow",
        "incident_workflows",
        get=lambda st, wid: st._get(st.incident_workflows, wid, "Incident Workflow"),
        items=lambda st: st.incident_workflows.values(),
        create=WorkflowOps.create_incident_workflow,
        delete=WorkflowOps.delete_incident_workflow,
        search=("name",),
        deleted_status=200,
        before_read=lambda request: state_of(request).require_ability("incident_workflows"),
    ),
)


@routes.post("/incident_workflows/{id}/instances")
async def create_incident_workflow_instance(request):
    st = state_of(request)
    data = await read_wrapped(request, "incident_workflow_instance")
    incident = data.get("incident")
    iid = incident.get("id") if isinstance(incident, dict) else None
    actor = acting_user(request, required=False)
    instance = st.start_workflow(request.match_info["id"], iid, actor)
    return json_response({"incident_workflow_instance": instance}, 201)


# --- response plays (removed from the API on 2025-09-09; behind a state flag)


def _response_plays_on(request: web.Request) -> None:
    if not state_of(request).response_plays_enabled:
        raise not_found()


crud_routes(
    routes,
    Resource(
        "/response_plays/{id}",
        "response_play",
        "response_plays",
        get=lambda st, rid: st._get(st.response_plays, rid, "Response Play"),
        items=lambda st: st.response_plays.values(),
        search=("name",),
        paged=False,
        before_read=_response_plays_on,
    ),
)


@routes.post("/response_plays/{id}/run")
async def run_response_play(request):
    st = state_of(request)
    _response_plays_on(request)
    st._get(st.response_plays, request.match_info["id"], "Response Play")
    actor = acting_user(request)
    data = await read_body(request)
    incident = data.get("incident")
    if not isinstance(incident, dict) or incident.get("type") != "incident_reference":
        raise invalid("incident must be an incident_reference")
    return json_response(st.run_response_play(request.match_info["id"], incident.get("id"), actor))
