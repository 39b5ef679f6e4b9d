"""Fuzz every route's body and headers against a running daemon: never a 5xx, never a
traceback or an error line, nothing stored unless accepted, and a valid request still
accepted afterwards. DUTYBRIDGE_FUZZ_EXAMPLES sets the examples per route (default 150).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import http.client
import io
import json
import os
import threading

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dutybridge.logging import configure
from dutybridge_demo.harness import start_daemon
from tests.conftest import BASE_CONFIG, merge
from tests.hostile.conftest import HOSTILE_CONFIG, PD_SECRET, SN_TOKEN

EXAMPLES = int(os.environ.get("DUTYBRIDGE_FUZZ_EXAMPLES", "150"))
V2_USER, V2_PASSWORD = "pd-v2-extension", "v2-extension-password"
# pytest-timeout's per-test limit, scaled for a long run (about 50 ms an example here).
pytestmark = pytest.mark.timeout(max(120, EXAMPLES // 5))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


class Daemon:
    """A daemon on its own event loop in a thread, so that tests drive it with a plain
    blocking client (one raw request per example, headers exactly as drawn)."""

    def __init__(self, path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.d = self.call(start_daemon(path, worker=False, scheduler=False))
        self.port = int(self.d.url.rsplit(":", 1)[1])

    def call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def stored(self) -> int:
        return sum(self.call(self.d.ctx.store.counts()).values())

    def request(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def stop(self) -> None:
        self.call(self.d.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def logs():
    buf = io.StringIO()
    configure("debug", "json", stream=buf, log_levels={"aiohttp": "debug", "asyncio": "debug"})
    yield buf
    configure("info", "json", stream=io.StringIO(), log_levels={})


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, logs):
    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "state").mkdir()
    config = merge(
        merge(BASE_CONFIG, HOSTILE_CONFIG),
        {
            "servicenow": {"doorbell_username": V2_USER, "doorbell_password": V2_PASSWORD},
            "daemon": {"max_body_bytes": 65536},
        },
    )
    path = folder / "config.toml"
    path.write_text(tomli_w.dumps(config))
    path.chmod(0o600)
    d = Daemon(path)
    yield d
    d.stop()


def assert_quiet(buf: io.StringIO, since: int = 0) -> None:
    """No error line, no traceback, in what was logged after offset ``since``."""
    bad = []
    for line in buf.getvalue()[since:].splitlines():
        doc = json.loads(line)
        if doc.get("level") in ("error", "critical") or "exception" in doc or "Traceback" in line:
            bad.append(line[:500])
    assert bad == [], bad


# -- strategies ----------------------------------------------------------------------
def _json_values():
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False),
        st.text(max_size=30),
        st.sampled_from(["PT4KHLK", "incident", "update", "7", "\u0667", "2024-03-05 14:07:09", "x" * 300]),
    )
    return st.recursive(
        scalars,
        lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=12), kids, max_size=4)),
        max_leaves=12,
    )


KEYS = [
    "event",
    "id",
    "event_type",
    "resource_type",
    "data",
    "type",
    "incident",
    "messages",
    "incident_id",
    "table",
    "sys_id",
    "operation",
    "sys_updated_on",
    "sys_mod_count",
    "occurred_at",
    "agent",
]


def _shaped():
    """Objects whose keys are the routes' own, values anything: reaches the validators."""
    return st.recursive(
        st.dictionaries(st.sampled_from(KEYS), _json_values(), max_size=6),
        lambda kids: st.dictionaries(
            st.sampled_from(KEYS), st.one_of(kids, st.lists(kids, max_size=3), _json_values()), max_size=6
        ),
        max_leaves=8,
    )


bodies = st.one_of(
    st.binary(max_size=2000),
    _shaped().map(lambda d: json.dumps(d).encode()),
    _json_values().map(lambda v: json.dumps(v).encode()),
    st.integers(1, 3000).map(lambda n: b"[" * n),
    st.sampled_from([b"", b"{", b"\xff\xfe{\x00}\x00", b'{"a":1}' * 3, b"\xef\xbb\xbf{}"]),
)
_header_text = st.text(st.characters(min_codepoint=32, max_codepoint=255, blacklist_characters="\x7f"), max_size=80)
extra_headers = st.dictionaries(
    st.sampled_from(
        [
            "Content-Type",
            "X-Webhook-Id",
            "X-Request-Id",
            "Content-Encoding",
            "Accept-Encoding",
            "Expect",
            "Connection",
            "X-Forwarded-For",
            "Cookie",
            "Host",
        ]
    ),
    st.one_of(
        _header_text,
        st.sampled_from(
            ["gzip", "deflate", "br", "application/json", "100-continue", "close", "keep-alive", "identity"]
        ),
    ),
    max_size=4,
)


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def auth_for(route: str):
    good = {"servicenow": f"Bearer {SN_TOKEN}", "sync": f"Bearer {SN_TOKEN}", "v2": _basic(V2_USER, V2_PASSWORD)}.get(
        route
    )
    choices = [st.none(), _header_text, st.sampled_from(["Bearer", "Basic ###", "Bearer wrong", _basic("a", "b")])]
    if good:
        choices += [st.just(good)] * 3
    return st.one_of(*choices)


