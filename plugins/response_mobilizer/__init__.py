"""response_mobilizer: PagerDuty's incident-response actions from the ServiceNow side (the
guide's "Use PagerDuty Actions in ServiceNow"): add responders, conference bridges,
incident workflows / response plays, status updates.

Each action is an ``Action`` in one registry (``ResponseMobilizer.registry``), served two
ways: ``/api/v1/incidents/{ref}/{action}`` (bearer token; ServiceNow UI actions call it,
contrib/servicenow/) and ``dutybridge mobilize ...``. Another plugin adds actions with a
``mobilizer_actions`` list on its plugin object (see README.md).
"""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

import structlog
from aiohttp import hdrs, web
from pydantic import BaseModel

from dutybridge import hookimpl
from dutybridge.commands import Command
from dutybridge.context import Ctx, NotReady
from dutybridge.http import ApiError
from dutybridge.web import (
    Reject,
    challenge,
    check_credentials,
    ctx_of,
    error_response,
    parse_json_object,
    read_body,
    secret_value,
)

from .actions import BUILTIN_ACTIONS
from .call import Action, ActionError, perform
from .config import PLUGIN, MobilizerConfig, plugin_conf

log = structlog.get_logger("dutybridge.response_mobilizer")

API_ROUTE = "/api/v1/incidents/{ref}/{action}"
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")  # an action's URL segment and CLI name

__all__ = ["Action", "ActionError", "ResponseMobilizer"]


class ResponseMobilizer:
    """The plugin. ``actions`` holds the built-in actions; ``registry(ctx)`` adds those of
    every registered plugin object with a ``mobilizer_actions`` list, read at call time,
    so the daemon and one-off CLI commands (which run no on_startup) see the same ones."""

    def __init__(self) -> None:
        self.actions: dict[str, Action] = {a.name: a for a in BUILTIN_ACTIONS}

    def registry(self, ctx: Ctx) -> dict[str, Action]:
        """Every action, by name: the built-in ones win over a plugin's of the same name."""
        found = dict(self.actions)
        for plugin in ctx.pm.get_plugins():
            for action in getattr(plugin, "mobilizer_actions", None) or ():
                if isinstance(action, Action) and _NAME.match(action.name):
                    found.setdefault(action.name, action)
        return found

    @hookimpl
    def register_config_sections(self) -> dict[str, type[BaseModel]]:
        return {PLUGIN: MobilizerConfig}

    @hookimpl
    def register_routes(self, ctx: Ctx) -> list[web.AbstractRouteDef]:
        return [web.get(API_ROUTE, self.serve), web.post(API_ROUTE, self.serve)]

    @hookimpl
    def register_cli_commands(self) -> list[Command]:
        return [
            Command(
                "mobilize",
                "response mobilizer: responders, conference bridges, workflows, status updates",
                self.command,
                add_arguments=_arguments,
            )
        ]

    # -- HTTP ---------------------------------------------------------------------------
    async def serve(self, request: web.Request) -> web.StreamResponse:
        ctx = ctx_of(request)
        conf = plugin_conf(ctx)
        token = secret_value(conf.api_token)
        if not token:
            return error_response(503, f"plugins.{PLUGIN}.api_token is not set: the mobilizer API is off")
        if not check_credentials(request.headers.get(hdrs.AUTHORIZATION), token=token):
            return error_response(401, "missing or wrong bearer token", headers=challenge(True, False))
        name = request.match_info["action"]
        actions = self.registry(ctx)
        action = actions.get(name)
        if action is None:
            return error_response(404, f"no action {name!r} (known: {', '.join(sorted(actions))})")
        body: dict[str, Any] = {}
        if request.method == "POST":
            try:
                body = parse_json_object(await read_body(request, ctx.config.daemon.max_body_bytes))
            except Reject as rej:
                return error_response(rej.status, rej.reason, headers=rej.headers)
        try:
            result = await perform(ctx, action, request.method, request.match_info["ref"], body)
        except ActionError as exc:
            log.info("mobilizer_refused", action=name, status=exc.status, reason=exc.reason)
            return error_response(exc.status, exc.reason)
        except ApiError as exc:
            log.warning("mobilizer_failed", action=name, error=str(exc))
            return error_response(502, f"{name} failed: {exc}")
        return web.json_response(result)

    # -- CLI ----------------------------------------------------------------------------
    async def command(self, args: argparse.Namespace, ctx: Ctx | None) -> int:
        if ctx is None:  # only a standalone command runs without one, and this one is not
            raise NotReady("mobilize needs the daemon's configuration")
        try:
            name, method, body = _request(args)
        except ValueError as exc:
            print(f"dutybridge mobilize: {exc}")
            return 2
        actions = self.registry(ctx)
        action = actions.get(name)
        if action is None:
            print(f"dutybridge mobilize: no action {name!r} (known: {', '.join(sorted(actions))})")
            return 2
        try:
            result = await perform(ctx, action, method, args.incident, body)
        except ActionError as exc:
            print(f"dutybridge mobilize {args.mobilize_command}: {exc.reason}")
            return 2 if exc.status == 400 else 1
        except ApiError as exc:
            print(f"dutybridge mobilize {args.mobilize_command}: {exc}")
            return 1
        print(json.dumps(result, indent=2, sort_keys=True))
        return 0


