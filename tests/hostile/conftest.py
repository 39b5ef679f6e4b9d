"""A real daemon on a loopback port for the hostile-client tests: incident_sync enabled,
upstreams unreachable (nothing here needs them), worker off unless a test asks for it.
"""

from __future__ import annotations

import io
import json

import pytest

from dutybridge.connections import throttled
from dutybridge.logging import configure, set_secrets
from dutybridge_demo.harness import start_daemon
from tests.conftest import merge

SN_TOKEN = "doorbell-token-3c2b1a0f"
PD_SECRET = "whsec-primary-1a2b3c4d"
AUTH = {"Authorization": f"Bearer {SN_TOKEN}"}

HOSTILE_CONFIG = {
    "daemon": {"log_level": "debug"},
    "pagerduty": {"max_retries": 0, "timeout_seconds": 1.0},
    "servicenow": {"max_retries": 0, "timeout_seconds": 1.0},
    "plugins": {"enabled": ["incident_sync"]},
}


async def inbox(daemon) -> list:
    """Every stored event of a running daemon, oldest first."""
    return list(reversed(await daemon.ctx.store.list_events(limit=10_000)))


@pytest.fixture
def hostile_config(write_config):
    """hostile_config({"daemon": {...}}) -> a config file path for a hostile test."""

    def make(override: dict | None = None):
        return write_config(merge(HOSTILE_CONFIG, override or {}))

    return make


@pytest.fixture
async def daemon(hostile_config):
    """start(override=None, worker=False, scheduler=False, plugins=()) -> a RunningDaemon, stopped at teardown."""
    started = []

    async def start(
        override: dict | None = None, *, worker: bool = False, scheduler: bool = False, plugins: tuple = ()
    ):
        d = await start_daemon(hostile_config(override), worker=worker, scheduler=scheduler, extra_plugins=plugins)
        started.append(d)
        return d

    yield start
    for d in started:
        await d.stop()


@pytest.fixture
def json_logs():
    """Every line at debug level, the libraries' too, as JSON in a buffer."""
    buf = io.StringIO()
    configure("debug", "json", stream=buf, log_levels={"aiohttp": "debug", "asyncio": "debug"})
    throttled._last.clear()
    throttled._suppressed.clear()
    yield buf
    set_secrets([])
    configure("info", "json", stream=io.StringIO(), log_levels={})


def log_lines(buf) -> list[dict]:
    return [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]


def assert_no_traceback(buf) -> None:
    text = buf.getvalue()
    assert "Traceback" not in text and '"exception"' not in text, text[-3000:]
    errors = [line for line in log_lines(buf) if line.get("level") in ("error", "critical")]
    assert errors == [], errors
