"""The e2e world for incident sync: both sandboxes on real ports, the daemon on a real
port, a signed V3 webhook subscription from PagerDuty to the daemon, and ServiceNow's
doorbell pointed at it. Tests act as people through the sandbox states' helpers and
wait on conditions; nothing sleeps a fixed second. Fixtures are in conftest.py.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import tomli_w
from aiohttp import web

SEED = tomllib.loads((resources.files("dutybridge_sandbox") / "seed.toml").read_text())

PD_SECRET = "whsec-incident-sync-e2e"
DOORBELL_TOKEN = "doorbell-incident-sync-e2e"
SN_INTEGRATION = "pagerduty.integration"
V2_USER, V2_PASSWORD = "pd-v2-extension", "v2-extension-password"

# Seeded ids (sandbox/seed.toml).
DB_GROUP = "791d31c38a869b0f335daf24593fd37d"
NET_GROUP = "c9f3e1c4781d0ed7199cc9f411b78597"
DESK_GROUP = "a828d5f2993f47fa626772834ec1204e"
ALICE_SN, BOB_SN, CAROL_SN = (
    "f164b40bc4b53aa13fb15510f77528f4",
    "1b4d13e3bdcc91087aa6422d46dd25e7",
    "e92d72d6979c95ddce6c6b9f9906ae60",
)
DAVE_SN, ERIN_SN = "dbde7f72b54eaa98f17f4745d00f67f2", "21c873cc173a58b02925fb6ba6398a05"
PD_TO_SN = {"PALICE1": ALICE_SN, "PBOBSM1": BOB_SN, "PCAROL1": CAROL_SN, "PDAVEP1": DAVE_SN}
PAYMENTS_API_CI = "720b630f97bc169b69b1cfcb70dbd140"
PORTAL_WEB_CI = "1721ae5a0ea68e0a533573f9cc49850d"

# The demo's wiring: the seeded Database and Network groups, and the events subscribed to.
from dutybridge_demo.story import LINKS as DEFAULT_LINKS  # noqa: E402
from dutybridge_demo.story import V3_EVENTS  # noqa: E402


@dataclass
class World:
    """A running sandbox + daemon. ``pd`` and ``sn`` are the sandbox states (act as people)."""

    sandbox: Any
    ctx: Any
    url: str
    runner: web.AppRunner
    subscription: dict | None = None
    config_path: Path | None = None

    @property
    def pd(self) -> Any:
        return self.sandbox.pagerduty

    @property
    def sn(self) -> Any:
        return self.sandbox.servicenow

    @property
    def store(self) -> Any:
        return self.ctx.store

    @property
    def plugin(self) -> Any:
        """The incident_sync plugin object the daemon registered."""
        return self.ctx.pm.get_plugin("incident_sync")

    @property
    def engine(self) -> Any:
        return self.plugin.engine(self.ctx)

    # -- waiting -------------------------------------------------------------------
    async def quiet(self) -> bool:
        """Nothing in flight: webhooks, doorbells and the inbox all drained."""
        if not self.pd.dispatcher.idle or self.sn.doorbells_pending:
            return False
        counts = await self.store.counts()
        return counts.get("pending", 0) == 0 and counts.get("claimed", 0) == 0

    async def settle(self, timeout: float = 10.0) -> None:
        """Wait until the world has been quiet for a few consecutive looks."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        calm = 0
        while calm < 3:
            if loop.time() > deadline:
                counts = await self.store.counts()
                raise AssertionError(
                    f"not quiet after {timeout}s: inbox {counts}, "
                    f"webhooks {self.pd.dispatcher.pending_summary()}, doorbells {self.sn.doorbells_pending}"
                )
            calm = calm + 1 if await self.quiet() else 0
            await asyncio.sleep(0.02)
        dead = await self.store.list_events(status="dead")
        assert not dead, [(e.type, e.last_error) for e in dead]

    async def wait_for(self, cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
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

    async def poll(self) -> dict:
        """One reconciliation pass, as the scheduled job runs it."""
        from dutybridge_plugins.incident_sync.poll import poll

        return await poll(self.ctx, self.engine)

    # -- reading the sides ----------------------------------------------------------
    def sn_incidents(self, table: str = "incident", query: str | None = None) -> list[dict]:
        return self.sn.query(table, query)

    def sn_for(self, pd_id: str, table: str = "incident") -> list[dict]:
        return self.sn.query(table, f"correlation_id={pd_id}")

    def pd_for(self, sys_id: str) -> list[dict]:
        return [i for i in self.pd.incidents.values() if i["incident_key"] == sys_id]

    def work_notes(self, sys_id: str, table: str = "incident") -> list[str]:
        return [e["value"] for e in self.sn.journal(table, sys_id, "work_notes")]

    def pd_notes(self, pd_id: str) -> list[str]:
        return [n["content"] for n in self.pd.list_notes(pd_id)]

    async def links(self, include_unlinked: bool = False) -> list[Any]:
        return await self.store.list_links("incident", include_unlinked=include_unlinked)


def build_config(
    sandbox: Any, tmp: Path, plugin: dict, *, extra: dict | None = None, store_url: str | None = None
) -> Path:
    creds = sandbox.credentials()
    doc: dict[str, Any] = {
        "daemon": {
            "listen_port": 0,
            "store_url": store_url or f"sqlite:///{tmp / 'dutybridge.db'}",
            "log_level": "warning",
            "retry_base_seconds": 0.05,
            "retry_max_seconds": 0.5,
        },
        "pagerduty": {
            "api_url": creds["pagerduty_url"],
            "api_key": creds["pagerduty_api_key"],
            "default_user_id": creds["pagerduty_user_id"],
            "webhook_secrets": [PD_SECRET],
            "max_retries": 2,
            "timeout_seconds": 5.0,
        },
        "servicenow": {
            "instance_url": creds["servicenow_url"],
            "username": creds["servicenow_username"],
            "password": creds["servicenow_password"],
            "doorbell_token": DOORBELL_TOKEN,
            "doorbell_username": V2_USER,
            "doorbell_password": V2_PASSWORD,
            "max_retries": 2,
            "timeout_seconds": 5.0,
        },
        "plugins": {"enabled": ["incident_sync"], "incident_sync": plugin},
    }
    for key, value in (extra or {}).items():
        doc.setdefault(key, {}).update(value)
    path = tmp / "config.toml"
    path.write_text(tomli_w.dumps(doc))
    return path


def advancing_clock(sn: Any) -> None:
    """ServiceNow's clock moves on one second per read of it (that is, per write).

    ServiceNow stamps changes to the second, and a doorbell is deduplicated on that stamp,
    so at test speed nearly every change would share a second with the one before. The
    daemon copes (rechecks, polling; the same-second tests prove it), but most tests are
    about something else and should not wait seconds for it.
    """
    start = datetime.now(UTC).replace(microsecond=0)
    ticks = itertools.count()
    sn.now = lambda: start + timedelta(seconds=next(ticks))


def on_call_from_now(seed: dict) -> dict:
    """Each seeded schedule's rotation starts now, so its first user is the one on call.

    The seed's rotations start on a fixed Monday and turn weekly, so who is on call (and
    so who a new incident goes to) changed with the week a test ran in: a test that
    assigned an incident "to someone else" passed one week and failed the next.
    """
    start = datetime.now(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")
    for schedule in seed.get("pagerduty", {}).get("schedules", []):
        schedule["rotation_start"] = start
    return seed


async def start_world(
    tmp: Path,
    *,
    webhooks: bool = True,
    doorbell: bool = True,
    seed: dict | None = None,
    extra_plugins: list[object] = (),
    doorbell_exclude: tuple[str, ...] = (),
    events: list[str] | None = None,
    sn_clock: str = "advancing",
    extra: dict | None = None,
    store_url: str | None = None,
    daemon: dict | None = None,
    doorbell_mod_count: bool = True,
    **settings: Any,
) -> World:
    """Start sandbox + daemon in ``tmp``; ``settings`` are ``[plugins.incident_sync]`` keys
    (``links`` defaults to Database and Network, ``poll_interval_seconds`` to 0: tests poll
    with ``world.poll()``; ``recheck_seconds`` to 0). ``webhooks=False`` / ``doorbell=False``
    leave that push channel off. ``sn_clock``: "advancing" (see ``advancing_clock``),
    "real", or "frozen" (every change in one second). ``extra``: more config sections
    (see ``build_config``), e.g. other plugins enabled with their sections. ``store_url``:
    the daemon's store (a SQLite file in ``tmp`` by default). ``daemon``: ``[daemon]``
    keys; ``doorbell_mod_count=False``: a business rule that sends no sys_mod_count."""
    from dutybridge.app import load
    from dutybridge_demo.harness import start_daemon
    from dutybridge_sandbox.runner import Sandbox

    tmp.mkdir(parents=True, exist_ok=True)
    sandbox = Sandbox(on_call_from_now(copy.deepcopy(seed or SEED)))
    if sn_clock == "advancing":
        advancing_clock(sandbox.servicenow)
    elif sn_clock == "frozen":
        sandbox.servicenow.set_time(sandbox.servicenow.timestamp())
    await sandbox.start()
    runner: web.AppRunner | None = None
    try:
        plugin = {"links": DEFAULT_LINKS, "poll_interval_seconds": 0.0, "recheck_seconds": 0.0, **settings}
        config, pm = load(
            build_config(
                sandbox,
                tmp,
                plugin,
                extra={**(extra or {}), **({"daemon": daemon} if daemon else {})} or None,
                store_url=store_url,
            ),
            extra_plugins=list(extra_plugins),
        )
        daemon_ = await start_daemon(config, pm, shutdown_timeout=2.0)
        runner, url = daemon_.runner, daemon_.url
        world = World(sandbox=sandbox, ctx=daemon_.ctx, url=url, runner=runner)
        world.config_path = tmp / "config.toml"
        if webhooks:
            world.subscription = sandbox.pagerduty.create_webhook_subscription(
                {
                    "type": "webhook_subscription",
                    "delivery_method": {"type": "http_delivery_method", "url": f"{url}/webhooks/pagerduty"},
                    "events": events or V3_EVENTS,
                    "filter": {"type": "account_reference"},
                    "description": "dutybridge incident sync (e2e)",
                },
                secret=PD_SECRET,
            )
        if doorbell:
            sandbox.servicenow.configure_doorbell(
                f"{url}/webhooks/servicenow",
                token=DOORBELL_TOKEN,
                tables=("incident", "sn_si_incident"),
                exclude_users=doorbell_exclude,
                mod_count=doorbell_mod_count,
            )
        return world
    except BaseException:
        if runner is not None:
            await runner.cleanup()
        await sandbox.stop()
        raise


async def restart_daemon(world: World, *, extra_plugins: list[object] = ()) -> None:
    """Stop the world's daemon and start a new one on the same store, configuration and
    port (so webhooks and doorbells reach it), as after a crash and a restart: what the
    first one had claimed and not finished runs again in the second."""
    from dutybridge.app import load
    from dutybridge_demo.harness import start_daemon

    port = world.runner.addresses[0][1]
    await world.runner.cleanup()
    config, pm = load(world.config_path, extra_plugins=list(extra_plugins))
    daemon_ = await start_daemon(config, pm, port=port, shutdown_timeout=2.0)
    world.runner, world.ctx = daemon_.runner, daemon_.ctx


async def stop_world(world: World) -> None:
    world.sn.configure_doorbell(None)
    await world.runner.cleanup()
    await world.sandbox.stop()
