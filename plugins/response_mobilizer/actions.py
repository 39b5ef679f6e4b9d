"""The built-in actions: add responders, set a conference bridge, run incident workflows
(and legacy response plays), send status updates. Each takes a ``Call`` and returns its
JSON answer; ``BUILTIN_ACTIONS`` is the registry the plugin starts from."""

from __future__ import annotations

from typing import Any, Literal, overload

from dutybridge.http import ApiError, NotFound
from dutybridge.pagerduty import PagerDutyError
from dutybridge.servicenow import Query

from .call import PD_ID, SYS_ID, USER_KIND, Action, ActionError, Call, bad, pagerduty_failure, setting_off

MAX_TARGETS = 20
DASHBOARD_NOTICE = "This update will be published to your PagerDuty status dashboard"
PLAYS_GONE = (
    "PagerDuty removed response plays from its API in September 2025: run an incident workflow "
    "instead (the workflows action); for an account that still serves them, set "
    "plugins.response_mobilizer.legacy_response_plays = true"
)


def _strings(body: dict, key: str) -> list[str]:
    value = body.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise bad(key, "a list of non-empty strings")
    if len(value) > MAX_TARGETS:
        raise bad(key, f"at most {MAX_TARGETS} at once")
    return [v.strip() for v in value]


@overload
def _text(body: dict, key: str, *, required: Literal[True], limit: int = 4000) -> str: ...
@overload
def _text(body: dict, key: str, *, required: bool = False, limit: int = 4000) -> str | None: ...
def _text(body: dict, key: str, *, required: bool = False, limit: int = 4000) -> str | None:
    value = body.get(key)
    if value is None or value == "":
        if required:
            raise bad(key, "required")
        return None
    if not isinstance(value, str) or not value.strip():
        raise bad(key, "a non-empty string")
    if len(value) > limit:
        raise bad(key, f"at most {limit} characters")
    return value


def _label(call: Call) -> str:
    return call.incident.number or call.incident.pd_id


# -- responders --------------------------------------------------------------------------
async def _sn_user_to_pd(call: Call, ref: str, where: str) -> str:
    sn = call.sn
    fields = ["sys_id", "user_name", "email"]
    try:
        if SYS_ID.match(ref):
            try:
                user = await sn.get("sys_user", ref, fields=fields)
            except NotFound:
                user = None
        else:
            user = await sn.first("sys_user", Query().eq("user_name", ref), fields=fields)
    except ApiError as exc:
        raise ActionError(502, f"{where}: cannot read ServiceNow user {ref}: {exc}") from None
    if not user:
        raise bad(where, f"no ServiceNow user {ref!r}")
    link = await call.store.get_link(USER_KIND, sn_id=user["sys_id"])
    if link is not None:
        return link.pd_id
    found = None
    if user.get("email"):
        try:
            found = await call.pd.find_user_by_email(user["email"])
        except PagerDutyError as exc:
            raise pagerduty_failure(exc, f"look up the PagerDuty user of {user['user_name']}") from None
    if not found:
        raise bad(where, f"ServiceNow user {user['user_name']} has no PagerDuty account")
    return found["id"]


async def _group_to_policy(call: Call, ref: str, where: str) -> str:
    sn = call.sn
    try:
        if SYS_ID.match(ref):
            try:
                group = await sn.get("sys_user_group", ref, fields=["sys_id", "name"])
            except NotFound:
                group = None
        else:
            group = await sn.first("sys_user_group", Query().eq("name", ref), fields=["sys_id", "name"])
    except ApiError as exc:
        raise ActionError(502, f"{where}: cannot read ServiceNow group {ref}: {exc}") from None
    if not group:
        raise bad(where, f"no ServiceNow assignment group {ref!r}")
    # The same choice a new incident of that group gets (priority mapping's default row, say).
    chosen = await call.ctx.hooks.escalation_policy_for(
        group={"sys_id": group["sys_id"], "name": group.get("name", "")}, priority=None, ctx=call.ctx
    )
    if chosen:
        return chosen
    link = await call.store.get_link("group", sn_id=group["sys_id"])
    ep = (link.state or {}).get("escalation_policy") if link is not None else None
    if not ep:
        raise bad(where, f"assignment group {group.get('name') or ref} has no PagerDuty escalation policy")
    return str(ep)


