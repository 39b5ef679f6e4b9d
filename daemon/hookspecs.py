"""The plugin contract: every hook the core calls, with its exact signature.
Implementations are marked with ``dutybridge.hookimpl``.
"""

# A hookspec is a signature pluggy reads and nobody calls: its body is only the docstring.
# mypy: disable-error-code="empty-body"

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

from . import PROJECT

if TYPE_CHECKING:  # pragma: no cover
    from aiohttp import web
    from pydantic import BaseModel

    from .checks import Check
    from .commands import Command
    from .context import Ctx
    from .events import StoredEvent
    from .http import OutboundRequest, OutboundResponse
    from .scheduler import Job

# Hooks documented as *may be async* accept ``async def`` implementations; the core awaits
# each result. The core calls each hook through ``dutybridge.hooks.Hooks`` (``ctx.hooks``),
# one implementation at a time, so an implementation may accept any subset of the
# parameters, by name. ``register_*`` hooks return what the core should add;
# ``outbound_*`` hooks change what they are given; ``on_*``/``handle_*`` react.
# pluggy's ``hookwrapper``/``wrapper`` implementations are refused at registration:
# the core awaits implementations one by one, which a wrapper could not surround.
hookspec = pluggy.HookspecMarker(PROJECT)


@hookspec
def register_config_sections() -> dict[str, type[BaseModel]]:
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
def register_routes(ctx: Ctx) -> list[web.AbstractRouteDef]:
    """Return HTTP routes to add to the daemon's aiohttp application.

    Return a list of ``aiohttp.web`` route definitions (``web.post(path, handler)``,
    ``web.get(...)``), as datasette's ``register_routes`` does. A handler is
    responsible for its own authentication (``dutybridge.web.check_credentials``)
    and answers errors with ``dutybridge.web.error_response``. The core's request
    middleware gives every route a request id and JSON errors.
    Called once at start-up, before the server listens. Must not be async.
    """


@hookspec
def register_jobs(ctx: Ctx) -> list[Job]:
    """Return scheduled jobs (polling, reconciliation, housekeeping).

    Return a list of ``dutybridge.scheduler.Job(id, func, trigger, trigger_args)``,
    each with an explicit, unique ``id``; ``func`` takes no argument and may be a
    coroutine function. Each run gets a fresh log context; a failing run is logged
    and the job keeps its schedule.
    Called at start-up and again after each reload (jobs are replaced by id). Must
    not be async.
    """


@hookspec
def handle_event(event: StoredEvent, ctx: Ctx) -> object:
    """Act on one inbound event from the inbox. May be async.

    Every implementation is called, in turn. Return a truthy value when this plugin
    acted on the event; when no implementation does, the event is marked
    ``ignored``. Raise to fail the attempt: the whole event is retried later with
    backoff (so implementations must be idempotent), then kept as a dead letter.
    Events of one ``event.resource`` are never handled concurrently and arrive in
    the order they were received.
    """


@hookspec
def escalation_policy_for(group: dict[str, Any], priority: str | None, ctx: Ctx) -> str | None:
    """Choose the PagerDuty escalation policy for an incident. May be async.

    ``group`` is the ServiceNow assignment group record (at least ``sys_id`` and
    ``name``); ``priority`` is the ServiceNow priority value (``"1"`` .. ``"5"``) or
    None. Return an escalation policy id, or None to have no opinion.

    Stops at the first non-None result (implementations registered later are
    asked first; the ones after the first answer are not called). A plugin asks
    with ``await ctx.hooks.escalation_policy_for(group=..., priority=..., ctx=ctx)``.
    """


@hookspec
def outbound_request(request: OutboundRequest, ctx: Ctx) -> None:
    """Change an outbound request before it is sent. May be async.

    Mutate ``request`` in place: headers, params, JSON body, URL, timeout. Called for
    every attempt of every outbound call (PagerDuty, ServiceNow, or another service a
    plugin calls through ``ctx.http``), plugins first, user hook files last.
    Raise ``dutybridge.http.RequestVetoed(reason)`` to stop the request: the call fails
    with that reason and the hook's file and line. Any other exception fails the request
    too (``dutybridge.http.HookFailed``, logged with the file and line), never the daemon.
    """


