"""What incident sync compares across a link: each side's tracked fields as plain
values, read from an incident, a record or a webhook's copy of one."""

from __future__ import annotations

import string
from typing import Any

PLUGIN = "incident_sync"
KIND = "incident"
TABLES = ("incident", "sn_si_incident")
#: The ServiceNow fields whose changes are synced (and kept in the snapshot).
TRACK_SN = ("state", "assignment_group", "assigned_to", "priority")
#: ``Link.state`` key: the ServiceNow record's sys_mod_count up to which every change is
#: synced or was our own write (see ``links.sn_change_synced``).
SN_SEEN = "sn_seen"


def pd_view(inc: dict[str, Any]) -> dict[str, Any]:
    """The PagerDuty fields incident sync mirrors, as compared across events."""
    acks = [a.get("acknowledger") or {} for a in inc.get("acknowledgements") or []]
    users = [a.get("id") for a in acks if a.get("type") in ("user_reference", "user")]
    prio = inc.get("priority") or {}
    return {
        "status": inc.get("status"),
        "ep": (inc.get("escalation_policy") or {}).get("id"),
        "assignees": [a["assignee"]["id"] for a in inc.get("assignments") or [] if a.get("assignee")],
        "priority": prio.get("summary") or prio.get("name"),
        "urgency": inc.get("urgency"),
        "ack_by": users[-1] if users else None,
    }


def incident_data(data: object, pd_id: str) -> bool:
    """Whether a V3 webhook's ``event.data`` is the incident ``pd_id`` itself (not a note)."""
    return isinstance(data, dict) and data.get("type") == "incident" and data.get("id") == pd_id


def data_view(data: dict[str, Any]) -> dict[str, Any]:
    """``pd_view``'s fields that a V3 webhook's incident data carries (not who acknowledged)."""
    prio = data.get("priority") or {}
    return {
        "status": data.get("status"),
        "ep": (data.get("escalation_policy") or {}).get("id"),
        "assignees": [a["id"] for a in data.get("assignees") or [] if isinstance(a, dict) and a.get("id")],
        "priority": prio.get("summary") or prio.get("name"),
        "urgency": data.get("urgency"),
    }


def mod_count_of(rec: dict[str, Any] | None) -> int | None:
    """A record's sys_mod_count as a number (None when it has none)."""
    value = str((rec or {}).get("sys_mod_count") or "")
    # isascii(): isdigit() alone takes Unicode digits, which int() would read as numbers.
    return int(value) if value.isascii() and value.isdigit() else None


def sn_view(rec: dict[str, Any]) -> dict[str, str]:
    """The ServiceNow fields incident sync mirrors (as strings), and the record's version."""
    view = {k: str(rec.get(k) or "") for k in TRACK_SN}
    view["sys_updated_on"] = str(rec.get("sys_updated_on") or "")
    view["sys_mod_count"] = str(rec.get("sys_mod_count") or "0")
    return view


class _Fmt(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return ""


def render(template: str, values: dict[str, Any]) -> str:
    return template.format_map(_Fmt({k: ("" if v is None else v) for k, v in values.items()}))


def render_lines(template: str, values: dict) -> str:
    """``render``, leaving out each line whose placeholders all render empty (an incident
    without ``html_url`` gets no dangling "PagerDuty incident: " line), and blank lines
    left at the end."""
    kept = []
    for line in template.split("\n"):
        names = [name for _, name, _, _ in string.Formatter().parse(line) if name is not None]
        if names and all(values.get(name) in (None, "") for name in names):
            continue
        kept.append(render(line, values))
    return "\n".join(kept).rstrip()
