"""The daemon assembled: a signed webhook reaches a plugin; every hook is called by the core."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import json

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import Field

from dutybridge import hookimpl
from dutybridge.app import create_app, load
from dutybridge.checks import Check, CheckResult
from dutybridge.commands import Command
from dutybridge.config import Section
from dutybridge.http import OutboundRequest
from dutybridge.logging import configure, set_secrets
from dutybridge.scheduler import Job

SECRET = "whsec-primary-1a2b3c4d"


def sign(body: bytes, secret: str = SECRET) -> str:
    return "v1=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def v3_event(event_id: str = "01EVT1", incident: str = "PINC001", type_: str = "incident.triggered") -> bytes:
    return json.dumps(
        {
            "event": {
                "id": event_id,
                "event_type": type_,
                "resource_type": "incident",
                "occurred_at": "2026-11-28T10:00:00.000Z",
                "agent": None,
                "client": None,
                "data": {"id": incident, "type": "incident", "title": "DB down"},
            }
        }
    ).encode()


class ProbeConfig(Section):
    """A test plugin's section."""

    greeting: str = Field("hello", description="What the probe says.")


class Probe:
    """A plugin implementing every hook, recording what the core hands it."""

    def __init__(self) -> None:
        self.events: list = []
        self.handled = asyncio.Event()
        self.calls: list[str] = []

    @hookimpl
    def register_config_sections(self):
        return {"probe": ProbeConfig}

    @hookimpl
    def register_routes(self, ctx):
        async def hello(request):
            return web.json_response({"greeting": ctx.plugin_config("probe").greeting})

        return [web.get("/probe/hello", hello)]

    @hookimpl
    def register_jobs(self, ctx):
        self.calls.append("register_jobs")
        return [Job(id="probe.tick", func=lambda: None, trigger="interval", trigger_args={"hours": 1})]

    @hookimpl
    async def on_startup(self, ctx):
        self.calls.append("on_startup")

    @hookimpl
    async def on_shutdown(self, ctx):
        self.calls.append("on_shutdown")

    @hookimpl
    async def handle_event(self, event, ctx):
        self.events.append(event)
        # Act through the pipeline, as a feature would: the hook file and headers apply.
        await ctx.pagerduty.get("/abilities")
        self.handled.set()
        return True

    @hookimpl
    def escalation_policy_for(self, group, priority, ctx):
        return "PEPPROBE" if priority == "1" else None

    @hookimpl
    def register_checks(self, ctx):
        async def ok(ctx):
            return CheckResult(True, "probe fine")

        return [Check("Probe", ok)]

    @hookimpl
    def register_cli_commands(self):
        async def probe(args, ctx):
            return 0

        return [Command("probe", "probe command", probe)]


@pytest.fixture
async def fake_pagerduty():
    seen: list[dict] = []

    async def abilities(request):
        seen.append(dict(request.headers))
        return web.json_response({"abilities": ["teams"]})

    app = web.Application()
    app.router.add_get("/abilities", abilities)
    server = TestServer(app)
    await server.start_server()
    yield server, seen
    await server.close()


@pytest.fixture
def daemon_config(write_config, tmp_path, fake_pagerduty):
    server, _ = fake_pagerduty
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "tag.py").write_text(
        "def outbound_request(request, ctx):\n    request.headers['X-From-Hook-File'] = 'yes'\n"
    )
    return write_config(
        {
            "daemon": {"hooks_dir": "hooks", "log_level": "debug", "retry_base_seconds": 0.05},
            "pagerduty": {"api_url": str(server.make_url("")).rstrip("/")},
        }
    )


async def test_signed_webhook_is_stored_then_dispatched_through_the_pipeline(
    aiohttp_client, daemon_config, fake_pagerduty
):
    probe = Probe()
    config, pm = load(daemon_config, extra_plugins=[probe])
    client = await aiohttp_client(create_app(config, pm))
    body = v3_event()
    resp = await client.post(
        "/webhooks/pagerduty",
        data=body,
        headers={"X-PagerDuty-Signature": sign(body), "Content-Type": "application/json"},
    )
    assert resp.status == 202, await resp.text()
    await asyncio.wait_for(probe.handled.wait(), 10)
    event = probe.events[0]
    assert (event.source, event.type, event.resource) == (
        "pagerduty",
        "incident.triggered",
        "pagerduty:incident:PINC001",
    )
    _, seen = fake_pagerduty
    assert seen[0]["X-From-Hook-File"] == "yes"
    assert seen[0]["Authorization"] == "Token token=pd-key-9f8e7d6c5b4a"
    assert (await (await client.get("/probe/hello")).json()) == {"greeting": "hello"}


async def test_core_calls_lifecycle_job_and_policy_hooks(aiohttp_client, daemon_config):
    probe = Probe()
    config, pm = load(daemon_config, extra_plugins=[probe])
    app = create_app(config, pm)
    client = await aiohttp_client(app)
    assert probe.calls[:2] == ["on_startup", "register_jobs"]
    from dutybridge.web import CTX_KEY

    ctx = app[CTX_KEY]
    assert "probe.tick" in ctx.scheduler.job_ids()
    assert await ctx.hooks.escalation_policy_for(group={"name": "Database"}, priority="1", ctx=ctx) == "PEPPROBE"
    assert await ctx.hooks.escalation_policy_for(group={"name": "Database"}, priority="3", ctx=ctx) is None
    await client.close()
    assert probe.calls[-1] == "on_shutdown"


async def test_full_cycle_at_debug_level_logs_no_secret(aiohttp_client, daemon_config, config_secrets):
    buf = io.StringIO()
    configure("debug", "json", stream=buf)
    probe = Probe()
    config, pm = load(daemon_config, extra_plugins=[probe])
    set_secrets(config.secrets())
    try:
        client = await aiohttp_client(create_app(config, pm))
        body = v3_event("01EVTSECRET")
        await client.post("/webhooks/pagerduty", data=body, headers={"X-PagerDuty-Signature": sign(body)})
        await client.post("/webhooks/pagerduty", data=body, headers={"X-PagerDuty-Signature": "v1=00"})
        await client.post(
            "/webhooks/servicenow",
            json={"table": "incident"},
            headers={"Authorization": "Bearer doorbell-token-3c2b1a0f"},
        )
        await asyncio.wait_for(probe.handled.wait(), 10)
        await client.close()
    finally:
        set_secrets([])
        configure("info", "json", stream=io.StringIO())
    out = buf.getvalue()
    assert len(out.splitlines()) > 5  # the cycle was logged at debug level
    for secret in config_secrets:
        assert secret not in out, secret


async def test_outbound_hooks_and_send_request_can_take_over(make_config):
    from multidict import CIMultiDict

    from dutybridge.http import OutboundPipeline, OutboundResponse

    seen = []

    class Relay:
        @hookimpl
        def send_request(self, request, ctx):
            seen.append(("send", request.headers.get("X-Stamp")))
            return OutboundResponse(200, CIMultiDict({"Content-Type": "application/json"}), b'{"relayed": true}')

        @hookimpl
        def outbound_request(self, request, ctx):
            request.headers["X-Stamp"] = "1"

        @hookimpl
        def outbound_response(self, request, response, ctx):
            seen.append(("response", response.status))

    config, pm = make_config(extra_plugins=[Relay()])
    async with OutboundPipeline(pm, None) as pipeline:
        resp = await pipeline.request(OutboundRequest("GET", "http://127.0.0.1:9/x", service="other"))
    assert resp.json() == {"relayed": True}
    assert seen == [("send", "1"), ("response", 200)]