@hookspec
def send_request(request: OutboundRequest, ctx: Ctx) -> OutboundResponse | None:
    """Take over the transport for a request (HTTP proxy, relay). May be async.

    Return an ``OutboundResponse`` to answer the request, or None to leave it to the
    next implementation and finally the default direct transport. Stops at the first
    non-None result. Raise ``asyncio.TimeoutError`` or ``aiohttp.ClientError`` for a
    transport failure, so that the pipeline's retry policy applies, or an
    ``OutboundError`` for a refusal that is not the API's answer. To send through the
    pipeline's session with other options (``proxy=``), call ``ctx.http.send_direct``;
    a connection of your own closes with the pipeline through ``ctx.http.add_closer``.
    """


@hookspec
def outbound_response(request: OutboundRequest, response: OutboundResponse, ctx: Ctx) -> None:
    """Observe the response to an outbound request. May be async.

    Called once per attempt, after the transport answered (whatever the status).
    Mutating the response is allowed but rarely wise.
    """


@hookspec
def register_servicenow_tables(ctx: Ctx) -> list[str]:
    """Name the ServiceNow tables whose doorbells this plugin handles.

    Return a list of table names (``["incident"]``). ``POST /webhooks/servicenow``
    answers 400 for a doorbell of a table no enabled plugin names, stores nothing
    and counts it under no per-table label, so a stranger cannot grow the inbox or
    the metrics with made-up tables. Called again after each reload (the tables may
    depend on the configuration). Must not be async.
    """


@hookspec
def register_checks(ctx: Ctx) -> list[Check]:
    """Add named checks to ``dutybridge check``.

    Return a list of ``dutybridge.checks.Check(name, func)``, where ``func(ctx)`` is a
    coroutine function returning ``dutybridge.checks.CheckResult``. Must not be async
    (the checks themselves are).
    """


@hookspec
def register_cli_commands() -> list[Command]:
    """Return ``dutybridge`` subcommands.

    Return a list of ``dutybridge.commands.Command(name, help, handler,
    add_arguments)``. ``add_arguments(parser)`` adds arguments to the command's own
    ``argparse.ArgumentParser`` (``--config`` is added by the core); ``handler(args,
    ctx)`` is a coroutine function returning the exit code. The command runs with
    the configuration loaded and ``ctx`` ready (store open, clients built, server
    and worker not started). ``dutybridge --help`` lists it with the plugin's name.
    Called when the CLI starts, with the configuration's enabled plugins. Must not
    be async.
    """


@hookspec
def report_health(ctx: Ctx) -> dict[str, str]:
    """Report how the parts of this plugin that run on their own are doing.

    Return a mapping of part name (a short fixed name, e.g. ``"poll.pagerduty_log_entries"``)
    to ``"ok"`` or the reason it is failing (one line, no secrets). ``/readyz`` shows every
    plugin's parts as ``health`` detail and answers ``"status": "degraded"`` (still 200:
    a load balancer must not pull a daemon whose webhooks work because one poll fails)
    when any part is not ``"ok"``; ``/metrics`` has the gauge
    ``dutybridge_plugin_health{plugin, part}`` (1 ok, 0 failing). Called on every probe and
    scrape: return what is known already, do no I/O. Must not be async.
    """


@hookspec
def on_startup(ctx: Ctx) -> None:
    """The daemon is starting: store open, clients ready, server not yet listening.

    May be async. Raise to abort start-up with the exception's message.
    """


@hookspec
def on_shutdown(ctx: Ctx) -> None:
    """The daemon is stopping: the server no longer accepts, the worker has drained.

    May be async. Exceptions are logged and do not stop the shutdown.
    """


#: Hooks whose implementations may be ``async def``; the others must return at once.
ASYNC_HOOKS = frozenset(
    {
        "handle_event",
        "escalation_policy_for",
        "outbound_request",
        "send_request",
        "outbound_response",
        "on_startup",
        "on_shutdown",
    }
)
