"""What every PagerDuty route shares: reading requests (body, From, paging, include[]) and
writing PagerDuty-shaped JSON answers (pages with offset/limit/more/total, errors)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .errors import PDError, access_denied, invalid
from .util import EMAIL, READ_ONLY_ROLES, parse_time, truthy

if TYPE_CHECKING:  # the state's modules import this one for their routes
    from .state import PagerDutyState

STATE_KEY = web.AppKey["PagerDutyState"]("pd_state")
KEY_INFO = web.RequestKey("pd_key", dict)

DEFAULT_LIMIT = 25
MAX_LIMIT = 100
MAX_OFFSET_PLUS_LIMIT = 10_000
WRITE_METHODS = frozenset({"POST", "PUT", "DELETE", "PATCH"})


# ---------------------------------------------------------------- responses


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(data).encode(), status=status, content_type="application/json", charset="utf-8")


def error_response(err: PDError) -> web.Response:
    return json_response(err.body(), err.status)


def no_content(status: int = 204) -> web.Response:
    return web.Response(status=status)


# ---------------------------------------------------------------- requests


def state_of(request: web.Request) -> PagerDutyState:
    return request.app[STATE_KEY]


async def read_body(request: web.Request) -> dict:
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


async def read_wrapped(request: web.Request, key: str) -> dict:
    """The object under ``key`` of the body (``{"team": {...}}``)."""
    data = await read_body(request)
    inner = data.get(key)
    if not isinstance(inner, dict):
        raise invalid(f"{key} is required and must be an object")
    return inner


def acting_user(request: web.Request, required: bool = True) -> str | None:
    """The acting user's id from the ``From`` header (or the user key's own user)."""
    state = state_of(request)
    value = request.headers.get("From", "").strip()
    key_user = request[KEY_INFO].get("user")
    if not value:
        if key_user:
            return key_user
        if required:
            raise PDError(
                400, 2016, 'You must specify a user\'s email address in the "From" header to perform this action', []
            )
        return None
    if not EMAIL.match(value):
        raise PDError(400, 1028, 'Malformed "From" header', [f"{value!r} is not an email address"])
    user = state.user_by_email(value)
    if user is None:
        raise PDError(400, 1008, "Requester User Not Found", [f"No user has the email address {value!r}"])
    if user["role"] in READ_ONLY_ROLES and request.method in WRITE_METHODS:
        raise access_denied(f"User {user['id']} has the read-only role {user['role']!r}")
    return user["id"]


def list_param(request: web.Request, name: str) -> list[str]:
    q = request.query
    return q.getall(f"{name}[]", []) + q.getall(name, [])


def includes(request: web.Request) -> list[str]:
    return list_param(request, "include")


def paging(request: web.Request) -> tuple[int, int, bool]:
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
        raise invalid(
            f"Offset+limit must be less than or equal to {MAX_OFFSET_PLUS_LIMIT}", message="Invalid Input Provided"
        )
    return limit, offset, truthy(q.get("total"))


def page(
    request: web.Request, key: str, items: list, render: Callable[[Any], Any] | None = None, extra: dict | None = None
) -> web.Response:
    """One page of ``items`` under ``key``, as the request's ``limit``/``offset``/``total`` ask."""
    limit, offset, want_total = paging(request)
    chunk = items[offset : offset + limit]
    if render is not None:
        chunk = [render(x) for x in chunk]
    body = {
        key: chunk,
        "limit": limit,
        "offset": offset,
        "more": offset + len(chunk) < len(items),
        "total": len(items) if want_total else None,
    }
    if extra:
        body.update(extra)
    return json_response(body)


def query_filter(items: Iterable[dict], query: str | None, *fields: str) -> list[dict]:
    if not query:
        return list(items)
    needle = query.lower()
    return [x for x in items if any(needle in str(x.get(f, "")).lower() for f in fields)]


def by_name(items: Iterable[dict], sort_by: str | None = None) -> list[dict]:
    desc = bool(sort_by) and sort_by.endswith(":desc")
    return sorted(items, key=lambda x: (x.get("name", "").lower(), x["id"]), reverse=desc)


def time_param(request: web.Request, name: str) -> float | None:
    value = request.query.get(name)
    if value is None or value == "":
        return None
    try:
        return parse_time(value)
    except ValueError:
        raise PDError(
            400,
            2004,
            "Invalid time values in 'since' and/or 'until' parameters",
            [f"{name} is not an ISO 8601 date-time: {value!r}"],
        ) from None
