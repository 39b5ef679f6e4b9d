"""End to end against the sandbox: which escalation policy a ServiceNow incident's PagerDuty
incident gets by group and priority, the priority-map CLI, the migration and the mirror."""

from __future__ import annotations

import json
import re

import pytest

from dutybridge.cli import build_parser
from dutybridge_plugins.priority_mapping import check_policies
from tests.plugins.incident_sync.world import DB_GROUP, NET_GROUP

MIRROR_TABLE = "x_pd_integration_ep_priority_map"
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[")


def only(rows: list) -> dict:
    assert len(rows) == 1, rows
    return rows[0]


def enabled(**section) -> dict:
    return {"plugins": {"enabled": ["incident_sync", "priority_mapping"], "priority_mapping": section}}


async def cli(world, capsys, *argv: str) -> tuple[int, str]:
    args = build_parser().parse_args(["priority-map", *argv])
    assert args.plugin == "priority_mapping"
    code = await args.plugin_command.handler(args, world.ctx)
    # The daemon's own log lines share stdout in tests; the command's output is the rest.
    out = [line for line in capsys.readouterr().out.splitlines() if not LOG_LINE.match(line)]
    return code, "".join(line + "\n" for line in out)


def open_sn(world, *, group: str = DB_GROUP, urgency: str = "1") -> dict:
    return world.sn.insert(
        "incident",
        {"short_description": "Payments API 500s", "assignment_group": group, "impact": "1", "urgency": urgency},
        user="alice.nguyen",
    )


async def pd_policy(world, rec: dict) -> str:
    await world.settle()
    return only(world.pd_for(rec["sys_id"]))["escalation_policy"]["id"]


@pytest.fixture
async def world(make_world):
    return await make_world(extra=enabled())


async def test_exact_default_inactive_and_no_row(world, capsys):
    # No row: the group's provisioned policy.
    assert await pd_policy(world, open_sn(world)) == "PEPDB01"
    assert (
        await world.ctx.hooks.escalation_policy_for(
            group={"sys_id": DB_GROUP, "name": "Database"}, priority="1", ctx=world.ctx
        )
        == "PEPDB01"
    )
    # An exact row wins for its priority only; the default row takes the others.
    assert (await cli(world, capsys, "add", "Database", "PEPDBP1", "--priority", "1"))[0] == 0
    assert (await cli(world, capsys, "add", DB_GROUP, "PEPNET1"))[0] == 0
    assert await pd_policy(world, open_sn(world)) == "PEPDBP1"
    assert await pd_policy(world, open_sn(world, urgency="2")) == "PEPNET1"  # priority 2: the default row
    # An inactive row is skipped: priority 1 falls to the default row, then to the provisioned policy.
    code, out = await cli(world, capsys, "deactivate", "Database", "--priority", "1")
    assert code == 0 and "inactive" in out
    assert await pd_policy(world, open_sn(world)) == "PEPNET1"
    await cli(world, capsys, "deactivate", "Database")
    assert await pd_policy(world, open_sn(world)) == "PEPDB01"
    await cli(world, capsys, "activate", "Database", "--priority", "1")
    assert await pd_policy(world, open_sn(world)) == "PEPDBP1"
    # A group nobody mapped: no opinion.
    assert (
        await world.ctx.hooks.escalation_policy_for(
            group={"sys_id": "0" * 32, "name": "x"}, priority="1", ctx=world.ctx
        )
        is None
    )


async def test_a_priority_change_moves_the_incident_to_the_mapped_policy(world, capsys):
    await cli(world, capsys, "add", "Database", "PEPDBP1", "--priority", "1")
    rec = open_sn(world, urgency="2")  # priority 2: no row, the provisioned policy
    assert await pd_policy(world, rec) == "PEPDB01"
    pd_id = only(world.pd_for(rec["sys_id"]))["id"]
    world.sn.update("incident", rec["sys_id"], {"urgency": "1"}, user="alice.nguyen")  # priority 1
    await world.settle()
    assert world.pd.incidents[pd_id]["escalation_policy"]["id"] == "PEPDBP1"
    world.sn.update("incident", rec["sys_id"], {"urgency": "2"}, user="alice.nguyen")
    await world.settle()
    assert world.pd.incidents[pd_id]["escalation_policy"]["id"] == "PEPDB01"


async def test_cli_lists_removes_and_refuses_bad_input(world, capsys):
    await cli(world, capsys, "add", "Database", "PEPDBP1", "--priority", "1 - Critical")
    await cli(world, capsys, "add", "Network", "PEPNET1", "--inactive")
    code, out = await cli(world, capsys, "list", "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [(r["group"], r["priority"], r["escalation_policy"], r["active"]) for r in rows] == [
        (DB_GROUP, "1", "PEPDBP1", True),
        (NET_GROUP, "", "PEPNET1", False),
    ]
    code, out = await cli(world, capsys, "list", "--group", "Network")
    assert code == 0 and out.strip() == "Network / default -> PEPNET1 (inactive, cli)"

    for argv, said in (
        (("add", "Nope", "PEPDB01"), "no assignment group named 'Nope'"),
        (("add", "Database", "PNOSUCH"), "PagerDuty has no escalation policy PNOSUCH"),
        (("add", "Database", "PEPDB01", "--priority", "high"), "expected a ServiceNow priority"),
        (("remove", "Database", "--priority", "4"), "no row for Database / priority 4"),
    ):
        code, out = await cli(world, capsys, *argv)
        assert code == 2 and said in out, (argv, out)

    code, out = await cli(world, capsys, "remove", "Database", "--priority", "1")
    assert code == 0 and out.startswith("removed Database / priority 1 -> PEPDBP1")
    code, out = await cli(world, capsys, "list", "--group", "Database")
    assert out.strip() == "no rows for that group"


async def test_migrate_turns_each_group_policy_into_a_default_row(world, capsys):
    code, out = await cli(world, capsys, "migrate", "--dry-run")
    assert code == 0 and "would add Database / default -> PEPDB01" in out
    assert (await cli(world, capsys, "list", "--json"))[1] == ""
    await cli(world, capsys, "add", "Network", "PEPDBP1")  # Network has a default row already: kept
    code, out = await cli(world, capsys, "migrate")
    assert code == 0 and out.splitlines()[-1] == "1 default row(s) added, 1 group(s) had one already"
    rows = [json.loads(line) for line in (await cli(world, capsys, "list", "--json"))[1].splitlines()]
    assert {(r["group"], r["escalation_policy"], r["source"]) for r in rows} == {
        (DB_GROUP, "PEPDB01", "migration"),
        (NET_GROUP, "PEPDBP1", "cli"),
    }
    code, out = await cli(world, capsys, "migrate")  # again: nothing new
    assert out.splitlines()[-1] == "0 default row(s) added, 2 group(s) had one already"
    assert await pd_policy(world, open_sn(world, group=NET_GROUP)) == "PEPDBP1"


async def test_mirrored_from_the_servicenow_table(make_world, capsys):
    world = await make_world(extra=enabled(servicenow_table=MIRROR_TABLE, mirror_interval_seconds=0.0))
    p1 = world.sn.insert(
        MIRROR_TABLE,
        {"assignment_group": DB_GROUP, "priority": "1", "escalation_policy": "PEPDBP1", "active": "true"},
        user="pagerduty.integration",
    )
    world.sn.insert(
        MIRROR_TABLE,
        {"assignment_group": NET_GROUP, "priority": "2", "escalation_policy": "bad id"},
        user="pagerduty.integration",
    )
    await cli(world, capsys, "add", "Database", "PEPNET1")  # managed by the CLI: the mirror leaves it
    code, out = await cli(world, capsys, "sync")
    assert code == 0 and "1 added, 0 updated, 0 removed; 1 row(s) skipped" in out and "'bad id'" in out
    assert await pd_policy(world, open_sn(world)) == "PEPDBP1"
    # Unticked in ServiceNow: the next mirror makes it inactive; deleted: removed.
    world.sn.update(MIRROR_TABLE, p1["sys_id"], {"active": "false"}, user="pagerduty.integration")
    assert "0 added, 1 updated" in (await cli(world, capsys, "sync"))[1]
    assert await pd_policy(world, open_sn(world)) == "PEPNET1"
    world.sn.delete(MIRROR_TABLE, p1["sys_id"], user="pagerduty.integration")
    assert "1 removed" in (await cli(world, capsys, "sync"))[1]
    rows = [json.loads(line) for line in (await cli(world, capsys, "list", "--json"))[1].splitlines()]
    assert [(r["priority"], r["escalation_policy"], r["source"]) for r in rows] == [("", "PEPNET1", "cli")]


async def test_sync_without_a_table_says_so(world, capsys):
    code, out = await cli(world, capsys, "sync")
    assert code == 2 and "plugins.priority_mapping.servicenow_table is not set" in out


async def test_check_names_rows_whose_policy_is_gone(world, capsys):
    await cli(world, capsys, "add", "Database", "PEPDBP1", "--priority", "1")
    result = await check_policies(world.ctx)
    assert result.ok and result.detail == "1 row(s), every escalation policy exists"
    world.pd.delete_escalation_policy("PEPDBP1")
    result = await check_policies(world.ctx)
    assert not result.ok and result.detail.endswith("PagerDuty does not have: PEPDBP1")
