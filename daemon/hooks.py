"""How the core calls hooks: one typed method per hook on ``Hooks``, every call traced."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pluggy
import structlog

if TYPE_CHECKING:  # pragma: no cover
    from aiohttp import web
    from pydantic import BaseModel

    from .checks import Check
    from .commands import Command
    from .context import Ctx
    from .events import StoredEvent
    from .http import OutboundRequest, OutboundResponse
    from .scheduler import Job

trace_log = structlog.get_logger("dutybridge.hooks")


async def await_me_maybe(value: Any) -> Any:
    """Await ``value`` if it is awaitable (an async hook implementation's result)."""
    if inspect.isawaitable(value):
        return await value
    return value


def hooks_of(source: Hooks | pluggy.PluginManager) -> Hooks:
    """The ``Hooks`` of a plugin manager (its own, when it has one), or ``source`` itself."""
    if isinstance(source, Hooks):
        return source
    existing = getattr(source, "hooks", None)
    return existing if isinstance(existing, Hooks) else Hooks(source)


class Hooks:
    """The typed way the core calls each hook: ``await ctx.hooks.handle_event(...)``.

    Implementations run in pluggy's order (registered later first; ``tryfirst`` and
    ``trylast`` apply), one at a time. With ``trace`` on (``DUTYBRIDGE_TRACE_HOOKS=1``)
    each call and its outcome is logged at debug level with the plugins it reached.

    pluggy registers, orders and validates implementations; ``Hooks`` calls them one at a
    time in pluggy's order, awaiting async ones, so no coroutine is left pending.
    """

    def __init__(self, pm: pluggy.PluginManager, *, trace: bool = False) -> None:
        self.pm = pm
        self.trace = trace

    # -- the machinery ---------------------------------------------------------------
    def _impls(self, name: str) -> list[pluggy.HookImpl]:
        caller: pluggy.HookCaller = getattr(self.pm.hook, name)
        return list(reversed(caller.get_hookimpls()))

    def _each(self, name: str, kwargs: dict[str, Any]) -> Iterator[tuple[pluggy.HookImpl, Any]]:
        """(implementation, its raw result) for each implementation, lazily, in order."""
        impls = self._impls(name)
        if self.trace:
            trace_log.debug("hook_call", hook=name, plugins=[self.pm.get_name(i.plugin) for i in impls])
        for impl in impls:
            yield impl, impl.function(*[kwargs[arg] for arg in impl.argnames])

    def _traced_return(self, name: str, error: BaseException | None = None) -> None:
        if self.trace:
            trace_log.debug("hook_return", hook=name, error=repr(error) if error else None)

    async def _all(self, name: str, **kwargs: Any) -> list[Any]:
        results = []
        try:
            for _, result in self._each(name, kwargs):
                results.append(await await_me_maybe(result))
        except BaseException as exc:
            self._traced_return(name, exc)
            raise
        self._traced_return(name)
        return results

    async def _first(self, name: str, **kwargs: Any) -> Any:
        """The first non-None result; later implementations are not called at all."""
        try:
            for _, result in self._each(name, kwargs):
                value = await await_me_maybe(result)
                if value is not None:
                    self._traced_return(name)
                    return value
        except BaseException as exc:
            self._traced_return(name, exc)
            raise
        self._traced_return(name)
        return None

    def _sync(self, name: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """(plugin name, result) per implementation of a hook that must not be async."""
        out: list[tuple[str, Any]] = []
        try:
            for impl, result in self._each(name, kwargs):
                if inspect.isawaitable(result):
                    if inspect.iscoroutine(result):
                        result.close()
                    raise TypeError(f"{self.pm.get_name(impl.plugin)}: {name} must not be async")
                out.append((self.pm.get_name(impl.plugin) or repr(impl.plugin), result))
        except BaseException as exc:
            self._traced_return(name, exc)
            raise
        self._traced_return(name)
        return out

    # -- one method per hook (signatures as in hookspecs.py) ----------------------------
    def register_config_sections(self) -> list[tuple[str, dict[str, type[BaseModel]]]]:
        """(plugin, {section: model}) for each plugin declaring configuration sections."""
        return [(plugin, result) for plugin, result in self._sync("register_config_sections") if result]

    def register_routes(self, ctx: Ctx) -> list[web.AbstractRouteDef]:
        return [route for _, routes in self._sync("register_routes", ctx=ctx) for route in routes or ()]

    def register_jobs(self, ctx: Ctx) -> list[Job]:
        return [job for _, jobs in self._sync("register_jobs", ctx=ctx) for job in jobs or ()]

    def register_servicenow_tables(self, ctx: Ctx) -> frozenset[str]:
        """Every table an enabled plugin handles doorbells of."""
        return frozenset(
            str(t) for _, tables in self._sync("register_servicenow_tables", ctx=ctx) for t in tables or ()
        )

    def register_checks(self, ctx: Ctx) -> list[Check]:
        return [check for _, checks in self._sync("register_checks", ctx=ctx) for check in checks or ()]

    def register_cli_commands(self) -> list[tuple[str, Command]]:
        """(plugin, command) for every command a plugin adds."""
        return [
            (plugin, command) for plugin, commands in self._sync("register_cli_commands") for command in commands or ()
        ]

    def report_health(self, ctx: Ctx) -> dict[str, dict[str, str]]:
        """{plugin: {part: "ok" or the reason it fails}} for each plugin reporting parts."""
        return {
            plugin: {str(k): str(v) for k, v in result.items()}
            for plugin, result in self._sync("report_health", ctx=ctx)
            if result
        }

    async def handle_event(self, event: StoredEvent, ctx: Ctx) -> list[object]:
        return await self._all("handle_event", event=event, ctx=ctx)

    async def escalation_policy_for(self, group: dict[str, Any], priority: str | None, ctx: Ctx) -> str | None:
        result: str | None = await self._first("escalation_policy_for", group=group, priority=priority, ctx=ctx)
        return result

    async def outbound_request(self, request: OutboundRequest, ctx: Ctx | None) -> None:
        await self._all("outbound_request", request=request, ctx=ctx)

    async def send_request(self, request: OutboundRequest, ctx: Ctx | None) -> OutboundResponse | None:
        result: OutboundResponse | None = await self._first("send_request", request=request, ctx=ctx)
        return result

    async def outbound_response(self, request: OutboundRequest, response: OutboundResponse, ctx: Ctx | None) -> None:
        await self._all("outbound_response", request=request, response=response, ctx=ctx)

    async def on_startup(self, ctx: Ctx) -> None:
        await self._all("on_startup", ctx=ctx)

    async def on_shutdown(self, ctx: Ctx) -> None:
        await self._all("on_shutdown", ctx=ctx)
