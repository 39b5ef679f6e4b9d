"""The calls incident sync makes, in one place, over the core's clients on ``ctx``.

Everything here goes through ``ctx.pagerduty`` and ``ctx.servicenow`` (and so through
the outbound pipeline and its hooks); nothing opens an HTTP connection of its own.
Answers are normalised: reference fields as plain sys_ids, "not found" as None.
"""

from __future__ import annotations

from typing import Any

#: PagerDuty error codes that mean "already in the state you asked for".
ALREADY = {1001, 1002}


def status_of(exc: BaseException) -> int | None:
    return getattr(exc, "status", None)


def pd_code(exc: BaseException) -> int | None:
    code = getattr(exc, "code", None)
    if code is None:
        body = getattr(exc, "body", None) or getattr(exc, "error", None)
        if isinstance(body, dict):
            err = body.get("error", body)
            code = err.get("code") if isinstance(err, dict) else None
    try:
        return int(code) if code is not None else None
    except (TypeError, ValueError):
        return None


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
    async def pd_incident(self, iid: str) -> dict | None:
        try:
            body = await self.pd.get(f"/incidents/{iid}")
        except Exception as exc:
            if status_of(exc) == 404:
                return None
            raise
        return body.get("incident", body)

    async def pd_notes(self, iid: str) -> list[dict]:
        body = await self.pd.get(f"/incidents/{iid}/notes")
        return list(body.get("notes", []))

    async def pd_incident_log_entries(self, iid: str) -> list[dict]:
        body = await self.pd.get(f"/incidents/{iid}/log_entries", params={"limit": "100"})
        return list(body.get("log_entries", []))

    async def pd_create_incident(self, incident: dict, from_email: str | None) -> dict:
        body = await self.pd.post("/incidents", json={"incident": incident}, from_email=from_email)
        return body.get("incident", body)

    async def pd_update_incident(self, iid: str, changes: dict, from_email: str | None) -> dict:
        body = await self.pd.put(f"/incidents/{iid}", json={"incident": {"type": "incident_reference", **changes}},
                                 from_email=from_email)
        return body.get("incident", body)

    async def pd_add_note(self, iid: str, content: str, from_email: str | None) -> dict:
        body = await self.pd.post(f"/incidents/{iid}/notes", json={"note": {"content": content}}, from_email=from_email)
        return body.get("note", body)

    async def pd_find_incident_by_key(self, key: str, service_id: str | None = None) -> dict | None:
        params: dict[str, Any] = {"incident_key": key, "date_range": "all"}
        if service_id:
            params["service_ids[]"] = service_id
        body = await self.pd.get("/incidents", params=params)
        items = [i for i in body.get("incidents", []) if i.get("incident_key") == key]
        open_ = [i for i in items if i.get("status") != "resolved"]
        return (open_ or items or [None])[0]

    async def pd_user(self, uid: str) -> dict | None:
        try:
            body = await self.pd.get(f"/users/{uid}")
        except Exception as exc:
            if status_of(exc) == 404:
                return None
            raise
        return body.get("user", body)

    async def pd_user_by_email(self, email: str) -> dict | None:
        body = await self.pd.get("/users", params={"query": email})
        for user in body.get("users", []):
            if (user.get("email") or "").lower() == email.lower():
                return user
        return None

    async def pd_create_user(self, name: str, email: str, role: str) -> dict:
        body = await self.pd.post("/users", json={"user": {"type": "user", "name": name, "email": email, "role": role}},
                                  from_email=None)
        return body.get("user", body)

    async def pd_priorities(self) -> list[dict]:
        body = await self.pd.get("/priorities")
        return list(body.get("priorities", []))

    async def pd_log_entries(self, since: str, until: str) -> list[dict]:
        out: list[dict] = []
        offset = 0
        while True:
            body = await self.pd.get("/log_entries", params={"since": since, "until": until, "limit": "100",
                                                              "offset": str(offset)})
            page = body.get("log_entries", [])
            out.extend(page)
            if not body.get("more") or not page:
                return out
            offset += len(page)

    async def pd_exists(self, kind: str, pd_id: str) -> bool:
        path = {"service": "/services", "escalation_policy": "/escalation_policies", "user": "/users"}[kind]
        try:
            await self.pd.get(f"{path}/{pd_id}")
        except Exception as exc:
            if status_of(exc) == 404:
                return False
            raise
        return True

    # -- ServiceNow --------------------------------------------------------------
    async def sn_get(self, table: str, sys_id: str, fields: list[str] | None = None) -> dict | None:
        try:
            rows = await self.sn.list(table, f"sys_id={sys_id}", fields=fields, limit=1)
        except Exception as exc:
            if status_of(exc) == 404:
                return None
            raise
        return plain(rows[0]) if rows else None

    async def sn_query(self, table: str, query: str, fields: list[str] | None = None, *, limit: int | None = None,
                       page: int = 100) -> list[dict]:
        out: list[dict] = []
        offset = 0
        while True:
            size = page if limit is None else min(page, limit - len(out))
            rows = await self.sn.list(table, query, fields=fields, limit=size, offset=offset)
            out.extend(plain(r) for r in rows)
            if len(rows) < size or (limit is not None and len(out) >= limit):
                return out
            offset += len(rows)

    async def sn_insert(self, table: str, fields: dict) -> dict:
        return plain(await self.sn.create(table, fields))

    async def sn_update(self, table: str, sys_id: str, fields: dict) -> dict:
        return plain(await self.sn.update(table, sys_id, fields))

    async def sn_journal(self, sys_id: str, element: str = "work_notes") -> list[dict]:
        return await self.sn_query("sys_journal_field",
                                   f"element_id={sys_id}^element={element}^ORDERBYsys_created_on",
                                   ["sys_id", "sys_created_on", "sys_created_by", "element", "value"])
