"""The relay protocol's pieces: host allow-list, nonce window, and the daemon's check of answers."""

from __future__ import annotations

import pytest

from dutybridge.http import OutboundRequest
from dutybridge_plugins.mid_proxy import RelayRefused
from dutybridge_plugins.mid_proxy import envelope as env
from dutybridge_plugins.mid_proxy.config import MidProxyConfig
from dutybridge_plugins.mid_proxy.transport import Relay, RelayTransport

SECRET = "relay-secret-0f9e8d7c6b5a"


@pytest.mark.parametrize(
    "url, allowed",
    [
        ("https://api.pagerduty.com/incidents", True),
        ("https://acme.service-now.com/api/now/table/incident", True),
        ("https://service-now.com/", False),  # *.DOMAIN is subdomains only
        ("https://evil-service-now.com/", False),
        ("https://api.pagerduty.com.evil.example/", False),
        ("http://10.0.0.5:8080/x", True),
        ("http://10.0.0.5:8081/x", False),  # HOST:PORT pins the port
        ("ftp://api.pagerduty.com/", False),
        ("not a url", False),
    ],
)
def test_host_allow_list(url, allowed):
    hosts = ["api.pagerduty.com", "*.service-now.com", "10.0.0.5:8080"]
    assert env.host_allowed(url, hosts) is allowed


def test_a_nonce_is_refused_within_the_window_and_forgotten_after():
    now = [0.0]
    cache = env.NonceCache(window=60, clock=lambda: now[0])
    assert cache.add("a") and not cache.add("a")
    now[0] = 61
    assert cache.add("b") and len(cache) == 1  # "a" aged out; an envelope that old is stale anyway


def _transport() -> RelayTransport:
    conf = MidProxyConfig.model_validate({"mode": "relay", "relay_urls": ["http://relay:1"], "relay_secret": SECRET})
    return RelayTransport(conf)


def test_the_daemon_refuses_an_answer_not_signed_or_not_for_its_request():
    transport, relay = _transport(), Relay("http://relay:1")
    req = OutboundRequest("GET", "https://api.pagerduty.com/users", service="pagerduty")
    answer = env.answer_envelope("n1", 200, [("X-A", "1")], b"{}", 0.01)
    good = env.sign(SECRET.encode(), answer)
    assert transport._answer(relay, req, "n1", 200, answer, good, 0.01).status == 200
    with pytest.raises(RelayRefused, match="not signed with the shared secret"):
        transport._answer(relay, req, "n1", 200, answer.replace(b'"status":200', b'"status":201'), good, 0.01)
    with pytest.raises(RelayRefused, match="not for this request"):
        transport._answer(relay, req, "n2", 200, answer, good, 0.01)