def fuzz_route(daemon, logs, path: str, body: bytes, headers: dict, signed: bool = False) -> None:
    headers = {k: v for k, v in headers.items() if v is not None}
    if signed:
        headers["X-PagerDuty-Signature"] = "v1=" + hmac.new(PD_SECRET.encode(), body, hashlib.sha256).hexdigest()
    try:
        for value in headers.values():
            value.encode("latin-1")
    except UnicodeEncodeError:
        return
    before, mark = daemon.stored(), len(logs.getvalue())
    try:
        status, answer = daemon.request("POST", path, body, headers)
    except (http.client.HTTPException, ConnectionError):
        status, answer = 0, b""  # the server closed on us (a malformed request): not a 5xx
    assert status < 500, (status, answer[:300])
    if status != 202:
        assert daemon.stored() == before, (status, answer[:300])
    assert_quiet(logs, mark)


def still_accepted(daemon) -> None:
    body = json.dumps(
        {
            "table": "incident",
            "sys_id": os.urandom(16).hex(),
            "operation": "update",
            "sys_updated_on": "2024-03-05 14:07:09",
        }
    ).encode()
    before = daemon.stored()
    status, _ = daemon.request(
        "POST",
        "/webhooks/servicenow",
        body,
        {"Authorization": f"Bearer {SN_TOKEN}", "Content-Type": "application/json"},
    )
    assert status == 202 and daemon.stored() == before + 1
    assert daemon.request("GET", "/healthz", b"", {})[0] == 200


@FUZZ
@given(
    body=bodies,
    headers=extra_headers,
    signed=st.booleans(),
    signature=st.one_of(st.none(), _header_text, st.just("v1=" + "0" * 64)),
)
def test_fuzz_pagerduty_v3(daemon, logs, body, headers, signed, signature):
    if signature is not None and not signed:
        headers = {**headers, "X-PagerDuty-Signature": signature}
    fuzz_route(daemon, logs, "/webhooks/pagerduty", body, headers, signed=signed)


@FUZZ
@given(body=bodies, headers=extra_headers, auth=auth_for("v2"))
def test_fuzz_pagerduty_v2(daemon, logs, body, headers, auth):
    fuzz_route(daemon, logs, "/webhooks/pagerduty/v2", body, {**headers, "Authorization": auth})


@FUZZ
@given(body=bodies, headers=extra_headers, auth=auth_for("servicenow"))
def test_fuzz_servicenow(daemon, logs, body, headers, auth):
    fuzz_route(daemon, logs, "/webhooks/servicenow", body, {**headers, "Authorization": auth})


@FUZZ
@given(body=bodies, headers=extra_headers, auth=auth_for("sync"))
def test_fuzz_sync_action(daemon, logs, body, headers, auth):
    fuzz_route(daemon, logs, "/webhooks/pagerduty/sync", body, {**headers, "Authorization": auth})


@FUZZ
@given(
    path=st.sampled_from(["/healthz", "/readyz", "/metrics", "/nope", "/webhooks/servicenow"]),
    method=st.sampled_from(["GET", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH"]),
    headers=extra_headers,
)
def test_fuzz_probes_and_methods(daemon, logs, path, method, headers):
    mark = len(logs.getvalue())
    try:
        for value in headers.values():
            value.encode("latin-1")
        status, answer = daemon.request(method, path, b"", headers)
    except UnicodeEncodeError:
        return
    except (http.client.HTTPException, ConnectionError):
        status, answer = 0, b""
    assert status < 500 or (path == "/readyz" and status == 503), (status, answer[:300])
    assert_quiet(logs, mark)


def test_valid_requests_are_accepted_after_the_fuzzing(daemon, logs):
    still_accepted(daemon)
    assert_quiet(logs)
