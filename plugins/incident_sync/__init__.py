"""incident_sync: PagerDuty <-> ServiceNow incidents, the whole lifecycle, both ways.

What PagerDuty's ServiceNow app does (trigger, acknowledge, reassign, resolve, reopen,
notes, priority), without its duplicates, feedback loops and lost updates: events are
doorbells, the handler re-reads the incident and syncs only what differs from the state
last synced across the link (see ``engine``); a scheduled poll of both sides catches
whatever a lost webhook would have carried (``poll``).
"""

from __future__ import annotations

import uuid
from typing import Any

import structlog
from aiohttp import hdrs, web

from dutybridge import hookimpl
from dutybridge.checks import Check, CheckResult
from dutybridge.events import Event
from dutybridge.server import check_credentials, error_response

from .config import IncidentSyncConfig
from .engine import PLUGIN, SYNC_REQUESTED, Engine
from .poll import poll

log = structlog.get_logger("dutybridge.incident_sync")

SYNC_ROUTE = "/webhooks/pagerduty/sync"


def engine_of(ctx: Any) -> Engine:
    """The plugin's engine for this daemon (made on first use: CLI commands get no on_startup)."""
    engine = ctx.extras.get(PLUGIN)
    if engine is None or engine.ctx is not ctx:
        engine = ctx.extras[PLUGIN] = Engine(ctx)
    return engine


@hookimpl
def register_config_sections():
    return {PLUGIN: IncidentSyncConfig}


@hookimpl
async def on_startup(ctx):
    engine = engine_of(ctx)
    try:
        await engine.refresh()
    except Exception as exc:  # noqa: BLE001 - ServiceNow may be down at start; links load on first use
        log.warning("incident_sync: links not loaded at start; retried on the first event", error=f"{type(exc).__name__}: {exc}")


@hookimpl
async def on_shutdown(ctx):
    engine = ctx.extras.get(PLUGIN)
    if engine is not None:
        await engine.close()


@hookimpl
def register_jobs(scheduler, ctx):
    # Called again after each reload: static links may have changed with the config.
    engine_of(ctx).stale()
    seconds = ctx.plugin_config(PLUGIN).poll_interval_seconds
    if seconds > 0:
        async def reconcile() -> None:
            await poll(ctx, engine_of(ctx))

        scheduler.add_job(reconcile, "interval", id="incident_sync.poll", seconds=seconds)


@hookimpl
async def handle_event(event, ctx):
    return await engine_of(ctx).handle(event)


# -- manual sync -------------------------------------------------------------------------
async def request_sync(ctx: Any, pd_id: str, *, requested_by: str, event_id: str | None = None) -> bool:
    """Ask for PagerDuty incident ``pd_id`` to be synced (services whose sync option is manual).

    The request goes through the inbox like any event, on the incident's resource, so it
    is ordered with the incident's webhooks. False when it was a duplicate.
    """
    stored = await ctx.enqueue(Event(
        source=PLUGIN, type=SYNC_REQUESTED, event_id=event_id or f"sync:{pd_id}:{uuid.uuid4().hex}",
        resource=f"pagerduty:incident:{pd_id}", payload={"incident_id": pd_id, "requested_by": requested_by}))
    return stored is not None


def _incident_ids(doc: dict) -> list[tuple[str, str | None]]:
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


@hookimpl
def register_routes(app, ctx):
    async def sync_action(request: web.Request) -> web.StreamResponse:
        """PagerDuty custom incident action "Sync with ServiceNow" (manual sync option).

        Authenticated like the doorbell: the action's custom header carries the bearer
        token, or its URL the basic credentials.
        """
        # ctx is the running daemon's; a reload replaces ctx.config, read here per request.
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
            doc = await request.json()
        except ValueError:
            return error_response(400, "body: not valid JSON")
        if not isinstance(doc, dict):
            return error_response(400, "body: expected a JSON object")
        ids = _incident_ids(doc)
        if not ids:
            return error_response(400, "no incident id in the body (messages[].incident.id, event.data, or incident_id)")
        accepted = 0
        for iid, mid in ids:
            accepted += await request_sync(ctx, iid, requested_by="custom incident action",
                                           event_id=f"action:{mid}" if mid else None)
        log.info("incident_sync: sync requested", incidents=[i for i, _ in ids], accepted=accepted)
        return web.json_response({"status": "accepted", "incidents": [i for i, _ in ids]}, status=202)

    app.router.add_post(SYNC_ROUTE, sync_action)


@hookimpl
def register_cli_commands(subparsers):
    parser = subparsers.add_parser("incident", help="incident sync: ask for a PagerDuty incident to be synced")
    sub = parser.add_subparsers(dest="incident_command", required=True)
    sync = sub.add_parser("sync", help="sync one PagerDuty incident to ServiceNow now (manual sync option)")
    sync.add_argument("incident_id", metavar="PD_ID", help="PagerDuty incident id")

    async def run(args, ctx) -> int:
        if ctx.pagerduty is not None:
            inc = await engine_of(ctx).api.pd_incident(args.incident_id)
            if inc is None:
                print(f"PagerDuty incident {args.incident_id} not found")
                return 1
        await request_sync(ctx, args.incident_id, requested_by="dutybridge incident sync")
        print(f"sync of PagerDuty incident {args.incident_id} queued; the running daemon opens its ServiceNow incident")
        return 0

    sync.set_defaults(handler=run)


# -- dutybridge check ----------------------------------------------------------------
async def check_links(ctx: Any) -> CheckResult:
    """Every linked group/CI points at PagerDuty objects that exist."""
    engine = engine_of(ctx)
    opened = None
    if ctx.store is None:
        # `dutybridge check` runs without the store; links written by provisioning live there.
        from dutybridge.store import open_store

        opened = open_store(ctx.config.daemon.store_url, ctx.config.resolve_path(".", state=True))
        await opened.open()
        ctx.store = opened
    try:
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
    finally:
        if opened is not None:
            ctx.store = None
            await opened.close()
    if problems:
        return CheckResult(False, "; ".join(problems))
    return CheckResult(True, f"{len(mapping.groups)} group(s) and {len(mapping.cis)} CI(s) linked to existing PagerDuty objects")


@hookimpl
def register_checks(ctx):
    return [Check("Incident sync links", check_links)]
