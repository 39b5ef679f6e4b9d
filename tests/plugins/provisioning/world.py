"""The provisioning test world: both sandboxes, the daemon on a known port (its
``public_url`` is where provisioned webhook subscriptions point), ServiceNow's doorbell
wired to it, and ``world.cli(...)`` running ``dutybridge provision ...`` against it."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import io
import json
import socket
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from dutybridge.cli import main
from dutybridge_demo.harness import RunningDaemon, start_daemon
from dutybridge_sandbox.runner import Sandbox
from tests.plugins.incident_sync.world import DOORBELL_TOKEN, SEED, advancing_clock, build_config, on_call_from_now

API_TOKEN = "provisioning-api-token-e2e"
DESK_GROUP = "a828d5f2993f47fa626772834ec1204e"
FRANK_SN = "cca49bea062ac75bd7ce83ba276063ea"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class World:
    sandbox: Sandbox
    config_path: Path
    daemon: RunningDaemon | None = None

    @property
    def pd(self) -> Any:
        return self.sandbox.pagerduty

    @property
    def sn(self) -> Any:
        return self.sandbox.servicenow

    @property
    def url(self) -> str:
        return self.daemon.url

    @property
    def store(self) -> Any:
        return self.daemon.ctx.store

    async def cli(self, *argv: str) -> tuple[int, list[dict], str]:
        """``dutybridge ARGV --config ...`` in a thread (it runs its own loop): exit code,
        the JSON lines it printed (stdout is no terminal here) and its stderr."""
        out, err = io.StringIO(), io.StringIO()

        def call() -> int:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                return main([*argv, "--config", str(self.config_path), "-q"])

        code = await asyncio.to_thread(call)
        lines = [json.loads(line) for line in out.getvalue().splitlines() if line.startswith("{")]
        return code, lines, err.getvalue()

    async def wait_for(self, cond: Any, timeout: float = 10.0, what: str = "condition") -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            value = cond()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return value
            if loop.time() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.02)


def outcomes(lines: list[dict], kind: str | None = None) -> list[dict]:
    return [line for line in lines if "kind" in line and (kind is None or line["kind"] == kind)]


def summary(lines: list[dict]) -> dict:
    return next(line["summary"] for line in lines if "summary" in line)


async def start_world(
    tmp: Path,
    *,
    seed: dict | None = None,
    daemon: bool = True,
    configured_secret: bool = False,
    faults: Any = None,
    rate_limit: int | None = None,
    pagerduty: dict | None = None,
    **settings: Any,
) -> World:
    """Sandbox (+ daemon unless ``daemon=False``); ``settings`` are ``[plugins.provisioning]``
    keys. No static links and, unless ``configured_secret``, no configured webhook secret:
    whatever syncs, syncs through what provisioning stored."""
    tmp.mkdir(parents=True, exist_ok=True)
    seed = on_call_from_now(copy.deepcopy(seed or SEED))
    if rate_limit is not None:
        seed["pagerduty"]["rate_limit_per_minute"] = rate_limit
    sandbox = Sandbox(seed)
    advancing_clock(sandbox.servicenow)
    await sandbox.start()
    port = free_port()
    path = build_config(sandbox, tmp, {"poll_interval_seconds": 0.0, "recheck_seconds": 0.0})
    doc = tomllib.loads(path.read_text())
    doc["daemon"].update(listen_port=port, public_url=f"http://127.0.0.1:{port}")
    doc["pagerduty"].update(pagerduty or {})
    if not configured_secret:
        doc["pagerduty"]["webhook_secrets"] = []
    doc["plugins"]["enabled"] = ["incident_sync", "provisioning"]
    doc["plugins"]["provisioning"] = {"api_token": API_TOKEN, "concurrency": 4, **settings}
    path.write_text(tomli_w.dumps(doc))
    world = World(sandbox=sandbox, config_path=path)
    if faults is not None:
        sandbox.pagerduty.faults = faults
    if daemon:
        try:
            world.daemon = await start_daemon(path, port=port)
        except BaseException:
            await sandbox.stop()
            raise
        sandbox.servicenow.configure_doorbell(
            f"{world.url}/webhooks/servicenow", token=DOORBELL_TOKEN, tables=("incident",)
        )
    return world


async def stop_world(world: World) -> None:
    world.sn.configure_doorbell(None)
    if world.daemon is not None:
        await world.daemon.stop()
    await world.sandbox.stop()
