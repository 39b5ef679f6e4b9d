"""A thin async client for PagerDuty's REST API v2: one typed method per operation the
features use (users, incidents, their notes and log entries, configuration objects).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import structlog

from .pagerduty_api import ACCEPT, PagerDutyApi, _seg
from .pagerduty_errors import (
    ALREADY_ACKNOWLEDGED,
    ALREADY_MERGED,
    ALREADY_RESOLVED,
    RATE_LIMIT_EXCEEDED,
    PagerDutyAuthError,
    PagerDutyError,
    PagerDutyNotFound,
    PagerDutyRateLimited,
    error_from_response,
)
from .pagerduty_paging import PAGE_LIMIT, PAGINATION_CEILING, Paginator, Params, ResultList, _iso

log = structlog.get_logger("dutybridge.pagerduty")


def _ref(kind: str, obj_id: str) -> dict[str, str]:
    return {"id": obj_id, "type": f"{kind}_reference"}


class PagerDutyClient(PagerDutyApi):
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

    Features call the typed methods; headers, the rate limiter and the pipeline live in
    ``PagerDutyApi`` (pagerduty_api.py), pagination in pagerduty_paging.py, the typed
    errors in pagerduty_errors.py.
    """

    def __repr__(self) -> str:
        return f"PagerDutyClient(api_url={self.base_url!r})"

    # -- users (get_user is PagerDutyApi's: the From header needs it) -----------------
    async def list_users(self, query: str | None = None, *, team_ids: Iterable[str] | None = None) -> ResultList:
        params = {"query": query, "team_ids[]": list(team_ids) if team_ids else None}
        return await self.paginate("/users", "users", params, operation="GET /users").collect()

    async def find_user_by_email(self, email: str) -> dict[str, Any] | None:
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
    ) -> dict[str, Any]:
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
    async def get_incident(self, incident_id: str, *, include: Iterable[str] | None = None) -> dict[str, Any]:
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

    async def find_open_incident_by_key(
        self, incident_key: str, service_id: str | None = None
    ) -> dict[str, Any] | None:
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
    ) -> dict[str, Any]:
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
    ) -> dict[str, Any]:
        """``PUT /incidents/{id}`` with ``fields`` (status, priority, title, ...)."""
        incident = {"type": "incident_reference", **fields}
        body = await self.put(
            f"/incidents/{_seg(incident_id)}",
            json={"incident": incident},
            acting_email=acting_email,
            operation="PUT /incidents/{id}",
        )
        return body["incident"]

    async def acknowledge(self, incident_id: str, *, acting_email: str | None = None) -> dict[str, Any]:
        """Acknowledge; a PagerDutyError with code 1001/1002 means already resolved/acknowledged."""
        return await self.update_incident(incident_id, {"status": "acknowledged"}, acting_email=acting_email)

    async def resolve(
        self, incident_id: str, resolution: str | None = None, *, acting_email: str | None = None
    ) -> dict[str, Any]:
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
    ) -> dict[str, Any]:
        """Reassign to an escalation policy or to users (one of the two)."""
        user_ids = list(user_ids or [])
        if bool(escalation_policy_id) == bool(user_ids):
            raise ValueError("reassign needs an escalation policy or users, exactly one of the two")
        if escalation_policy_id:
            fields: dict[str, Any] = {"escalation_policy": _ref("escalation_policy", escalation_policy_id)}
        else:
            fields = {"assignments": [{"assignee": _ref("user", uid)} for uid in user_ids]}
        return await self.update_incident(incident_id, fields, acting_email=acting_email)

    async def add_note(self, incident_id: str, content: str, *, acting_email: str | None = None) -> dict[str, Any]:
        """Add a note (not retried after a lost answer: a repeat would add it twice)."""
        body = await self.post(
            f"/incidents/{_seg(incident_id)}/notes",
            json={"note": {"content": content}},
            acting_email=acting_email,
            operation="POST /incidents/{id}/notes",
        )
        return body["note"]

    async def list_notes(self, incident_id: str) -> list[dict[str, Any]]:
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
    ) -> dict[str, Any]:
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
    ) -> dict[str, Any]:
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

    async def get_service(self, service_id: str, *, include: Iterable[str] | None = None) -> dict[str, Any]:
        body = await self.get(
            f"/services/{_seg(service_id)}", params={"include[]": list(include or [])}, operation="GET /services/{id}"
        )
        return body["service"]

    async def get_escalation_policy(self, policy_id: str, *, include: Iterable[str] | None = None) -> dict[str, Any]:
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
    "PAGE_LIMIT",
    "PAGINATION_CEILING",
    "RATE_LIMIT_EXCEEDED",
    "PagerDutyAuthError",
    "PagerDutyClient",
    "PagerDutyError",
    "PagerDutyNotFound",
    "PagerDutyRateLimited",
    "Paginator",
    "Params",
    "ResultList",
    "error_from_response",
]
