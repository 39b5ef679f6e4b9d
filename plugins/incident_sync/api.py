"""The calls incident sync makes, over the core's clients on ``ctx`` (so through the
outbound pipeline and its hooks), with answers normalised: sys_ids, "not found" as None."""

from __future__ import annotations

from typing import Any

from dutybridge.pagerduty import PagerDutyNotFound
from dutybridge.servicenow import Query, ServiceNowNotFound


def plain(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """A Table API record with reference fields reduced to their sys_id."""
    if record is None:
        return None
    out = {}
    for key, value in record.items():
        if isinstance(value, dict) and "value" in value:
            value = value.get("value")
        out[key] = "" if value is None else value
    return out


class Api:
    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx

    @property
    def pd(self) -> Any:
        return self.ctx.pagerduty

    @property
    def sn(self) -> Any:
        return self.ctx.servicenow

    # -- PagerDuty ---------------------------------------------------------------
    async def pd_incident(self, iid: str, include: list[str] | None = None) -> dict | None:
        try:
            return await self.pd.get_incident(iid, include=include)
        except PagerDutyNotFound:
            return None

    async def pd_notes(self, iid: str) -> list[dict]:
        return await self.pd.list_notes(iid)

    async def pd_incident_log_entries(self, iid: str) -> list[dict]:
        return list(await self.pd.list_log_entries(iid))

    async def pd_create_incident(self, incident: dict, from_email: str | None) -> dict:
        # Sent as built (not through create_incident's keyword form) so the 400 for a
        # duplicate incident_key reaches the engine, which links the open one itself.
        body = await self.pd.post(
            "/incidents",
            json={"incident": incident},
            acting_email=from_email,
            operation="POST /incidents",
            idempotent=bool(incident.get("incident_key")),
        )
        return body["incident"]

    async def pd_update_incident(self, iid: str, changes: dict, from_email: str | None) -> dict:
        return await self.pd.update_incident(iid, changes, acting_email=from_email)

    async def pd_add_note(self, iid: str, content: str, from_email: str | None) -> dict:
        return await self.pd.add_note(iid, content, acting_email=from_email)

    async def pd_find_incident_by_key(self, key: str, service_id: str | None = None) -> dict | None:
        return await self.pd.find_open_incident_by_key(key, service_id)

    async def pd_user(self, uid: str) -> dict | None:
        try:
            return await self.pd.get_user(uid)
        except PagerDutyNotFound:
            return None

    async def pd_user_by_email(self, email: str) -> dict | None:
        return await self.pd.find_user_by_email(email)

    async def pd_create_user(self, name: str, email: str, role: str) -> dict:
        return await self.pd.create_user(name, email, role=role)

    async def pd_priorities(self) -> list[dict]:
        return list(await self.pd.list_priorities())

    async def pd_log_entries(self, since: str, until: str) -> list[dict]:
        return list(
            await self.pd.paginate(
                "/log_entries", "log_entries", {"since": since, "until": until}, operation="GET /log_entries"
            ).collect()
        )

    async def pd_open_incidents(self) -> list[dict]:
        return list(await self.pd.list_incidents(statuses=["triggered", "acknowledged"], date_range="all"))

    async def pd_exists(self, kind: str, pd_id: str) -> bool:
        get = {
            "service": self.pd.get_service,
            "escalation_policy": self.pd.get_escalation_policy,
            "user": self.pd.get_user,
        }[kind]
        try:
            await get(pd_id)
        except PagerDutyNotFound:
            return False
        return True

    # -- ServiceNow --------------------------------------------------------------
    async def sn_get(self, table: str, sys_id: str, fields: list[str] | None = None) -> dict | None:
        try:
            return plain(await self.sn.get(table, sys_id, fields=fields))
        except ServiceNowNotFound:
            return None

    async def sn_query(
        self,
        table: str,
        query: Any,
        fields: list[str] | None = None,
        *,
        limit: int | None = None,
        order_by: str | list[str] | None = None,
    ) -> list[dict]:
        """Records matching ``query`` (a ``Query``, or a string built from trusted parts only)."""
        rows = await self.sn.list(table, query, fields=fields, limit=limit, order_by=order_by)
        return [plain(r) for r in rows]

    async def sn_insert(self, table: str, fields: dict) -> dict:
        return plain(await self.sn.insert(table, fields))

    async def sn_update(self, table: str, sys_id: str, fields: dict) -> dict:
        return plain(await self.sn.update(table, sys_id, fields))

    async def sn_journal(self, sys_id: str, element: str = "work_notes") -> list[dict]:
        rows = await self.sn_query(
            "sys_journal_field",
            Query().eq("element_id", sys_id).eq("element", element),
            ["sys_id", "sys_created_on", "sys_created_by", "element", "value"],
            order_by=["sys_created_on", "sys_id"],
        )
        return rows


def Q() -> Query:
    """A new encoded query; values from data go through it, never into a string."""
    return Query()