async def add_responders(call: Call) -> dict[str, Any]:
    body = call.body
    users = [await _sn_user_to_pd(call, ref, f"users[{i}]") for i, ref in enumerate(_strings(body, "users"))]
    policies = [await _group_to_policy(call, ref, f"groups[{i}]") for i, ref in enumerate(_strings(body, "groups"))]
    for key, into in (("pagerduty_user_ids", users), ("escalation_policy_ids", policies)):
        for i, pid in enumerate(_strings(body, key)):
            if not PD_ID.match(pid):
                raise bad(f"{key}[{i}]", f"{pid!r} is not a PagerDuty id")
            into.append(pid)
    users, policies = list(dict.fromkeys(users)), list(dict.fromkeys(policies))
    if not users and not policies:
        raise bad("users", "give users, groups, pagerduty_user_ids or escalation_policy_ids to request")
    bridge = None
    if body.get("conference_bridge") is not None:
        if not call.conf.conference_bridges:
            raise setting_off("conference_bridges", "adding a conference bridge")
        bridge = _bridge(call, body["conference_bridge"], "conference_bridge.")
    message = _text(body, "message") or (
        f"{call.acting.name or call.acting.user_name} asks for your help with {_label(call)}"
    )
    targets = [{"responder_request_target": {"id": u, "type": "user_reference"}} for u in users]
    targets += [{"responder_request_target": {"id": e, "type": "escalation_policy_reference"}} for e in policies]
    answer = await call.pagerduty(
        "POST",
        f"/incidents/{call.incident.pd_id}/responder_requests",
        "add responders",
        json={"requester_id": call.acting.pd_user_id, "message": message, "responder_request_targets": targets},
        operation="POST /incidents/{id}/responder_requests",
    )
    req = answer.get("responder_request") or {}
    out: dict[str, Any] = {
        "responder_request": {
            "id": req.get("id"),
            "message": message,
            "targets": [
                {
                    "type": t["responder_request_target"].get("type"),
                    "id": t["responder_request_target"].get("id"),
                    "summary": t["responder_request_target"].get("summary"),
                }
                for t in req.get("responder_request_targets") or []
            ],
        }
    }
    if bridge is not None:
        out.update(await _set_bridge(call, bridge))
    return out


# -- conference bridges ------------------------------------------------------------------
def _bridge(call: Call, spec: Any, prefix: str = "") -> dict[str, str]:
    """{"conference_number", "conference_url"} from {"name"} or {"dial_in_number", "url"}."""
    if not isinstance(spec, dict):
        raise bad(prefix.rstrip(".") or "body", "an object with name, or dial_in_number and/or url")
    name = spec.get("name")
    if name is not None:
        found = next(
            (b for b in call.conf.bridges if isinstance(name, str) and b.name.casefold() == name.casefold()), None
        )
        if found is None:
            known = ", ".join(repr(b.name) for b in call.conf.bridges) or "none is configured"
            raise bad(f"{prefix}name", f"no conference bridge named {name!r} (known: {known})")
        return {k: v for k, v in (("conference_number", found.dial_in_number), ("conference_url", found.url)) if v}
    number = _text(spec, "dial_in_number", limit=100)
    url = _text(spec, "url", limit=1000)
    if not number and not url:
        raise bad(f"{prefix}dial_in_number", "give a bridge name, or dial_in_number and/or url")
    if url and not url.startswith(("https://", "http://")):
        raise bad(f"{prefix}url", "must start with https:// or http://")
    return {k: v for k, v in (("conference_number", number), ("conference_url", url)) if v}


