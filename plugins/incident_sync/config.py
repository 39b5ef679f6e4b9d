"""The ``[plugins.incident_sync]`` section: the v7 app's "Integration Behavior" incident settings,
with the app's defaults, plus what dutybridge adds (polling, loop bound, static links).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from dutybridge.config import Section

_PD_ID = re.compile(r"^[A-Z0-9]{2,20}$")
_STATE = re.compile(r"^-?[0-9]{1,4}$")  # ASCII: \\d takes other scripts' digits too
SN_PRIORITIES = ("1", "2", "3", "4", "5")


def _pd_id(value: str, what: str) -> str:
    if value and not _PD_ID.match(value):
        raise ValueError(f"expected a PagerDuty {what} id like PXXXXXX, found {value!r}")
    return value


def _state(value: str) -> str:
    if not _STATE.match(value):
        raise ValueError(f'expected an integer state value like "6", found {value!r}')
    return value


class LinkSpec(Section):
    """A ServiceNow group or CI and the PagerDuty service / escalation policy it maps to."""

    group: str = Field("", description="ServiceNow assignment group, by name or sys_id.")
    ci: str = Field(
        "", description="ServiceNow configuration item, by name or sys_id (mapping mode cis_and_assignment_groups)."
    )
    service: str = Field("", description="PagerDuty service id incidents are triggered on.")
    escalation_policy: str = Field("", description="PagerDuty escalation policy id (the group's default).")

    @field_validator("service")
    @classmethod
    def _service(cls, v: str) -> str:
        return _pd_id(v, "service")

    @field_validator("escalation_policy")
    @classmethod
    def _ep(cls, v: str) -> str:
        return _pd_id(v, "escalation policy")

    @model_validator(mode="after")
    def _shape(self) -> LinkSpec:
        if bool(self.group) == bool(self.ci):
            raise ValueError("a link names exactly one of group or ci")
        if not (self.service or self.escalation_policy):
            raise ValueError("a link needs a service, an escalation_policy, or both")
        if self.ci and not self.service:
            raise ValueError("a ci link needs a service (CIs map to PagerDuty services)")
        return self


class ServiceOption(Section):
    """Per-service choices, as on the v7 extension of one PagerDuty service."""

    service: str = Field(description="PagerDuty service id.")
    sync_option: Literal["all", "manual"] | None = Field(None, description="all or manual for this service.")
    incident_type: Literal["incident", "security_incident"] | None = Field(
        None, description="incident or security_incident for this service."
    )

    @field_validator("service")
    @classmethod
    def _service(cls, v: str) -> str:
        if not v:
            raise ValueError("a PagerDuty service id is required")
        return _pd_id(v, "service")


def csv(text: str) -> list[str]:
    """``"6, 7, 8"`` -> ``["6", "7", "8"]``."""
    return [part.strip() for part in text.split(",") if part.strip()]


def pairs(text: str) -> list[tuple[str, str]]:
    """``"P1=1, P2=2"`` -> ``[("P1", "1"), ("P2", "2")]``; ValueError names the bad item."""
    out = []
    for item in csv(text):
        left, sep, right = item.partition("=")
        if not sep or not left.strip() or not right.strip():
            raise ValueError(f"expected items like A=B separated by commas, found {item!r}")
        out.append((left.strip(), right.strip()))
    lefts = [a for a, _ in out]
    dup = next((a for a in lefts if lefts.count(a) > 1), None)
    if dup is not None:
        raise ValueError(f"{dup!r} is listed twice")
    return out


# Lists and maps are written as short strings: the example file comments each key out on
# one line, which a multi-line TOML array would not survive.
class IncidentSyncConfig(Section):
    """Incident sync: PagerDuty <-> ServiceNow incidents, the whole lifecycle, both ways."""

    mapping_mode: Literal["assignment_groups", "cis_and_assignment_groups"] = Field(
        "assignment_groups",
        description="'Choose ServiceNow to PagerDuty mapping': assignment_groups (groups map to a service and an "
        "escalation policy) or cis_and_assignment_groups (CIs map to services, groups to escalation policies).",
    )
    links: list[LinkSpec] = Field(
        default_factory=list,
        description='Static links, e.g. [{ group = "Database", service = "PSVCDB1", escalation_policy = "PEPDB01" }]; '
        'a CI: { ci = "payments-api", service = "PSVCDB1" }.',
    )
    sync_option: Literal["all", "manual"] = Field(
        "all",
        description="'Sync options' default: all (every new PagerDuty incident opens a ServiceNow incident) or manual "
        "(only those someone asks for: custom incident action or `dutybridge incident sync PD_ID`).",
    )
    incident_type: Literal["incident", "security_incident"] = Field(
        "incident", description="'Incident type' default: incident, or security_incident (table sn_si_incident)."
    )
    service_options: list[ServiceOption] = Field(
        default_factory=list,
        description='Per-service overrides, e.g. [{ service = "PSVCNET", sync_option = "manual", incident_type = "security_incident" }].',
    )
    trigger_priorities: str = Field(
        "1, 2",
        description="ServiceNow priorities whose new incidents trigger PagerDuty incidents (the app: 1 - Critical and 2 - High).",
    )
    resolved_state: str = Field("6", description="'Incident state value to use when PagerDuty resolves an incident'.")
    in_progress_state: str = Field(
        "2",
        description="State written when PagerDuty acknowledges; in it, with an assignee, a ServiceNow incident acknowledges in PagerDuty.",
    )
    reopened_state: str = Field("2", description="State written when PagerDuty reopens a resolved incident.")
    done_states: str = Field(
        "6, 7, 8",
        description="States at which a ServiceNow incident counts as resolved and resolves its PagerDuty incident (6 and above: done).",
    )
    security_resolved_state: str = Field(
        "3", description="Security incidents: the state written when PagerDuty resolves (3 Closed)."
    )
    security_in_progress_state: str = Field(
        "16", description="Security incidents: the state written when PagerDuty acknowledges (16 Analysis)."
    )
    security_reopened_state: str = Field(
        "16", description="Security incidents: the state written when PagerDuty reopens."
    )
    security_done_states: str = Field(
        "3, 7", description="Security incidents: states that resolve the PagerDuty incident."
    )
    close_code: str = Field("Solved (Permanently)", description="close_code written when PagerDuty resolves.")
    close_notes: str = Field(
        "Resolved in PagerDuty by {user}.",
        description="close_notes written when PagerDuty resolves; {user} is who resolved, {resolution} their note.",
    )
    resolve_if_unmapped_group: bool = Field(
        False,
        description="'Resolve PagerDuty incident if the ServiceNow incident is assigned to a group that doesn't exist "
        "in PagerDuty' (the link is then marked unlinked).",
    )
    create_missing_users: bool = Field(
        False,
        description="'Create a new PagerDuty user if one is not found with the ServiceNow user's email' (may affect billing).",
    )
    new_user_role: Literal["limited_user", "user", "observer", "admin"] = Field(
        "limited_user",
        description="Base role of PagerDuty users created by create_missing_users (limited_user is Responder).",
    )
    assign_on_ack_only: bool = Field(
        False,
        description="'Do not assign the ServiceNow incident until a PagerDuty user has acknowledged the incident'.",
    )
    caller: str = Field(
        "",
        description="caller_id of incidents opened from PagerDuty (user_name or sys_id); empty: the [servicenow] integration user.",
    )
    priorities: str = Field(
        "P1=1, P2=2, P3=3, P4=4, P5=5",
        description="PagerDuty priority name = ServiceNow priority (1 Critical .. 5 Planning), used both ways.",
    )
    urgencies: str = Field(
        "high=2, low=4",
        description="PagerDuty urgency = ServiceNow priority, for incidents without a PagerDuty priority.",
    )
    servicenow_urgencies: str = Field(
        "1=high, 2=high, 3=low, 4=low, 5=low",
        description="ServiceNow priority = urgency of the PagerDuty incident it triggers or updates.",
    )
    impact_urgency: str = Field(
        "1=1/1, 2=1/2, 3=2/2, 4=2/3, 5=3/3",
        description="ServiceNow priority = impact/urgency written to get it (the inverse of the Priority data lookup).",
    )
    pagerduty_body: str = Field(
        "{description}",
        description="'Customize PagerDuty Incident Body': incident columns in braces, {work_notes} for the latest work note.",
    )
    servicenow_description: str = Field(
        "{details}\n\nPagerDuty incident: {html_url}",
        description="description of incidents opened from PagerDuty: {details} (the incident body), {title}, {html_url}, {service}.",
    )
    sync_work_notes: bool = Field(True, description="Copy work notes to PagerDuty notes and notes to work notes.")
    poll_interval_seconds: float = Field(
        60.0, ge=0, description="Reconciliation: poll both sides this often, so a lost webhook still syncs (0: off)."
    )
    poll_overlap_seconds: float = Field(
        30.0, ge=0, description="Each poll re-reads this much before its watermark (clock skew, one-second timestamps)."
    )
    recheck_seconds: float = Field(
        2.0,
        ge=0,
        description="For doorbells without sys_mod_count (older business rules), keyed by the second: this long "
        "after handling such a change the record is read once more, in case a second change in the "
        "same second was dropped as a duplicate (0: off; the poll still catches it). Also the wait before a "
        "change that PagerDuty's resolved incident held back is read again.",
    )
    max_reassignments: int = Field(
        6,
        ge=1,
        description="Loop bound: group/escalation policy changes synced per incident within reassignment_window_seconds; "
        "beyond it assignment stops syncing for that incident and a warning is logged.",
    )
    reassignment_window_seconds: float = Field(3600.0, gt=0, description="The window of max_reassignments.")
    v7_fields: bool = Field(
        False,
        description="Read the v7 app's x_pd_integration_* fields for links (at start and each poll) and write the "
        "incident's PagerDuty id into v7_incident_field (operators migrating from the app).",
    )
    v7_incident_field: str = Field(
        "x_pd_integration_incident", description="Incident column holding the PagerDuty incident id."
    )
    v7_user_field: str = Field(
        "x_pd_integration_pagerduty_id", description="sys_user column holding the PagerDuty user id."
    )
    v7_group_service_field: str = Field(
        "x_pd_integration_pagerduty_service", description="sys_user_group column holding the PagerDuty service id."
    )
    v7_group_escalation_field: str = Field(
        "x_pd_integration_pagerduty_escalation", description="sys_user_group column holding the escalation policy id."
    )
    v7_ci_service_field: str = Field(
        "x_pd_integration_pagerduty_service", description="cmdb_ci column holding the PagerDuty service id."
    )

    @field_validator(
        "resolved_state",
        "in_progress_state",
        "reopened_state",
        "security_resolved_state",
        "security_in_progress_state",
        "security_reopened_state",
    )
    @classmethod
    def _states(cls, v: str) -> str:
        return _state(v)

    @field_validator("done_states", "security_done_states")
    @classmethod
    def _state_lists(cls, v: str) -> str:
        items = csv(v)
        if not items:
            raise ValueError("at least one state is needed")
        for item in items:
            _state(item)
        return v

    @field_validator("trigger_priorities")
    @classmethod
    def _trigger(cls, v: str) -> str:
        for item in csv(v):
            if item not in SN_PRIORITIES:
                raise ValueError(f"expected ServiceNow priorities 1..5 separated by commas, found {item!r}")
        return v

    @field_validator("priorities", "urgencies")
    @classmethod
    def _to_sn_priority(cls, v: str) -> str:
        for left, right in pairs(v):
            if right not in SN_PRIORITIES:
                raise ValueError(f"{left}={right}: expected a ServiceNow priority 1..5 after '='")
        return v

    @field_validator("urgencies")
    @classmethod
    def _urgency_names(cls, v: str) -> str:
        for left, _ in pairs(v):
            if left not in ("high", "low"):
                raise ValueError(f"{left!r}: expected the PagerDuty urgency high or low before '='")
        return v

    @field_validator("servicenow_urgencies")
    @classmethod
    def _sn_urgencies(cls, v: str) -> str:
        for left, right in pairs(v):
            if left not in SN_PRIORITIES or right not in ("high", "low"):
                raise ValueError(f"{left}={right}: expected a ServiceNow priority 1..5 = high or low")
        return v

    @field_validator("impact_urgency")
    @classmethod
    def _impact_urgency(cls, v: str) -> str:
        for left, right in pairs(v):
            impact, sep, urgency = right.partition("/")
            if left not in SN_PRIORITIES or not sep or impact not in ("1", "2", "3") or urgency not in ("1", "2", "3"):
                raise ValueError(f"{left}={right}: expected a priority 1..5 = impact/urgency, each 1..3 (as 2=1/2)")
        return v

    @field_validator(
        "v7_incident_field",
        "v7_user_field",
        "v7_group_service_field",
        "v7_group_escalation_field",
        "v7_ci_service_field",
    )
    @classmethod
    def _column(cls, v: str) -> str:
        if not re.match(r"^[a-z][a-z0-9_]{0,79}$", v):
            raise ValueError(f"expected a ServiceNow column name, found {v!r}")
        return v

    @field_validator("pagerduty_body", "servicenow_description", "close_notes")
    @classmethod
    def _template(cls, v: str) -> str:
        try:
            v.format_map(_Any())
        except (ValueError, IndexError) as exc:
            raise ValueError(f"not a valid template: {exc}") from None
        return v

    @model_validator(mode="after")
    def _consistent(self) -> IncidentSyncConfig:
        if self.resolved_state not in csv(self.done_states):
            raise ValueError(f"resolved_state {self.resolved_state!r} must be one of done_states ({self.done_states})")
        if self.security_resolved_state not in csv(self.security_done_states):
            raise ValueError(
                f"security_resolved_state {self.security_resolved_state!r} must be one of security_done_states"
            )
        services = [o.service for o in self.service_options]
        if len(services) != len(set(services)):
            raise ValueError("service_options: a service is listed twice")
        return self

    # -- helpers -----------------------------------------------------------------
    def table_for(self, service_id: str | None) -> str:
        kind = self.incident_type
        for option in self.service_options:
            if option.service == service_id and option.incident_type:
                kind = option.incident_type
        return "sn_si_incident" if kind == "security_incident" else "incident"

    def sync_option_for(self, service_id: str | None) -> str:
        for option in self.service_options:
            if option.service == service_id and option.sync_option:
                return option.sync_option
        return self.sync_option

    def states(self, table: str) -> dict[str, Any]:
        if table == "sn_si_incident":
            return {
                "resolved": self.security_resolved_state,
                "in_progress": self.security_in_progress_state,
                "reopened": self.security_reopened_state,
                "done": csv(self.security_done_states),
            }
        return {
            "resolved": self.resolved_state,
            "in_progress": self.in_progress_state,
            "reopened": self.reopened_state,
            "done": csv(self.done_states),
        }

    def trigger_priority_list(self) -> list[str]:
        return csv(self.trigger_priorities)

    def pd_priority_to_sn(self) -> dict[str, str]:
        return dict(pairs(self.priorities))

    def sn_priority_to_pd(self) -> dict[str, str]:
        return {sn: pd for pd, sn in reversed(pairs(self.priorities))}

    def pd_urgency_to_sn(self) -> dict[str, str]:
        return dict(pairs(self.urgencies))

    def sn_priority_to_urgency(self) -> dict[str, str]:
        return dict(pairs(self.servicenow_urgencies))

    def impact_urgency_for(self, priority: str | None) -> dict[str, str]:
        for p, value in pairs(self.impact_urgency):
            if p == priority:
                impact, _, urgency = value.partition("/")
                return {"impact": impact, "urgency": urgency}
        return {}


class _Any(dict[str, str]):
    """format_map target accepting any key, to check a template's syntax only."""

    def __missing__(self, key: str) -> str:
        return ""
