"""The plugin contract: every hook the core calls, with its exact signature.

Implementations are marked with ``dutybridge.hookimpl``. Hooks documented as *may
be async* accept ``async def`` implementations; the core awaits each result. The
core always calls hooks with keyword arguments, so an implementation may accept
any subset of the parameters, by name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

from . import PROJECT

if TYPE_CHECKING:  # pragma: no cover
    import argparse

    from aiohttp import web
    from pydantic import BaseModel

    from .checks import Check
    from .context import Ctx
    from .events import StoredEvent
    from .http import OutboundRequest, OutboundResponse
    from .scheduler import Scheduler

hookspec = pluggy.HookspecMarker(PROJECT)


@hookspec
def register_config_sections() -> "dict[str, type[BaseModel]]":
    """Declare the configuration sections this plugin owns, with their schema.

    Return a mapping of section name to a pydantic model class; the section is read
    from ``[plugins.<name>]`` and validated against the model (unknown keys, wrong
    types and missing required keys are start-up errors naming the dotted key path).
    The validated model is then available as ``ctx.plugin_config(name)``. Field
    descriptions become the comments of ``config.toml.example``.

    Called once per configuration load (start-up and SIGHUP), before anything else.
    Must not be async.
    """


@hookspec
def register_routes(app: "web.Application", ctx: "Ctx") -> None:
    """Add HTTP routes to the daemon's aiohttp application.

    Called once at start-up, before the server listens. Add routes with
    ``app.router.add_route``; a handler is responsible for its own authentication.
    Must not be async.
    """


@hookspec
def register_jobs(scheduler: "Scheduler", ctx: "Ctx") -> None:
    """Add scheduled jobs (polling, reconciliation, housekeeping).

    Call ``scheduler.add_job(func, trigger, id=..., **trigger_args)`` with an explicit,
    unique ``id``; ``func`` may be a coroutine function. Each run gets a fresh log
    context; a failing run is logged and the job keeps its schedule.
    Called once at start-up and again after each reload. Must not be async.
    """


@hookspec
def handle_event(event: "StoredEvent", ctx: "Ctx") -> Any:
    """Act on one inbound event from the inbox. May be async.

    Every implementation is called, in turn. Return a truthy value when this plugin
    acted on the event; when no implementation does, the event is marked
    ``ignored``. Raise to fail the attempt: the whole event is retried later with
    backoff (so implementations must be idempotent), then kept as a dead letter.
    Events of one ``event.resource`` are never handled concurrently and arrive in
    the order they were received.
    """


@hookspec
def escalation_policy_for(group: "dict[str, Any]", priority: "str | None", ctx: "Ctx") -> "str | None":
    """Choose the PagerDuty escalation policy for an incident. May be async.

    ``group`` is the ServiceNow assignment group record (at least ``sys_id`` and
    ``name``); ``priority`` is the ServiceNow priority value (``"1"`` .. ``"5"``) or
    None. Return an escalation policy id, or None to have no opinion.

    Stops at the first non-None result (implementations registered later are
    asked first).
    """


@hookspec
def outbound_request(request: "OutboundRequest", ctx: "Ctx") -> None:
    """Change an outbound request before it is sent. May be async.

    Mutate ``request`` in place: headers, params, JSON body, URL, timeout. Called for
    every attempt of every outbound call (PagerDuty, ServiceNow, or another service a
    plugin calls through ``ctx.http``), plugins first, user hook files last.
    """


@hookspec
def send_request(request: "OutboundRequest", ctx: "Ctx") -> "OutboundResponse | None":
    """Take over the transport for a request (HTTP proxy, relay). May be async.

    Return an ``OutboundResponse`` to answer the request, or None to leave it to the
    next implementation and finally the default direct transport. Stops at the first
    non-None result. Raise ``asyncio.TimeoutError`` or ``aiohttp.ClientError`` for a
    transport failure, so that the pipeline's retry policy applies.
    """


@hookspec
def outbound_response(request: "OutboundRequest", response: "OutboundResponse", ctx: "Ctx") -> None:
    """Observe the response to an outbound request. May be async.

    Called once per attempt, after the transport answered (whatever the status).
    Mutating the response is allowed but rarely wise.
    """


@hookspec
def register_checks(ctx: "Ctx") -> "list[Check]":
    """Add named checks to ``dutybridge check``.

    Return a list of ``dutybridge.checks.Check(name, func)``, where ``func(ctx)`` is a
    coroutine function returning ``dutybridge.checks.CheckResult``. Must not be async
    (the checks themselves are).
    """


@hookspec
def register_cli_commands(subparsers: "argparse._SubParsersAction") -> None:
    """Add ``dutybridge`` subcommands.

    Call ``subparsers.add_parser(name, help=...)``, add arguments, and set
    ``parser.set_defaults(handler=func)`` where ``func(args, ctx)`` is a coroutine
    function returning the exit code. The command runs with the configuration loaded
    and ``ctx`` built (store open, clients ready, server and worker not started).
    Called when the CLI starts with a configuration. Must not be async.
    """


@hookspec
def on_startup(ctx: "Ctx") -> None:
    """The daemon is starting: store open, clients ready, server not yet listening.

    May be async. Raise to abort start-up with the exception's message.
    """


@hookspec
def on_shutdown(ctx: "Ctx") -> None:
    """The daemon is stopping: the server no longer accepts, the worker has drained.

    May be async. Exceptions are logged and do not stop the shutdown.
    """