async def _set_bridge(call: Call, bridge: dict[str, str]) -> dict[str, Any]:
    answer = await call.pagerduty(
        "PUT",
        f"/incidents/{call.incident.pd_id}",
        "set the conference bridge",
        json={"incident": {"type": "incident_reference", "conference_bridge": bridge}},
        operation="PUT /incidents/{id}",
    )
    now = (answer.get("incident") or {}).get("conference_bridge") or bridge
    noted = False
    inc = call.incident
    if call.conf.work_note_bridge and inc.sys_id:
        parts = [
            f"dial-in {now['conference_number']}" if now.get("conference_number") else "",
            f"URL {now['conference_url']}" if now.get("conference_url") else "",
        ]
        text = (
            f"Conference bridge set on PagerDuty incident {inc.pd_id} by {call.acting.name or call.acting.user_name}: "
            + ", ".join(p for p in parts if p)
        )
        try:
            await call.sn.update(inc.table, inc.sys_id, {"work_notes": text})
            noted = True
        except ApiError as exc:
            raise ActionError(502, f"the bridge is set in PagerDuty, but the work note failed: {exc}") from None
    return {
        "conference_bridge": {"dial_in_number": now.get("conference_number"), "url": now.get("conference_url")},
        "work_note": noted,
    }


async def set_bridge(call: Call) -> dict[str, Any]:
    return await _set_bridge(call, _bridge(call, call.body))


async def show_bridge(call: Call) -> dict[str, Any]:
    inc = (
        await call.pagerduty(
            "GET", f"/incidents/{call.incident.pd_id}", "read the incident", operation="GET /incidents/{id}"
        )
    ).get("incident") or {}
    now = inc.get("conference_bridge") or {}
    return {
        "conference_bridge": {"dial_in_number": now.get("conference_number"), "url": now.get("conference_url")}
        if now
        else None,
        "bridges": [
            {"name": b.name, "dial_in_number": b.dial_in_number or None, "url": b.url or None}
            for b in call.conf.bridges
        ],
    }


# -- incident workflows and response plays -----------------------------------------------
async def _workflows(call: Call) -> list[dict]:
    return await call.collect("/incident_workflows", "incident_workflows", "list incident workflows")


async def _plays(call: Call) -> list[dict] | None:
    """The account's response plays, or None when PagerDuty no longer serves them (or
    ``legacy_response_plays`` is off: the endpoints are gone from PagerDuty's API)."""
    if not call.conf.legacy_response_plays:
        return None
    try:
        body = await call.pd.get("/response_plays", operation="GET /response_plays")
    except NotFound:
        return None
    except PagerDutyError as exc:
        raise pagerduty_failure(exc, "list response plays") from None
    return list(body.get("response_plays") or [])


def _pick(items: list[dict], ref: str) -> dict | None:
    return next((i for i in items if i.get("id") == ref), None) or next(
        (i for i in items if str(i.get("name", "")).casefold() == ref.casefold()), None
    )


def _brief(item: dict, kind: str) -> dict[str, Any]:
    return {"id": item.get("id"), "name": item.get("name"), "kind": kind, "description": item.get("description") or ""}


async def list_workflows(call: Call) -> dict[str, Any]:
    flows = [_brief(w, "incident_workflow") for w in await _workflows(call) if w.get("is_enabled", True)]
    plays = await _plays(call)
    return {
        "workflows": flows,
        "response_plays": [_brief(p, "response_play") for p in plays or []],
        "response_plays_available": plays is not None,
    }


async def run_workflow(call: Call) -> dict[str, Any]:
    """Runs the incident workflow named (by id or name); a response play of that name
    only when no workflow has it: workflows are preferred."""
    ref = _text(call.body, "workflow", required=True, limit=200)
    flow = _pick([w for w in await _workflows(call) if w.get("is_enabled", True)], ref)
    if flow is not None:
        answer = await call.pagerduty(
            "POST",
            f"/incident_workflows/{flow['id']}/instances",
            f"run the incident workflow {flow.get('name')}",
            json={
                "incident_workflow_instance": {"incident": {"id": call.incident.pd_id, "type": "incident_reference"}}
            },
            operation="POST /incident_workflows/{id}/instances",
        )
        instance = answer.get("incident_workflow_instance") or {}
        return {"ran": {**_brief(flow, "incident_workflow"), "instance": instance.get("id")}}
    plays = await _plays(call)
    play = _pick(plays or [], ref)
    if play is None:
        raise bad("workflow", f"no incident workflow or response play {ref!r}")
    return await _run_play(call, play)


async def _run_play(call: Call, play: dict) -> dict[str, Any]:
    await call.pagerduty(
        "POST",
        f"/response_plays/{play['id']}/run",
        f"run the response play {play.get('name')}",
        json={"incident": {"id": call.incident.pd_id, "type": "incident_reference"}},
        operation="POST /response_plays/{id}/run",
    )
    return {"ran": _brief(play, "response_play")}


