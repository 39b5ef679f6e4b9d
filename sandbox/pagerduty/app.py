"""The aiohttp application: the PagerDuty REST API v2 over a :class:`PagerDutyState`, with
the rules every route shares (authentication, rate limits, read-only keys, error shapes)."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from aiohttp import web

from ..faults import FaultInjector, faults_middleware
from . import (
    account,
    escalation_policies,
    extensions,
    incident_routes,
    schedules,
    services,
    teams,
    users,
    webhook_subscriptions,
    workflows,
)
from .api import KEY_INFO, STATE_KEY, WRITE_METHODS, error_response
from .errors import PDError, access_denied, auth_failed, not_found, pd_error_body, rate_limited
from .state import PagerDutyState

_TOKEN = re.compile(r'^\s*Token\s+token="?([^"\s]+)"?\s*$', re.IGNORECASE)
_BEARER = re.compile(r"^\s*Bearer\s+(\S+)\s*$", re.IGNORECASE)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Each family's routes. Their order matters only where paths overlap, and none do across
# families (within users, /users/me comes before /users/{id}).
FAMILIES = (
    account,
    users,
    teams,
    schedules,
    escalation_policies,
    services,
    extensions,
    webhook_subscriptions,
    incident_routes,
    workflows,
)

#: Every route the sandbox serves, in registration order (the OpenAPI vendoring script
#: and the contract tests read it).
routes: list[web.AbstractRouteDef] = [route for family in FAMILIES for route in family.routes]


def _authenticate(state: PagerDutyState, request: web.Request) -> tuple[str, dict]:
    header = request.headers.get("Authorization", "")
    m = _TOKEN.match(header) or _BEARER.match(header)
    if not m or m.group(1) not in state.api_keys:
        raise auth_failed()
    return m.group(1), state.api_keys[m.group(1)]


@web.middleware
async def api_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Cross-cutting rules, applied to every route:

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
        response = error_response(exc)
    except web.HTTPNotFound:
        response = error_response(not_found())
    except web.HTTPMethodNotAllowed:
        response = error_response(PDError(405, 2015, "Invalid operation", ["Method not allowed"]))
    if headers:
        response.headers.update(headers)
    return response


def create_app(state: PagerDutyState, faults: FaultInjector | None = None) -> web.Application:
    """The PagerDuty REST API over ``state``. ``faults`` replaces ``state.faults`` when given."""
    if faults is not None:
        state.faults = faults
    app = web.Application(middlewares=[faults_middleware(lambda: state.faults, pd_error_body), api_middleware])
    app[STATE_KEY] = state
    for family in FAMILIES:
        app.add_routes(family.routes)

    async def start_webhooks(app: web.Application) -> None:
        await state.dispatcher.start()

    async def stop_webhooks(app: web.Application) -> None:
        await state.dispatcher.close()

    app.on_startup.append(start_webhooks)
    app.on_cleanup.append(stop_webhooks)
    return app


__all__ = ["STATE_KEY", "create_app"]
