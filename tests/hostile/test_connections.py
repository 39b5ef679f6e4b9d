"""Connections a hostile or broken client holds: silent, half-sent, idle keep-alive,
more of them than the cap, slow or abandoned bodies, malformed requests.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time

import aiohttp
import pytest

from dutybridge.connections import Throttled, quiet_accept_errors
from dutybridge.web import BUDGET_KEY
from tests.hostile.conftest import PD_SECRET, assert_no_traceback, inbox, log_lines

FAST = {"daemon": {"header_timeout_seconds": 0.5, "keepalive_timeout_seconds": 1.0, "body_timeout_seconds": 0.5}}


def _port(d) -> int:
    return int(d.url.rsplit(":", 1)[1])


async def _connect(d):
    return await asyncio.open_connection("127.0.0.1", _port(d))


async def _closed_by_server(reader, within: float) -> bool:
    """True when the server closes the connection (EOF or reset) within ``within`` s."""
    try:
        async with asyncio.timeout(within):
            while await reader.read(65536):
                pass
        return True
    except TimeoutError:
        return False
    except ConnectionError:
        return True


def v3_body(event_id="01EVT", incident="PT4KHLK") -> bytes:
    return json.dumps(
        {
            "event": {
                "id": event_id,
                "event_type": "incident.triggered",
                "resource_type": "incident",
                "occurred_at": "2024-01-01T00:00:00Z",
                "data": {"id": incident, "type": "incident"},
            }
        }
    ).encode()


def sign(body: bytes) -> str:
    return "v1=" + hmac.new(PD_SECRET.encode(), body, hashlib.sha256).hexdigest()


async def test_silent_and_half_sent_connections_are_closed_by_the_server(daemon, json_logs):
    d = await daemon(FAST)
    socks = [await _connect(d) for _ in range(5)]
    for _, writer in socks[:3]:
        writer.write(b"POST /webhooks/pagerduty HTTP/1.1\r\nHost: x\r\nContent-Le")
        await writer.drain()
    closed = await asyncio.gather(*(_closed_by_server(r, 5.0) for r, _ in socks))
    assert closed == [True] * 5
    for _, writer in socks:
        writer.close()
    assert any(line["event"] == "client_header_timeout" for line in log_lines(json_logs))
    assert_no_traceback(json_logs)


async def test_an_idle_keep_alive_connection_is_closed_after_its_timeout(daemon):
    d = await daemon(FAST)
    reader, writer = await _connect(d)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    started = time.monotonic()
    assert await _closed_by_server(reader, 5.0)
    assert time.monotonic() - started >= 0.5  # kept alive a while, then closed
    writer.close()


async def test_the_connection_cap_keeps_healthz_answering_past_hundreds_of_silent_sockets(daemon):
    d = await daemon({"daemon": {"max_connections": 20}})
    silent = [await _connect(d) for _ in range(200)]
    async with aiohttp.ClientSession() as http:
        for _ in range(5):
            async with asyncio.timeout(2.0):
                async with http.get(f"{d.url}/healthz") as resp:
                    assert resp.status == 200
        async with http.get(f"{d.url}/metrics") as resp:
            text = await resp.text()
    open_now = next(
        float(line.split()[-1]) for line in text.splitlines() if line.startswith("dutybridge_connections_open")
    )
    assert open_now <= 20
    assert 'dutybridge_connections_closed_by_server_total{reason="evicted"}' in text
    # The oldest silent ones were closed to make room.
    assert await _closed_by_server(silent[0][0], 1.0)
    for _, writer in silent:
        writer.close()


async def test_a_stalled_body_gets_408_and_the_connection_closes(daemon, json_logs):
    d = await daemon(FAST)
    reader, writer = await _connect(d)
    body = v3_body()
    writer.write(
        b"POST /webhooks/pagerduty HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"X-PagerDuty-Signature: {sign(body)}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body[:10]
    )
    await writer.drain()
    async with asyncio.timeout(5.0):
        answer = await reader.read(4096)
    assert answer.startswith(b"HTTP/1.1 408")
    assert await _closed_by_server(reader, 2.0)
    writer.close()
    assert await inbox(d) == []
    assert_no_traceback(json_logs)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


async def test_the_body_budget_bounds_memory_pinned_by_unauthenticated_bodies(daemon):
    mib = 1024 * 1024
    d = await daemon({"daemon": {"max_body_bytes_in_flight": 4 * mib, "max_connections": 400}})
    declared = 1_048_000
    chunk = b"x" * (declared - 1000)  # all but the last 1000 bytes: the read never completes
    before = _rss_bytes()
    conns = []
    refused = 0
    for _ in range(80):
        reader, writer = await _connect(d)
        writer.write(
            b"POST /webhooks/pagerduty HTTP/1.1\r\nHost: x\r\nX-PagerDuty-Signature: v1="
            + b"0" * 64
            + f"\r\nContent-Length: {declared}\r\n\r\n".encode()
        )
        writer.write(chunk)
        conns.append((reader, writer))
    for _reader, writer in conns:
        try:
            await asyncio.wait_for(writer.drain(), 2.0)
        except (TimeoutError, ConnectionError):
            pass
    await asyncio.sleep(0.5)
    grown = _rss_bytes() - before
    for reader, _writer in conns:
        try:
            head = await asyncio.wait_for(reader.read(200), 0.05)
        except (TimeoutError, ConnectionError):
            continue
        if head.startswith(b"HTTP/1.1 503"):
            assert b"Retry-After: 2" in head
            refused += 1
    # 80 bodies of a MiB would be 80 MiB; the budget holds 4 MiB, aiohttp buffers a
    # little per connection, the client side holds its unsent share.
    assert grown < 40 * mib, f"RSS grew by {grown / mib:.0f} MiB"
    assert refused >= 60
    for _, writer in conns:
        writer.close()
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{d.url}/metrics") as resp:
            text = await resp.text()
        assert "dutybridge_body_budget_refused_total" in text
        body = v3_body()
        async with http.post(
            f"{d.url}/webhooks/pagerduty",
            data=body,
            headers={"X-PagerDuty-Signature": sign(body), "Content-Type": "application/json"},
        ) as resp:
            assert resp.status == 202
    assert d.app[BUDGET_KEY].in_use == 0  # every reservation given back


@pytest.mark.parametrize(
    "raw",
    [
        b"GET / HTTP/1.1\r\nBad Header Line\r\n\r\n",
        b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + b"b" * 10_000 + b"\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    ],
)
async def test_malformed_requests_are_400_and_one_warning_line_without_traceback(daemon, json_logs, raw):
    d = await daemon()
    for _ in range(3):
        reader, writer = await _connect(d)
        writer.write(raw)
        await writer.drain()
        async with asyncio.timeout(5.0):
            answer = await reader.read(4096)
        assert answer[:12] in (b"HTTP/1.1 400", b"HTTP/1.0 400") or answer == b""
        writer.close()
    assert_no_traceback(json_logs)
    # Throttled: three faults, at most one line.
    assert len([line for line in log_lines(json_logs) if line["event"] == "bad_http_request"]) <= 1


async def test_a_client_gone_mid_body_is_one_line_not_an_error(daemon, json_logs):
    d = await daemon()
    for route in ("/webhooks/pagerduty", "/webhooks/servicenow", "/webhooks/pagerduty/sync"):
        _reader, writer = await _connect(d)
        writer.write(
            f"POST {route} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer doorbell-token-3c2b1a0f\r\n"
            f'X-PagerDuty-Signature: v1={"0" * 64}\r\nContent-Length: 5000\r\n\r\n{{"a":'.encode()
        )
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.transport.abort()
    await asyncio.sleep(0.3)
    assert_no_traceback(json_logs)
    assert not any(line["event"] == "request failed" for line in log_lines(json_logs))


async def test_accept_errors_are_logged_once_a_minute_without_traceback(json_logs):
    loop = asyncio.get_running_loop()
    before = loop.get_exception_handler()
    quiet_accept_errors(loop)
    try:
        for _ in range(1000):
            loop.call_exception_handler(
                {"message": "socket.accept() out of system resource", "exception": OSError(24, "Too many open files")}
            )
    finally:
        loop.set_exception_handler(before)
    lines = [line for line in log_lines(json_logs) if line["event"] == "accept_failed"]
    assert len(lines) == 1 and "Too many open files" in lines[0]["error"]
    assert_no_traceback(json_logs)


def test_a_throttled_event_says_how_many_were_not_logged(json_logs):
    now = [0.0]
    t = Throttled(every=60, clock=lambda: now[0])
    for _ in range(5):
        t("warning", "flood")
    now[0] = 61.0
    t("warning", "flood")
    lines = [line for line in log_lines(json_logs) if line["event"] == "flood"]
    assert [line.get("suppressed_since_last") for line in lines] == [None, 4]


@pytest.mark.parametrize(
    "raw",
    [
        # aiohttp's own 417 quotes the header and fails on bytes that are not UTF-8 (a 500).
        b"POST /webhooks/pagerduty HTTP/1.1\r\nHost: x\r\nExpect: \x80\r\nContent-Length: 0\r\n\r\n",
        # A body that does not decode: aiohttp logged it as an unhandled exception, and a
        # truncated deflate body hung now and then; encoded bodies are refused (415).
        b"POST /webhooks/pagerduty HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\nContent-Length: 2\r\n\r\n\x00\x00",
        b"POST /webhooks/servicenow HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer doorbell-token-3c2b1a0f\r\n"
        b'Content-Encoding: deflate\r\nContent-Length: 3\r\n\r\n".\x13',
    ],
)
async def test_requests_the_fuzz_found_are_4xx_without_an_error_line(daemon, json_logs, raw):
    d = await daemon()
    reader, writer = await _connect(d)
    writer.write(raw)
    await writer.drain()
    async with asyncio.timeout(5.0):
        answer = await reader.read(4096)
    writer.close()
    assert answer[:10] == b"HTTP/1.1 4", answer[:200]
    await asyncio.sleep(0.1)
    assert_no_traceback(json_logs)
