"""The aiohttp application: PagerDuty REST API v2 routes over a :class:`PagerDutyState`.

Cross-cutting rules, applied by one middleware to every route:

* ``Authorization: Token token=KEY`` (or ``Bearer KEY``) with a key from the seed;
  otherwise 401 ``{"error": {"message": "Authentication failed", "code": 2006}}``;
* a fixed one-minute request budget per key (``state.rate_limit_per_minute``) with
  ``ratelimit-limit`` / ``ratelimit-remaining`` / ``ratelimit-reset`` on every
  authenticated response, and 429 code 2020 once spent;
* a ``read_only`` key gets 403 (code 2010) on POST/PUT/DELETE;
* errors in PagerDuty's shape, unknown routes included (404 code 2100).

Fault injection (``dutybridge_sandbox.faults``) sits outside all of that, like a
misbehaving load balancer: its 5xx and 429 answers carry no rate-limit headers.
"""

from __future__ import annotations

import json
import re
from typing import Any, Awaitable, Callable, Iterable

from aiohttp import web

from ..faults import FaultInjector, faults_middleware
from .errors import PDError, access_denied, auth_failed, invalid, not_found, pd_error_body, rate_limited
from .state import READ_ONLY_ROLES, PagerDutyState
from .util import parse_time, truthy

STATE_KEY = web.AppKey("pd_state", PagerDutyState)
KEY_INFO = web.RequestKey("pd_key", dict)

DEFAULT_LIMIT = 25
MAX_LIMIT = 100
MAX_OFFSET_PLUS_LIMIT = 10_000
WRITE_METHODS = frozenset({"POST", "PUT", "DELETE", "PATCH"})
MONTH = 30 * 86400
MAX_INCIDENT_RANGE = 183 * 86400
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_TOKEN = re.compile(r'^\s*Token\s+token="?([^"\s]+)"?\s*$', re.IGNORECASE)
_BEARER = re.compile(r"^\s*Bearer\s+(\S+)\s*$", re.IGNORECASE)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# ---------------------------------------------------------------- responses


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(data).encode(), status=status, content_type="application/json",
                        charset="utf-8")


def _error(err: PDError) -> web.Response:
    return _json(err.body(), err.status)


def _no_content(status: int = 204) -> web.Response:
    return web.Response(status=status)


# ------------------------------------------------------------- middleware


def _authenticate(state: PagerDutyState, request: web.Request) -> tuple[str, dict]:
    header = request.headers.get("Authorization", "")
    m = _TOKEN.match(header) or _BEARER.match(header)
    if not m or m.group(1) not in state.api_keys:
        raise auth_failed()
    return m.group(1), state.api_keys[m.group(1)]


@web.middleware
async def api_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    headers = None
    try:
        key, info = _authenticate(state, request)
        bucket = f"user:{info['user']}" if info.get("user") else f"key:{key}"
        allowed, limit, remaining, reset = state.take_rate_limit(bucket)
        headers = {"ratelimit-limit": str(limit), "ratelimit-remaining": str(remaining), "ratelimit-reset": str(reset)}
        if not allowed:
            raise rate_limited()
        if info["read_only"] and request.method in WRITE_METHODS:
            raise access_denied("This API key is read-only")
        request[KEY_INFO] = info
        response = await handler(request)
    except PDError as exc:
        response = _error(exc)
    except web.HTTPNotFound:
        response = _error(not_found())
    except web.HTTPMethodNotAllowed:
        response = _error(PDError(405, 2015, "Invalid operation", ["Method not allowed"]))
    if headers:
        response.headers.update(headers)
    return response


# ---------------------------------------------------------------- requests


