"""[plugins.incident_sync]: the app's defaults, and bad values named by their dotted key."""

from __future__ import annotations

import pytest

from dutybridge.config import ConfigError


def enabled(settings: dict) -> dict:
    return {"plugins": {"enabled": ["incident_sync"], "incident_sync": settings}}


def test_defaults_are_the_apps(make_config):
    config, _ = make_config(enabled({}))
    conf = config.plugin_sections["incident_sync"]
    assert conf.mapping_mode == "assignment_groups"
    assert conf.sync_option == "all" and conf.incident_type == "incident"
    assert conf.trigger_priority_list() == ["1", "2"]
    assert conf.resolved_state == "6" and conf.states("incident")["done"] == ["6", "7", "8"]
    assert conf.states("sn_si_incident")["resolved"] == "3"
    assert not conf.resolve_if_unmapped_group and not conf.create_missing_users and not conf.assign_on_ack_only
    assert conf.pd_priority_to_sn() == {"P1": "1", "P2": "2", "P3": "3", "P4": "4", "P5": "5"}
    assert conf.sn_priority_to_pd()["1"] == "P1"
    assert conf.impact_urgency_for("2") == {"impact": "1", "urgency": "2"}
    assert conf.sn_priority_to_urgency() == {"1": "high", "2": "high", "3": "low", "4": "low", "5": "low"}


def test_per_service_options_override_the_defaults(make_config):
    config, _ = make_config(
        enabled(
            {"service_options": [{"service": "PSVCNET", "sync_option": "manual", "incident_type": "security_incident"}]}
        )
    )
    conf = config.plugin_sections["incident_sync"]
    assert conf.sync_option_for("PSVCNET") == "manual" and conf.table_for("PSVCNET") == "sn_si_incident"
    assert conf.sync_option_for("PSVCDB1") == "all" and conf.table_for("PSVCDB1") == "incident"


@pytest.mark.parametrize(
    "settings, expected",
    [
        (
            {"mapping_mode": "groups"},
            "plugins.incident_sync.mapping_mode: input should be 'assignment_groups' or 'cis_and_assignment_groups'",
        ),
        ({"resolved_state": "resolved"}, "plugins.incident_sync.resolved_state: expected an integer state value"),
        ({"resolved_state": "5"}, "plugins.incident_sync: resolved_state '5' must be one of done_states"),
        (
            {"trigger_priorities": "1, 9"},
            "plugins.incident_sync.trigger_priorities: expected ServiceNow priorities 1..5",
        ),
        ({"priorities": "P1=1, P1=2"}, "plugins.incident_sync.priorities: 'P1' is listed twice"),
        (
            {"urgencies": "urgent=1"},
            "plugins.incident_sync.urgencies: 'urgent': expected the PagerDuty urgency high or low",
        ),
        (
            {"impact_urgency": "1=1-1"},
            "plugins.incident_sync.impact_urgency: 1=1-1: expected a priority 1..5 = impact/urgency",
        ),
        (
            {"links": [{"group": "Database", "ci": "db-01", "service": "PSVCDB1"}]},
            "plugins.incident_sync.links.0: a link names exactly one of group or ci",
        ),
        (
            {"links": [{"group": "Database"}]},
            "plugins.incident_sync.links.0: a link needs a service, an escalation_policy, or both",
        ),
        (
            {"links": [{"group": "Database", "service": "not-an-id"}]},
            "plugins.incident_sync.links.0.service: expected a PagerDuty service id like PXXXXXX",
        ),
        (
            {"links": [{"group": "Database", "service": "PSVCDB1", "team": "x"}]},
            "plugins.incident_sync.links.0.team: unknown key",
        ),
        (
            {"service_options": [{"service": "PSVCDB1", "sync_option": "sometimes"}]},
            "plugins.incident_sync.service_options.0.sync_option: input should be 'all' or 'manual'",
        ),
        (
            {"poll_interval_seconds": -1.0},
            "plugins.incident_sync.poll_interval_seconds: input should be greater than or equal to 0",
        ),
        ({"close_notes": "by {user"}, "plugins.incident_sync.close_notes: not a valid template"),
        ({"v7_incident_field": "X-PD"}, "plugins.incident_sync.v7_incident_field: expected a ServiceNow column name"),
        ({"sync_work_notes": "yes"}, "plugins.incident_sync.sync_work_notes: input should be a valid boolean"),
        ({"colour": "blue"}, "plugins.incident_sync.colour: unknown key"),
    ],
)
def test_bad_values_name_the_dotted_key(make_config, settings, expected):
    with pytest.raises(ConfigError) as info:
        make_config(enabled(settings))
    assert any(line.startswith(expected) for line in info.value.problems), info.value.problems