async def list_plays(call: Call) -> dict[str, Any]:
    plays = await _plays(call)
    if plays is None:
        raise ActionError(410, PLAYS_GONE)
    return {"response_plays": [_brief(p, "response_play") for p in plays]}


async def run_play(call: Call) -> dict[str, Any]:
    ref = _text(call.body, "response_play", required=True, limit=200)
    plays = await _plays(call)
    if plays is None:
        raise ActionError(410, PLAYS_GONE)
    play = _pick(plays, ref)
    if play is None:
        raise bad("response_play", f"no response play {ref!r}")
    return await _run_play(call, play)


# -- status updates ----------------------------------------------------------------------
async def _impacts(call: Call) -> list[dict]:
    body = await call.pagerduty(
        "GET",
        f"/incidents/{call.incident.pd_id}/business_services/impacts",
        "read the incident's business service impacts",
        operation="GET /incidents/{id}/business_services/impacts",
    )
    return [
        {"id": s.get("id"), "name": s.get("name")}
        for s in body.get("services") or []
        if s.get("status", "impacted") == "impacted"
    ]


def _dashboard(impacted: list[dict]) -> dict[str, Any]:
    # The status dashboard shows business services: an update reaches it when the
    # incident impacts at least one.
    published = bool(impacted)
    return {
        "impacted_business_services": impacted,
        "published": published,
        "notice": DASHBOARD_NOTICE if published else None,
    }


async def preview_status(call: Call) -> dict[str, Any]:
    return _dashboard(await _impacts(call))


async def send_status(call: Call) -> dict[str, Any]:
    body = call.body
    message = _text(body, "message", required=True, limit=10000)
    subject, html = _text(body, "subject", limit=500), _text(body, "html_message", limit=100000)
    if bool(subject) != bool(html):
        raise bad("subject" if html else "html_message", "a custom email needs both subject and html_message")
    wanted = _strings(body, "impacted_business_services")
    if wanted:
        known = await call.collect("/business_services", "business_services", "list business services")
        for i, ref in enumerate(wanted):
            svc = _pick(known, ref)
            if svc is None:
                raise bad(f"impacted_business_services[{i}]", f"no PagerDuty business service {ref!r}")
            await call.pagerduty(
                "PUT",
                f"/incidents/{call.incident.pd_id}/business_services/{svc['id']}/impacts",
                f"mark business service {svc.get('name')} impacted",
                json={"relation": "impacted"},
                operation="PUT /incidents/{id}/business_services/{business_service_id}/impacts",
            )
    payload: dict[str, Any] = {"message": message}
    if subject:
        payload.update(subject=subject, html_message=html)
    answer = await call.pagerduty(
        "POST",
        f"/incidents/{call.incident.pd_id}/status_updates",
        "send a status update",
        json=payload,
        operation="POST /incidents/{id}/status_updates",
    )
    update = answer.get("status_update") or {}
    return {
        "status_update": {
            "id": update.get("id"),
            "message": update.get("message"),
            "created_at": update.get("created_at"),
        },
        **_dashboard(await _impacts(call)),
    }


BUILTIN_ACTIONS: list[Action] = [
    Action(
        "responders",
        "add users and/or escalation policies as responders (optionally a conference bridge)",
        post=add_responders,
        setting="responders",
        what="adding responders",
    ),
    Action(
        "conference-bridge",
        "set the conference bridge (a configured one by name, or a number and/or URL)",
        post=set_bridge,
        get=show_bridge,
        setting="conference_bridges",
        what="adding a conference bridge",
    ),
    Action(
        "workflows",
        "list and run incident workflows (response plays as a fallback)",
        post=run_workflow,
        get=list_workflows,
        setting="response_plays",
        what="running incident workflows",
    ),
    Action(
        "response-plays",
        "list and run legacy response plays (removed from PagerDuty's API in September 2025)",
        post=run_play,
        get=list_plays,
        setting="response_plays",
        what="running response plays",
    ),
    Action(
        "status-updates",
        "send a status update; see impacted business services and whether it is published",
        post=send_status,
        get=preview_status,
        setting="status_updates",
        what="sending status updates",
    ),
]
