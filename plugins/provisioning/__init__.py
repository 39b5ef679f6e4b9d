"""provisioning: ServiceNow groups, users and CIs into PagerDuty (the guide's Step 4), as
``dutybridge provision ...`` / ``dutybridge migrate ...`` and ``POST /api/v1/provision/...``."""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import hdrs, web
from pydantic import BaseModel

from dutybridge import hookimpl
from dutybridge.commands import Command
from dutybridge.context import Ctx, NotReady
from dutybridge.web import Reject, check_credentials, ctx_of, error_response, parse_json_object, read_body, secret_value

from . import actions
from .config import PLUGIN, ProvisioningConfig, plugin_conf
from .run import Run

log = structlog.get_logger("dutybridge.provisioning")

ROUTE = "/api/v1/provision/{what}"
BODY_LIMIT = 256 * 1024


class Provisioning:
    """The plugin object (stateless between commands: every run keeps its own state)."""

    @hookimpl
    def register_config_sections(self) -> dict[str, type[BaseModel]]:
        return {PLUGIN: ProvisioningConfig}

    @hookimpl
    def register_cli_commands(self) -> list[Command]:
        return [
            Command(
                "provision",
                "provisioning: ServiceNow groups, users and CIs into PagerDuty",
                _provision,
                add_arguments=_provision_arguments,
            ),
            Command(
                "migrate",
                "provisioning: move V2 webhooks to V3, import the v7 app's links",
                _migrate,
                add_arguments=_migrate_arguments,
            ),
        ]

    @hookimpl
    def register_routes(self, ctx: Ctx) -> list[web.AbstractRouteDef]:
        return [web.post(ROUTE, provision_route)]


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dry-run", action="store_true", help="print the plan; write nothing")
    p.add_argument(
        "--link-existing",
        action="store_true",
        help="link PagerDuty objects that already carry the name instead of failing",
    )
    p.add_argument(
        "--as-user",
        default="",
        metavar="SN_USER",
        help="the ServiceNow user doing it (user_name, email or sys_id); their PagerDuty user acts",
    )
    p.add_argument("--yes", action="store_true", help="do not ask before creating users (each takes a licence)")


def _provision_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="what", required=True)
    g = sub.add_parser("groups", help="assignment groups: escalation policy, service, webhook (schedule, team)")
    g.add_argument("refs", nargs="*", metavar="NAME|SYS_ID")
    g.add_argument("--all", action="store_true", help="every active group")
    g.add_argument("--query", default="", metavar="ENCODED_QUERY", help="the groups an encoded query selects")
    _common(g)
    u = sub.add_parser("users", help="users: matched by email, else created with phones and notification rules")
    u.add_argument("refs", nargs="*", metavar="USER", help="user_name, email or sys_id")
    u.add_argument("--group", default="", metavar="NAME|SYS_ID", help="the members of this group")
    u.add_argument("--all", action="store_true", help="every active user")
    _common(u)
    c = sub.add_parser("cis", help="configuration items as technical or business services (with dependencies)")
    c.add_argument("refs", nargs="*", metavar="CI", help="name or sys_id")
    c.add_argument("--as", dest="as_", choices=("technical", "business"), default="technical")
    c.add_argument(
        "--with-dependencies",
        action="store_true",
        help="walk cmdb_rel_ci from each CI (no depth limit) and associate the dependencies",
    )
    c.add_argument("--custom", action="store_true", help="bulk: the custom_services rows of the config")
    c.add_argument("--plan", action="store_true", help="with --custom: show services and relationships; create nothing")
    _common(c)
    w = sub.add_parser("webhook", help="link an existing PagerDuty service and give it a webhook subscription")
    w.add_argument("--service", required=True, metavar="PD_SERVICE_ID")
    target = w.add_mutually_exclusive_group(required=True)
    target.add_argument("--group", default="", metavar="NAME|SYS_ID")
    target.add_argument("--ci", default="", metavar="NAME|SYS_ID")
    w.add_argument(
        "--extension", action="store_true", help="a legacy ServiceNow v7 extension instead of a V3 subscription"
    )
    _common(w)


