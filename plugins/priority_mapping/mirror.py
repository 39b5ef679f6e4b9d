"""Mirroring the mapping table from ServiceNow (the v7 app's "Map Priority to Escalation
Policy" list and each group's "PagerDuty Escalation Policies" tab, one table), so
operators can keep managing it inside ServiceNow."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from dutybridge.context import Ctx, NotReady

from .rows import EP_ID, SYS_ID, Row, Rows, normalise_priority

if TYPE_CHECKING:  # pragma: no cover
    from . import PriorityMappingConfig

log = structlog.get_logger("dutybridge.priority_mapping")


@dataclass
class MirrorResult:
    added: int = 0
    updated: int = 0
    removed: int = 0
    problems: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        text = f"{self.added} added, {self.updated} updated, {self.removed} removed"
        return text + (f"; {len(self.problems)} row(s) skipped: " + "; ".join(self.problems) if self.problems else "")


def _ref(value: Any) -> str:
    """A reference column's sys_id, whether given as a string or as {"value", "link"}."""
    if isinstance(value, dict):
        return str(value.get("value") or "")
    return str(value or "")


def _truthy(value: Any) -> bool:
    return value is True or str(value).strip().lower() in ("true", "1", "yes")


async def mirror(ctx: Ctx, conf: PriorityMappingConfig) -> MirrorResult:
    """Make the store's ``servicenow`` rows what ``conf.servicenow_table`` holds now.

    Rows added with the CLI or by the migration stay; a ServiceNow row for the same
    (group, priority) takes their place (ServiceNow is where the operator manages it).
    """
    if ctx.servicenow is None:
        raise NotReady("the ServiceNow client is not built")
    if ctx.store is None:
        raise NotReady("the store is not open")
    result = MirrorResult()
    cols = (conf.group_column, conf.priority_column, conf.escalation_policy_column, conf.active_column)
    records = await ctx.servicenow.list(conf.servicenow_table, fields=["sys_id", *cols], order_by="sys_id")
    group_names = {
        g["sys_id"]: g.get("name", "")
        for g in await ctx.servicenow.list("sys_user_group", fields=["sys_id", "name"], order_by="sys_id")
    }
    wanted: dict[str, Row] = {}
    for rec in records:
        where = f"{conf.servicenow_table} {rec.get('sys_id')}"
        group = _ref(rec.get(conf.group_column))
        ep = str(rec.get(conf.escalation_policy_column) or "").strip()
        try:
            priority = normalise_priority(str(rec.get(conf.priority_column) or ""))
        except ValueError as exc:
            result.problems.append(f"{where}: {exc}")
            continue
        if not SYS_ID.match(group):
            result.problems.append(f"{where}: no assignment group")
            continue
        if not EP_ID.match(ep):
            result.problems.append(f"{where}: {conf.escalation_policy_column} {ep!r} is not a PagerDuty id")
            continue
        row = Row(
            group=group,
            priority=priority,
            escalation_policy=ep,
            active=_truthy(rec.get(conf.active_column)),
            group_name=group_names.get(group, ""),
            source="servicenow",
            sn_sys_id=str(rec.get("sys_id") or ""),
        )
        if row.key in wanted:
            result.problems.append(
                f"{where}: a second row for the same group and priority (kept {wanted[row.key].sn_sys_id})"
            )
            continue
        wanted[row.key] = row
    rows = Rows(ctx.store)
    existing = {r.key: r for r in await rows.all()}
    for key, row in wanted.items():
        old = existing.get(key)
        if old is not None and old.state() == row.state():
            continue
        await rows.put(row)
        if old is None:
            result.added += 1
        else:
            result.updated += 1
    for key, old in existing.items():
        if old.source == "servicenow" and key not in wanted:
            await rows.remove(old.group, old.priority)
            result.removed += 1
    if result.added or result.updated or result.removed or result.problems:
        log.info(
            "priority_map_mirrored",
            table=conf.servicenow_table,
            added=result.added,
            updated=result.updated,
            removed=result.removed,
            skipped=len(result.problems),
        )
    return result
