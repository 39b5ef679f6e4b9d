"""The Table API over HTTP: routes, authentication, ACLs, rate limits, errors."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ..faults import FaultInjector, faults_middleware
from .doorbell import doorbell_context
from .render import record_renderer
from .state import OperationFailed, RecordNotFound, ServiceNowError, ServiceNowState, UnknownTable

STATE_KEY = web.AppKey("servicenow_state", ServiceNowState)
# aiohttp >= 3.14 wants typed request keys; older releases take a plain string.
USER_KEY = web.RequestKey("sn_user", str) if hasattr(web, "RequestKey") else "sn_user"

DEFAULT_LIMIT = 10000
VERSIONS = ("v1", "v2")
_JSON = "application/json;charset=UTF-8"

_DEFAULT_ERRORS: dict[int, tuple[str, str | None]] = {
    400: ("Requested URI does not represent any resource", None),
    401: ("User Not Authenticated", "Required to provide Auth information"),
    403: ("User Not Authorized", "Failed API level ACL Validation"),
    404: ("No Record found", "Record doesn't exist or ACL restricts the record retrieval"),
    405: ("Method not Supported", "Requested method is not supported by the resource"),
    415: ("Unsupported Media Type", "The request body format is not supported"),
    429: ("Rate limit exceeded", "Rate limit for Table API exceeded"),
    500: ("Internal Server Error", "An unexpected error occurred while processing the request"),
    502: ("Bad Gateway", "The instance did not answer in time"),
    503: ("Service Unavailable", "The instance is unavailable"),
}


def sn_error_body(status: int, message: str | None = None, detail: str | None = None) -> dict:
    """ServiceNow's error body: ``{"error": {"message", "detail"}, "status": "failure"}``."""
    default_message, default_detail = _DEFAULT_ERRORS.get(status, ("Error", None))
    return {
        "error": {"message": message or default_message, "detail": detail if message else default_detail},
        "status": "failure",
    }


def _json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    all_headers = {"Content-Type": _JSON}
    if headers:
        all_headers.update(headers)
    return web.Response(body=json.dumps(body).encode(), status=status, headers=all_headers)


def _error(
    status: int, message: str | None = None, detail: str | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    return _json_response(sn_error_body(status, message, detail), status, headers)


def _flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "").lower() == "true"


def _int_param(request: web.Request, name: str, default: int) -> int:
    try:
        value = int(request.query.get(name, default))
    except ValueError:
        return default
    return value if value >= 0 else default


