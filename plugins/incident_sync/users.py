"""Acting users across the two systems, matched by email and remembered as ``user`` links."""

from __future__ import annotations

import time
from typing import Any

import structlog

from dutybridge.store.base import Link, LinkConflictError

from .api import Q

log = structlog.get_logger("dutybridge.incident_sync")

SN_USER_FIELDS = ["sys_id", "user_name", "name", "email", "first_name", "last_name", "active"]
#: Seconds a lookup that found nobody is believed before it is asked again.
MISSING_TTL = 300.0
#: Seconds a user link read from the store is used before it is read again.
LINK_TTL = 300.0


class Users:
    """Acting users across the two systems, matched by email.

    A ServiceNow user and a PagerDuty user are the same person when their emails match
    (case-insensitively), or when the v7 app's ``x_pd_integration_pagerduty_id`` says so.
    Found pairs are kept in the store (kind ``user``) so the next lookup costs nothing.
    Users read are kept in memory until the configuration is reloaded; a stored pair is
    believed for ``LINK_TTL`` seconds (provisioning may change it in the store) and a lookup
    that found nobody for ``MISSING_TTL`` (the person may get an account), so neither costs a
    call on every sync.
    """

    def __init__(self, engine: Any, clock=time.monotonic) -> None:
        self.engine = engine
        self._sn: dict[str, dict] = {}  # sys_id -> sys_user
        self._sn_by_name: dict[str, dict] = {}
        self._pd: dict[str, dict] = {}
        self._missing: dict[tuple[str, str], float] = {}  # (lookup, key) -> when to ask again
        self._links: dict[tuple[str, str], tuple[str, float]] = {}  # ("pd"|"sn", id) -> (other id, until)
        self._clock = clock

    def clear(self) -> None:
        self._sn.clear()
        self._sn_by_name.clear()
        self._pd.clear()
        self._missing.clear()
        self._links.clear()

    async def _linked(self, side: str, key: str) -> str | None:
        """The other side's id of the user link with ``side`` id ``key`` (store, remembered)."""
        known = self._links.get((side, key))
        if known is not None and self._clock() < known[1]:
            return known[0]
        if self.store is None:
            return None
        link = await (
            self.store.get_link("user", pd_id=key) if side == "pd" else self.store.get_link("user", sn_id=key)
        )
        if link is None:
            self._links.pop((side, key), None)
            return None
        self._remember_link(link.pd_id, link.sn_id)
        return link.sn_id if side == "pd" else link.pd_id

    def _remember_link(self, pd_id: str, sn_id: str) -> None:
        until = self._clock() + LINK_TTL
        self._links[("pd", pd_id)] = (sn_id, until)
        self._links[("sn", sn_id)] = (pd_id, until)

    def _known_missing(self, lookup: str, key: str) -> bool:
        until = self._missing.get((lookup, key))
        if until is None:
            return False
        if self._clock() < until:
            return True
        del self._missing[(lookup, key)]
        return False

    def _found_nobody(self, lookup: str, key: str) -> None:
        self._missing[(lookup, key)] = self._clock() + MISSING_TTL

    @property
    def api(self) -> Any:
        return self.engine.api

    @property
    def store(self) -> Any:
        return self.engine.ctx.store

    # -- ServiceNow users --------------------------------------------------------
    def _fields(self) -> list[str]:
        conf = self.engine.conf
        return SN_USER_FIELDS + ([conf.v7_user_field] if conf.v7_fields else [])

    def _remember(self, row: dict | None) -> dict | None:
        if row:
            self._sn[row["sys_id"]] = row
            if row.get("user_name"):
                self._sn_by_name[row["user_name"]] = row
        return row

    async def sn_user(self, sys_id: str | None) -> dict | None:
        if not sys_id:
            return None
        if sys_id not in self._sn and not self._known_missing("sn", sys_id):
            if self._remember(await self.api.sn_get("sys_user", sys_id, self._fields())) is None:
                self._found_nobody("sn", sys_id)
        return self._sn.get(sys_id)

    async def sn_user_by_name(self, user_name: str | None) -> dict | None:
        if not user_name:
            return None
        if user_name not in self._sn_by_name and not self._known_missing("sn_name", user_name):
            rows = await self.api.sn_query("sys_user", Q().eq("user_name", user_name), self._fields(), limit=1)
            if self._remember(rows[0] if rows else None) is None:
                self._found_nobody("sn_name", user_name)
        return self._sn_by_name.get(user_name)

    async def sn_user_by_email(self, email: str) -> dict | None:
        if self._known_missing("sn_email", email.lower()):
            return None
        rows = await self.api.sn_query(
            "sys_user", Q().eq("email", email).eq("active", True), self._fields(), limit=1, order_by="sys_id"
        )
        if not rows:
            self._found_nobody("sn_email", email.lower())
        return self._remember(rows[0] if rows else None)

    async def display_name(self, user_name: str | None) -> str:
        user = await self.sn_user_by_name(user_name)
        return (user or {}).get("name") or user_name or "ServiceNow"

    # -- PagerDuty users ---------------------------------------------------------
    async def pd_user(self, uid: str | None) -> dict | None:
        if not uid:
            return None
        if uid not in self._pd and not self._known_missing("pd", uid):
            user = await self.api.pd_user(uid)
            if user is None:
                self._found_nobody("pd", uid)
            else:
                self._pd[uid] = user
        return self._pd.get(uid)

    async def _link(self, pd_id: str, sn_id: str, email: str) -> None:
        if self.store is None:
            return
        try:
            await self.store.put_link(Link(kind="user", pd_id=pd_id, sn_id=sn_id, state={"email": email.lower()}))
            self._remember_link(pd_id, sn_id)
        except LinkConflictError:
            log.info(
                "user_link_not_stored",
                reason="the ServiceNow user is linked to another PagerDuty user",
                pd_id=pd_id,
                sn_id=sn_id,
            )

    async def sn_for_pd(self, uid: str | None) -> str | None:
        """The sys_id of the ServiceNow user who is PagerDuty user ``uid``, or None."""
        if not uid:
            return None
        linked = await self._linked("pd", uid)
        if linked is not None:
            return linked
        conf = self.engine.conf
        if conf.v7_fields and not self._known_missing("sn_v7", uid):
            rows = await self.api.sn_query("sys_user", Q().eq(conf.v7_user_field, uid), self._fields(), limit=1)
            if rows:
                self._remember(rows[0])
                await self._link(uid, rows[0]["sys_id"], rows[0].get("email") or "")
                return rows[0]["sys_id"]
            self._found_nobody("sn_v7", uid)
        user = await self.pd_user(uid)
        email = (user or {}).get("email")
        if not email:
            return None
        row = await self.sn_user_by_email(email)
        if row is None:
            return None
        await self._link(uid, row["sys_id"], email)
        return row["sys_id"]

    async def pd_for_sn(self, sys_id: str | None, *, create: bool = False) -> str | None:
        """The PagerDuty user id of ServiceNow user ``sys_id``; created when ``create`` and none has the email."""
        if not sys_id:
            return None
        linked = await self._linked("sn", sys_id)
        if linked is not None:
            return linked
        row = await self.sn_user(sys_id)
        if row is None:
            return None
        conf = self.engine.conf
        if conf.v7_fields and row.get(conf.v7_user_field):
            uid = str(row[conf.v7_user_field])
            if await self.pd_user(uid) is not None:
                await self._link(uid, sys_id, row.get("email") or "")
                return uid
        email = row.get("email") or ""
        if not email:
            return None
        if not create and self._known_missing("pd_email", email.lower()):
            return None
        user = await self.api.pd_user_by_email(email)
        if user is None and create:
            name = row.get("name") or " ".join(p for p in (row.get("first_name"), row.get("last_name")) if p) or email
            user = await self.api.pd_create_user(name, email, conf.new_user_role)
            log.info("pd_user_created", pd_user=user.get("id"), email=email)
        if user is None:
            self._found_nobody("pd_email", email.lower())
            return None
        self._pd[user["id"]] = user
        await self._link(user["id"], sys_id, email)
        return user["id"]

    async def from_for_user_name(self, user_name: str | None, *, create: bool = False) -> str | None:
        """The email to send in ``From`` for the ServiceNow user ``user_name``: theirs when they
        are a PagerDuty user, else None (the client then uses the default user's)."""
        row = await self.sn_user_by_name(user_name)
        if row is None:
            return None
        return await self.from_for_sys_id(row["sys_id"], create=create)

    async def from_for_sys_id(self, sys_id: str | None, *, create: bool = False) -> str | None:
        uid = await self.pd_for_sn(sys_id, create=create)
        if uid is None:
            return None
        user = await self.pd_user(uid)
        return (user or {}).get("email") or None
