"""mid_proxy in proxy mode: chosen targets through real local proxies (plain, CONNECT, SOCKS5)."""

from __future__ import annotations

import importlib.util
import ssl
import subprocess

import pytest

from dutybridge.app import command_context
from dutybridge.config import ConfigError
from dutybridge.http import ApiError, OutboundRequest
from dutybridge_plugins.mid_proxy import ProxyRefused
from tests.plugins.mid_proxy.conftest import mid_proxy_config
from tests.support.forward_proxy import ForwardProxy
from tests.support.socks_proxy import Socks5Proxy

PROXY_PASSWORD = "proxy-pass-5b8e1d"


@pytest.fixture
async def proxy():
    fp = await ForwardProxy(credentials=("bridge", PROXY_PASSWORD)).start()
    yield fp
    await fp.stop()


async def test_chosen_targets_go_through_the_proxy_with_its_credentials(recorder, proxy, make_config, monkeypatch):
    monkeypatch.setenv("PROXY_PASSWORD", PROXY_PASSWORD)
    config, pm = make_config(
        mid_proxy_config(
            recorder.url,
            {
                "mode": "proxy",
                "targets": ["servicenow"],
                "proxy_url": proxy.url,
                "proxy_username": "bridge",
                "proxy_password": "env:PROXY_PASSWORD",
            },
        )
    )
    async with command_context(config, pm, store=False) as ctx:
        record = await ctx.servicenow.get("incident", "abc")
        await ctx.pagerduty.get_user("P1")
    assert record["sys_id"] == "abc"
    assert [(m, t.split("?")[0]) for m, t, _ in proxy.seen] == [("GET", f"{recorder.url}/api/now/table/incident/abc")]
    assert proxy.seen[0][2].startswith("Basic ")
    # Both reached the API; only ServiceNow's went through the proxy, with its own auth intact.
    assert [s["path"] for s in recorder.seen] == ["/api/now/table/incident/abc", "/users/P1"]
    assert recorder.seen[0]["headers"]["Authorization"].startswith("Basic ")
    assert "Proxy-Authorization" not in recorder.seen[0]["headers"]


async def test_a_wrong_proxy_password_is_the_proxys_407(recorder, proxy, make_config, monkeypatch):
    monkeypatch.setenv("PROXY_PASSWORD", "not-it")
    config, pm = make_config(
        mid_proxy_config(
            recorder.url, {"proxy_url": proxy.url, "proxy_username": "bridge", "proxy_password": "env:PROXY_PASSWORD"}
        )
    )
    async with command_context(config, pm, store=False) as ctx:
        with pytest.raises(ApiError) as info:
            await ctx.servicenow.get("incident", "abc")
    assert info.value.status == 407 and recorder.seen == []


@pytest.fixture
def certificate(tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_https_targets_are_tunnelled_with_connect(
    recorder, proxy, make_config, monkeypatch, certificate, aiohttp_server
):
    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = await aiohttp_server(recorder.app(), ssl=context)
    https_url = f"https://127.0.0.1:{server.port}"
    monkeypatch.setenv("PROXY_PASSWORD", PROXY_PASSWORD)
    config, pm = make_config(
        mid_proxy_config(
            recorder.url,
            {
                "targets": [f"{https_url}/hooks/"],
                "proxy_url": proxy.url,
                "proxy_username": "bridge",
                "proxy_password": "env:PROXY_PASSWORD",
                "proxy_ca_file": str(cert),
            },
        )
    )
    async with command_context(config, pm, store=False) as ctx:
        response = await ctx.http.request(
            OutboundRequest("POST", f"{https_url}/hooks/alert", service="webhook", json={"text": "disk full"})
        )
    assert response.status == 200 and response.json()["result"]["sys_id"] == "abc"
    assert [(m, t) for m, t, _ in proxy.seen] == [("CONNECT", f"127.0.0.1:{server.port}")]
    assert recorder.seen[0]["path"] == "/hooks/alert" and recorder.seen[0]["body"] == b'{"text": "disk full"}'


async def test_socks5_targets_go_through_the_socks_proxy(recorder, make_config, monkeypatch):
    socks = await Socks5Proxy(credentials=("bridge", PROXY_PASSWORD)).start()
    monkeypatch.setenv("PROXY_PASSWORD", PROXY_PASSWORD)
    try:
        config, pm = make_config(
            mid_proxy_config(
                recorder.url,
                {
                    "targets": ["servicenow"],
                    "proxy_url": socks.url,
                    "proxy_username": "bridge",
                    "proxy_password": "env:PROXY_PASSWORD",
                },
            )
        )
        async with command_context(config, pm, store=False) as ctx:
            assert (await ctx.servicenow.get("incident", "abc"))["sys_id"] == "abc"
            assert (await ctx.servicenow.get("incident", "abc"))["sys_id"] == "abc"
            await ctx.pagerduty.get_user("P1")
        monkeypatch.setenv("PROXY_PASSWORD", "not-it")
        config, pm = make_config(
            mid_proxy_config(
                recorder.url,
                {"proxy_url": socks.url, "proxy_username": "bridge", "proxy_password": "env:PROXY_PASSWORD"},
            )
        )
        async with command_context(config, pm, store=False) as ctx:
            with pytest.raises(ProxyRefused, match="refused the request: Username and password authentication"):
                await ctx.servicenow.get("incident", "abc")
    finally:
        await socks.stop()
    port = int(recorder.url.rsplit(":", 1)[1])
    # One tunnel, pooled for both ServiceNow calls; PagerDuty's went directly.
    assert socks.tunnels == [("127.0.0.1", port)]
    assert [s["path"] for s in recorder.seen] == ["/api/now/table/incident/abc"] * 2 + ["/users/P1"]


def test_socks_without_aiohttp_socks_is_a_config_error(make_config, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "aiohttp_socks" else real(name, *a)
    )
    with pytest.raises(
        ConfigError,
        match=r"plugins\.mid_proxy\.proxy_url: a socks5:// proxy needs aiohttp-socks, "
        r"which is not installed: pip install 'dutybridge\[socks\]'",
    ):
        make_config(mid_proxy_config("http://127.0.0.1:9", {"proxy_url": "socks5://127.0.0.1:1080"}))


@pytest.mark.parametrize(
    "section, message",
    [
        ({}, "plugins.mid_proxy.proxy_url: mode is proxy: set the proxy's URL"),
        (
            {"proxy_url": "http://u:p@proxy:3128"},
            "plugins.mid_proxy.proxy_url: put the proxy's credentials in proxy_username",
        ),
        ({"proxy_url": "ftp://proxy:21"}, "plugins.mid_proxy.proxy_url: expected http://HOST:PORT"),
        ({"mode": "relay"}, "plugins.mid_proxy.relay_urls: mode is relay: list at least one relay"),
        (
            {"mode": "relay", "relay_urls": ["http://r:1"]},
            "plugins.mid_proxy.relay_secret: mode is relay: set the secret",
        ),
        ({"proxy_url": "http://p:1", "targets": ["ftp://x/"]}, "plugins.mid_proxy.targets: 'ftp://x/': a target is"),
    ],
)
def test_incomplete_settings_are_config_errors(make_config, section, message):
    with pytest.raises(ConfigError) as info:
        make_config(mid_proxy_config("http://127.0.0.1:9", section))
    assert message in str(info.value)
