"""The ``[plugins.response_mobilizer]`` section: the guide's four enable settings, the
role an acting ServiceNow user must hold, the API's token and the configured bridges."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from pydantic import Field, model_validator

from dutybridge.config import Secret, Section

if TYPE_CHECKING:  # pragma: no cover
    from dutybridge.context import Ctx

PLUGIN = "response_mobilizer"


class Bridge(Section):
    """A conference bridge people pick by name."""

    name: str = Field(description="What people pick it by (e.g. 'Major incident bridge').")
    dial_in_number: str = Field("", description="Dial-in number, e.g. '+1 415-555-0100,,123456#'.")
    url: str = Field("", description="Meeting URL, e.g. 'https://meet.example.com/major'.")

    @model_validator(mode="after")
    def _some_way_in(self) -> Bridge:
        if not self.name.strip():
            raise ValueError("name must not be empty")
        if not (self.dial_in_number or self.url):
            raise ValueError(f"bridge {self.name!r}: give dial_in_number and/or url")
        if self.url and not self.url.startswith(("https://", "http://")):
            raise ValueError(f"bridge {self.name!r}: url must start with https:// or http://")
        return self


class MobilizerConfig(Section):
    """PagerDuty's incident-response actions, taken from the ServiceNow side."""

    responders: bool = Field(
        False, description="'Enable Response Mobilizer': add users and escalation policies as responders."
    )
    conference_bridges: bool = Field(
        False, description="'Enable Conference Bridges': set an incident's conference bridge."
    )
    response_plays: bool = Field(
        False, description="'Enable Response Play feature': run incident workflows (and legacy response plays)."
    )
    status_updates: bool = Field(
        False, description="'Enable Status Update Feature': send status updates, see impacted business services."
    )
    legacy_response_plays: bool = Field(
        False,
        description="Also offer response plays (PagerDuty removed them from its API in September 2025; on only for an account that still serves them).",
    )
    role: str = Field(
        "x_pd_integration.incident_response",
        description="ServiceNow role the acting user must hold (checked in sys_user_has_role); empty: no check.",
    )
    api_token: Secret | None = Field(
        None,
        description="Bearer token of the /api/v1/incidents/... API (env:/file: reference); unset: the API answers 503.",
    )
    bridges: list[Bridge] = Field(default_factory=list, description="Conference bridges people pick by name.")
    work_note_bridge: bool = Field(
        True, description="Write a conference bridge set from here to the ServiceNow incident as a work note."
    )

    @model_validator(mode="after")
    def _unique_bridges(self) -> MobilizerConfig:
        names = [b.name.casefold() for b in self.bridges]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup:
            raise ValueError(f"bridges: the name {dup!r} is given twice")
        return self


def plugin_conf(ctx: Ctx) -> MobilizerConfig:
    """The validated ``[plugins.response_mobilizer]`` section."""
    # The section under PLUGIN is the model this plugin registered for it; ctx cannot say so.
    return cast("MobilizerConfig", ctx.plugin_config(PLUGIN))
