"""incident_sync: PagerDuty <-> ServiceNow incidents, the whole lifecycle, both ways."""

from __future__ import annotations

import argparse
import re
import uuid
from typing import TYPE_CHECKING, Any, cast

import structlog
from aiohttp import web

from dutybridge import hookimpl
from dutybridge.checks import Check, CheckResult
from dutybridge.commands import Command
from dutybridge.context import Ctx, NotReady
from dutybridge.events import Event
from dutybridge.scheduler import Job
from dutybridge.web import Reject, ctx_of, doorbell_auth, error_response, parse_json_object, read_body

from .config import IncidentSyncConfig
from .engine import PLUGIN, SYNC_REQUESTED, Engine
from .poll import poll
from .views import TABLES

if TYPE_CHECKING:  # pragma: no cover
    from pydantic import BaseModel

log = structlog.get_logger("dutybridge.incident_sync")

SYNC_ROUTE = "/webhooks/pagerduty/sync"


class IncidentSync:
    """The plugin: one instance per plugin manager, holding the engine (locks, the
    mapping, caches) for the daemon's ``ctx``.

    What PagerDuty's ServiceNow app does (trigger, acknowledge, reassign, resolve, reopen,
    notes, priority), without its duplicates, feedback loops and lost updates: events are
    doorbells, the handler re-reads the incident and syncs only what differs from the state
    last synced across the link (see ``engine``); a scheduled poll of both sides catches
    whatever a lost webhook would have carried (``poll``).
    """

    def __init__(self) -> None:
        self._engine: Engine | None = None

    def engine(self, ctx: Ctx) -> Engine:
        """The engine for this ``ctx`` (made on first use: CLI commands get no on_startup)."""
        if self._engine is None or self._engine.ctx is not ctx:
            self._engine = Engine(ctx)
        return self._engine

    @hookimpl
    def register_config_sections(self) -> dict[str, type[BaseModel]]:
        return {PLUGIN: IncidentSyncConfig}

    @hookimpl
    async def on_startup(self, ctx: Ctx) -> None:
        try:
            await self.engine(ctx).refresh()
        except Exception as exc:
            log.warning("links_not_loaded", reason="retried on the first event", error=f"{type(exc).__name__}: {exc}")

    @hookimpl
    async def on_shutdown(self, ctx: Ctx) -> None:
        if self._engine is not None:
            await self._engine.close()

    @hookimpl
    def register_jobs(self, ctx: Ctx) -> list[Job]:
        # Called again after each reload: static links may have changed with the config.
        self.engine(ctx).stale()
        seconds = self.engine(ctx).conf.poll_interval_seconds
        if seconds <= 0:
            return []

        async def reconcile() -> None:
            await poll(ctx, self.engine(ctx))

        return [Job(id="incident_sync.poll", func=reconcile, trigger="interval", trigger_args={"seconds": seconds})]

    @hookimpl
    def report_health(self, ctx: Ctx) -> dict[str, str]:
        # The poll's parts as their last run left them (none while the poll is off).
        if self._engine is None or self._engine.ctx is not ctx:
            return {}
        return self._engine.poll_health.report()

    @hookimpl
    async def handle_event(self, event: Event, ctx: Ctx) -> bool:
        return await self.engine(ctx).handle(event)

    @hookimpl
    def register_routes(self, ctx: Ctx) -> list[web.AbstractRouteDef]:
        return [web.post(SYNC_ROUTE, sync_action)]

    @hookimpl
    def register_servicenow_tables(self, ctx: Ctx) -> list[str]:
        # What Engine.handle acts on: the incident tables, and with v7_fields the groups
        # and CIs whose PagerDuty fields feed the mapping.
        tables = list(TABLES)
        if cast(IncidentSyncConfig, ctx.plugin_config(PLUGIN)).v7_fields:
            tables += ["sys_user_group", "cmdb_ci"]
        return tables

    @hookimpl
    def register_cli_commands(self) -> list[Command]:
        return [
            Command(
                "incident",
                "incident sync: ask for a PagerDuty incident to be synced",
                self._incident_command,
                add_arguments=_incident_arguments,
            )
        ]

    async def _incident_command(self, args: argparse.Namespace, ctx: Ctx | None) -> int:
        if ctx is None:  # only a standalone command runs without one, and this one is not
            raise NotReady("incident sync needs the daemon's configuration")
        if not _PD_ID.fullmatch(args.incident_id):
            print(f"not a PagerDuty incident id: {args.incident_id[:40]!r} (up to 20 capital letters and digits)")
            return 2
        if ctx.pagerduty is not None:
            inc = await self.engine(ctx).api.pd_incident(args.incident_id)
            if inc is None:
                print(f"PagerDuty incident {args.incident_id} not found")
                return 1
        await request_sync(ctx, args.incident_id, requested_by="dutybridge incident sync")
        print(f"sync of PagerDuty incident {args.incident_id} queued; the running daemon opens its ServiceNow incident")
        return 0

    @hookimpl
    def register_checks(self, ctx: Ctx) -> list[Check]:
        async def links(ctx: Ctx) -> CheckResult:
            return await check_links(self.engine(ctx), ctx)

        return [Check("Incident sync links", links)]


