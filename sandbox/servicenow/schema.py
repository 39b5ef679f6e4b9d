"""The tables the sandbox knows: columns, types, choice labels, hierarchy, ACLs.

A deliberately small slice of a real instance's dictionary: the columns the
integration reads or writes plus the ones a person looking at a record expects.
Every value is stored as a string, as ServiceNow's Table API returns it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

STRING = "string"
INTEGER = "integer"
BOOLEAN = "boolean"
DATETIME = "datetime"
REFERENCE = "reference"
JOURNAL = "journal"  # work_notes, comments: writes append to sys_journal_field
JOURNAL_LIST = "journal_list"  # comments_and_work_notes: read-only view of both

SYS_FIELDS = ("sys_id", "sys_created_on", "sys_created_by", "sys_updated_on", "sys_updated_by", "sys_mod_count")


@dataclass(frozen=True)
class Field:
    name: str
    kind: str = STRING
    ref: str | None = None  # referenced table, for REFERENCE
    choices: dict[str, str] | None = None  # value -> label
    default: str = ""


@dataclass
class Table:
    name: str
    parent: str | None = None
    fields: list[Field] = field(default_factory=list)
    display: str | None = None  # the column whose value is the record's display value
    number_prefix: str | None = None
    label: str = ""


def _f(
    name: str, kind: str = STRING, ref: str | None = None, choices: dict[str, str] | None = None, default: str = ""
) -> Field:
    return Field(name, kind, ref, choices, default)


IMPACT = {"1": "1 - High", "2": "2 - Medium", "3": "3 - Low"}
URGENCY = IMPACT
PRIORITY = {"1": "1 - Critical", "2": "2 - High", "3": "3 - Moderate", "4": "4 - Low", "5": "5 - Planning"}
INCIDENT_STATES = {"1": "New", "2": "In Progress", "3": "On Hold", "6": "Resolved", "7": "Closed", "8": "Canceled"}
# Security Incident Response (sn_si_incident), NIST stateful process definition.
SIR_STATES = {
    "10": "Draft",
    "16": "Analysis",
    "18": "Contain",
    "19": "Eradicate",
    "20": "Recover",
    "100": "Review",
    "3": "Closed",
    "7": "Cancelled",
}
HOLD_REASONS = {"1": "Awaiting Caller", "3": "Awaiting Problem", "4": "Awaiting Vendor", "5": "Awaiting Change"}
OPERATIONAL_STATUS = {
    "1": "Operational",
    "2": "Non-Operational",
    "3": "Repair in Progress",
    "4": "DR Standby",
    "5": "Ready",
    "6": "Retired",
}

# ServiceNow's default Priority data lookup (impact, urgency) -> priority.
PRIORITY_MATRIX = {
    ("1", "1"): "1",
    ("1", "2"): "2",
    ("2", "1"): "2",
    ("1", "3"): "3",
    ("2", "2"): "3",
    ("3", "1"): "3",
    ("2", "3"): "4",
    ("3", "2"): "4",
    ("3", "3"): "5",
}

_SYS = [
    _f("sys_id"),
    _f("sys_created_on", DATETIME),
    _f("sys_created_by"),
    _f("sys_updated_on", DATETIME),
    _f("sys_updated_by"),
    _f("sys_mod_count", INTEGER, default="0"),
]

_TASK = _SYS + [
    _f("number"),
    _f("sys_class_name"),
    _f("short_description"),
    _f("description"),
    _f("state", INTEGER, default="1"),
    _f("impact", INTEGER, choices=IMPACT, default="3"),
    _f("urgency", INTEGER, choices=URGENCY, default="3"),
    _f("priority", INTEGER, choices=PRIORITY, default="5"),
    _f("active", BOOLEAN, default="true"),
    _f("assignment_group", REFERENCE, ref="sys_user_group"),
    _f("assigned_to", REFERENCE, ref="sys_user"),
    _f("opened_by", REFERENCE, ref="sys_user"),
    _f("opened_at", DATETIME),
    _f("closed_by", REFERENCE, ref="sys_user"),
    _f("closed_at", DATETIME),
    _f("close_notes"),
    _f("cmdb_ci", REFERENCE, ref="cmdb_ci"),
    _f("business_service", REFERENCE, ref="cmdb_ci_service"),
    _f("correlation_id"),
    _f("correlation_display"),
    _f("work_notes", JOURNAL),
    _f("comments", JOURNAL),
    _f("comments_and_work_notes", JOURNAL_LIST),
    _f("work_notes_list"),
    _f("watch_list"),
    _f("reassignment_count", INTEGER, default="0"),
    _f("contact_type"),
    _f("escalation", INTEGER, default="0"),
    _f("parent", REFERENCE, ref="task"),
]

_INCIDENT_STATE = _f("state", INTEGER, choices=INCIDENT_STATES, default="1")
_SIR_STATE = _f("state", INTEGER, choices=SIR_STATES, default="10")

_CMDB = _SYS + [
    _f("name"),
    _f("sys_class_name"),
    _f("category"),
    _f("subcategory"),
    _f("short_description"),
    _f("assignment_group", REFERENCE, ref="sys_user_group"),
    _f("support_group", REFERENCE, ref="sys_user_group"),
    _f("managed_by", REFERENCE, ref="sys_user"),
    _f("owned_by", REFERENCE, ref="sys_user"),
    _f("operational_status", INTEGER, choices=OPERATIONAL_STATUS, default="1"),
    _f("ip_address"),
    _f("fqdn"),
]

TABLES: dict[str, Table] = {}


def _table(t: Table) -> None:
    TABLES[t.name] = t


_table(Table("task", fields=_TASK, display="number", number_prefix="TASK", label="Task"))
_table(
    Table(
        "incident",
        parent="task",
        display="number",
        number_prefix="INC",
        label="Incident",
        fields=[
            _INCIDENT_STATE,
            _f("incident_state", INTEGER, choices=INCIDENT_STATES, default="1"),
            _f("severity", INTEGER, choices=IMPACT, default="3"),
            _f("caller_id", REFERENCE, ref="sys_user"),
            _f("category", default="inquiry"),
            _f("subcategory"),
            _f("close_code"),
            _f("resolved_by", REFERENCE, ref="sys_user"),
            _f("resolved_at", DATETIME),
            _f("hold_reason", INTEGER, choices=HOLD_REASONS),
            _f("reopen_count", INTEGER, default="0"),
            _f("parent_incident", REFERENCE, ref="incident"),
            _f("notify", INTEGER, default="1"),
        ],
    )
)
_table(
    Table(
        "sn_si_incident",
        parent="task",
        display="number",
        number_prefix="SIR",
        label="Security Incident",
        fields=[
            _SIR_STATE,
            _f("category"),
            _f("subcategory"),
            _f("close_code"),
            _f("caller", REFERENCE, ref="sys_user"),
            _f("affected_user", REFERENCE, ref="sys_user"),
            _f("risk_score", INTEGER),
            _f("business_criticality", INTEGER),
            _f("contained", BOOLEAN, default="false"),
        ],
    )
)
_table(
    Table(
        "sys_user",
        display="name",
        label="User",
        fields=_SYS
        + [
            _f("user_name"),
            _f("first_name"),
            _f("last_name"),
            _f("name"),
            _f("email"),
            _f("phone"),
            _f("mobile_phone"),
            _f("title"),
            _f("department"),
            _f("time_zone"),
            _f("active", BOOLEAN, default="true"),
            _f("locked_out", BOOLEAN, default="false"),
            _f("manager", REFERENCE, ref="sys_user"),
        ],
    )
)
_table(
    Table(
        "sys_user_group",
        display="name",
        label="Group",
        fields=_SYS
        + [
            _f("name"),
            _f("description"),
            _f("manager", REFERENCE, ref="sys_user"),
            _f("email"),
            _f("type"),
            _f("parent", REFERENCE, ref="sys_user_group"),
            _f("active", BOOLEAN, default="true"),
        ],
    )
)
_table(
    Table(
        "sys_user_grmember",
        display=None,
        label="Group Member",
        fields=_SYS
        + [
            _f("group", REFERENCE, ref="sys_user_group"),
            _f("user", REFERENCE, ref="sys_user"),
        ],
    )
)
_table(Table("cmdb_ci", display="name", label="Configuration Item", fields=_CMDB))
_table(
    Table(
        "cmdb_ci_service",
        parent="cmdb_ci",
        display="name",
        label="Business Service",
        fields=[
            _f("service_classification", default="Business Service"),
            _f("busines_criticality", default="3 - less critical"),
            _f("used_for", default="Production"),
        ],
    )
)
_table(
    Table(
        "cmdb_ci_appl",
        parent="cmdb_ci",
        display="name",
        label="Application",
        fields=[
            _f("version"),
            _f("running_process"),
        ],
    )
)
_table(
    Table(
        "cmdb_ci_server",
        parent="cmdb_ci",
        display="name",
        label="Server",
        fields=[
            _f("host_name"),
            _f("os"),
            _f("os_version"),
        ],
    )
)
_table(
    Table(
        "cmdb_rel_type",
        display="name",
        label="CI Relationship Type",
        fields=_SYS
        + [
            _f("name"),
            _f("parent_descriptor"),
            _f("child_descriptor"),
        ],
    )
)
_table(
    Table(
        "cmdb_rel_ci",
        display=None,
        label="CI Relationship",
        fields=_SYS
        + [
            _f("parent", REFERENCE, ref="cmdb_ci"),
            _f("child", REFERENCE, ref="cmdb_ci"),
            _f("type", REFERENCE, ref="cmdb_rel_type"),
        ],
    )
)
_table(
    Table(
        "sys_journal_field",
        display=None,
        label="Journal Entry",
        fields=[
            _f("sys_id"),
            _f("sys_created_on", DATETIME),
            _f("sys_created_by"),
            _f("element_id"),
            _f("element"),
            _f("name"),
            _f("value"),
        ],
    )
)


def ancestors(table: str) -> list[str]:
    """``table`` and its parents, nearest first."""
    out = []
    name: str | None = table
    while name is not None:
        out.append(name)
        name = TABLES[name].parent
    return out


def is_descendant(child: str, parent: str) -> bool:
    return child in TABLES and parent in ancestors(child)


def _columns(table: str) -> dict[str, Field]:
    columns: dict[str, Field] = {}
    for name in reversed(ancestors(table)):  # root first; children override (e.g. state choices)
        for f in TABLES[name].fields:
            columns[f.name] = f
    return columns


ANCESTORS: dict[str, tuple[str, ...]] = {name: tuple(ancestors(name)) for name in TABLES}

# table -> {column name -> Field}, root table's columns first (the order responses use)
COLUMNS: dict[str, dict[str, Field]] = {name: _columns(name) for name in TABLES}

# Roles that may read / write a table (admin may do anything). Child tables use the
# nearest ancestor's entry when they have none of their own.
DEFAULT_ACL: dict[str, dict[str, frozenset[str]]] = {
    "task": {"read": frozenset({"itil"}), "write": frozenset({"itil"})},
    "incident": {"read": frozenset({"itil"}), "write": frozenset({"itil"})},
    "sn_si_incident": {
        "read": frozenset({"sn_si.analyst", "sn_si.admin"}),
        "write": frozenset({"sn_si.analyst", "sn_si.admin"}),
    },
    "sys_user": {"read": frozenset({"itil"}), "write": frozenset({"user_admin"})},
    "sys_user_group": {"read": frozenset({"itil"}), "write": frozenset({"user_admin"})},
    "sys_user_grmember": {"read": frozenset({"itil"}), "write": frozenset({"user_admin"})},
    "cmdb_ci": {"read": frozenset({"itil"}), "write": frozenset({"itil_admin", "asset"})},
    "cmdb_rel_type": {"read": frozenset({"itil"}), "write": frozenset()},
    "cmdb_rel_ci": {"read": frozenset({"itil"}), "write": frozenset({"itil_admin", "asset"})},
    "sys_journal_field": {"read": frozenset({"itil"}), "write": frozenset()},
}

# The v7 PagerDuty app's columns, for seeds and tests that want them.
PD_APP_FIELDS = {
    "sys_user": ["x_pd_integration_pagerduty_id"],
    "sys_user_group": [
        "x_pd_integration_pagerduty_escalation",
        "x_pd_integration_pagerduty_service",
        "x_pd_integration_pagerduty_webhook",
    ],
    "cmdb_ci": ["x_pd_integration_pagerduty_service", "x_pd_integration_pagerduty_webhook"],
    "incident": ["x_pd_integration_incident"],
}
