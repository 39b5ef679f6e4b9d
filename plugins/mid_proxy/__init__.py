"""mid_proxy: MID-server-style transport for outbound requests, through the ``send_request`` hook.

A forward proxy (HTTP(S), SOCKS) or ``dutybridge relay`` agents that make the calls from
inside another network; ``targets`` chooses which requests go that way.
"""

from __future__ import annotations

from typing import Any

from dutybridge import hookimpl
from dutybridge.checks import Check, CheckResult
from dutybridge.commands import Command
from dutybridge.scheduler import Job

from .config import MidProxyConfig, RelayConfig
from .relay import relay_command
from .transport import ProxyRefused, RelayRefused, RelayTransport, make_transport

__all__ = ["MidProxy", "MidProxyConfig", "ProxyRefused", "RelayConfig", "RelayRefused"]


def wanted(conf: MidProxyConfig, service: str, url: str) -> bool:
    """Whether a request of ``service`` to ``url`` takes the proxy or relay."""
    if not conf.targets:
        return True
    return any(t == service or ("://" in t and url.startswith(t)) for t in conf.targets)


class MidProxy:
    """The plugin: one transport per configuration (a reload makes a new one)."""

    def __init__(self) -> None:
        self._conf: MidProxyConfig | None = None
        self._transport: Any = None
        # Transports of earlier configurations: requests may still be in flight on them,
        # so they are closed at shutdown, not at the reload.
        self._retired: list[Any] = []

    def transport(self, ctx) -> Any:
        conf = ctx.plugin_config("mid_proxy")
        if conf is not self._conf:
            if self._transport is not None:
                self._retired.append(self._transport)
            self._conf, self._transport = conf, make_transport(conf)
        return self._transport

    @hookimpl
    def register_config_sections(self) -> dict[str, Any]:
        return {"mid_proxy": MidProxyConfig}

    @hookimpl
    def register_cli_commands(self) -> list[Command]:
        return [Command("relay", "run a relay agent that makes the daemon's calls from its network "
                                 "(--config RELAY.toml; runs without the daemon's configuration)",
                        relay_command, standalone=True)]

    @hookimpl
    async def send_request(self, request, ctx):
        if ctx is None or ctx.http is None:
            return None
        conf = ctx.plugin_config("mid_proxy")
        if not wanted(conf, request.service, request.url):
            return None
        return await self.transport(ctx).send(request, ctx.http)

    @hookimpl
    def register_jobs(self, ctx) -> list[Job]:
        conf = ctx.plugin_config("mid_proxy")
        if conf.mode != "relay":
            return []

        async def check_relays() -> None:
            if ctx.http is not None:
                await self.transport(ctx).check(ctx.http)

        return [Job(id="mid_proxy.relay_health", func=check_relays, trigger="interval",
                    trigger_args={"seconds": conf.relay_health_seconds})]

    @hookimpl
    def register_checks(self, ctx) -> list[Check]:
        if ctx.plugin_config("mid_proxy").mode != "relay":
            return []

        async def relays(ctx) -> CheckResult:
            transport: RelayTransport = self.transport(ctx)
            checked = await transport.check(ctx.http)
            down = [f"{r.url} ({r.error})" for r in checked if not r.up]
            if len(down) == len(checked):
                return CheckResult(False, "no relay answers: " + "; ".join(down))
            up = ", ".join(r.url for r in checked if r.up)
            return CheckResult(True, f"up: {up}" + (f"; down: {'; '.join(down)}" if down else ""))

        return [Check("mid_proxy relays", relays)]

    @hookimpl
    async def on_shutdown(self, ctx) -> None:
        for transport in [*self._retired, self._transport]:
            if transport is not None:
                await transport.close()
        self._retired.clear()
