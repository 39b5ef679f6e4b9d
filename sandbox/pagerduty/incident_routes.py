"""The incident routes: ``/incidents`` (list filters, create, bulk and single updates, merge),
notes, log entries, responder requests, status updates, snooze and business-service impacts."""

from __future__ import annotations

from collections.abc import Iterable

from aiohttp import web

from .api import (
    acting_user,
    includes,
    json_response,
    list_param,
    no_content,
    page,
    read_body,
    read_wrapped,
    state_of,
    time_param,
)
from .errors import PDError, invalid
from .util import truthy

MONTH = 30 * 86400
MAX_INCIDENT_RANGE = 183 * 86400

routes = web.RouteTableDef()

_INCIDENT_SORT_FIELDS = ("incident_number", "created_at", "resolved_at", "urgency")


@routes.get("/incidents")
async def list_incidents(request):
    st = state_of(request)
    q = request.query
    incidents: Iterable[dict] = st.incidents.values()
    statuses = list_param(request, "statuses")
    bad = [s for s in statuses if s not in ("triggered", "acknowledged", "resolved")]
    if bad:
        raise invalid(f"statuses[] must be triggered, acknowledged or resolved, got {', '.join(bad)}")
    if statuses:
        wanted = set(statuses)
        incidents = [i for i in incidents if i["status"] in wanted]
    service_ids = list_param(request, "service_ids")
    if service_ids:
        wanted = set(service_ids)
        incidents = [i for i in incidents if i["service"]["id"] in wanted]
    team_ids = list_param(request, "team_ids")
    if team_ids:
        st.require_ability("teams")
        wanted = set(team_ids)
        incidents = [i for i in incidents if any(t["id"] in wanted for t in i["teams"])]
    user_ids = list_param(request, "user_ids")
    if user_ids:
        wanted = set(user_ids)
        incidents = [i for i in incidents if any(a["assignee"]["id"] in wanted for a in i["assignments"])]
    urgencies = list_param(request, "urgencies")
    if urgencies:
        wanted = set(urgencies)
        incidents = [i for i in incidents if i["urgency"] in wanted]
    if q.get("incident_key"):
        incidents = [i for i in incidents if i["incident_key"] == q["incident_key"]]
    if q.get("date_range") != "all":
        since, until = time_param(request, "since"), time_param(request, "until")
        if until is None:
            until = (since + MONTH) if since is not None else st.now() + 1
        if since is None:
            since = until - MONTH
        if since > until:
            raise PDError(400, 2005, "Invalid Query Date Range", ["since must be before until"])
        if until - since > MAX_INCIDENT_RANGE:
            raise PDError(400, 2005, "Invalid Query Date Range", ["The date range may be at most 6 months"])
        incidents = [i for i in incidents if since <= st.incident_time(i["id"]) < until]
    incidents = list(incidents)
    sort_by = [p for s in list_param(request, "sort_by") for p in s.split(",") if p]
    for spec in reversed(sort_by):
        field, _, direction = spec.partition(":")
        if field not in _INCIDENT_SORT_FIELDS or direction not in ("", "asc", "desc"):
            raise invalid(f"sort_by {spec!r} is not supported")
        if field == "urgency":
            key = lambda i: 0 if i["urgency"] == "high" else 1  # noqa: E731
        elif field == "resolved_at":
            key = lambda i: i["resolved_at"] or ""  # noqa: E731
        else:
            key = lambda i: i["incident_number"]  # noqa: E731
        incidents.sort(key=key, reverse=direction == "desc")
    include = includes(request)
    return page(request, "incidents", incidents, (lambda i: st.render_incident(i, include)) if include else None)


@routes.post("/incidents")
async def create_incident(request):
    st = state_of(request)
    actor = acting_user(request)
    data = await read_wrapped(request, "incident")
    return json_response({"incident": st.create_incident_from_body(data, actor)}, 201)


@routes.put("/incidents")
async def update_incidents(request):
    st = state_of(request)
    actor = acting_user(request)
    data = await read_body(request)
    incidents = st.update_incidents(data.get("incidents"), actor)
    # Every updated incident comes back (at most 250), whatever limit says.
    return json_response({"incidents": incidents, "limit": len(incidents), "offset": 0, "more": False, "total": None})


@routes.get("/incidents/{id}")
async def get_incident(request):
    st = state_of(request)
    return json_response({"incident": st.render_incident(st._incident(request.match_info["id"]), includes(request))})


@routes.put("/incidents/{id}")
async def update_incident(request):
    st = state_of(request)
    actor = acting_user(request)
    data = await read_wrapped(request, "incident")
    return json_response({"incident": st.update_incident(request.match_info["id"], data, actor)})


@routes.put("/incidents/{id}/merge")
async def merge_incidents(request):
    st = state_of(request)
    actor = acting_user(request)
    data = await read_body(request)
    target = st.merge_incidents(request.match_info["id"], data.get("source_incidents"), actor)
    return json_response({"incident": st.ref("incident", target["id"])})