def _base(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def _render_options(request: web.Request) -> tuple[list[str] | None, str, bool]:
    fields_param = request.query.get("sysparm_fields")
    fields = fields_param.split(",") if fields_param else None
    mode = request.query.get("sysparm_display_value", "false").lower()
    if mode not in ("true", "false", "all"):
        mode = "false"
    return fields, mode, _flag(request, "sysparm_exclude_reference_link")


class TableAPI:
    def __init__(self, state: ServiceNowState):
        self.state = state

    # -------------------------------------------------------------- helpers

    def _target(self, request: web.Request, operation: str) -> tuple[str, str] | web.Response:
        version = request.match_info.get("version")
        if version is not None and version not in VERSIONS:
            return _error(400)
        table = request.match_info["table"]
        if not self.state.table_exists(table):
            return _error(400, f"Invalid table {table}")
        user = request[USER_KEY]
        if not self.state.allowed(self.state.roles_of(user), table, "read" if operation == "read" else "write"):
            if operation == "read":
                return _error(403)
            return _error(
                403, "Operation Failed", f"ACL Exception {operation.capitalize()} Failed due to security constraints"
            )
        return table, user

    async def _body(self, request: web.Request) -> dict | web.Response:
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type and content_type != "application/json" and not content_type.endswith("+json"):
            return _error(
                415,
                "Unsupported Media Type",
                f"Content-Type {content_type} is not supported by this sandbox (use application/json)",
            )
        raw = await request.read()
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return _error(400, "Exception while reading request", "The payload is not valid JSON.")
        if not isinstance(body, dict):
            return _error(
                400,
                "Exception while reading request",
                "The payload is not a JSON object: multiple record insertion is not supported.",
            )
        return body

    def _one(
        self, request: web.Request, table: str, record: dict, status: int = 200, headers: dict[str, str] | None = None
    ) -> web.Response:
        if request.headers.get("X-no-response-body", "").lower() == "true":
            return web.Response(status=status, headers=headers)
        fields, mode, exclude = _render_options(request)
        render = record_renderer(self.state, table, fields, mode, exclude, _base(request))
        return _json_response({"result": render(record)}, status, headers)

    # -------------------------------------------------------------- routes

    async def list(self, request: web.Request) -> web.Response:
        target = self._target(request, "read")
        if isinstance(target, web.Response):
            return target
        table, user = target
        query = request.query
        extra = [] if "sysparm_query" in query else [(k, v) for k, v in query.items() if not k.startswith("sysparm_")]
        records = self.state.select(table, query.get("sysparm_query"), user=user, extra=extra)
        limit = _int_param(request, "sysparm_limit", DEFAULT_LIMIT) or DEFAULT_LIMIT
        offset = _int_param(request, "sysparm_offset", 0)
        # As on an instance, the limit applies before row ACLs: reading a parent table
        # (task, cmdb_ci) drops rows of classes the user may not read, so a page can
        # come back short while X-Total-Count still counts them.
        readable = self._readable(user, table)
        page = [r for r in records[offset : offset + limit] if readable(r)]
        total = len(records)
        if not page and request.match_info.get("version") == "v1":
            return _error(404, "No Record found", "Records not found")
        fields, mode, exclude = _render_options(request)
        render = record_renderer(self.state, table, fields, mode, exclude, _base(request))
        headers: dict[str, str] = {}
        counted = not _flag(request, "sysparm_no_count")
        if counted:
            headers["X-Total-Count"] = str(total)
        if not _flag(request, "sysparm_suppress_pagination_header"):
            headers["Link"] = self._links(request, offset, limit, total if counted else None, len(page))
        return _json_response({"result": [render(r) for r in page]}, headers=headers)

    @staticmethod
    def _links(request: web.Request, offset: int, limit: int, total: int | None, returned: int) -> str:
        # The instance echoes the request's own query string, as the client encoded
        # it, with sysparm_offset/sysparm_limit moved to the end. A captured header
        # shows sysparm_fields commas left raw: a client must not split Link on ",".
        kept = [
            p
            for p in request.query_string.split("&")
            if p and p.split("=", 1)[0] not in ("sysparm_offset", "sysparm_limit")
        ]
        base = f"{_base(request)}{request.raw_path.split('?', 1)[0]}?"

        def link(at: int, rel: str) -> str:
            return f'<{base}{"&".join([*kept, f"sysparm_offset={at}", f"sysparm_limit={limit}"])}>;rel="{rel}"'

        links = [link(0, "first")]
        if offset > 0:
            links.append(link(max(0, offset - limit), "prev"))
        if (total is not None and offset + limit < total) or (total is None and returned == limit):
            links.append(link(offset + limit, "next"))
        if total is not None:
            links.append(link(((total - 1) // limit) * limit if total else 0, "last"))
        return ",".join(links)

    async def get(self, request: web.Request) -> web.Response:
        target = self._target(request, "read")
        if isinstance(target, web.Response):
            return target
        table, user = target
        record = self.state.tables[table].get(request.match_info["sys_id"])
        if record is None or not self._readable(user, table)(record):
            return _error(404)
        return self._one(request, table, record)

    def _readable(self, user: str, table: str) -> Callable[[dict], bool]:
        roles = self.state.roles_of(user)
        verdicts: dict[str, bool] = {table: True}

        def readable(record: dict) -> bool:
            cls = self.state._class_of(table, record)
            if cls not in verdicts:
                verdicts[cls] = self.state.allowed(roles, cls, "read")
            return verdicts[cls]

        return readable

    def _class_writable(self, user: str, table: str, sys_id: str, operation: str) -> web.Response | None:
        record = self.state.tables[table].get(sys_id)
        if record is None:
            return _error(404)
        cls = self.state._class_of(table, record)
        if cls != table and not self.state.allowed(self.state.roles_of(user), cls, "write"):
            return _error(403, "Operation Failed", f"ACL Exception {operation} Failed due to security constraints")
        return None

    def _input_display(self, request: web.Request, table: str, body: dict) -> dict:
        """sysparm_input_display_value=true: choice labels are accepted for values
        (references resolve display values either way)."""
        if not _flag(request, "sysparm_input_display_value"):
            return body
        columns = self.state.columns(table)
        out = dict(body)
        for name, value in body.items():
            column = columns.get(name)
            if column is not None and column.choices and isinstance(value, str):
                for choice, label in column.choices.items():
                    if label.lower() == value.lower():
                        out[name] = choice
        return out

    async def post(self, request: web.Request) -> web.Response:
        target = self._target(request, "insert")
        if isinstance(target, web.Response):
            return target
        table, user = target
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        record = self.state._insert(table, self._input_display(request, table, body), user)
        location = f"{_base(request)}{request.path.rstrip('/')}/{record['sys_id']}"
        return self._one(request, table, record, 201, {"Location": location})

    async def put(self, request: web.Request) -> web.Response:
        target = self._target(request, "update")
        if isinstance(target, web.Response):
            return target
        table, user = target
        refused = self._class_writable(user, table, request.match_info["sys_id"], "Update")
        if refused is not None:
            return refused
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        record = self.state._update(
            table, request.match_info["sys_id"], self._input_display(request, table, body), user
        )
        return self._one(request, table, record)

    async def delete(self, request: web.Request) -> web.Response:
        target = self._target(request, "delete")
        if isinstance(target, web.Response):
            return target
        table, user = target
        refused = self._class_writable(user, table, request.match_info["sys_id"], "Delete")
        if refused is not None:
            return refused
        try:
            self.state.delete(table, request.match_info["sys_id"], user)
        except RecordNotFound:
            return _error(404)
        return web.Response(status=204)


def _authenticate(state: ServiceNowState, header: str) -> str | None:
    scheme, _, credentials = header.partition(" ")
    scheme = scheme.lower()
    if scheme == "basic":
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        user_name, sep, password = decoded.partition(":")
        return user_name if sep and state.authenticate(user_name, password) else None
    if scheme == "bearer":
        return state.user_for_token(credentials.strip())
    return None


def _servicenow_middleware(state: ServiceNowState):
    @web.middleware
    async def middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
        user = _authenticate(state, request.headers.get("Authorization", ""))
        if user is None:
            return _error(401, headers={"WWW-Authenticate": 'BASIC realm="Service-now"'})
        request[USER_KEY] = user
        allowed, limit_headers = state.rate_limit(user)
        if not allowed:
            detail = f"Rate limit of {state.rate_limit_per_hour} requests per hour for Table API exceeded"
            return _error(429, "Rate limit exceeded", detail, limit_headers)
        try:
            response = await handler(request)
        except web.HTTPMethodNotAllowed:
            response = _error(405)
        except web.HTTPNotFound:
            response = _error(400)
        except UnknownTable as exc:
            response = _error(400, exc.message)
        except RecordNotFound:
            response = _error(404)
        except (OperationFailed, ServiceNowError) as exc:
            response = _error(exc.status, exc.message, exc.detail)
        for name, value in limit_headers.items():
            response.headers[name] = value
        return response

    return middleware


def create_app(state: ServiceNowState, faults: FaultInjector | None = None) -> web.Application:
    """The ServiceNow sandbox app. ``faults`` replaces ``state.faults`` when given;
    the doorbell's HTTP session and delivery task live as long as the app runs."""
    if faults is not None:
        state.faults = faults
    app = web.Application(
        middlewares=[faults_middleware(lambda: state.faults, sn_error_body), _servicenow_middleware(state)]
    )
    app[STATE_KEY] = state
    api = TableAPI(state)
    for prefix in ("/api/now/table", "/api/now/{version}/table"):
        app.router.add_get(prefix + "/{table}", api.list)
        app.router.add_post(prefix + "/{table}", api.post)
        app.router.add_get(prefix + "/{table}/{sys_id}", api.get)
        app.router.add_put(prefix + "/{table}/{sys_id}", api.put)
        app.router.add_patch(prefix + "/{table}/{sys_id}", api.put)
        app.router.add_delete(prefix + "/{table}/{sys_id}", api.delete)

    app.cleanup_ctx.append(doorbell_context(state))
    return app
