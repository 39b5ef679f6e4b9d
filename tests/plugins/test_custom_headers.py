"""custom_headers: the server sees each target's headers; reserved and bad headers are config errors."""

from __future__ import annotations

import pytest
from aiohttp import web

from dutybridge.app import command_context
from dutybridge.config import ConfigError
from dutybridge.http import OutboundRequest
from dutybridge_plugins.custom_headers import parse_headers

GATEWAY_KEY = "gw-key-7c1e9a2b"


class Recorder:
    """A real HTTP server playing PagerDuty, ServiceNow and a webhook: it keeps the
    headers each path received."""

    def __init__(self) -> None:
        self.seen: dict[str, dict[str, str]] = {}

    async def handle(self, request: web.Request) -> web.Response:
        self.seen[request.path] = dict(request.headers)
        return web.json_response({"user": {"id": "P1"}, "result": {"sys_id": "abc"}})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app


@pytest.fixture
async def recorder(aiohttp_server):
    rec = Recorder()
    server = await aiohttp_server(rec.app())
    rec.url = str(server.make_url("")).rstrip("/")
    return rec


def _config(url: str, section: dict) -> dict:
    return {
        "pagerduty": {"api_url": url},
        "servicenow": {"instance_url": url},
        "plugins": {"enabled": ["custom_headers"], "custom_headers": section},
    }


async def _call_every_target(config, pm, url: str) -> None:
    async with command_context(config, pm, store=False) as ctx:
        await ctx.pagerduty.get_user("P1")
        await ctx.servicenow.get("incident", "abc")
        await ctx.http.request(OutboundRequest("POST", f"{url}/hooks/alert", service="webhook", json={}))
        await ctx.http.request(OutboundRequest("POST", f"{url}/other", service="webhook", json={}))


async def test_each_target_sends_its_headers_on_the_wire(recorder, make_config, monkeypatch):
    monkeypatch.setenv("GATEWAY_KEY", GATEWAY_KEY)
    config, pm = make_config(
        _config(
            recorder.url,
            {
                "pagerduty": "X-Team: sre\nX-Env: prod",
                "servicenow": {"X-Gateway-Key": "env:GATEWAY_KEY", "X-Source": "dutybridge"},
                "urls": {f"{recorder.url}/hooks/": "X-Hook: yes", f"{recorder.url}/hooks/alert": {"X-Env": "alerting"}},
            },
        )
    )
    await _call_every_target(config, pm, recorder.url)
    pd, sn = recorder.seen["/users/P1"], recorder.seen["/api/now/table/incident/abc"]
    hook, other = recorder.seen["/hooks/alert"], recorder.seen["/other"]
    assert (pd["X-Team"], pd["X-Env"]) == ("sre", "prod") and "X-Gateway-Key" not in pd
    assert (sn["X-Gateway-Key"], sn["X-Source"]) == (GATEWAY_KEY, "dutybridge") and "X-Team" not in sn
    # The longer prefix applies last, so its X-Env wins.
    assert (hook["X-Hook"], hook["X-Env"]) == ("yes", "alerting") and "X-Team" not in hook
    assert not {"X-Team", "X-Gateway-Key", "X-Hook", "X-Env"} & set(other)
    # The pipeline's own headers stay: the clients still authenticate.
    assert pd["Authorization"].startswith("Token token=") and sn["Authorization"].startswith("Basic ")
    # A referenced secret is known to the log redaction.
    assert GATEWAY_KEY in config.secrets()


def test_a_reserved_header_is_refused_naming_the_key(make_config):
    with pytest.raises(ConfigError) as info:
        make_config(_config("http://127.0.0.1:9", {"servicenow": "X-A: 1\nAuthorization: Basic Zm9vOmJhcg=="}))
    text = str(info.value)
    assert "plugins.custom_headers.servicenow: line 2: header Authorization is reserved" in text
    assert "allow_reserved" in text and "Zm9vOmJhcg" not in text


async def test_an_allowed_reserved_header_replaces_the_clients(recorder, make_config):
    config, pm = make_config(
        _config(
            recorder.url, {"allow_reserved": ["Authorization"], "pagerduty": {"Authorization": "Bearer gateway-issued"}}
        )
    )
    await _call_every_target(config, pm, recorder.url)
    assert recorder.seen["/users/P1"]["Authorization"] == "Bearer gateway-issued"
    assert recorder.seen["/api/now/table/incident/abc"]["Authorization"].startswith("Basic ")


@pytest.mark.parametrize(
    "section, message",
    [
        ({"pagerduty": "X-A 1"}, "plugins.custom_headers.pagerduty: line 1: expected 'Name: value'"),
        (
            {"pagerduty": "X-A: 1\nBad Name: 2"},
            "plugins.custom_headers.pagerduty: line 2: 'Bad Name' is not a valid header name",
        ),
        (
            {"servicenow": {"X-A": "one\ntwo"}},
            "plugins.custom_headers.servicenow: header X-A: a value cannot contain a line break",
        ),
        (
            {"servicenow": {"X-Key": "env:NOT_SET_ANYWHERE"}},
            "plugins.custom_headers.servicenow: header X-Key: environment variable NOT_SET_ANYWHERE is not set",
        ),
        (
            {"urls": {"ftp://x/": "X-A: 1"}},
            "plugins.custom_headers.urls: 'ftp://x/': a prefix is an http:// or https:// URL",
        ),
        ({"urls": {"https://x/": {"Host": "y"}}}, "plugins.custom_headers.urls: 'https://x/': header Host is reserved"),
        ({"pagerduty": "X-A: 1\nx-a: 2"}, "plugins.custom_headers.pagerduty: line 2: header x-a is given twice"),
        ({"allow_reserved": ["X-Mine"]}, "plugins.custom_headers.allow_reserved: 'X-Mine' is not a reserved header"),
    ],
)
def test_bad_headers_are_config_errors_naming_the_key(make_config, section, message):
    with pytest.raises(ConfigError) as info:
        make_config(_config("http://127.0.0.1:9", section))
    assert message in str(info.value)


def test_comments_and_blank_lines_are_skipped():
    assert parse_headers("# ours\n\nX-A: 1 2\n") == [("X-A", "1 2")]