def _incident_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="incident_command", required=True)
    sync = sub.add_parser("sync", help="sync one PagerDuty incident to ServiceNow now (manual sync option)")
    sync.add_argument("incident_id", metavar="PD_ID", help="PagerDuty incident id")


# -- manual sync -------------------------------------------------------------------------
async def request_sync(ctx: Ctx, pd_id: str, *, requested_by: str, event_id: str | None = None) -> bool:
    """Ask for PagerDuty incident ``pd_id`` to be synced (services whose sync option is manual).

    The request goes through the inbox like any event, on the incident's resource, so it
    is ordered with the incident's webhooks. False when it was a duplicate.
    """
    stored = await ctx.enqueue(
        Event(
            source=PLUGIN,
            type=SYNC_REQUESTED,
            event_id=event_id or f"sync:{pd_id}:{uuid.uuid4().hex}",
            resource=f"pagerduty:incident:{pd_id}",
            payload={"incident_id": pd_id, "requested_by": requested_by},
        )
    )
    return stored is not None


# A PagerDuty id: "PT4KHLK", "Q0RIJJZL24RC6W". A message or event id is freer (uuids).
_PD_ID = re.compile(r"[A-Z0-9]{1,20}")
_MESSAGE_ID = re.compile(r"[A-Za-z0-9_.\-]{1,128}")
# One custom action is one incident; V2 batches a few. A bound keeps one request from
# queueing thousands of syncs.
MAX_INCIDENTS = 100


def _pd_id(value: Any, where: str) -> str:
    if value is None:
        raise Reject(400, "bad_envelope", f"{where}: required field is missing")
    if not isinstance(value, str) or not _PD_ID.fullmatch(value):
        raise Reject(400, "bad_envelope", f"{where}: expected a PagerDuty id (up to 20 capital letters and digits)")
    return value


