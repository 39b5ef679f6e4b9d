"""mid_proxy: MID-server-style transport for outbound requests, through the ``send_request`` hook.

A forward proxy (HTTP(S), SOCKS) or ``dutybridge relay`` agents that make the calls from
inside another network; ``targets`` chooses which requests go that way.
"""

from __future__ import annotations

from typing import cast

from pydantic import BaseModel

from dutybridge import hookimpl
from dutybridge.checks import Check, CheckResult
from dutybridge.commands import Command
from dutybridge.context import Ctx, NotReady
from dutybridge.http import OutboundRequest, OutboundResponse
from dutybridge.scheduler import Job

from .config import MidProxyConfig, RelayConfig
from .relay import relay_command
from .transport import ProxyRefused, RelayRefused, RelayTransport, Transport, make_transport

__all__ = ["MidProxy", "MidProxyConfig", "ProxyRefused", "RelayConfig", "RelayRefused"]


def wanted(conf: MidProxyConfig, service: str, url: str) -> bool:
    """Whether a request of ``service`` to ``url`` takes the proxy or relay."""
    if not conf.targets:
        return True
    return any(t == service or ("://" in t and url.startswith(t)) for t in conf.targets)


def plugin_conf(ctx: Ctx) -> MidProxyConfig:
    # The section under "mid_proxy" is the model this plugin registered for it; ctx cannot say so.
    return cast("MidProxyConfig", ctx.plugin_config("mid_proxy"))


class MidProxy:
    """The plugin: one transport per configuration (a reload makes a new one)."""

    def __init__(self) -> None:
        self._conf: MidProxyConfig | None = None
        self._transport: Transport | None = None
        # Transports of earlier configurations: requests may still be in flight on them,
        # so they are closed at shutdown, not at the reload.
        self._retired: list[Transport] = []

    def transport(self, ctx: Ctx) -> Transport:
        conf = plugin_conf(ctx)
        if conf is not self._conf or self._transport is None:
            if self._transport is not None:
                self._retired.append(self._transport)
            self._conf, self._transport = conf, make_transport(conf)
        return self._transport

    def relay_transport(self, ctx: Ctx) -> RelayTransport | None:
        """The transport when the configuration is in relay mode (None: it is not, since a reload)."""
        transport = self.transport(ctx)
        return transport if isinstance(transport, RelayTransport) else None

    @hookimpl
    def register_config_sections(self) -> dict[str, type[BaseModel]]:
        return {"mid_proxy": MidProxyConfig}

    @hookimpl
    def register_cli_commands(self) -> list[Command]:
        return [
            Command(
                "relay",
                "run a relay agent that makes the daemon's calls from its network "
                "(--config RELAY.toml; runs without the daemon's configuration)",
                relay_command,
                standalone=True,
            )
        ]

    @hookimpl
    async def send_request(self, request: OutboundRequest, ctx: Ctx | None) -> OutboundResponse | None:
        if ctx is None or ctx.http is None:
            return None
        conf = plugin_conf(ctx)
        if not wanted(conf, request.service, request.url):
            return None
        return await self.transport(ctx).send(request, ctx.http)

    @hookimpl
    def register_jobs(self, ctx: Ctx) -> list[Job]:
        conf = plugin_conf(ctx)
        if conf.mode != "relay":
            return []

        async def check_relays() -> None:
            transport = self.relay_transport(ctx)
            if ctx.http is not None and transport is not None:
                await transport.check(ctx.http)

        return [
            Job(
                id="mid_proxy.relay_health",
                func=check_relays,
                trigger="interval",
                trigger_args={"seconds": conf.relay_health_seconds},
            )
        ]

    @hookimpl
    def register_checks(self, ctx: Ctx) -> list[Check]:
        if plugin_conf(ctx).mode != "relay":
            return []

        async def relays(ctx: Ctx) -> CheckResult:
            transport = self.relay_transport(ctx)
            if transport is None:
                return CheckResult(False, "plugins.mid_proxy.mode is no longer relay")
            if ctx.http is None:
                raise NotReady("the outbound pipeline is not built")
            checked = await transport.check(ctx.http)
            down = [f"{r.url} ({r.error})" for r in checked if not r.up]
            if len(down) == len(checked):
                return CheckResult(False, "no relay answers: " + "; ".join(down))
            up = ", ".join(r.url for r in checked if r.up)
            return CheckResult(True, f"up: {up}" + (f"; down: {'; '.join(down)}" if down else ""))

        return [Check("mid_proxy relays", relays)]

    @hookimpl
    async def on_shutdown(self, ctx: Ctx) -> None:
        for transport in [*self._retired, self._transport]:
            if transport is not None:
                await transport.close()
        self._retired.clear()