def _arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="mobilize_command", required=True)

    def common(p: argparse.ArgumentParser, acting: str = "the acting ServiceNow user (user_name or sys_id)") -> None:
        p.add_argument("incident", metavar="INCIDENT", help="ServiceNow number or sys_id, or PagerDuty incident id")
        p.add_argument("--as", dest="requested_by", metavar="USER", help=acting)

    def bridge_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dial-in", help="dial-in number")
        p.add_argument("--url", help="meeting URL")

    p = sub.add_parser("responders", help="add responders (users, groups' escalation policies)")
    common(p)
    p.add_argument("--user", action="append", default=[], help="ServiceNow user to request (repeat)")
    p.add_argument("--group", action="append", default=[], help="ServiceNow assignment group whose policy to request")
    p.add_argument("--pd-user", action="append", default=[], help="PagerDuty user id to request")
    p.add_argument("--escalation-policy", action="append", default=[], help="PagerDuty escalation policy id to request")
    p.add_argument("--message", help="message to the responders")
    p.add_argument("--bridge", help="also set this configured conference bridge")
    bridge_args(p)
    p = sub.add_parser("bridge", help="set the conference bridge (without --as: show it and the configured ones)")
    common(p)
    p.add_argument("--name", help="a configured bridge's name")
    bridge_args(p)
    p = sub.add_parser("workflows", help="list incident workflows (and response plays); --run one")
    common(p)
    p.add_argument("--run", metavar="WORKFLOW", help="workflow (or response play) id or name to run")
    p = sub.add_parser("plays", help="list legacy response plays; --run one")
    common(p)
    p.add_argument("--run", metavar="PLAY", help="response play id or name to run")
    p = sub.add_parser("status", help="send a status update (without --message: show impacts and publication)")
    common(p)
    p.add_argument("--message", help="the status update")
    p.add_argument("--subject", help="custom email subject (with --html)")
    p.add_argument("--html", help="custom email HTML (with --subject)")
    p.add_argument("--impact", action="append", default=[], help="mark this business service (id or name) impacted")
    p = sub.add_parser("action", help="any registered action, e.g. one a plugin adds")
    p.add_argument("name", metavar="ACTION", help="the action's name")
    common(p)
    p.add_argument("--body", default="{}", help="JSON object for the action (POST when --as is given, else GET)")


def _request(args: argparse.Namespace) -> tuple[str, str, dict[str, Any]]:
    """(action name, method, body) for a ``mobilize`` command line."""
    what, user = args.mobilize_command, args.requested_by
    body: dict[str, Any] = {"requested_by": user} if user else {}

    def bridge() -> dict[str, Any]:
        if getattr(args, "name", None) or getattr(args, "bridge", None):
            return {"name": getattr(args, "name", None) or args.bridge}
        return {k: v for k, v in (("dial_in_number", args.dial_in), ("url", args.url)) if v}

    def post(action_name: str, /, **fields: Any) -> tuple[str, str, dict[str, Any]]:
        if not user:
            raise ValueError(f"{what}: --as USER (the acting ServiceNow user) is required")
        return action_name, "POST", {**body, **{k: v for k, v in fields.items() if v not in (None, [], {})}}

    if what == "responders":
        return post(
            "responders",
            users=args.user,
            groups=args.group,
            pagerduty_user_ids=args.pd_user,
            escalation_policy_ids=args.escalation_policy,
            message=args.message,
            conference_bridge=bridge(),
        )
    if what == "bridge":
        return post("conference-bridge", **bridge()) if user else ("conference-bridge", "GET", {})
    if what in ("workflows", "plays"):
        name, key = ("workflows", "workflow") if what == "workflows" else ("response-plays", "response_play")
        return post(name, **{key: args.run}) if args.run else (name, "GET", {})
    if what == "status":
        if not args.message:
            return "status-updates", "GET", {}
        return post(
            "status-updates",
            message=args.message,
            subject=args.subject,
            html_message=args.html,
            impacted_business_services=args.impact,
        )
    try:
        extra = json.loads(args.body)
    except ValueError as exc:
        raise ValueError(f"--body: not JSON ({exc})") from None
    if not isinstance(extra, dict):
        raise ValueError("--body: a JSON object is needed")
    return args.name, "POST" if user else "GET", {**extra, **body}
