"""SIGHUP's reload, key by key: worker settings reach the running worker, restart-only
keys are warned about against what runs, every other key is read where it is used."""

from __future__ import annotations

import asyncio
import io
import json

import structlog
import tomli_w
from structlog.testing import capture_logs

from dutybridge import hookimpl
from dutybridge.app import WORKER_KEY, create_app, load
from dutybridge.config import DaemonConfig
from dutybridge.events import Event
from dutybridge.logging import configure
from dutybridge.serve import LIVE_KEYS, RESTART_KEYS, WORKER_SETTINGS, Running, reload
from dutybridge.web import CTX_KEY
from tests.conftest import BASE_CONFIG, merge
from tests.core.test_app import sign, v3_event

RESTART_WARNING = "reloaded_restart_needed"


def rewrite(path, override: dict) -> None:
    path.write_text(tomli_w.dumps(merge(BASE_CONFIG, override)))


class Hang:
    """A handler that never finishes: each attempt ends at the lease."""

    @hookimpl
    async def handle_event(self, event, ctx):
        await asyncio.Event().wait()


def test_every_daemon_key_is_applied_on_reload_or_listed_as_restart_only():
    classes = [
        {k for k in RESTART_KEYS if k.startswith("daemon.")},
        {f"daemon.{k}" for k in WORKER_SETTINGS},
        set(LIVE_KEYS),
    ]
    assert sum(len(c) for c in classes) == len(set().union(*classes))  # no key in two classes
    assert set().union(*classes) == {f"daemon.{k}" for k in DaemonConfig.model_fields}


async def test_reload_applies_worker_settings_to_the_running_worker(aiohttp_client, write_config):
    daemon = {"max_attempts": 8, "retry_base_seconds": 60.0, "retry_max_seconds": 600.0, "lease_seconds": 300.0}
    path = write_config({"daemon": daemon})
    config, pm = load(path, extra_plugins=[Hang()])
    app = create_app(config, pm, scheduler=False)
    await aiohttp_client(app)
    ctx = app[CTX_KEY]
    rewrite(
        path,
        {"daemon": {"max_attempts": 2, "retry_base_seconds": 0.01, "retry_max_seconds": 0.02, "lease_seconds": 0.2}},
    )
    with capture_logs() as logs:
        assert await reload(ctx, path, Running(config, app))
    [line] = [entry for entry in logs if entry["event"] == "reloaded"]
    assert line["worker_applied"] == {
        "daemon.max_attempts": 2,
        "daemon.retry_base_seconds": 0.01,
        "daemon.retry_max_seconds": 0.02,
        "daemon.lease_seconds": 0.2,
    }
    assert app[WORKER_KEY].backoff(1) <= 0.01

    # With the old settings this event would hang for 300 s per attempt, 8 times,
    # 30 s or more apart; with the new ones it is dead within a second.
    stored = await ctx.enqueue(Event("pagerduty", "incident.triggered", "E1", "pagerduty:incident:P1", {}))
    async with asyncio.timeout(10):
        while (got := await ctx.store.get_event(stored.id)).status != "dead":
            await asyncio.sleep(0.02)
    assert got.attempts == 2
    assert got.last_error == "handler still running after lease_seconds=0.2"


async def test_restart_warning_compares_with_what_runs_not_the_last_file(aiohttp_client, write_config):
    path = write_config({"daemon": {"listen_port": 8181}})
    config, pm = load(path)
    app = create_app(config, pm, worker=False, scheduler=False)
    await aiohttp_client(app)
    ctx, running = app[CTX_KEY], Running(config, app)

    def warnings(logs):
        return [entry for entry in logs if entry["event"] == RESTART_WARNING]

    rewrite(path, {"daemon": {"listen_port": 8282, "shutdown_timeout": 5.0}})
    for _ in range(2):  # not applied, so said at every reload
        with capture_logs() as logs:
            assert await reload(ctx, path, running)
        [line] = warnings(logs)
        assert line["keys"] == ["daemon.listen_port", "daemon.shutdown_timeout"]
        assert line["running"] == {"daemon.listen_port": 8181, "daemon.shutdown_timeout": 20.0}

    rewrite(path, {"daemon": {"listen_port": 8181}})  # back to what runs: nothing to restart for
    with capture_logs() as logs:
        assert await reload(ctx, path, running)
    assert warnings(logs) == []
    assert [e["event"] for e in logs if e["log_level"] != "debug"] == ["reloaded"]


async def test_reload_keeps_the_command_lines_verbosity(aiohttp_client, write_config):
    buf = io.StringIO()
    configure("debug", "json", stream=buf)  # what `dutybridge run -v` with log_level info set
    path = write_config({"daemon": {"log_level": "info"}})
    config, pm = load(path)
    app = create_app(config, pm, worker=False, scheduler=False)
    await aiohttp_client(app)
    log = structlog.get_logger("dutybridge.test")

    rewrite(path, {"daemon": {"log_level": "info", "event_retention_days": 3}})
    assert await reload(app[CTX_KEY], path, Running(config, app, verbose=1))
    log.debug("after_verbose_reload")
    rewrite(path, {"daemon": {"log_level": "warning"}})
    assert await reload(app[CTX_KEY], path, Running(config, app, quiet=1))
    log.warning("quiet_warning")
    log.error("quiet_error")
    events = [json.loads(line)["event"] for line in buf.getvalue().splitlines()]
    assert "after_verbose_reload" in events
    assert "quiet_error" in events and "quiet_warning" not in events
    configure("warning", "json")


async def test_live_keys_apply_at_the_next_request(aiohttp_client, write_config):
    path = write_config({"daemon": {"max_body_bytes": 65536}})
    config, pm = load(path)
    app = create_app(config, pm, worker=False, scheduler=False)
    client = await aiohttp_client(app)
    body = json.dumps({**json.loads(v3_event()), "padding": "x" * 3000}).encode()
    headers = {"X-PagerDuty-Signature": sign(body), "Content-Type": "application/json"}
    assert (await client.post("/webhooks/pagerduty", data=body, headers=headers)).status == 202

    rewrite(path, {"daemon": {"max_body_bytes": 2048}})
    assert await reload(app[CTX_KEY], path, Running(config, app))
    resp = await client.post("/webhooks/pagerduty", data=body, headers=headers)
    assert resp.status == 413


async def test_a_changed_store_url_is_warned_about_with_the_running_one(aiohttp_client, write_config, tmp_path):
    path = write_config({"daemon": {"store_url": f"sqlite:///{tmp_path / 'a.db'}"}})
    config, pm = load(path)
    app = create_app(config, pm, worker=False, scheduler=False)
    await aiohttp_client(app)
    rewrite(path, {"daemon": {"store_url": f"sqlite:///{tmp_path / 'b.db'}"}})
    with capture_logs() as logs:
        assert await reload(app[CTX_KEY], path, Running(config, app))
    [warning] = [entry for entry in logs if entry["event"] == RESTART_WARNING]
    assert "daemon.store_url" in warning["keys"]
    assert warning["running"]["daemon.store_url"] == f"sqlite:///{tmp_path / 'a.db'}"
