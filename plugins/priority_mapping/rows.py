"""The priority mapping table, kept as store links: (assignment group, ServiceNow priority
or "" for the group's default) -> PagerDuty escalation policy, with an active flag.

Store format: kind ``priority_map``; ``pd_id`` and ``sn_id`` both the row key
``<group sys_id>|<priority>`` (the store keeps one link per ``(kind, pd_id)``, and several
rows may name one policy, so the policy cannot be the key); ``state = {"group",
"group_name", "priority", "escalation_policy", "active", "source", "sn_sys_id"}``.
``source`` is ``cli``, ``migration`` or ``servicenow`` (mirrored rows, replaced by the
next mirror). No table of its own: no migration.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from dutybridge.store.base import Link, Store

KIND = "priority_map"
GROUP_KIND = "group"  # incident_sync's group links (plugins/incident_sync/mapping.py)
PRIORITY = re.compile(r"^[0-9]{1,3}$")
SYS_ID = re.compile(r"^[0-9a-f]{32}$")
EP_ID = re.compile(r"^[A-Z0-9]{2,20}$")  # PagerDuty ids: upper-case letters and digits


@dataclass
class Row:
    group: str
    priority: str  # "" is the group's default
    escalation_policy: str
    active: bool = True
    group_name: str = ""
    source: str = "cli"
    sn_sys_id: str = ""

    @property
    def key(self) -> str:
        return row_key(self.group, self.priority)

    def state(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "group_name": self.group_name,
            "priority": self.priority,
            "escalation_policy": self.escalation_policy,
            "active": self.active,
            "source": self.source,
            "sn_sys_id": self.sn_sys_id,
        }


def row_key(group: str, priority: str | None) -> str:
    return f"{group}|{priority or ''}"


def normalise_priority(value: str | None) -> str:
    """ "" for the default row (None, "", "default"); else the priority digits; ValueError otherwise."""
    text = (value or "").strip()
    if text.lower() in ("", "default"):
        return ""
    # ServiceNow displays "1 - Critical"; the value is the leading number.
    text = text.split(" ", 1)[0]
    if not PRIORITY.match(text):
        raise ValueError(f"priority {value!r}: expected a ServiceNow priority value such as 1 .. 5, or 'default'")
    return text


def _row(link: Link) -> Row:
    st = link.state or {}
    return Row(
        group=str(st.get("group") or link.sn_id.split("|", 1)[0]),
        priority=str(st.get("priority") or ""),
        escalation_policy=str(st.get("escalation_policy") or ""),
        active=bool(st.get("active", True)),
        group_name=str(st.get("group_name") or ""),
        source=str(st.get("source") or "cli"),
        sn_sys_id=str(st.get("sn_sys_id") or ""),
    )


class Rows:
    """The table over ``ctx.store``."""

    def __init__(self, store: Store):
        self.store = store

    async def all(self, group: str | None = None) -> list[Row]:
        rows = [_row(lk) for lk in await self.store.list_links(KIND)]
        if group:
            rows = [r for r in rows if r.group == group]
        return sorted(rows, key=lambda r: (r.group_name or r.group, r.group, r.priority == "", r.priority))

    async def get(self, group: str, priority: str | None) -> Row | None:
        link = await self.store.get_link(KIND, pd_id=row_key(group, priority))
        return _row(link) if link is not None else None

    async def put(self, row: Row) -> Row:
        await self.store.put_link(Link(kind=KIND, pd_id=row.key, sn_id=row.key, state=row.state()))
        return row

    async def remove(self, group: str, priority: str | None) -> bool:
        return await self.store.delete_link(KIND, row_key(group, priority))

    async def provisioned_policy(self, group: str) -> str:
        """The group's escalation policy as incident_sync's group links have it ("" if none)."""
        link = await self.store.get_link(GROUP_KIND, sn_id=group)
        if link is None:
            return ""
        return str((link.state or {}).get("escalation_policy") or "")

    async def choose(self, group: str, priority: str | None) -> tuple[str, str]:
        """(escalation policy, why): the active row for (group, priority), else the group's
        active default row, else its provisioned policy; ("", "no row") when none."""
        prio = (priority or "").strip()
        if prio:
            exact = await self.get(group, prio)
            if exact is not None and exact.active and exact.escalation_policy:
                return exact.escalation_policy, f"row {group}|{prio}"
        default = await self.get(group, "")
        if default is not None and default.active and default.escalation_policy:
            return default.escalation_policy, f"default row of {group}"
        provisioned = await self.provisioned_policy(group)
        if provisioned:
            return provisioned, f"provisioned policy of {group}"
        return "", "no row"
