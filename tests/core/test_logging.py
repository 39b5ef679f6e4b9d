"""Logging: one pipeline for structlog and stdlib, chosen level, secrets never rendered."""

from __future__ import annotations

import io
import json
import logging

import pytest
import structlog

from dutybridge.logging import adjust_level, configure, set_secrets


@pytest.fixture
def json_logs():
    buf = io.StringIO()
    configure("debug", "json", stream=buf)
    yield buf
    set_secrets([])
    configure("info", "json", stream=io.StringIO())


def lines(buf):
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def test_structlog_and_stdlib_share_one_json_format(json_logs):
    structlog.get_logger("dutybridge.test").info("hello", incident="P123")
    logging.getLogger("aiohttp.server").error("from aiohttp")
    out = lines(json_logs)
    assert out[0]["event"] == "hello" and out[0]["incident"] == "P123" and out[0]["level"] == "info"
    assert out[1]["logger"] == "aiohttp.server" and out[1]["level"] == "error"
    assert all(line["timestamp"].endswith("Z") for line in out)


def test_context_vars_are_bound_into_lines(json_logs):
    with structlog.contextvars.bound_contextvars(request_id="req-1", event_id=42):
        structlog.get_logger("t").info("inside")
    structlog.get_logger("t").info("outside")
    inside, outside = lines(json_logs)
    assert inside["request_id"] == "req-1" and inside["event_id"] == 42
    assert "request_id" not in outside


def test_secrets_are_scrubbed_from_values_keys_stdlib_and_tracebacks(json_logs):
    set_secrets(["s3cr3t-api-key", "pw"])  # too short to scrub safely: ignored
    log = structlog.get_logger("t")
    log.info("calling", url="https://x/?token=s3cr3t-api-key", headers={"Authorization": "Token token=abc"})
    logging.getLogger("aiohttp.client").warning("failed with %s", "s3cr3t-api-key")

    def fail(api_key="s3cr3t-api-key"):
        raise RuntimeError("rejected s3cr3t-api-key")

    try:
        fail()
    except RuntimeError:
        log.exception("boom")
    text = json_logs.getvalue()
    assert "s3cr3t-api-key" not in text and "token=abc" not in text
    assert text.count("[REDACTED]") >= 4


def test_level_filters_and_verbosity_flags(json_logs):
    configure("warning", "json", stream=json_logs)
    structlog.get_logger("t").info("dropped")
    structlog.get_logger("t").warning("kept")
    assert [e["event"] for e in lines(json_logs)] == ["kept"]
    assert adjust_level("info", verbose=1) == "debug"
    assert adjust_level("info", quiet=5) == "error"
    assert adjust_level("warning", verbose=1, quiet=1) == "warning"
