"""A thin async client for PagerDuty's REST API v2, on the outbound pipeline: headers, the ``From``
user, classic pagination (10,000-record ceiling), a per-key rate limiter, typed errors.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import structlog
from multidict import CIMultiDict

from .config import PagerDutyConfig
from .http import (
    ApiError,
    AuthError,
    NotFound,
    OutboundPipeline,
    OutboundRequest,
    OutboundResponse,
    RateLimited,
    RateLimiter,
    RetryPolicy,
    retry_after_seconds,
)

log = structlog.get_logger("dutybridge.pagerduty")

ACCEPT = "application/vnd.pagerduty+json;version=2"
#: offset + limit may not exceed this in classic pagination (PagerDuty answers 400).
PAGINATION_CEILING = 10_000
PAGE_LIMIT = 100

# PagerDuty error codes callers branch on (14-Errors.md).
ALREADY_RESOLVED = 1001
ALREADY_ACKNOWLEDGED = 1002
ALREADY_MERGED = 1019
RATE_LIMIT_EXCEEDED = 2020


# -- errors -----------------------------------------------------------------------


class PagerDutyError(ApiError):
    """PagerDuty answered with an error: HTTP ``status``, PagerDuty's ``code``,
    ``message`` and ``errors`` (details) from ``{"error": {...}}``.

    Branch on ``code`` for PagerDuty's conditions, e.g. ``err.code ==
    ALREADY_RESOLVED`` (1001) or ``ALREADY_ACKNOWLEDGED`` (1002). ``transient`` is true
    for 429 and 5xx (worth trying again later). The message never holds the API key.
    """

    def __init__(
        self,
        status: int,
        code: int | None,
        message: str,
        errors: list[str] | None = None,
        *,
        operation: str = "",
        attempts: int = 1,
    ):
        self.code = code
        self.errors = list(errors or [])
        where = f" to {operation}" if operation else ""
        text = f"PagerDuty answered {status}{where}: {message}"
        if code is not None:
            text += f" (code {code})"
        if self.errors:
            text += ": " + "; ".join(self.errors)
        if attempts > 1:
            text += f" after {attempts} attempts"
        super().__init__(text, status=status, message=message, operation=operation, attempts=attempts)


class PagerDutyNotFound(PagerDutyError, NotFound):
    """404: the object does not exist (or the key may not see it)."""


class PagerDutyAuthError(PagerDutyError, AuthError):
    """401 or 403: the API key is wrong, or lacks access to this object."""


class PagerDutyRateLimited(PagerDutyError, RateLimited):
    """429, still, after the retries the policy allowed; ``retry_after`` is the
    wait PagerDuty asked for (``ratelimit-reset``), in seconds, when it said."""


def error_from_response(response: OutboundResponse, operation: str = "") -> PagerDutyError:
    """The typed error for a non-2xx PagerDuty response."""
    code: int | None = None
    errors: list[str] = []
    message = ""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        message = str(err.get("message") or "")
        raw_code = err.get("code")
        code = int(raw_code) if isinstance(raw_code, (int, str)) and str(raw_code).isdigit() else None
        raw_errors = err.get("errors") or []
        errors = [str(e) for e in raw_errors] if isinstance(raw_errors, list) else [str(raw_errors)]
    if not message:
        message = {401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 429: "Rate Limit Exceeded"}.get(
            response.status, f"HTTP {response.status}"
        )
    if response.status == 404:
        cls: type[PagerDutyError] = PagerDutyNotFound
    elif response.status in (401, 403):
        cls = PagerDutyAuthError
    elif response.status == 429:
        cls = PagerDutyRateLimited
    else:
        cls = PagerDutyError
    err = cls(response.status, code, message, errors, operation=operation, attempts=response.attempts)
    if response.status == 429:
        err.retry_after = retry_after_seconds(response.headers)
    return err


# -- pagination ---------------------------------------------------------------------


class ResultList(list):
    """A list of collected results; ``truncated`` is true when PagerDuty had more than
    its pagination ceiling lets a client read (narrow the query to get the rest)."""

    truncated: bool = False
    total: int | None = None


class Paginator:
    """``async for item in client.paginate(...)``: classic offset pagination.

    Pages of ``limit`` (at most 100) until ``more`` is false. PagerDuty refuses
    ``offset + limit > 10000`` with a 400, so the paginator never asks for that: at
    the ceiling it stops, logs a warning and sets ``truncated``. Read ``truncated``
    after the loop (``await paginator.collect()`` returns a ``ResultList`` carrying it).
    """

    def __init__(
        self,
        client: PagerDutyClient,
        path: str,
        key: str,
        params: Any = None,
        *,
        limit: int = PAGE_LIMIT,
        operation: str | None = None,
    ):
        self.client = client
        self.path = path
        self.key = key
        self.params = _encode_params(params)
        self.limit = max(1, min(limit, PAGE_LIMIT))
        self.operation = operation
        self.truncated = False
        self.total: int | None = None
        self.fetched = 0

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        offset = 0
        base = [(k, v) for k, v in self.params if k not in ("limit", "offset")]
        while True:
            limit = min(self.limit, PAGINATION_CEILING - offset)
            if limit <= 0:
                self.truncated = True
                log.warning(
                    "pagination_truncated",
                    reason="the API's ceiling",
                    path=self.path,
                    fetched=self.fetched,
                    ceiling=PAGINATION_CEILING,
                    hint="narrow the query (since/until, service_ids, statuses) to read the rest",
                )
                return
            page = await self.client.get(
                self.path, params=[*base, ("limit", str(limit)), ("offset", str(offset))], operation=self.operation
            )
            page = page or {}
            items = page.get(self.key) or []
            if page.get("total") is not None:
                self.total = page["total"]
            for item in items:
                self.fetched += 1
                yield item
            if not page.get("more") or not items:
                return
            offset += len(items)

    async def collect(self) -> ResultList:
        out = ResultList()
        async for item in self:
            out.append(item)
        out.truncated = self.truncated
        out.total = self.total
        return out


# -- the client -------------------------------------------------------------------------


_ID_SEGMENT = re.compile(r"^(?![a-z_]+$)[^/]+$")


def _template(path: str) -> str:
    # "/incidents/PABC123/notes" -> "/incidents/{id}/notes": PagerDuty ids are upper
    # case and digits, while the API's own path words are lower case.
    parts = path.split("?")[0].split("/")
    return "/".join("{id}" if p and _ID_SEGMENT.match(p) else p for p in parts)


def _seg(value: str) -> str:
    """One path segment from outside data: quoted so it cannot change the path."""
    if not value:
        raise ValueError("an empty id cannot name a PagerDuty object")
    return quote(str(value), safe="")


def _qs(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return _iso(value)
    return str(value)


def _encode_params(params: Any) -> list[tuple[str, str]]:
    """A dict or pairs -> query pairs; a list value repeats the key (``statuses[]``)."""
    if not params:
        return []
    items = params.items() if isinstance(params, Mapping) else params
    out: list[tuple[str, str]] = []
    for key, value in items:
        if value is None:
            continue
        if isinstance(value, (list, tuple, set, frozenset)):
            name = key if key.endswith("[]") else f"{key}[]"
            out.extend((name, _qs(v)) for v in value)
        else:
            out.append((key, _qs(value)))
    return out


def _iso(value: datetime | str) -> str:
    if isinstance(value, str):
        return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.isoformat()


def _ref(kind: str, obj_id: str) -> dict[str, str]:
    return {"id": obj_id, "type": f"{kind}_reference"}


class PagerDutyClient:
    """PagerDuty REST API v2 through the outbound pipeline (``ctx.pagerduty``).

    Every request carries ``Authorization: Token token=...``, the version-2
    ``Accept`` header and ``Content-Type: application/json`` (PagerDuty's OpenAPI
    file marks Content-Type required on nearly every operation, GETs included, so
    sending it always keeps each request valid against it). Writes (POST, PUT,
    DELETE) carry ``From``: the ``acting_email`` given, else ``from_email`` from the
    config, else the email of ``default_user_id`` (looked up once and cached);
    13 operations require it and the rest ignore it.

    One client per API key: its ``limiter`` paces every request made with the key
    (pass ``limiter=`` to share one between clients of the same key).
    Generic calls (``get``/``post``/``put``/``delete``) return the decoded JSON
    body; typed methods unwrap it (``create_incident`` returns the incident).
    Errors: ``PagerDutyError`` and subclasses; ``TransportError`` when no answer.

    Features call the typed methods; headers, pagination, the rate limiter and the typed
    errors live here.
    """

    def __init__(
        self,
        pipeline: OutboundPipeline,
        config: PagerDutyConfig,
        *,
        limiter: RateLimiter | None = None,
        retry: RetryPolicy | None = None,
    ):
        self.pipeline = pipeline
        self.config = config
        self.base_url = config.api_url.rstrip("/")
        self.limiter = limiter or RateLimiter(config.rate_limit_per_minute)
        self.retry = retry or RetryPolicy(max_retries=config.max_retries)
        self._default_email: str | None = None
        self._email_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"PagerDutyClient(api_url={self.base_url!r})"

    # -- plumbing --------------------------------------------------------------------
    async def from_email(self, acting_email: str | None = None) -> str | None:
        """The ``From`` address for a write: explicit, configured, or the default user's."""
        if acting_email:
            return acting_email
        if self.config.from_email:
            return self.config.from_email
        if not self.config.default_user_id:
            return None
        async with self._email_lock:
            if self._default_email is None:
                user = await self.get_user(self.config.default_user_id)
                self._default_email = str(user.get("email") or "")
        return self._default_email or None

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Any = None,
        json: Any = None,
        acting_email: str | None = None,
        operation: str | None = None,
        idempotent: bool | None = None,
    ) -> OutboundResponse:
        """Send one API call; returns the 2xx response or raises the typed error."""
        method = method.upper()
        headers = CIMultiDict(
            {
                "Authorization": f"Token token={self.config.api_key.get_secret_value()}",
                "Accept": ACCEPT,
                "Content-Type": "application/json",
            }
        )
        if method not in ("GET", "HEAD"):
            email = await self.from_email(acting_email)
            if email:
                headers["From"] = email
        if not path.startswith("/"):
            path = "/" + path
        op = operation or f"{method} {_template(path)}"
        req = OutboundRequest(
            method=method,
            url=self.base_url + path,
            service="pagerduty",
            operation=op,
            headers=headers,
            params=_encode_params(params),
            json=json,
            timeout=self.config.timeout_seconds,
        )
        response = await self.pipeline.request(req, retry=self.retry, idempotent=idempotent, limiter=self.limiter)
        if not response.ok:
            raise error_from_response(response, op)
        return response

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self.request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise PagerDutyError(
                response.status,
                None,
                "the response is not JSON",
                operation=kwargs.get("operation") or f"{method} {_template(path)}",
            ) from None

    async def get(self, path: str, *, params: Any = None, operation: str | None = None) -> Any:
        return await self._call("GET", path, params=params, operation=operation)

    async def post(
        self,
        path: str,
        *,
        params: Any = None,
        json: Any = None,
        acting_email: str | None = None,
        operation: str | None = None,
        idempotent: bool = False,
    ) -> Any:
        return await self._call(
            "POST",
            path,
            params=params,
            json=json,
            acting_email=acting_email,
            operation=operation,
            idempotent=idempotent,
        )

    async def put(
        self,
        path: str,
        *,
        params: Any = None,
        json: Any = None,
        acting_email: str | None = None,
        operation: str | None = None,
    ) -> Any:
        return await self._call("PUT", path, params=params, json=json, acting_email=acting_email, operation=operation)

    async def delete(
        self, path: str, *, params: Any = None, acting_email: str | None = None, operation: str | None = None
    ) -> Any:
        return await self._call("DELETE", path, params=params, acting_email=acting_email, operation=operation)

    def paginate(
        self, path: str, key: str, params: Any = None, *, limit: int = PAGE_LIMIT, operation: str | None = None
    ) -> Paginator:
        """Iterate a classic-paginated collection; see ``Paginator`` for the 10,000 ceiling."""
        return Paginator(self, path, key, params, limit=limit, operation=operation)

    # -- users -----------------------------------------------------------------------
    async def get_user(self, user_id: str, *, include: Iterable[str] | None = None) -> dict:
        body = await self.get(
            f"/users/{_seg(user_id)}", params={"include[]": list(include or [])}, operation="GET /users/{id}"
        )
        return body["user"]

    async def list_users(self, query: str | None = None, *, team_ids: Iterable[str] | None = None) -> ResultList:
        params = {"query": query, "team_ids[]": list(team_ids) if team_ids else None}
        return await self.paginate("/users", "users", params, operation="GET /users").collect()

    async def find_user_by_email(self, email: str) -> dict | None:
        """The user whose email is ``email`` (case-insensitive), or None."""
        wanted = email.strip().casefold()
        async for user in self.paginate("/users", "users", {"query": email.strip()}, operation="GET /users"):
            if str(user.get("email") or "").casefold() == wanted:
                return user
        return None

    async def create_user(
        self,
        name: str,
        email: str,
        *,
        role: str | None = None,
        time_zone: str | None = None,
        job_title: str | None = None,
        description: str | None = None,
        acting_email: str | None = None,
    ) -> dict:
        user: dict[str, Any] = {"type": "user", "name": name, "email": email}
        for field_name, value in (
            ("role", role),
            ("time_zone", time_zone),
            ("job_title", job_title),
            ("description", description),
        ):
            if value is not None:
                user[field_name] = value
        body = await self.post("/users", json={"user": user}, acting_email=acting_email, operation="POST /users")
        return body["user"]

    # -- incidents ---------------------------------------------------------------------
    async def get_incident(self, incident_id: str, *, include: Iterable[str] | None = None) -> dict:
        body = await self.get(
            f"/incidents/{_seg(incident_id)}",
            params={"include[]": list(include or [])},
            operation="GET /incidents/{id}",
        )
        return body["incident"]

    async def list_incidents(
        self,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        statuses: Iterable[str] | None = None,
        service_ids: Iterable[str] | None = None,
        *,
        incident_key: str | None = None,
        date_range: str | None = None,
        team_ids: Iterable[str] | None = None,
        urgencies: Iterable[str] | None = None,
        sort_by: str | None = None,
        include: Iterable[str] | None = None,
    ) -> ResultList:
        """Incidents matching the filters (PagerDuty's default window is the last month
        unless ``since``/``until`` or ``date_range="all"`` say otherwise)."""
        params: dict[str, Any] = {
            "since": _iso(since) if since is not None else None,
            "until": _iso(until) if until is not None else None,
            "statuses[]": list(statuses) if statuses else None,
            "service_ids[]": list(service_ids) if service_ids else None,
            "team_ids[]": list(team_ids) if team_ids else None,
            "urgencies[]": list(urgencies) if urgencies else None,
            "incident_key": incident_key,
            "date_range": date_range,
            "sort_by": sort_by,
            "include[]": list(include) if include else None,
        }
        return await self.paginate("/incidents", "incidents", params, operation="GET /incidents").collect()

    async def find_open_incident_by_key(self, incident_key: str, service_id: str | None = None) -> dict | None:
        """The open (triggered or acknowledged) incident with ``incident_key``, if any."""
        found = await self.list_incidents(
            statuses=["triggered", "acknowledged"],
            service_ids=[service_id] if service_id else None,
            incident_key=incident_key,
            date_range="all",
        )
        matches = [i for i in found if i.get("incident_key") == incident_key]
        return matches[0] if matches else None

    async def create_incident(
        self,
        title: str,
        service_id: str,
        *,
        urgency: str | None = None,
        body_details: Any = None,
        incident_key: str | None = None,
        escalation_policy_id: str | None = None,
        assignee_ids: Iterable[str] | None = None,
        priority_id: str | None = None,
        conference_bridge: Mapping[str, str] | None = None,
        acting_email: str | None = None,
    ) -> dict:
        """Create an incident; returns it.

        With an ``incident_key``, PagerDuty rejects a second open incident with the
        same key on the service (400); the existing one is then fetched and returned.
        That also makes the call safe to retry after a timeout, so it is sent as
        idempotent. Without a key a lost answer is not retried (it could duplicate).
        ``body_details`` is sent as given: PagerDuty's guide shows a string, while its
        OpenAPI file types ``body.details`` as an object.
        """
        assignee_ids = list(assignee_ids or [])
        if escalation_policy_id and assignee_ids:
            raise ValueError("PagerDuty takes an escalation policy or assignees, not both")
        incident: dict[str, Any] = {"type": "incident", "title": title, "service": _ref("service", service_id)}
        if urgency is not None:
            incident["urgency"] = urgency
        if body_details is not None:
            incident["body"] = {"type": "incident_body", "details": body_details}
        if incident_key:
            incident["incident_key"] = incident_key
        if escalation_policy_id:
            incident["escalation_policy"] = _ref("escalation_policy", escalation_policy_id)
        if assignee_ids:
            incident["assignments"] = [{"assignee": _ref("user", uid)} for uid in assignee_ids]
        if priority_id:
            incident["priority"] = _ref("priority", priority_id)
        if conference_bridge:
            incident["conference_bridge"] = dict(conference_bridge)
        try:
            body = await self.post(
                "/incidents",
                json={"incident": incident},
                acting_email=acting_email,
                operation="POST /incidents",
                idempotent=bool(incident_key),
            )
        except PagerDutyError as exc:
            if exc.status != 400 or not incident_key:
                raise
            existing = await self.find_open_incident_by_key(incident_key, service_id)
            if existing is None:
                raise
            log.info(
                "incident_key_already_open",
                detail="using the existing incident",
                incident=existing.get("id"),
                service=service_id,
            )
            return existing
        return body["incident"]

    async def update_incident(
        self, incident_id: str, fields: Mapping[str, Any], *, acting_email: str | None = None
    ) -> dict:
        """``PUT /incidents/{id}`` with ``fields`` (status, priority, title, ...)."""
        incident = {"type": "incident_reference", **fields}
        body = await self.put(
            f"/incidents/{_seg(incident_id)}",
            json={"incident": incident},
            acting_email=acting_email,
            operation="PUT /incidents/{id}",
        )
        return body["incident"]

    async def acknowledge(self, incident_id: str, *, acting_email: str | None = None) -> dict:
        """Acknowledge; a PagerDutyError with code 1001/1002 means already resolved/acknowledged."""
        return await self.update_incident(incident_id, {"status": "acknowledged"}, acting_email=acting_email)

    async def resolve(
        self, incident_id: str, resolution: str | None = None, *, acting_email: str | None = None
    ) -> dict:
        """Resolve; a PagerDutyError with code 1001 means it was already resolved."""
        fields: dict[str, Any] = {"status": "resolved"}
        if resolution:
            fields["resolution"] = resolution
        return await self.update_incident(incident_id, fields, acting_email=acting_email)

    async def reassign(
        self,
        incident_id: str,
        escalation_policy_id: str | None = None,
        user_ids: Iterable[str] | None = None,
        *,
        acting_email: str | None = None,
    ) -> dict:
        """Reassign to an escalation policy or to users (one of the two)."""
        user_ids = list(user_ids or [])
        if bool(escalation_policy_id) == bool(user_ids):
            raise ValueError("reassign needs an escalation policy or users, exactly one of the two")
        if escalation_policy_id:
            fields: dict[str, Any] = {"escalation_policy": _ref("escalation_policy", escalation_policy_id)}
        else:
            fields = {"assignments": [{"assignee": _ref("user", uid)} for uid in user_ids]}
        return await self.update_incident(incident_id, fields, acting_email=acting_email)

    async def add_note(self, incident_id: str, content: str, *, acting_email: str | None = None) -> dict:
        """Add a note (not retried after a lost answer: a repeat would add it twice)."""
        body = await self.post(
            f"/incidents/{_seg(incident_id)}/notes",
            json={"note": {"content": content}},
            acting_email=acting_email,
            operation="POST /incidents/{id}/notes",
        )
        return body["note"]

    async def list_notes(self, incident_id: str) -> list[dict]:
        body = await self.get(f"/incidents/{_seg(incident_id)}/notes", operation="GET /incidents/{id}/notes")
        return list(body.get("notes") or [])

    async def list_log_entries(
        self,
        incident_id: str,
        since: datetime | str | None = None,
        *,
        until: datetime | str | None = None,
        is_overview: bool | None = None,
        include: Iterable[str] | None = None,
    ) -> ResultList:
        params = {
            "since": _iso(since) if since is not None else None,
            "until": _iso(until) if until is not None else None,
            "is_overview": is_overview,
            "include[]": list(include) if include else None,
        }
        return await self.paginate(
            f"/incidents/{_seg(incident_id)}/log_entries",
            "log_entries",
            params,
            operation="GET /incidents/{id}/log_entries",
        ).collect()

    async def create_responder_request(
        self,
        incident_id: str,
        requester_id: str,
        message: str,
        *,
        user_ids: Iterable[str] = (),
        escalation_policy_ids: Iterable[str] = (),
    ) -> dict:
        """Ask users and/or escalation policies to join (needs the coordinated_responding ability)."""
        targets = [{"responder_request_target": _ref("user", uid)} for uid in user_ids]
        targets += [{"responder_request_target": _ref("escalation_policy", ep)} for ep in escalation_policy_ids]
        if not targets:
            raise ValueError("a responder request needs at least one user or escalation policy")
        body = await self.post(
            f"/incidents/{_seg(incident_id)}/responder_requests",
            json={"requester_id": requester_id, "message": message, "responder_request_targets": targets},
            operation="POST /incidents/{id}/responder_requests",
        )
        return body["responder_request"]

    async def create_status_update(
        self,
        incident_id: str,
        message: str,
        *,
        subject: str | None = None,
        html_message: str | None = None,
        acting_email: str | None = None,
    ) -> dict:
        payload: dict[str, Any] = {"message": message}
        if subject is not None:
            payload["subject"] = subject
        if html_message is not None:
            payload["html_message"] = html_message
        body = await self.post(
            f"/incidents/{_seg(incident_id)}/status_updates",
            json=payload,
            acting_email=acting_email,
            operation="POST /incidents/{id}/status_updates",
        )
        return body["status_update"]

    # -- configuration objects -------------------------------------------------------------
    async def list_priorities(self) -> ResultList:
        return await self.paginate("/priorities", "priorities", operation="GET /priorities").collect()

    async def get_service(self, service_id: str, *, include: Iterable[str] | None = None) -> dict:
        body = await self.get(
            f"/services/{_seg(service_id)}", params={"include[]": list(include or [])}, operation="GET /services/{id}"
        )
        return body["service"]

    async def get_escalation_policy(self, policy_id: str, *, include: Iterable[str] | None = None) -> dict:
        body = await self.get(
            f"/escalation_policies/{_seg(policy_id)}",
            params={"include[]": list(include or [])},
            operation="GET /escalation_policies/{id}",
        )
        return body["escalation_policy"]

    async def list_abilities(self) -> list[str]:
        body = await self.get("/abilities", operation="GET /abilities")
        return list(body.get("abilities") or [])


__all__ = [
    "ACCEPT",
    "ALREADY_ACKNOWLEDGED",
    "ALREADY_MERGED",
    "ALREADY_RESOLVED",
    "PAGINATION_CEILING",
    "RATE_LIMIT_EXCEEDED",
    "PagerDutyAuthError",
    "PagerDutyClient",
    "PagerDutyError",
    "PagerDutyNotFound",
    "PagerDutyRateLimited",
    "Paginator",
    "ResultList",
    "error_from_response",
]