async def _body(request: web.Request) -> dict:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise invalid("The request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise invalid("The request body must be a JSON object")
    return data


async def _wrapped(request: web.Request, key: str) -> dict:
    data = await _body(request)
    inner = data.get(key)
    if not isinstance(inner, dict):
        raise invalid(f"{key} is required and must be an object")
    return inner


def _state(request: web.Request) -> PagerDutyState:
    return request.app[STATE_KEY]


def _from(request: web.Request, required: bool = True) -> str | None:
    """The acting user's id from the ``From`` header (or the user key's own user)."""
    state = _state(request)
    value = request.headers.get("From", "").strip()
    key_user = request[KEY_INFO].get("user")
    if not value:
        if key_user:
            return key_user
        if required:
            raise PDError(400, 2016,
                          'You must specify a user\'s email address in the "From" header to perform this action', [])
        return None
    if not _EMAIL.match(value):
        raise PDError(400, 1028, 'Malformed "From" header', [f"{value!r} is not an email address"])
    user = state.user_by_email(value)
    if user is None:
        raise PDError(400, 1008, "Requester User Not Found", [f"No user has the email address {value!r}"])
    if user["role"] in READ_ONLY_ROLES and request.method in WRITE_METHODS:
        raise access_denied(f"User {user['id']} has the read-only role {user['role']!r}")
    return user["id"]


def _list_param(request: web.Request, name: str) -> list[str]:
    q = request.query
    return q.getall(f"{name}[]", []) + q.getall(name, [])


def _includes(request: web.Request) -> list[str]:
    return _list_param(request, "include")


def _paging(request: web.Request) -> tuple[int, int, bool]:
    q = request.query
    try:
        limit = int(q["limit"]) if "limit" in q else DEFAULT_LIMIT
        offset = int(q["offset"]) if "offset" in q else 0
    except ValueError:
        raise invalid("limit and offset must be integers") from None
    if limit < 1:
        raise invalid("limit must be a positive integer")
    if offset < 0:
        raise invalid("offset must not be negative")
    limit = min(limit, MAX_LIMIT)
    if offset + limit > MAX_OFFSET_PLUS_LIMIT:
        raise invalid(f"Offset+limit must be less than or equal to {MAX_OFFSET_PLUS_LIMIT}",
                      message="Invalid Input Provided")
    return limit, offset, truthy(q.get("total"))


def _page(request: web.Request, key: str, items: list, render: Callable[[Any], Any] | None = None,
          extra: dict | None = None) -> web.Response:
    limit, offset, want_total = _paging(request)
    chunk = items[offset:offset + limit]
    if render is not None:
        chunk = [render(x) for x in chunk]
    body = {key: chunk, "limit": limit, "offset": offset, "more": offset + len(chunk) < len(items),
            "total": len(items) if want_total else None}
    if extra:
        body.update(extra)
    return _json(body)


def _query_filter(items: Iterable[dict], query: str | None, *fields: str) -> list[dict]:
    if not query:
        return list(items)
    needle = query.lower()
    return [x for x in items if any(needle in str(x.get(f, "")).lower() for f in fields)]


def _by_name(items: Iterable[dict], sort_by: str | None = None) -> list[dict]:
    desc = bool(sort_by) and sort_by.endswith(":desc")
    return sorted(items, key=lambda x: (x.get("name", "").lower(), x["id"]), reverse=desc)


def _time_param(request: web.Request, name: str) -> float | None:
    value = request.query.get(name)
    if value is None or value == "":
        return None
    try:
        return parse_time(value)
    except ValueError:
        raise PDError(400, 2004, "Invalid time values in 'since' and/or 'until' parameters",
                      [f"{name} is not an ISO 8601 date-time: {value!r}"]) from None


# ------------------------------------------------------------------- routes

routes = web.RouteTableDef()


# --- abilities

@routes.get("/abilities")
async def list_abilities(request):
    return _json({"abilities": list(_state(request).abilities)})


@routes.get("/abilities/{id}")
async def get_ability(request):
    ability = request.match_info["id"]
    if ability not in _state(request).abilities:
        raise PDError(402, 2014, "Missing Account Ability", [f"Account does not have the '{ability}' ability"])
    return _no_content()


# --- users

@routes.get("/users")
async def list_users(request):
    st = _state(request)
    users = _query_filter(st.users.values(), request.query.get("query"), "name", "email")
    team_ids = set(_list_param(request, "team_ids"))
    if team_ids:
        users = [u for u in users if any(t["id"] in team_ids for t in u["teams"])]
    include = _includes(request)
    return _page(request, "users", _by_name(users), lambda u: st.render_user(u, include))


@routes.post("/users")
async def create_user(request):
    _from(request)
    data = await _wrapped(request, "user")
    return _json({"user": _state(request).create_user(data)}, 201)


@routes.get("/users/me")
async def get_current_user(request):
    st = _state(request)
    uid = request[KEY_INFO].get("user")
    if not uid:
        raise invalid("Because this request was made using an account-level access token, we were unable to "
                      "determine the user's identity. Please use a user-level token.")
    return _json({"user": st.render_user(st._get(st.users, uid, "User"), _includes(request))})


@routes.get("/users/{id}")
async def get_user(request):
    st = _state(request)
    user = st._get(st.users, request.match_info["id"], "User")
    return _json({"user": st.render_user(user, _includes(request))})


@routes.put("/users/{id}")
async def update_user(request):
    data = await _wrapped(request, "user")
    return _json({"user": _state(request).update_user(request.match_info["id"], data)})


@routes.delete("/users/{id}")
async def delete_user(request):
    _state(request).delete_user(request.match_info["id"])
    return _no_content()


@routes.get("/users/{id}/contact_methods")
async def list_contact_methods(request):
    st = _state(request)
    uid = request.match_info["id"]
    st._get(st.users, uid, "User")
    return _json({"contact_methods": list(st.contact_methods[uid].values())})


@routes.post("/users/{id}/contact_methods")
async def create_contact_method(request):
    data = await _wrapped(request, "contact_method")
    return _json({"contact_method": _state(request).create_contact_method(request.match_info["id"], data)}, 201)


@routes.get("/users/{id}/contact_methods/{cid}")
async def get_contact_method(request):
    st = _state(request)
    uid = request.match_info["id"]
    st._get(st.users, uid, "User")
    return _json({"contact_method": st._get(st.contact_methods[uid], request.match_info["cid"], "Contact Method")})


@routes.put("/users/{id}/contact_methods/{cid}")
async def update_contact_method(request):
    data = await _wrapped(request, "contact_method")
    cm = _state(request).update_contact_method(request.match_info["id"], request.match_info["cid"], data)
    return _json({"contact_method": cm})


@routes.delete("/users/{id}/contact_methods/{cid}")
async def delete_contact_method(request):
    _state(request).delete_contact_method(request.match_info["id"], request.match_info["cid"])
    return _no_content()


@routes.get("/users/{id}/notification_rules")
async def list_notification_rules(request):
    st = _state(request)
    uid = request.match_info["id"]
    st._get(st.users, uid, "User")
    rules = list(st.notification_rules[uid].values())
    urgency = request.query.get("urgency")
    if urgency in ("high", "low"):
        rules = [r for r in rules if r["urgency"] == urgency]
    return _json({"notification_rules": rules})


@routes.post("/users/{id}/notification_rules")
async def create_notification_rule(request):
    data = await _wrapped(request, "notification_rule")
    rule = _state(request).create_notification_rule(request.match_info["id"], data)
    return _json({"notification_rule": rule}, 201)


@routes.get("/users/{id}/notification_rules/{rid}")
async def get_notification_rule(request):
    st = _state(request)
    uid = request.match_info["id"]
    st._get(st.users, uid, "User")
    rule = st._get(st.notification_rules[uid], request.match_info["rid"], "Notification Rule")
    return _json({"notification_rule": rule})


@routes.put("/users/{id}/notification_rules/{rid}")
async def update_notification_rule(request):
    data = await _wrapped(request, "notification_rule")
    rule = _state(request).update_notification_rule(request.match_info["id"], request.match_info["rid"], data)
    return _json({"notification_rule": rule})


@routes.delete("/users/{id}/notification_rules/{rid}")
async def delete_notification_rule(request):
    _state(request).delete_notification_rule(request.match_info["id"], request.match_info["rid"])
    return _no_content()


# --- teams

@routes.get("/teams")
async def list_teams(request):
    st = _state(request)
    teams = _query_filter(st.teams.values(), request.query.get("query"), "name")
    return _page(request, "teams", _by_name(teams))


@routes.post("/teams")
async def create_team(request):
    data = await _wrapped(request, "team")
    return _json({"team": _state(request).create_team(data)}, 201)


@routes.get("/teams/{id}")
async def get_team(request):
    st = _state(request)
    return _json({"team": st._get(st.teams, request.match_info["id"], "Team")})


@routes.put("/teams/{id}")
async def update_team(request):
    data = await _wrapped(request, "team")
    return _json({"team": _state(request).update_team(request.match_info["id"], data)})


@routes.delete("/teams/{id}")
async def delete_team(request):
    _state(request).delete_team(request.match_info["id"])
    return _no_content()


@routes.get("/teams/{id}/members")
async def list_team_members(request):
    st = _state(request)
    members = st.team_members_list(request.match_info["id"])
    if "users" in _includes(request):
        members = [{**m, "user": st.users[m["user"]["id"]]} for m in members]
    return _page(request, "members", members)


@routes.put("/teams/{id}/users/{user_id}")
async def put_team_user(request):
    data = await _body(request)
    role = data.get("role")
    _state(request).set_team_user(request.match_info["id"], request.match_info["user_id"], role)
    return _no_content()


@routes.delete("/teams/{id}/users/{user_id}")
async def delete_team_user(request):
    _state(request).remove_team_user(request.match_info["id"], request.match_info["user_id"])
    return _no_content()


@routes.put("/teams/{id}/escalation_policies/{ep_id}")
async def put_team_ep(request):
    _state(request).set_team_escalation_policy(request.match_info["id"], request.match_info["ep_id"], True)
    return _no_content()


@routes.delete("/teams/{id}/escalation_policies/{ep_id}")
async def delete_team_ep(request):
    _state(request).set_team_escalation_policy(request.match_info["id"], request.match_info["ep_id"], False)
    return _no_content()


# --- schedules

@routes.get("/schedules")
async def list_schedules(request):
    st = _state(request)
    schedules = _query_filter(st.schedules.values(), request.query.get("query"), "name")
    return _page(request, "schedules", _by_name(schedules), st.render_schedule)


@routes.post("/schedules")
async def create_schedule(request):
    st = _state(request)
    data = await _wrapped(request, "schedule")
    return _json({"schedule": st.render_schedule(st.create_schedule(data))}, 201)


@routes.get("/schedules/{id}")
async def get_schedule(request):
    st = _state(request)
    return _json({"schedule": st.render_schedule(st._get(st.schedules, request.match_info["id"], "Schedule"))})


@routes.put("/schedules/{id}")
async def update_schedule(request):
    st = _state(request)
    data = await _wrapped(request, "schedule")
    return _json({"schedule": st.render_schedule(st.update_schedule(request.match_info["id"], data))})


@routes.delete("/schedules/{id}")
async def delete_schedule(request):
    _state(request).delete_schedule(request.match_info["id"])
    return _no_content()


@routes.get("/schedules/{id}/users")
async def list_schedule_users(request):
    st = _state(request)
    sid = request.match_info["id"]
    st._get(st.schedules, sid, "Schedule")
    return _json({"users": [st.users[u] for u in st.schedule_users(sid) if u in st.users]})


# --- escalation policies

@routes.get("/escalation_policies")
async def list_escalation_policies(request):
    st = _state(request)
    eps = _query_filter(st.escalation_policies.values(), request.query.get("query"), "name")
    user_ids = set(_list_param(request, "user_ids"))
    if user_ids:
        eps = [ep for ep in eps if any(
            (t["type"] == "user_reference" and t["id"] in user_ids)
            or (t["type"] == "schedule_reference" and user_ids & set(st.schedule_users(t["id"])))
            for r in ep["escalation_rules"] for t in r["targets"])]
    team_ids = set(_list_param(request, "team_ids"))
    if team_ids:
        eps = [ep for ep in eps if any(t["id"] in team_ids for t in ep["teams"])]
    include = _includes(request)
    return _page(request, "escalation_policies", _by_name(eps, request.query.get("sort_by")),
                 lambda ep: st.render_escalation_policy(ep, include))


@routes.post("/escalation_policies")
async def create_escalation_policy(request):
    st = _state(request)
    _from(request, required=False)
    data = await _wrapped(request, "escalation_policy")
    return _json({"escalation_policy": st.render_escalation_policy(st.create_escalation_policy(data))}, 201)


@routes.get("/escalation_policies/{id}")
async def get_escalation_policy(request):
    st = _state(request)
    ep = st._get(st.escalation_policies, request.match_info["id"], "Escalation Policy")
    return _json({"escalation_policy": st.render_escalation_policy(ep, _includes(request))})


@routes.put("/escalation_policies/{id}")
async def update_escalation_policy(request):
    st = _state(request)
    data = await _wrapped(request, "escalation_policy")
    ep = st.update_escalation_policy(request.match_info["id"], data)
    return _json({"escalation_policy": st.render_escalation_policy(ep)})


@routes.delete("/escalation_policies/{id}")
async def delete_escalation_policy(request):
    _state(request).delete_escalation_policy(request.match_info["id"])
    return _no_content()


# --- services

@routes.get("/services")
async def list_services(request):
    st = _state(request)
    services = _query_filter(st.services.values(), request.query.get("query"), "name")
    name = request.query.get("name")
    if name:
        services = [s for s in services if s["name"] == name]
    team_ids = set(_list_param(request, "team_ids"))
    if team_ids:
        services = [s for s in services if any(t["id"] in team_ids for t in s["teams"])]
    include = _includes(request)
    return _page(request, "services", _by_name(services, request.query.get("sort_by")),
                 lambda s: st.render_service(s, include))


@routes.post("/services")
async def create_service(request):
    st = _state(request)
    data = await _wrapped(request, "service")
    return _json({"service": st.render_service(st.create_service(data))}, 201)


@routes.get("/services/{id}")
async def get_service(request):
    st = _state(request)
    service = st._get(st.services, request.match_info["id"], "Service")
    return _json({"service": st.render_service(service, _includes(request))})


@routes.put("/services/{id}")
async def update_service(request):
    st = _state(request)
    data = await _wrapped(request, "service")
    return _json({"service": st.render_service(st.update_service(request.match_info["id"], data))})


@routes.delete("/services/{id}")
async def delete_service(request):
    _state(request).delete_service(request.match_info["id"])
    return _no_content()


# --- business services and dependencies

@routes.get("/business_services")
async def list_business_services(request):
    return _page(request, "business_services", _by_name(_state(request).business_services.values()))


@routes.post("/business_services")
async def create_business_service(request):
    data = await _wrapped(request, "business_service")
    return _json({"business_service": _state(request).create_business_service(data)})


@routes.get("/business_services/{id}")
async def get_business_service(request):
    st = _state(request)
    return _json({"business_service": st._get(st.business_services, request.match_info["id"], "Business Service")})


@routes.put("/business_services/{id}")
async def update_business_service(request):
    data = await _wrapped(request, "business_service")
    return _json({"business_service": _state(request).update_business_service(request.match_info["id"], data)})


@routes.delete("/business_services/{id}")
async def delete_business_service(request):
    _state(request).delete_business_service(request.match_info["id"])
    return _no_content()


@routes.post("/service_dependencies/associate")
async def associate_dependencies(request):
    data = await _body(request)
    return _json({"relationships": _state(request).associate_dependencies(data.get("relationships"))})


@routes.post("/service_dependencies/disassociate")
async def disassociate_dependencies(request):
    data = await _body(request)
    return _json({"relationships": _state(request).disassociate_dependencies(data.get("relationships"))})


@routes.get("/service_dependencies/technical_services/{id}")
async def technical_service_dependencies(request):
    return _json({"relationships": _state(request).dependencies_of("service", request.match_info["id"])})


@routes.get("/service_dependencies/business_services/{id}")
async def business_service_dependencies(request):
    return _json({"relationships": _state(request).dependencies_of("business_service", request.match_info["id"])})


# --- priorities

@routes.get("/priorities")
async def list_priorities(request):
    return _page(request, "priorities", list(_state(request).priorities.values()))


# --- extensions

@routes.get("/extension_schemas")
async def list_extension_schemas(request):
    return _page(request, "extension_schemas", list(_state(request).extension_schemas.values()))


@routes.get("/extension_schemas/{id}")
async def get_extension_schema(request):
    st = _state(request)
    return _json({"extension_schema": st._get(st.extension_schemas, request.match_info["id"], "Extension Schema")})


@routes.get("/extensions")
async def list_extensions(request):
    st = _state(request)
    exts = _query_filter(st.extensions.values(), request.query.get("query"), "name")
    obj = request.query.get("extension_object_id")
    if obj:
        exts = [e for e in exts if any(o["id"] == obj for o in e["extension_objects"])]
    schema = request.query.get("extension_schema_id")
    if schema:
        exts = [e for e in exts if e["extension_schema"]["id"] == schema]
    return _page(request, "extensions", _by_name(exts))


@routes.post("/extensions")
async def create_extension(request):
    data = await _wrapped(request, "extension")
    return _json({"extension": _state(request).create_extension(data)}, 201)


@routes.get("/extensions/{id}")
async def get_extension(request):
    st = _state(request)
    return _json({"extension": st._get(st.extensions, request.match_info["id"], "Extension")})


@routes.put("/extensions/{id}")
async def update_extension(request):
    data = await _wrapped(request, "extension")
    return _json({"extension": _state(request).update_extension(request.match_info["id"], data)})


@routes.delete("/extensions/{id}")
async def delete_extension(request):
    _state(request).delete_extension(request.match_info["id"])
    return _no_content()


@routes.post("/extensions/{id}/enable")
async def enable_extension(request):
    return _json({"extension": _state(request).enable_extension(request.match_info["id"])})


# --- webhook subscriptions

@routes.get("/webhook_subscriptions")
async def list_webhook_subscriptions(request):
    st = _state(request)
    subs = list(st.webhook_subscriptions.values())
    ftype = request.query.get("filter_type")
    if ftype:
        subs = [s for s in subs if s["filter"]["type"] == f"{ftype}_reference"]
    fid = request.query.get("filter_id")
    if fid:
        subs = [s for s in subs if s["filter"].get("id") == fid]
    return _page(request, "webhook_subscriptions", subs, st.render_webhook_subscription)


@routes.post("/webhook_subscriptions")
async def create_webhook_subscription(request):
    st = _state(request)
    data = await _wrapped(request, "webhook_subscription")
    sub = st.create_webhook_subscription(data)
    return _json({"webhook_subscription": st.render_webhook_subscription(sub, with_secret=True)})


@routes.get("/webhook_subscriptions/{id}")
async def get_webhook_subscription(request):
    st = _state(request)
    sub = st._get(st.webhook_subscriptions, request.match_info["id"], "Webhook Subscription")
    return _json({"webhook_subscription": st.render_webhook_subscription(sub)})


@routes.put("/webhook_subscriptions/{id}")
async def update_webhook_subscription(request):
    st = _state(request)
    data = await _wrapped(request, "webhook_subscription")
    sub = st.update_webhook_subscription(request.match_info["id"], data)
    return _json({"webhook_subscription": st.render_webhook_subscription(sub)})


@routes.delete("/webhook_subscriptions/{id}")
async def delete_webhook_subscription(request):
    _state(request).delete_webhook_subscription(request.match_info["id"])
    return _no_content()


@routes.post("/webhook_subscriptions/{id}/enable")
async def enable_webhook_subscription(request):
    st = _state(request)
    sub = st.enable_webhook_subscription(request.match_info["id"])
    return _json({"webhook_subscription": st.render_webhook_subscription(sub)})


@routes.post("/webhook_subscriptions/{id}/ping")
async def ping_webhook_subscription(request):
    _state(request).ping_webhook_subscription(request.match_info["id"])
    return _no_content(202)


# --- incidents

_INCIDENT_SORT_FIELDS = ("incident_number", "created_at", "resolved_at", "urgency")


@routes.get("/incidents")
async def list_incidents(request):
    st = _state(request)
    q = request.query
    incidents: Iterable[dict] = st.incidents.values()
    statuses = _list_param(request, "statuses")
    bad = [s for s in statuses if s not in ("triggered", "acknowledged", "resolved")]
    if bad:
        raise invalid(f"statuses[] must be triggered, acknowledged or resolved, got {', '.join(bad)}")
    if statuses:
        wanted = set(statuses)
        incidents = [i for i in incidents if i["status"] in wanted]
    service_ids = _list_param(request, "service_ids")
    if service_ids:
        wanted = set(service_ids)
        incidents = [i for i in incidents if i["service"]["id"] in wanted]
    team_ids = _list_param(request, "team_ids")
    if team_ids:
        st.require_ability("teams")
        wanted = set(team_ids)
        incidents = [i for i in incidents if any(t["id"] in wanted for t in i["teams"])]
    user_ids = _list_param(request, "user_ids")
    if user_ids:
        wanted = set(user_ids)
        incidents = [i for i in incidents if any(a["assignee"]["id"] in wanted for a in i["assignments"])]
    urgencies = _list_param(request, "urgencies")
    if urgencies:
        wanted = set(urgencies)
        incidents = [i for i in incidents if i["urgency"] in wanted]
    if q.get("incident_key"):
        incidents = [i for i in incidents if i["incident_key"] == q["incident_key"]]
    if q.get("date_range") != "all":
        since, until = _time_param(request, "since"), _time_param(request, "until")
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
    sort_by = [p for s in _list_param(request, "sort_by") for p in s.split(",") if p]
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
    include = _includes(request)
    return _page(request, "incidents", incidents, (lambda i: st.render_incident(i, include)) if include else None)


@routes.post("/incidents")
async def create_incident(request):
    st = _state(request)
    actor = _from(request)
    data = await _wrapped(request, "incident")
    return _json({"incident": st.create_incident_from_body(data, actor)}, 201)


@routes.put("/incidents")
async def update_incidents(request):
    st = _state(request)
    actor = _from(request)
    data = await _body(request)
    incidents = st.update_incidents(data.get("incidents"), actor)
    # Every updated incident comes back (at most 250), whatever limit says.
    return _json({"incidents": incidents, "limit": len(incidents), "offset": 0, "more": False, "total": None})


@routes.get("/incidents/{id}")
async def get_incident(request):
    st = _state(request)
    return _json({"incident": st.render_incident(st._incident(request.match_info["id"]), _includes(request))})


@routes.put("/incidents/{id}")
async def update_incident(request):
    st = _state(request)
    actor = _from(request)
    data = await _wrapped(request, "incident")
    return _json({"incident": st.update_incident(request.match_info["id"], data, actor)})


@routes.put("/incidents/{id}/merge")
async def merge_incidents(request):
    st = _state(request)
    actor = _from(request)
    data = await _body(request)
    target = st.merge_incidents(request.match_info["id"], data.get("source_incidents"), actor)
    return _json({"incident": st.ref("incident", target["id"])})


@routes.get("/incidents/{id}/notes")
async def list_notes(request):
    return _json({"notes": _state(request).list_notes(request.match_info["id"])})


@routes.post("/incidents/{id}/notes")
async def create_note(request):
    st = _state(request)
    actor = _from(request)
    data = await _wrapped(request, "note")
    return _json({"note": st.add_note(request.match_info["id"], actor, data.get("content"))})


@routes.put("/incidents/{id}/notes/{note_id}")
async def update_note(request):
    st = _state(request)
    actor = _from(request)
    data = await _wrapped(request, "note")
    note = st.update_note(request.match_info["id"], request.match_info["note_id"], actor, data.get("content"))
    return _json({"note": note})


@routes.delete("/incidents/{id}/notes/{note_id}")
async def delete_note(request):
    _state(request).delete_note(request.match_info["id"], request.match_info["note_id"])
    return _no_content()


@routes.get("/incidents/{id}/log_entries")
async def list_incident_log_entries(request):
    st = _state(request)
    entries = st.incident_log_entries(request.match_info["id"])
    return _log_page(request, st, entries)


def _log_page(request: web.Request, st: PagerDutyState, entries: list[dict]) -> web.Response:
    since, until = _time_param(request, "since"), _time_param(request, "until")
    if since is not None or until is not None:
        entries = [e for e in entries if (since is None or st.log_entry_time(e["id"]) >= since)
                   and (until is None or st.log_entry_time(e["id"]) < until)]
    if truthy(request.query.get("is_overview")):
        overview = {"trigger_log_entry", "acknowledge_log_entry", "resolve_log_entry", "escalate_log_entry",
                    "assign_log_entry", "delegate_log_entry", "annotate_log_entry", "unacknowledge_log_entry"}
        entries = [e for e in entries if e["type"] in overview]
    include = set(_includes(request))

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

    return _page(request, "log_entries", entries, render)


@routes.get("/log_entries")
async def list_log_entries(request):
    st = _state(request)
    since, until = _time_param(request, "since"), _time_param(request, "until")
    entries = st.all_log_entries(since, until)
    team_ids = set(_list_param(request, "team_ids"))
    if team_ids:
        entries = [e for e in entries if any(t["id"] in team_ids for t in e["teams"])]
    return _log_page(request, st, entries)


@routes.get("/log_entries/{id}")
async def get_log_entry(request):
    st = _state(request)
    return _json({"log_entry": st._get(st.log_entries, request.match_info["id"], "Log Entry")})


@routes.post("/incidents/{id}/responder_requests")
async def create_responder_request(request):
    st = _state(request)
    data = await _body(request)
    req = st.add_responder_request(request.match_info["id"], data.get("requester_id"), data.get("message"),
                                   data.get("responder_request_targets"))
    return _json({"responder_request": req})


@routes.put("/incidents/{id}/responder_requests/cancel")
async def cancel_responder_request(request):
    st = _state(request)
    data = await _body(request)
    results = st.cancel_responder_requests(request.match_info["id"], data.get("requester_id"),
                                           data.get("responder_request_targets"))
    return _json({"responder_request_targets": results})


@routes.post("/incidents/{id}/status_updates")
async def create_status_update(request):
    st = _state(request)
    actor = _from(request)
    data = await _body(request)
    update = st.add_status_update(request.match_info["id"], actor, data.get("message"), data.get("subject"),
                                  data.get("html_message"))
    return _json({"status_update": update})


@routes.post("/incidents/{id}/snooze")
async def snooze_incident(request):
    st = _state(request)
    actor = _from(request)
    data = await _body(request)
    return _json({"incident": st.snooze(request.match_info["id"], actor, data.get("duration"))}, 201)


@routes.put("/incidents/{id}/business_services/{bs_id}/impacts")
async def put_business_service_impact(request):
    st = _state(request)
    data = await _body(request)
    relation = st.set_business_service_impact(request.match_info["id"], request.match_info["bs_id"],
                                              data.get("relation"))
    return _json({"relation": relation})


@routes.get("/incidents/{id}/business_services/impacts")
async def get_business_service_impacts(request):
    st = _state(request)
    return _json({"services": st.business_service_impacts(request.match_info["id"]), "limit": 100,
                  "next_cursor": None})


# --- incident workflows

@routes.get("/incident_workflows")
async def list_incident_workflows(request):
    st = _state(request)
    st.require_ability("incident_workflows")
    workflows = _query_filter(st.incident_workflows.values(), request.query.get("query"), "name")
    return _page(request, "incident_workflows", _by_name(workflows))


@routes.post("/incident_workflows")
async def create_incident_workflow(request):
    data = await _wrapped(request, "incident_workflow")
    return _json({"incident_workflow": _state(request).create_incident_workflow(data)}, 201)


@routes.get("/incident_workflows/{id}")
async def get_incident_workflow(request):
    st = _state(request)
    st.require_ability("incident_workflows")
    return _json({"incident_workflow": st._get(st.incident_workflows, request.match_info["id"], "Incident Workflow")})


@routes.delete("/incident_workflows/{id}")
async def delete_incident_workflow(request):
    _state(request).delete_incident_workflow(request.match_info["id"])
    return _no_content(200)


@routes.post("/incident_workflows/{id}/instances")
async def create_incident_workflow_instance(request):
    st = _state(request)
    data = await _wrapped(request, "incident_workflow_instance")
    incident = data.get("incident")
    iid = incident.get("id") if isinstance(incident, dict) else None
    actor = _from(request, required=False)
    instance = st.start_workflow(request.match_info["id"], iid, actor)
    return _json({"incident_workflow_instance": instance}, 201)


# --- response plays (removed from the API on 2025-09-09; behind a state flag)

def _response_plays_on(st: PagerDutyState) -> None:
    if not st.response_plays_enabled:
        raise not_found()


@routes.get("/response_plays")
async def list_response_plays(request):
    st = _state(request)
    _response_plays_on(st)
    plays = _query_filter(st.response_plays.values(), request.query.get("query"), "name")
    return _json({"response_plays": _by_name(plays)})


@routes.get("/response_plays/{id}")
async def get_response_play(request):
    st = _state(request)
    _response_plays_on(st)
    return _json({"response_play": st._get(st.response_plays, request.match_info["id"], "Response Play")})


@routes.post("/response_plays/{id}/run")
async def run_response_play(request):
    st = _state(request)
    _response_plays_on(st)
    st._get(st.response_plays, request.match_info["id"], "Response Play")
    actor = _from(request)
    data = await _body(request)
    incident = data.get("incident")
    if not isinstance(incident, dict) or incident.get("type") != "incident_reference":
        raise invalid("incident must be an incident_reference")
    return _json(st.run_response_play(request.match_info["id"], incident.get("id"), actor))


# ---------------------------------------------------------------------- app


def create_app(state: PagerDutyState, faults: FaultInjector | None = None) -> web.Application:
    """The PagerDuty REST API over ``state``. ``faults`` replaces ``state.faults`` when given."""
    if faults is not None:
        state.faults = faults
    app = web.Application(middlewares=[faults_middleware(lambda: state.faults, pd_error_body), api_middleware])
    app[STATE_KEY] = state
    app.add_routes(routes)

    async def start_webhooks(app: web.Application) -> None:
        await state.dispatcher.start()

    async def stop_webhooks(app: web.Application) -> None:
        await state.dispatcher.close()

    app.on_startup.append(start_webhooks)
    app.on_cleanup.append(stop_webhooks)
    return app


__all__ = ["STATE_KEY", "create_app"]