def _migrate_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="what", required=True)
    w = sub.add_parser("webhooks", help="replace V2 extensions on linked services with V3 webhook subscriptions")
    w.add_argument("--rollback", action="store_true", help="put the recorded V2 extensions back")
    _common(w)
    v = sub.add_parser("from-v7", help="import the v7 app's x_pd_integration_* links into the store")
    _common(v)


def _run_for(ctx: Ctx | None, args: argparse.Namespace, **kw: Any) -> Run:
    if ctx is None:  # only a standalone command runs without one, and these are not
        raise NotReady("provisioning needs the daemon's configuration")
    return Run(ctx, plugin_conf(ctx), dry_run=args.dry_run, link_existing=args.link_existing, **kw)


async def _provision(args: argparse.Namespace, ctx: Ctx | None) -> int:
    run = _run_for(ctx, args)
    return await actions.run_command(run, args.what, vars(args), confirm=_confirm(args, run))


async def _migrate(args: argparse.Namespace, ctx: Ctx | None) -> int:
    run = _run_for(ctx, args)
    return await actions.run_command(run, f"migrate-{args.what}", vars(args), confirm=_confirm(args, run))


def _confirm(args: argparse.Namespace, run: Run) -> Callable[[int], bool]:
    """Ask before users are created (the guide's licence warning); --yes answers for the operator."""

    def ask(count: int) -> bool:
        print(f"{count} PagerDuty user(s) will be created: {count} licence(s) used.", file=run.err, flush=True)
        if args.yes or run.dry_run:
            return True
        if not sys.stdin.isatty():
            print("not confirmed: pass --yes to create them without asking", file=run.err, flush=True)
            return False
        return input("Create them? [y/N] ").strip().lower() in ("y", "yes")

    return ask


async def provision_route(request: web.Request) -> web.StreamResponse:
    try:
        return await _provision_route(request)
    except Reject as rej:
        log.warning("provision_request_refused", status=rej.status, reason=rej.code, detail=rej.reason)
        return error_response(rej.status, rej.reason, headers=rej.headers)


async def _provision_route(request: web.Request) -> web.StreamResponse:
    """``POST /api/v1/provision/{groups|users|cis|webhook}``, for the ServiceNow UI action:
    ``{"refs": [sys_id, ...], "requested_by": user_name, "as": ..., "dry_run": ...}``;
    answers the outcomes and the summary (200, ``failed`` counted in it)."""
    ctx = ctx_of(request)
    conf = plugin_conf(ctx)
    token = secret_value(conf.api_token)
    if not token:
        raise Reject(503, "not_configured", "plugins.provisioning.api_token is not set")
    if not check_credentials(request.headers.get(hdrs.AUTHORIZATION), token=token):
        raise Reject(401, "unauthorized", "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})
    what = request.match_info["what"]
    if what not in actions.HTTP_ACTIONS:
        raise Reject(
            404, "not_found", f"unknown provisioning action {what!r} (known: {', '.join(actions.HTTP_ACTIONS)})"
        )
    body = parse_json_object(await read_body(request, BODY_LIMIT))
    args = actions.http_args(what, body)
    out = io.StringIO()
    run = Run(
        ctx,
        conf,
        dry_run=args["dry_run"],
        link_existing=args["link_existing"],
        out=out,
        err=io.StringIO(),
        interactive=False,
    )
    # The ServiceNow user who clicked is the operator confirming: licences are theirs to spend.
    code = await actions.run_command(run, what, args, confirm=lambda count: True)
    return web.json_response(
        {
            "outcomes": [o.as_dict() for o in run.outcomes],
            "summary": {k: v for k, v in run.counts().items()},
            "exit_code": code,
        }
    )
