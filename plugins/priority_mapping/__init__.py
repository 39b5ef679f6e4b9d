"""priority_mapping: the escalation policy of a PagerDuty incident by its ServiceNow
assignment group *and* priority (the guide's "Configure Escalation Policy Priority Mapping").

A table of (group, priority or default, escalation policy, active) rows in the store
(``rows``), managed with ``dutybridge priority-map ...`` and, when configured, mirrored
from a ServiceNow table (``mirror``). ``escalation_policy_for`` answers incident_sync,
which asks on trigger, on reassignment and on every priority change.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any, cast

import structlog
from pydantic import BaseModel, Field, field_validator

from dutybridge import hookimpl
from dutybridge.checks import Check, CheckResult
from dutybridge.commands import Command
from dutybridge.config import Section
from dutybridge.context import Ctx, NotReady
from dutybridge.http import ApiError, NotFound
from dutybridge.scheduler import Job
from dutybridge.servicenow import Query

from .mirror import mirror
from .rows import EP_ID, GROUP_KIND, SYS_ID, Row, Rows, normalise_priority

if TYPE_CHECKING:  # pragma: no cover
    from dutybridge.pagerduty import PagerDutyClient
    from dutybridge.servicenow import ServiceNowClient
    from dutybridge.store.base import Store

log = structlog.get_logger("dutybridge.priority_mapping")

PLUGIN = "priority_mapping"


class PriorityMappingConfig(Section):
    """Escalation policy by assignment group and ServiceNow priority."""

    servicenow_table: str = Field(
        "",
        description="ServiceNow table the mapping is mirrored from (the app's 'Map Priority to Escalation Policy', "
        "e.g. x_pd_integration_ep_priority_map); empty: the table lives only in dutybridge's store.",
    )
    mirror_interval_seconds: float = Field(
        300.0,
        ge=0,
        description="How often the ServiceNow table is read again (0: only by 'dutybridge priority-map sync').",
    )
    group_column: str = Field(
        "assignment_group", description="Column of the ServiceNow table holding the assignment group (a reference)."
    )
    priority_column: str = Field(
        "priority", description="Column holding the ServiceNow priority (empty: the group's default row)."
    )
    escalation_policy_column: str = Field(
        "escalation_policy", description="Column holding the PagerDuty escalation policy id."
    )
    active_column: str = Field("active", description="Column holding the Active checkbox.")

    @field_validator("servicenow_table", "group_column", "priority_column", "escalation_policy_column", "active_column")
    @classmethod
    def _name(cls, v: str) -> str:
        if v and not all(c.isalnum() or c == "_" for c in v):
            raise ValueError(f"{v!r} is not a ServiceNow table or column name")
        return v


def _conf(ctx: Ctx) -> PriorityMappingConfig:
    # The section under PLUGIN is the model this plugin registered for it; ctx cannot say so.
    return cast("PriorityMappingConfig", ctx.plugin_config(PLUGIN))


def _store(ctx: Ctx) -> Store:
    if ctx.store is None:
        raise NotReady("the store is not open")
    return ctx.store


def _pagerduty(ctx: Ctx) -> PagerDutyClient:
    if ctx.pagerduty is None:
        raise NotReady("the PagerDuty client is not built")
    return ctx.pagerduty


def _servicenow(ctx: Ctx) -> ServiceNowClient:
    if ctx.servicenow is None:
        raise NotReady("the ServiceNow client is not built")
    return ctx.servicenow


class PriorityMapping:
    """The plugin (one per plugin manager)."""

    @hookimpl
    def register_config_sections(self) -> dict[str, type[BaseModel]]:
        return {PLUGIN: PriorityMappingConfig}

    @hookimpl
    async def escalation_policy_for(self, group: dict[str, Any], priority: str | None, ctx: Ctx) -> str | None:
        if ctx.store is None or not group.get("sys_id"):
            return None
        ep, why = await Rows(ctx.store).choose(str(group["sys_id"]), priority)
        log.debug(
            "priority_map_chosen",
            group=group.get("name") or group["sys_id"],
            priority=priority,
            escalation_policy=ep or None,
            by=why,
        )
        return ep or None

    @hookimpl
    def register_jobs(self, ctx: Ctx) -> list[Job]:
        conf = _conf(ctx)
        if not conf.servicenow_table or conf.mirror_interval_seconds <= 0:
            return []

        async def run() -> None:
            await mirror(ctx, _conf(ctx))

        return [
            Job(
                id="priority_mapping.mirror",
                func=run,
                trigger="interval",
                trigger_args={"seconds": conf.mirror_interval_seconds},
            )
        ]

    @hookimpl
    def register_checks(self, ctx: Ctx) -> list[Check]:
        return [Check("Priority mapping policies", check_policies)]

    @hookimpl
    def register_cli_commands(self) -> list[Command]:
        return [
            Command(
                "priority-map",
                "priority mapping: escalation policy by assignment group and priority",
                priority_map_command,
                add_arguments=_arguments,
            )
        ]


# -- CLI ---------------------------------------------------------------------------------
def _arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="priority_map_command", required=True)
    ls = sub.add_parser("list", help="show the mapping table")
    ls.add_argument("--group", help="only this assignment group (name or sys_id)")
    ls.add_argument("--json", action="store_true", help="JSON lines instead of a table")

    def row_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("group", metavar="GROUP", help="ServiceNow assignment group, by name or sys_id")
        p.add_argument(
            "--priority", default="", help="ServiceNow priority value (1 .. 5); omitted: the group's default row"
        )

    add = sub.add_parser("add", help="add or replace a row")
    row_args(add)
    add.add_argument("escalation_policy", metavar="ESCALATION_POLICY", help="PagerDuty escalation policy id")
    add.add_argument("--inactive", action="store_true", help="add the row switched off")
    for name, text in (("remove", "delete a row"), ("activate", "switch a row on"), ("deactivate", "switch a row off")):
        row_args(sub.add_parser(name, help=text))
    mig = sub.add_parser(
        "migrate",
        help="the guide's 'MIGRATE Escalation Policies': every group's escalation policy link becomes its default row",
    )
    mig.add_argument("--dry-run", action="store_true", help="say what would be added, add nothing")
    sub.add_parser("sync", help="mirror the configured ServiceNow table now")


class CommandError(Exception):
    """Bad input to a priority-map command; the message says what to fix."""


async def _group(ctx: Ctx, ref: str) -> tuple[str, str]:
    """(sys_id, name) of an assignment group given by sys_id or name."""
    if SYS_ID.match(ref):
        try:
            rec = await _servicenow(ctx).get("sys_user_group", ref, fields=["sys_id", "name"])
        except NotFound:
            raise CommandError(f"no assignment group with sys_id {ref}") from None
        return rec["sys_id"], rec.get("name", "")
    rows = await _servicenow(ctx).list(
        "sys_user_group", Query().eq("name", ref), fields=["sys_id", "name"], limit=2, order_by="sys_id"
    )
    if not rows:
        raise CommandError(f"no assignment group named {ref!r}")
    if len(rows) > 1:
        raise CommandError(f"several assignment groups are named {ref!r}: give the sys_id")
    return rows[0]["sys_id"], rows[0].get("name", "")


async def _policy(ctx: Ctx, ep: str) -> None:
    if not EP_ID.match(ep):
        raise CommandError(f"{ep!r} is not a PagerDuty escalation policy id")
    try:
        await _pagerduty(ctx).get_escalation_policy(ep)
    except NotFound:
        raise CommandError(f"PagerDuty has no escalation policy {ep}") from None


def _describe(row: Row) -> str:
    return (
        f"{row.group_name or row.group} / {('priority ' + row.priority) if row.priority else 'default'} -> "
        f"{row.escalation_policy} ({'active' if row.active else 'inactive'}, {row.source})"
    )


async def priority_map_command(args: argparse.Namespace, ctx: Ctx | None) -> int:
    if ctx is None:  # only a standalone command runs without one, and this one is not
        raise NotReady("priority-map needs the daemon's configuration")
    try:
        return await _run(args, ctx)
    except CommandError as exc:
        print(f"dutybridge priority-map {args.priority_map_command}: {exc}")
        return 2
    except ApiError as exc:
        print(f"dutybridge priority-map {args.priority_map_command}: {exc}")
        return 1


async def _run(args: argparse.Namespace, ctx: Ctx) -> int:
    rows = Rows(_store(ctx))
    what = args.priority_map_command
    if what == "list":
        group = (await _group(ctx, args.group))[0] if args.group else None
        table = await rows.all(group)
        for row in table:
            print(json.dumps(row.state(), sort_keys=True) if args.json else _describe(row))
        if not table and not args.json:
            print("no rows" + (" for that group" if group else ""))
        return 0
    if what == "migrate":
        return await migrate(ctx, dry_run=args.dry_run)
    if what == "sync":
        conf = _conf(ctx)
        if not conf.servicenow_table:
            raise CommandError(f"plugins.{PLUGIN}.servicenow_table is not set: there is no table to mirror")
        print(f"{conf.servicenow_table}: {await mirror(ctx, conf)}")
        return 0
    try:
        priority = normalise_priority(args.priority)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    group, name = await _group(ctx, args.group)
    if what == "add":
        await _policy(ctx, args.escalation_policy)
        row = await rows.put(Row(group, priority, args.escalation_policy, active=not args.inactive, group_name=name))
        print(f"added {_describe(row)}")
        return 0
    found = await rows.get(group, priority)
    if found is None:
        raise CommandError(f"no row for {name or group} / {('priority ' + priority) if priority else 'default'}")
    row = found
    if what == "remove":
        await rows.remove(group, priority)
        print(f"removed {_describe(row)}")
    else:
        row.active = what == "activate"
        await rows.put(row)
        print(f"{what}d {_describe(row)}")
    if row.source == "servicenow":
        print("note: this row is mirrored from ServiceNow; the next mirror puts back what ServiceNow says")
    return 0


async def migrate(ctx: Ctx, *, dry_run: bool = False) -> int:
    """Every group -> escalation policy link becomes the group's default row (empty
    priority), unless the group has a default row already."""
    store = _store(ctx)
    rows = Rows(store)
    added = kept = 0
    for link in await store.list_links(GROUP_KIND):
        st = link.state or {}
        ep = str(st.get("escalation_policy") or "")
        name = str(st.get("name") or "")
        if not ep:
            continue
        existing = await rows.get(link.sn_id, "")
        if existing is not None:
            kept += 1
            print(f"kept {_describe(existing)}")
            continue
        row = Row(link.sn_id, "", ep, active=True, group_name=name, source="migration")
        if not dry_run:
            await rows.put(row)
        added += 1
        print(f"{'would add' if dry_run else 'added'} {_describe(row)}")
    print(f"{added} default row(s) {'to add' if dry_run else 'added'}, {kept} group(s) had one already")
    return 0


async def check_policies(ctx: Ctx) -> CheckResult:
    """Every row names an escalation policy PagerDuty has."""
    if ctx.store is None:
        return CheckResult(False, "the store is not open")
    table = await Rows(ctx.store).all()
    missing = []
    for ep in sorted({r.escalation_policy for r in table}):
        try:
            await _pagerduty(ctx).get_escalation_policy(ep)
        except NotFound:
            missing.append(ep)
    if missing:
        return CheckResult(False, f"rows name escalation policies PagerDuty does not have: {', '.join(missing)}")
    return CheckResult(True, f"{len(table)} row(s), every escalation policy exists")
