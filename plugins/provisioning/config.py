"""The ``[plugins.provisioning]`` section: the v7 app's provisioning settings (members,
schedule, teams, mapping mode, services provisioning) plus what dutybridge adds."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal, cast

from pydantic import Field, ValidationInfo, field_validator, model_validator

from dutybridge.config import Secret, Section

if TYPE_CHECKING:  # pragma: no cover
    from dutybridge.context import Ctx

PLUGIN = "provisioning"

#: What a provisioned service's webhook subscription sends: what incident sync acts on.
DEFAULT_EVENTS = [
    "incident.acknowledged",
    "incident.annotated",
    "incident.delegated",
    "incident.escalated",
    "incident.priority_updated",
    "incident.reassigned",
    "incident.reopened",
    "incident.resolved",
    "incident.triggered",
    "incident.unacknowledged",
    "incident.service_updated",
]
_REL = re.compile(r"^[^:]+::[^:]+$")
_REGION = re.compile(r"^[A-Z]{2}$")


class CustomService(Section):
    """One row of "Custom Services Provisioning": CIs of a table become services, optionally
    related to the CIs of a second table through ``cmdb_rel_ci``."""

    table: str = Field(description="CI table holding the services, e.g. cmdb_ci_service.")
    type: Literal["technical", "business"] = Field(
        "technical", description="The kind of PagerDuty service each CI becomes."
    )
    name_column: str = Field("name", description="The column whose value names the PagerDuty service.")
    relationship: Literal["", "consumes", "consumed_by"] = Field(
        "",
        description="consumed_by: these CIs are parents of the related CIs; consumes: they are children. Empty: no relationship.",
    )
    related_table: str = Field("", description="The second CI table (with relationship).")
    related_type: Literal["technical", "business"] = Field(
        "technical", description="The kind of service the related CIs become."
    )
    related_name_column: str = Field("name", description="The column naming the related services.")

    @model_validator(mode="after")
    def _related(self) -> CustomService:
        if bool(self.relationship) != bool(self.related_table):
            raise ValueError("relationship and related_table go together: give both or neither")
        return self


class ProvisioningConfig(Section):
    """ServiceNow groups, users and CIs into PagerDuty (dutybridge provision / migrate)."""

    api_token: Secret | None = Field(
        None,
        description="Bearer token the ServiceNow UI action sends to POST /api/v1/provision/...; unset: the endpoint answers 503.",
    )
    mapping_mode: Literal["assignment_groups", "cis_and_assignment_groups"] = Field(
        "assignment_groups",
        description="assignment_groups: a group gets an escalation policy, a service and a webhook; cis_and_assignment_groups: a group gets only the escalation policy, CIs get the services.",
    )
    provision_members: bool = Field(False, description="Provision a group's current members into PagerDuty as users.")
    create_schedule: bool = Field(
        False,
        description="Create a schedule per group (the manager first in its layer, then the members) and target it from the escalation policy.",
    )
    use_teams: bool = Field(
        False,
        description="Put a group's escalation policy and service in the PagerDuty team of the group's name (created with create_team).",
    )
    create_team: bool = Field(
        False,
        description="Create that team when missing; the manager is added as manager, members as responders when provisioning members.",
    )
    link_existing: bool = Field(
        False,
        description="Link PagerDuty objects that already carry the name instead of failing (also --link-existing).",
    )
    write_back: bool = Field(
        False, description="Write the v7 app's x_pd_integration_* fields back to ServiceNow after provisioning."
    )
    user_role: Literal[
        "limited_user", "user", "observer", "read_only_user", "read_only_limited_user", "restricted_access", "admin"
    ] = Field(
        "limited_user",
        description="Base role of created users (limited_user is PagerDuty's Responder). Each created user takes a licence.",
    )
    default_region: str = Field(
        "US", description="Region (ISO 3166 code) for phone numbers written without a country code."
    )
    time_zone: str = Field("UTC", description="Time zone of created users and schedules when ServiceNow gives none.")
    escalation_delay_minutes: int = Field(30, ge=1, le=1440, description="Delay of the escalation policies' rule.")
    rotation_days: int = Field(7, ge=1, le=365, description="Length of a created schedule's rotation turn.")
    webhook_events: list[str] = Field(
        default_factory=lambda: list(DEFAULT_EVENTS),
        description="V3 event types each provisioned webhook subscription sends.",
    )
    ci_classes: list[str] = Field(
        default_factory=list,
        description="CI classes (sys_class_name) that qualify in a dependency walk; empty and no categories: every class.",
    )
    ci_categories: list[str] = Field(
        default_factory=list, description="CI categories that qualify too (any class or any category)."
    )
    relationship_types: list[str] = Field(
        default_factory=lambda: ["Depends on::Used by", "Runs on::Runs", "Uses::Used by", "Contains::Contained by"],
        description="cmdb_rel_type names walked as dependencies: the parent depends on the child.",
    )
    custom_services: list[CustomService] = Field(
        default_factory=list, description="Bulk custom services provisioning rows (dutybridge provision cis --custom)."
    )
    concurrency: int = Field(
        16, ge=1, le=256, description="Objects provisioned at once; the PagerDuty rate limiter paces the requests."
    )
    group_service_field: str = Field(
        "x_pd_integration_pagerduty_service", description="sys_user_group field written with the service id."
    )
    group_escalation_field: str = Field(
        "x_pd_integration_pagerduty_escalation",
        description="sys_user_group field written with the escalation policy id.",
    )
    group_webhook_field: str = Field(
        "x_pd_integration_pagerduty_webhook",
        description="sys_user_group field written with the webhook subscription id.",
    )
    group_schedule_field: str = Field(
        "x_pd_integration_pagerduty_schedule", description="sys_user_group field written with the schedule id."
    )
    group_team_field: str = Field(
        "x_pd_integration_pagerduty_team", description="sys_user_group field written with the team id."
    )
    user_field: str = Field(
        "x_pd_integration_pagerduty_id", description="sys_user field written with the PagerDuty user id."
    )
    ci_service_field: str = Field(
        "x_pd_integration_pagerduty_service", description="cmdb_ci field written with the service id."
    )
    ci_webhook_field: str = Field(
        "x_pd_integration_pagerduty_webhook", description="cmdb_ci field written with the webhook subscription id."
    )

    @field_validator("default_region")
    @classmethod
    def _region(cls, v: str) -> str:
        if not _REGION.match(v):
            raise ValueError(f"expected a two-letter region code like US or GB, found {v!r}")
        return v

    @field_validator("relationship_types")
    @classmethod
    def _rel(cls, v: list[str]) -> list[str]:
        bad = [r for r in v if not _REL.match(r)]
        if bad:
            raise ValueError(f"expected relationship type names like 'Depends on::Used by', found {bad!r}")
        return v

    @model_validator(mode="after")
    def _public_url(self, info: ValidationInfo) -> ProvisioningConfig:
        # Webhook subscriptions point at daemon.public_url: provisioning without it would
        # create services PagerDuty cannot report back from.
        daemon = (info.context or {}).get("daemon")
        if daemon is not None and not daemon.public_url:
            raise ValueError(
                "daemon.public_url is required when provisioning is enabled "
                "(webhook subscriptions point at public_url + /webhooks/pagerduty)"
            )
        return self


def plugin_conf(ctx: Ctx) -> ProvisioningConfig:
    """The validated ``[plugins.provisioning]`` section."""
    # The section under PLUGIN is the model this plugin registered for it; ctx cannot say so.
    return cast("ProvisioningConfig", ctx.plugin_config(PLUGIN))