@routes.get("/incidents/{id}/notes")
async def list_notes(request):
    return json_response({"notes": state_of(request).list_notes(request.match_info["id"])})


@routes.post("/incidents/{id}/notes")
async def create_note(request):
    st = state_of(request)
    actor = acting_user(request)
    data = await read_wrapped(request, "note")
    return json_response({"note": st.add_note(request.match_info["id"], actor, data.get("content"))})


@routes.put("/incidents/{id}/notes/{note_id}")
async def update_note(request):
    st = state_of(request)
    actor = acting_user(request)
    data = await read_wrapped(request, "note")
    note = st.update_note(request.match_info["id"], request.match_info["note_id"], actor, data.get("content"))
    return json_response({"note": note})


@routes.delete("/incidents/{id}/notes/{note_id}")
async def delete_note(request):
    state_of(request).delete_note(request.match_info["id"], request.match_info["note_id"])
    return no_content()


@routes.get("/incidents/{id}/log_entries")
async def list_incident_log_entries(request):
    st = state_of(request)
    entries = st.incident_log_entries(request.match_info["id"])
    return _log_page(request, st, entries)


def _log_page(request: web.Request, st, entries: list[dict]) -> web.Response:
    since, until = time_param(request, "since"), time_param(request, "until")
    if since is not None or until is not None:
        entries = [
            e
            for e in entries
            if (since is None or st.log_entry_time(e["id"]) >= since)
            and (until is None or st.log_entry_time(e["id"]) < until)
        ]
    if truthy(request.query.get("is_overview")):
        overview = {
            "trigger_log_entry",
            "acknowledge_log_entry",
            "resolve_log_entry",
            "escalate_log_entry",
            "assign_log_entry",
            "delegate_log_entry",
            "annotate_log_entry",
            "unacknowledge_log_entry",
        }
        entries = [e for e in entries if e["type"] in overview]
    include = set(includes(request))

    def render(entry: dict) -> dict:
        if not include:
            return entry
        out = dict(entry)
        if "incidents" in include and entry["incident"]["id"] in st.incidents:
            out["incident"] = st.incidents[entry["incident"]["id"]]
        if "services" in include and entry["service"]["id"] in st.services:
            out["service"] = st.render_service(st.services[entry["service"]["id"]])
        if "teams" in include:
            out["teams"] = [st.teams.get(t["id"], t) for t in entry["teams"]]
        return out

    return page(request, "log_entries", entries, render)


@routes.get("/log_entries")
async def list_log_entries(request):
    st = state_of(request)
    since, until = time_param(request, "since"), time_param(request, "until")
    entries = st.all_log_entries(since, until)
    team_ids = set(list_param(request, "team_ids"))
    if team_ids:
        entries = [e for e in entries if any(t["id"] in team_ids for t in e["teams"])]
    return _log_page(request, st, entries)


@routes.get("/log_entries/{id}")
async def get_log_entry(request):
    st = state_of(request)
    return json_response({"log_entry": st._get(st.log_entries, request.match_info["id"], "Log Entry")})


@routes.post("/incidents/{id}/responder_requests")
async def create_responder_request(request):
    st = state_of(request)
    data = await read_body(request)
    req = st.add_responder_request(
        request.match_info["id"], data.get("requester_id"), data.get("message"), data.get("responder_request_targets")
    )
    return json_response({"responder_request": req})


@routes.put("/incidents/{id}/responder_requests/cancel")
async def cancel_responder_request(request):
    st = state_of(request)
    data = await read_body(request)
    results = st.cancel_responder_requests(
        request.match_info["id"], data.get("requester_id"), data.get("responder_request_targets")
    )
    return json_response({"responder_request_targets": results})


@routes.post("/incidents/{id}/status_updates")
async def create_status_update(request):
    st = state_of(request)
    actor = acting_user(request)
    data = await read_body(request)
    update = st.add_status_update(
        request.match_info["id"], actor, data.get("message"), data.get("subject"), data.get("html_message")
    )
    return json_response({"status_update": update})


@routes.post("/incidents/{id}/snooze")
async def snooze_incident(request):
    st = state_of(request)
    actor = acting_user(request)
    data = await read_body(request)
    return json_response({"incident": st.snooze(request.match_info["id"], actor, data.get("duration"))}, 201)


@routes.put("/incidents/{id}/business_services/{bs_id}/impacts")
async def put_business_service_impact(request):
    st = state_of(request)
    data = await read_body(request)
    relation = st.set_business_service_impact(
        request.match_info["id"], request.match_info["bs_id"], data.get("relation")
    )
    return json_response({"relation": relation})


@routes.get("/incidents/{id}/business_services/impacts")
async def get_business_service_impacts(request):
    st = state_of(request)
    return json_response(
        {"services": st.business_service_impacts(request.match_info["id"]), "limit": 100, "next_cursor": None}
    )
