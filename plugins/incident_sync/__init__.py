"""incident_sync: PagerDuty <-> ServiceNow incidents, the whole lifecycle, both ways.

What PagerDuty's ServiceNow app does (trigger, acknowledge, reassign, resolve, reopen,
notes, priority), without its duplicates, feedback loops and lost updates: events are
doorbells, the handler re-reads the incident and syncs only what differs from the state
last synced across the link (see ``engine``); a scheduled poll of both sides catches
whatever a lost webhook would have carried (``poll``).
"""

from __future__ import annotations

import argparse
import uuid
from typing import Any

import structlog
from aiohttp import hdrs, web

from dutybridge import hookimpl
from dutybridge.checks import Check, CheckResult
from dutybridge.commands import Command
from dutybridge.context import Ctx
from dutybridge.events import Event
from dutybridge.scheduler import Job
from dutybridge.web import check_credentials, ctx_of, error_response, parse_json_object, read_body, Reject

from .config import IncidentSyncConfig
from .engine import PLUGIN, SYNC_REQUESTED, Engine
from .poll import poll

log = structlog.get_logger("dutybridge.incident_sync")

SYNC_ROUTE = "/webhooks/pagerduty/sync"


class IncidentSync:
    """The plugin: one instance per plugin manager, holding the engine (locks, the
    mapping, caches) for the daemon's ``ctx``."""

    def __init__(self) -> None:
        self._engine: Engine | None = None

    def engine(self, ctx: Ctx) -> Engine:
        """The engine for this ``ctx`` (made on first use: CLI commands get no on_startup)."""
        if self._engine is None or self._engine.ctx is not ctx:
            self._engine = Engine(ctx)
        return self._engine

    @hookimpl
    def register_config_sections(self) -> dict[str, Any]:
        return {PLUGIN: IncidentSyncConfig}

    @hookimpl
    async def on_startup(self, ctx: Ctx) -> None:
        try:
            await self.engine(ctx).refresh()
        except Exception as exc:  # noqa: BLE001 - ServiceNow may be down at start; links load on first use
            log.warning("links_not_loaded", reason="retried on the first event", error=f"{type(exc).__name__}: {exc}")

    @hookimpl
    async def on_shutdown(self, ctx: Ctx) -> None:
        if self._engine is not None:
            await self._engine.close()

    @hookimpl
    def register_jobs(self, ctx: Ctx) -> list[Job]:
        # Called again after each reload: static links may have changed with the config.
        self.engine(ctx).stale()
        seconds = ctx.plugin_config(PLUGIN).poll_interval_seconds
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
    def register_cli_commands(self) -> list[Command]:
        return [Command("incident", "incident sync: ask for a PagerDuty incident to be synced", self._incident_command,
                        add_arguments=_incident_arguments)]

    async def _incident_command(self, args: argparse.Namespace, ctx: Ctx) -> int:
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
    stored = await ctx.enqueue(Event(
        source=PLUGIN, type=SYNC_REQUESTED, event_id=event_id or f"sync:{pd_id}:{uuid.uuid4().hex}",
        resource=f"pagerduty:incident:{pd_id}", payload={"incident_id": pd_id, "requested_by": requested_by}))
    return stored is not None


def _incident_ids(doc: dict[str, Any]) -> list[tuple[str, str | None]]:
    """(incident id, message id) pairs from a custom incident action's body: the V2 shape
    (``messages[].incident``), a V3 envelope (``event.data``), or ``{"incident_id"}``."""
    out: list[tuple[str, str | None]] = []
    for message in doc.get("messages") or []:
        if isinstance(message, dict) and isinstance(message.get("incident"), dict):
            out.append((str(message["incident"].get("id") or ""), message.get("id")))
    event = doc.get("event")
    if isinstance(event, dict) and isinstance(event.get("data"), dict):
        data = event["data"]
        iid = data.get("id") if data.get("type") == "incident" else (data.get("incident") or {}).get("id")
        out.append((str(iid or ""), event.get("id")))
    if isinstance(doc.get("incident_id"), str):
        out.append((doc["incident_id"], None))
    return [(iid, mid) for iid, mid in out if iid]


async def sync_action(request: web.Request) -> web.StreamResponse:
    """PagerDuty custom incident action "Sync with ServiceNow" (manual sync option).

    Authenticated like the doorbell: the action's custom header carries the bearer
    token, or its URL the basic credentials.
    """
    # The running daemon's ctx; a reload replaces ctx.config, read here per request.
    ctx = ctx_of(request)
    sn = ctx.config.servicenow
    token = sn.doorbell_token.get_secret_value() if sn.doorbell_token else ""
    password = sn.doorbell_password.get_secret_value() if sn.doorbell_password else ""
    if not (token or (sn.doorbell_username and password)):
        return error_response(503, "no doorbell credential is configured for the sync action")
    if not check_credentials(request.headers.get(hdrs.AUTHORIZATION), token=token,
                             username=sn.doorbell_username if password else "", password=password):
        return error_response(401, "missing or wrong credentials",
                              headers={"WWW-Authenticate": 'Bearer realm="dutybridge"'})
    try:
        doc = parse_json_object(await read_body(request, ctx.config.daemon.max_body_bytes))
    except Reject as rej:
        return error_response(rej.status, rej.reason, headers=rej.headers)
    ids = _incident_ids(doc)
    if not ids:
        return error_response(400, "no incident id in the body (messages[].incident.id, event.data, or incident_id)")
    accepted = 0
    for iid, mid in ids:
        accepted += await request_sync(ctx, iid, requested_by="custom incident action",
                                       event_id=f"action:{mid}" if mid else None)
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
    return CheckResult(True, f"{len(mapping.groups)} group(s) and {len(mapping.cis)} CI(s) linked to existing PagerDuty objects")