def _message_id(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _MESSAGE_ID.fullmatch(value):
        raise Reject(400, "bad_envelope", f"{where}: expected an id (letters, digits, _ . -, up to 128)")
    return value


def _object(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        raise Reject(400, "bad_envelope", f"{where}: required field is missing")
    if not isinstance(value, dict):
        raise Reject(400, "bad_envelope", f"{where}: expected an object")
    return value


def _incident_ids(doc: dict[str, Any]) -> list[tuple[str, str | None]]:
    """(incident id, message id) pairs from a custom incident action's body: the V2 shape
    (``messages[].incident.id``), a V3 envelope (``event.data``), or ``{"incident_id"}``.

    Every id is checked before any is used: Reject(400) naming the first bad field.
    """
    out: list[tuple[str, str | None]] = []
    if "messages" in doc:
        messages = doc["messages"]
        if not isinstance(messages, list):
            raise Reject(400, "bad_envelope", "messages: expected an array")
        if len(messages) > MAX_INCIDENTS:
            raise Reject(400, "bad_envelope", f"messages: at most {MAX_INCIDENTS} per request")
        for i, message in enumerate(messages):
            message = _object(message, f"messages[{i}]")
            incident = _object(message.get("incident"), f"messages[{i}].incident")
            out.append(
                (
                    _pd_id(incident.get("id"), f"messages[{i}].incident.id"),
                    _message_id(message.get("id"), f"messages[{i}].id"),
                )
            )
    if "event" in doc:
        event = _object(doc["event"], "event")
        data = _object(event.get("data"), "event.data")
        if data.get("type") == "incident":
            iid = _pd_id(data.get("id"), "event.data.id")
        else:
            iid = _pd_id(_object(data.get("incident"), "event.data.incident").get("id"), "event.data.incident.id")
        out.append((iid, _message_id(event.get("id"), "event.id")))
    if "incident_id" in doc:
        out.append((_pd_id(doc["incident_id"], "incident_id"), None))
    if not out:
        raise Reject(
            400, "bad_envelope", "no incident id in the body (messages[].incident.id, event.data, or incident_id)"
        )
    return out


async def sync_action(request: web.Request) -> web.StreamResponse:
    """PagerDuty custom incident action "Sync with ServiceNow" (manual sync option).

    Authenticated like the doorbell: the action's custom header carries the bearer
    token, or its URL the basic credentials. Nothing is stored unless every id in the
    body is valid.
    """
    # The running daemon's ctx; a reload replaces ctx.config, read here per request.
    ctx = ctx_of(request)
    try:
        doorbell_auth(request, ctx.config.servicenow)
        doc = parse_json_object(await read_body(request, ctx.config.daemon.max_body_bytes))
        ids = _incident_ids(doc)
    except Reject as rej:
        log.warning("sync_action_rejected", status=rej.status, reason=rej.code, detail=rej.reason)
        return error_response(rej.status, rej.reason, headers=rej.headers)
    accepted = 0
    for iid, mid in ids:
        accepted += await request_sync(
            ctx, iid, requested_by="custom incident action", event_id=f"action:{mid}" if mid else None
        )
    log.info("sync_requested", incidents=[i for i, _ in ids], accepted=accepted)
    return web.json_response({"status": "accepted", "incidents": [i for i, _ in ids]}, status=202)


# -- dutybridge check ----------------------------------------------------------------
async def check_links(engine: Engine, ctx: Ctx) -> CheckResult:
    """Every linked group/CI points at PagerDuty objects that exist."""
    if ctx.store is None:
        return CheckResult(False, "the store is not open")
    mapping = await engine.refresh(write=False)
    problems = list(mapping.problems)
    cache: dict[tuple[str, str], bool] = {}

    async def exists(kind: str, pd_id: str) -> bool:
        if (kind, pd_id) not in cache:
            cache[(kind, pd_id)] = await engine.api.pd_exists(kind, pd_id)
        return cache[(kind, pd_id)]

    for target in [*mapping.groups, *mapping.cis]:
        label = f"{target.kind} {target.name or target.sys_id} ({target.source})"
        if target.service and not await exists("service", target.service):
            problems.append(f"{label}: PagerDuty service {target.service} does not exist")
        if target.escalation_policy and not await exists("escalation_policy", target.escalation_policy):
            problems.append(f"{label}: PagerDuty escalation policy {target.escalation_policy} does not exist")
    for link in await ctx.store.list_links("user"):
        if not await exists("user", link.pd_id):
            problems.append(f"user link {link.sn_id}: PagerDuty user {link.pd_id} does not exist")
    if problems:
        return CheckResult(False, "; ".join(problems))
    return CheckResult(
        True, f"{len(mapping.groups)} group(s) and {len(mapping.cis)} CI(s) linked to existing PagerDuty objects"
    )
