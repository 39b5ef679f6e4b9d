"""mid_proxy in relay mode, through real `dutybridge relay` subprocesses: the calls, the refusals
(tampered, stale, replayed, disallowed host, wrong secret) and failover between relays."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import aiohttp
import pytest
from structlog.testing import capture_logs

from dutybridge.app import command_context
from dutybridge.cli import main
from dutybridge.http import OutboundConnectionError, OutboundRequest
from dutybridge_plugins.mid_proxy import RelayRefused
from dutybridge_plugins.mid_proxy import envelope as env
from tests.plugins.mid_proxy.conftest import mid_proxy_config
from tests.support.relay_process import start_relay

pytestmark = pytest.mark.slow

SECRET = "relay-secret-0f9e8d7c6b5a"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
async def relays(tmp_path):
    started = []

    async def start(**kw):
        relay = await start_relay(tmp_path, SECRET, ["127.0.0.1"], name=f"relay{len(started)}", **kw)
        started.append(relay)
        return relay

    yield start
    for relay in started:
        await relay.stop()


def relay_section(*urls: str, secret: str = "env:RELAY_SECRET", **extra) -> dict:
    return {"mode": "relay", "relay_urls": list(urls), "relay_secret": secret, **extra}


async def test_calls_go_through_the_relay_and_come_back_whole(recorder, relays, make_config, monkeypatch):
    relay = await relays()
    monkeypatch.setenv("RELAY_SECRET", SECRET)
    config, pm = make_config(
        mid_proxy_config(recorder.url, relay_section(relay.url, ecc_parameters={"mid_server": "mid-eu-1"}))
    )
    async with command_context(config, pm, store=False) as ctx:
        record = await ctx.servicenow.get("incident", "abc")
        user = await ctx.pagerduty.get_user("P1")
        posted = await ctx.http.request(
            OutboundRequest("POST", f"{recorder.url}/hooks/x?k=v", service="webhook", json={"text": "é"})
        )
    assert record == {"sys_id": "abc", "state": "2"} and user == {"id": "P1"}
    assert posted.status == 200 and posted.headers["X-Upstream"] == "recorder"
    sn, pd, hook = recorder.seen
    assert all(s["headers"]["Via"] == "1.1 dutybridge-relay" for s in recorder.seen)
    assert sn["headers"]["Authorization"].startswith("Basic ") and pd["headers"]["Authorization"].startswith("Token ")
    assert sn["query"]["sysparm_exclude_reference_link"] == "true"
    assert hook["query"] == {"k": "v"} and json.loads(hook["body"]) == {"text": "é"}
    # The ECC parameters travel with each envelope; the relay logs them with the call.
    await asyncio.sleep(0.2)
    logged = [line for line in relay.lines if "relay_request" in line]
    assert len(logged) == 3 and all("mid-eu-1" in line for line in logged)


def _envelope(url: str, *, ts: float | None = None) -> bytes:
    _, body = env.request_envelope(
        method="GET", url=url, headers=[("Accept", "application/json")], params=[], body=None, timeout=5, ecc={}, now=ts
    )
    return body


async def _post(relay_url: str, body: bytes, signature: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session:
        async with session.post(
            relay_url + env.EXECUTE_PATH, data=body, headers={env.SIGNATURE_HEADER: signature}
        ) as resp:
            return resp.status, await resp.json()


async def test_tampered_stale_replayed_and_disallowed_envelopes_are_refused(recorder, relays):
    relay = await relays()
    key = SECRET.encode()
    good = _envelope(f"{recorder.url}/ok")
    assert (await _post(relay.url, good, env.sign(key, good)))[0] == 200
    assert await _post(relay.url, good, env.sign(key, good)) == (
        409,
        {"error": "replayed envelope: this nonce was already used"},
    )

    fresh = _envelope(f"{recorder.url}/tampered")
    tampered = fresh.replace(b"/tampered", b"/elsewhere")
    assert await _post(relay.url, tampered, env.sign(key, fresh)) == (401, {"error": "bad signature"})
    assert (await _post(relay.url, fresh, env.sign(b"another-secret-entirely", fresh)))[0] == 401

    stale = _envelope(f"{recorder.url}/stale", ts=time.time() - 120)
    status, body = await _post(relay.url, stale, env.sign(key, stale))
    assert status == 401 and body["error"].startswith("stale envelope")

    elsewhere = _envelope(f"http://localhost:{recorder.url.rsplit(':', 1)[1]}/x")
    assert await _post(relay.url, elsewhere, env.sign(key, elsewhere)) == (
        403,
        {"error": "host not allowed by this relay's allowed_hosts"},
    )
    # Only the first envelope was executed.
    assert [s["path"] for s in recorder.seen] == ["/ok"]


async def test_a_refusal_is_the_calls_error_not_a_retry(recorder, relays, make_config, monkeypatch):
    relay = await relays()
    monkeypatch.setenv("RELAY_SECRET", "a-different-secret-123456")
    config, pm = make_config(mid_proxy_config(recorder.url, relay_section(relay.url), retries=3))
    async with command_context(config, pm, store=False) as ctx:
        with pytest.raises(RelayRefused, match=r"refused the request \(401\): bad signature") as info:
            await ctx.servicenow.get("incident", "abc")
        assert not info.value.transient
        monkeypatch.setenv("RELAY_SECRET", SECRET)
    config, pm = make_config(mid_proxy_config(recorder.url, relay_section(relay.url)))
    port = recorder.url.rsplit(":", 1)[1]
    async with command_context(config, pm, store=False) as ctx:
        with pytest.raises(RelayRefused, match=r"\(403\): host not allowed"):
            await ctx.http.request(OutboundRequest("GET", f"http://localhost:{port}/x", service="webhook"))
    assert recorder.seen == []


async def test_failover_to_the_next_relay_and_back_after_a_health_check(recorder, relays, make_config, monkeypatch):
    first_port = _free_port()
    second = await relays()
    monkeypatch.setenv("RELAY_SECRET", SECRET)
    first_url = f"http://127.0.0.1:{first_port}"
    config, pm = make_config(mid_proxy_config(recorder.url, relay_section(first_url, second.url)))
    plugin = pm.get_plugin("mid_proxy")
    async with command_context(config, pm, store=False) as ctx:
        with capture_logs() as logs:
            assert (await ctx.servicenow.get("incident", "abc"))["sys_id"] == "abc"
            assert (await ctx.servicenow.get("incident", "abc"))["sys_id"] == "abc"
        downs = [e for e in logs if e["event"] == "relay_down"]
        assert [e["relay"] for e in downs] == [first_url]
        transport = plugin.transport(ctx)
        assert [r.url for r in transport.order()] == [second.url, first_url]

        # The first relay comes back; the health job sees it and it is preferred again.
        await relays(port=first_port)
        [job] = pm.hooks.register_jobs(ctx=ctx)
        with capture_logs() as logs:
            await job.func()
        assert [e["relay"] for e in logs if e["event"] == "relay_up"] == [first_url]
        assert [r.url for r in transport.order()] == [first_url, second.url]
    assert len(recorder.seen) == 2


async def test_every_relay_down_is_a_connection_error(recorder, make_config, monkeypatch):
    monkeypatch.setenv("RELAY_SECRET", SECRET)
    dead = [f"http://127.0.0.1:{_free_port()}", f"http://127.0.0.1:{_free_port()}"]
    config, pm = make_config(mid_proxy_config(recorder.url, relay_section(*dead)))
    async with command_context(config, pm, store=False) as ctx:
        with pytest.raises(OutboundConnectionError):
            await ctx.servicenow.get("incident", "abc")
    assert recorder.seen == []


def test_the_relay_command_refuses_a_bad_config(tmp_path, capsys):
    path = tmp_path / "relay.toml"
    path.write_text('[relay]\nsecret = "short"\nallowed_hosts = []\nlisten_prot = 1\n')
    assert main(["relay", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: relay.secret: the relay secret is too short" in err
    assert f"{path}: relay.allowed_hosts: list at least one host" in err
    assert f"{path}: relay.listen_prot: unknown key (did you mean listen_port?)" in err


async def test_dutybridge_check_says_which_relays_answer(recorder, relays, make_config, monkeypatch):
    relay = await relays()
    dead = f"http://127.0.0.1:{_free_port()}"
    monkeypatch.setenv("RELAY_SECRET", SECRET)
    config, pm = make_config(mid_proxy_config(recorder.url, relay_section(dead, relay.url)))
    async with command_context(config, pm, store=False) as ctx:
        [check] = pm.hooks.register_checks(ctx=ctx)
        result = await check.func(ctx)
        assert result.ok and result.detail.startswith(f"up: {relay.url}; down: {dead} (")
        await relay.stop()
        result = await check.func(ctx)
        assert not result.ok and result.detail.startswith("no relay answers:")
