"""Reconciliation: poll both sides for what changed since a watermark and feed it
through the inbox, so a lost webhook or doorbell still syncs within one interval.
Each part of a pass runs, fails and keeps its watermark on its own (``PollHealth``)."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import structlog

from dutybridge.events import Event

from .api import Q
from .engine import POLLED
from .health import PollHealth
from .links import pd_id_of
from .views import KIND, pd_view

if TYPE_CHECKING:  # pragma: no cover
    from dutybridge.context import Ctx

    from .engine import Engine

log = structlog.get_logger("dutybridge.incident_sync")

# ServiceNow: records of the incident tables by ``sys_updated_on`` (ordered, re-reading
# ``poll_overlap_seconds`` before the watermark), each enqueued with the very event id the
# doorbell for that change would have had, so the inbox drops whichever comes second.
# PagerDuty: log entries since the watermark, one event per entry, and a sweep of the open
# incidents for state that differs from the last synced (priority changes log nothing).
# Handlers re-read the incident anyway, so a poll event for a change already synced
# finds nothing to do. One part failing (GET /log_entries refused: permissions, an
# outage) leaves the others running and their watermarks moving.

SN_TIME = "%Y-%m-%d %H:%M:%S"
WM_PD = "incident_sync.pagerduty.log_entries"
#: Set by the first pass: open incidents are swept from the second on (no backfill at install).
WM_SWEEP = "incident_sync.pagerduty.open_sweep"
PART_LINKS = "poll.links"
PART_SN = "poll.servicenow.{table}"
PART_PD_LOG = "poll.pagerduty_log_entries"
PART_PD_OPEN = "poll.pagerduty_open_incidents"
WM_SN = "incident_sync.servicenow.{table}"
#: Log entries that say something incident sync mirrors (not notifications and the like).
LOG_ENTRY_TYPES = frozenset(
    {
        "trigger_log_entry",
        "acknowledge_log_entry",
        "unacknowledge_log_entry",
        "resolve_log_entry",
        "assign_log_entry",
        "delegate_log_entry",
        "escalate_log_entry",
        "annotate_log_entry",
        "urgency_change_log_entry",
    }
)


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_iso(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


async def poll(ctx: Ctx, engine: Engine) -> dict[str, int]:
    """One reconciliation pass; the number of events enqueued per side. Never raises for
    a failing part: it shows in ``engine.poll_health`` (``/readyz``, metrics) instead."""
    conf = engine.conf
    health: PollHealth = engine.poll_health
    # The v7 app's fields may have changed since the last pass: read the links again.
    loaded = await health.run(PART_LINKS, _load(engine, refresh=conf.v7_fields))
    counts = {"servicenow": 0, "pagerduty": 0}
    parts = {PART_LINKS, PART_PD_LOG}
    if loaded is not None:  # the other parts need the mapping: which records are ours
        for table in engine.tables():
            part = PART_SN.format(table=table)
            parts.add(part)
            counts["servicenow"] += await health.run(part, poll_servicenow(ctx, engine, table)) or 0
    counts["pagerduty"] += await health.run(PART_PD_LOG, poll_pagerduty_log(ctx, engine)) or 0
    if loaded is not None:
        parts.add(PART_PD_OPEN)
        counts["pagerduty"] += await health.run(PART_PD_OPEN, poll_pagerduty_open(ctx, engine)) or 0
    health.forget(parts)
    if any(counts.values()):
        log.info("poll_enqueued_changes", **counts)
    return counts


async def _load(engine: Engine, *, refresh: bool) -> int:
    if refresh:
        await engine.refresh()
    else:
        await engine.ensure_loaded()
    return 1


async def poll_servicenow(ctx: Ctx, engine: Engine, table: str) -> int:
    conf = engine.conf
    store = engine.store
    name = WM_SN.format(table=table)
    mark = await store.get_watermark(name)
    fields = [
        "sys_id",
        "sys_updated_on",
        "sys_mod_count",
        "state",
        "priority",
        "assignment_group",
        "cmdb_ci",
        "correlation_id",
        "correlation_display",
    ]
    if conf.v7_fields and table == "incident":
        fields.append(conf.v7_incident_field)
    if mark is None:
        # First pass: start from the newest record (ServiceNow's clock), never backfill history.
        rows = await engine.api.sn_query(table, None, ["sys_updated_on"], limit=1, order_by="-sys_updated_on")
        mark = rows[0]["sys_updated_on"] if rows else datetime.now(UTC).strftime(SN_TIME)
        await store.set_watermark(name, mark)
        return 0
    since = (datetime.strptime(mark, SN_TIME) - timedelta(seconds=conf.poll_overlap_seconds)).strftime(SN_TIME)
    rows = await engine.api.sn_query(
        table, Q().gte("sys_updated_on", since), fields, order_by=["sys_updated_on", "sys_id"]
    )
    enqueued = 0
    newest = mark
    for row in rows:
        stamp = str(row.get("sys_updated_on") or "")
        newest = max(newest, stamp)
        link = await store.get_link(KIND, sn_id=row["sys_id"])
        if link is None and not (pd_id_of(engine.conf, table, row) or engine.eligible(table, row)):
            continue  # nothing incident sync would do with it
        mod_count = str(row.get("sys_mod_count") or "0")
        operation = "insert" if mod_count == "0" else "update"
        # The id a doorbell for this very change carries (daemon/server.py), so the
        # inbox keeps whichever of the two arrives first and drops the other.
        event = Event(
            source="servicenow",
            type=f"{table}.{operation}",
            event_id=f"{table}:{row['sys_id']}:m{mod_count}:{operation}",
            resource=f"servicenow:{table}:{row['sys_id']}",
            payload={
                "table": table,
                "sys_id": row["sys_id"],
                "operation": operation,
                "sys_updated_on": stamp,
                "sys_mod_count": mod_count,
                "polled": True,
            },
        )
        stored = await ctx.enqueue(event)
        enqueued += stored is not None
    if newest != mark:
        await store.set_watermark(name, newest)
    return enqueued


async def poll_pagerduty_log(ctx: Ctx, engine: Engine) -> int:
    """Log entries since the watermark, one event per entry (so a change is never hidden
    behind an older entry of the same second); the watermark moves when they were read."""
    conf = engine.conf
    store = engine.store
    now = datetime.now(UTC)
    mark = await store.get_watermark(WM_PD)
    if mark is None:
        await store.set_watermark(WM_PD, _iso(now))
        return 0
    since = _parse_iso(mark) - timedelta(seconds=conf.poll_overlap_seconds)
    entries = await engine.api.pd_log_entries(_iso(since), _iso(now + timedelta(seconds=1)))
    enqueued = 0
    for entry in entries:
        iid = (entry.get("incident") or {}).get("id")
        if not iid or entry.get("type") not in LOG_ENTRY_TYPES or not entry.get("id"):
            continue
        stored = await ctx.enqueue(
            Event(
                source="pagerduty",
                type=POLLED,
                event_id=f"poll:{iid}:{entry['id']}",
                resource=f"pagerduty:incident:{iid}",
                payload={
                    "incident_id": iid,
                    "log_entry": entry["id"],
                    "notes": entry.get("type") == "annotate_log_entry",
                },
            )
        )
        enqueued += stored is not None
    await store.set_watermark(WM_PD, _iso(now))
    return enqueued


async def poll_pagerduty_open(ctx: Ctx, engine: Engine) -> int:
    """The open incidents whose state differs from what was last synced (priority
    changes leave no log entry; an incident triggered while the daemon was down and
    the log entries cannot be read is found here)."""
    conf = engine.conf
    store = engine.store
    if await store.get_watermark(WM_SWEEP) is None:
        await store.set_watermark(WM_SWEEP, _iso(datetime.now(UTC)))
        return 0
    enqueued = 0
    for inc in await engine.api.pd_open_incidents():
        link = await store.get_link(KIND, pd_id=inc["id"], include_unlinked=True)
        view = pd_view(inc)
        if link is not None:
            if link.status != "linked" or view == (link.state or {}).get("pd"):
                continue
        else:
            service = (inc.get("service") or {}).get("id")
            if conf.sync_option_for(service) == "manual" or not engine.mapping.is_mapped_incident(service, view["ep"]):
                continue
        digest = hashlib.sha1(json.dumps(view, sort_keys=True).encode()).hexdigest()[:12]
        stored = await ctx.enqueue(
            Event(
                source="pagerduty",
                type=POLLED,
                event_id=f"poll:{inc['id']}:{inc.get('updated_at') or ''}:{digest}",
                resource=f"pagerduty:incident:{inc['id']}",
                payload={"incident_id": inc["id"], "open_sweep": True},
            )
        )
        enqueued += stored is not None
    return enqueued
