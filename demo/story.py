"""``dutybridge demo``: the sandbox and the daemon wired together, and a scripted story.
Exit 0 only when every step was observed in both systems.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import tomli_w

from dutybridge.app import load
from dutybridge.logging import configure as configure_logging
from dutybridge.logging import set_secrets
from dutybridge_sandbox.runner import Sandbox

from .harness import RunningDaemon, start_daemon

#: Seeded ServiceNow groups (sandbox/seed.toml) and the PagerDuty objects they map to.
LINKS = [
    {"group": "Database", "service": "PSVCDB1", "escalation_policy": "PEPDB01"},
    {"group": "Network", "service": "PSVCNET", "escalation_policy": "PEPNET1"},
]
V3_EVENTS = [
    "incident.triggered",
    "incident.acknowledged",
    "incident.unacknowledged",
    "incident.resolved",
    "incident.reopened",
    "incident.reassigned",
    "incident.delegated",
    "incident.escalated",
    "incident.annotated",
    "incident.priority_updated",
]
STEP_TIMEOUT = 20.0


@dataclass
class Step:
    name: str
    hop: str
    seconds: float | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.seconds is not None


@dataclass
class Demo:
    out: Any = sys.stdout
    steps: list[Step] = field(default_factory=list)

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    async def observe(self, name: str, hop: str, act: Callable[[], Any], seen: Callable[[], Any]) -> Any:
        """Do ``act`` (as a person), then wait until ``seen()`` is truthy on the other side."""
        step = Step(name, hop)
        self.steps.append(step)
        self.say(f"\n- {name}")
        started = time.perf_counter()
        act()
        deadline = started + STEP_TIMEOUT
        while True:
            value = seen()
            if value:
                step.seconds = time.perf_counter() - started
                self.say(f"  -> {hop}: seen after {step.seconds * 1000:.0f} ms")
                return value
            if time.perf_counter() > deadline:
                self.say(f"  !! {hop}: NOT seen within {STEP_TIMEOUT:.0f} s")
                return None
            await asyncio.sleep(0.005)


def write_config(folder: Path, creds: dict, webhook_secret: str, doorbell_token: str) -> Path:
    doc = {
        "daemon": {
            "listen_port": 0,
            "store_url": f"sqlite:///{folder / 'dutybridge.db'}",
            "log_level": "warning",
            "log_format": "console",
        },
        "pagerduty": {
            "api_url": creds["pagerduty_url"],
            "api_key": creds["pagerduty_api_key"],
            "default_user_id": creds["pagerduty_user_id"],
            "webhook_secrets": [webhook_secret],
        },
        "servicenow": {
            "instance_url": creds["servicenow_url"],
            "username": creds["servicenow_username"],
            "password": creds["servicenow_password"],
            "doorbell_token": doorbell_token,
        },
        "plugins": {
            "enabled": ["incident_sync"],
            "incident_sync": {"links": LINKS, "poll_interval_seconds": 30.0, "recheck_seconds": 1.0},
        },
    }
    path = folder / "config.toml"
    path.write_text(tomli_w.dumps(doc))
    path.chmod(0o600)
    return path


async def run_demo(*, keep_running: bool = False, out: IO[str] | None = None) -> int:
    """A newcomer's first run: both sandboxes (the seeded organisation) and the daemon
    (SQLite in a temporary folder, incident sync enabled) start on loopback, wired with a
    signed V3 webhook subscription and ServiceNow's doorbell. The story acts as people in
    each system and waits until the change shows on the other side, printing each hop and
    its latency. Exit 0 only when every step was observed in both systems.
    """
    demo = Demo(out=out or sys.stdout)
    webhook_secret, doorbell_token = secrets.token_hex(16), secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="dutybridge-demo-") as tmp:
        folder = Path(tmp)
        sandbox = Sandbox()
        await sandbox.start()
        daemon: RunningDaemon | None = None
        try:
            creds = sandbox.credentials()
            config, pm = load(write_config(folder, creds, webhook_secret, doorbell_token))
            configure_logging("warning", "console", stream=sys.stderr)
            set_secrets(config.secrets())
            daemon = await start_daemon(config, pm)
            url, ctx = daemon.url, daemon.ctx
            pd, sn = sandbox.pagerduty, sandbox.servicenow
            pd.create_webhook_subscription(
                {
                    "type": "webhook_subscription",
                    "delivery_method": {"type": "http_delivery_method", "url": f"{url}/webhooks/pagerduty"},
                    "events": V3_EVENTS,
                    "filter": {"type": "account_reference"},
                    "description": "dutybridge demo",
                },
                secret=webhook_secret,
            )
            sn.configure_doorbell(f"{url}/webhooks/servicenow", token=doorbell_token, tables=("incident",))

            demo.say("dutybridge demo: a local PagerDuty and ServiceNow (the sandbox), and the daemon between them")
            demo.say(f"  PagerDuty sandbox   {creds['pagerduty_url']}")
            demo.say(f"  ServiceNow sandbox  {creds['servicenow_url']}")
            demo.say(f"  dutybridge          {url}  (SQLite inbox in {folder})")
            demo.say("  wiring: a signed V3 webhook subscription PagerDuty -> dutybridge, and ServiceNow's")
            demo.say("          business rule doorbell ServiceNow -> dutybridge; groups Database and Network mapped")
            ok = await story(demo, pd, sn)
            if ctx.store is None:
                raise RuntimeError("the daemon's store is not open")
            counts = await settle(ctx.store)
            summary(demo, counts)
            if keep_running:
                # Caught from before the first line that invites a Ctrl-C.
                interrupted = interrupt_signal()
                demo.say("\nStill running (Ctrl-C to stop). Credentials:")
                for key, value in creds.items():
                    demo.say(f"  {key:32} {value}")
                demo.say(f"  {'dutybridge':32} {url}")
                return 128 + await interrupted  # as a shell reports a process stopped by that signal
            return 0 if ok else 1
        finally:
            sandbox.servicenow.configure_doorbell(None)
            if daemon is not None:
                await daemon.stop()
            await sandbox.stop()


async def settle(store: Any, timeout: float = 10.0) -> dict[str, int]:
    """The inbox's counts once nothing is pending or claimed (or the timeout passed)."""
    deadline = time.perf_counter() + timeout
    while True:
        counts = await store.counts()
        if (not counts.get("pending") and not counts.get("claimed")) or time.perf_counter() > deadline:
            return counts
        await asyncio.sleep(0.02)


def interrupt_signal() -> asyncio.Future[int]:
    """The number of the first Ctrl-C (SIGINT) or SIGTERM from now on."""
    loop = asyncio.get_running_loop()
    received: asyncio.Future[int] = loop.create_future()

    def on_signal(signum: int) -> None:
        if not received.done():
            received.set_result(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, int(sig))
    return received


async def story(demo: Demo, pd: Any, sn: Any) -> bool:
    groups = {g["name"]: sid for sid, g in sn.tables["sys_user_group"].items()}
    users = {u["user_name"]: sid for sid, u in sn.tables["sys_user"].items()}

    def sn_for(pd_id: str) -> dict | None:
        rows = sn.query("incident", f"correlation_id={pd_id}")
        return rows[0] if rows else None

    demo.say("\nPagerDuty first: an alert fires on the Database service.")
    holder: dict[str, Any] = {}

    def trigger() -> None:
        holder["pd"] = pd.create_incident(
            title="Replica lag on db-01",
            service_id="PSVCDB1",
            from_user="PALICE1",
            body_details="Read replica 900 s behind the primary.",
        )

    rec = await demo.observe(
        "PagerDuty: incident triggered on service Database",
        "ServiceNow incident created",
        trigger,
        lambda: sn_for(holder["pd"]["id"]),
    )
    if not rec:
        return False
    pd_id, sys_id = holder["pd"]["id"], rec["sys_id"]
    demo.say(
        f"     PagerDuty #{holder['pd']['incident_number']} ({pd_id}) -> ServiceNow {rec['number']}, "
        f"assignment group Database, priority {rec['priority']}"
    )

    await demo.observe(
        "PagerDuty: Bob Smith acknowledges",
        "ServiceNow: In Progress, assigned to Bob",
        lambda: pd.acknowledge(pd_id, "PBOBSM1"),
        lambda: (r := sn.get("incident", sys_id)) and r["state"] == "2" and r["assigned_to"] == users["bob.smith"],
    )
    await demo.observe(
        "ServiceNow: Dave Patel adds a work note",
        "PagerDuty note '(from ServiceNow: ...)'",
        lambda: sn.update("incident", sys_id, {"work_notes": "Failover to db-02 started"}, user="dave.patel"),
        lambda: any("Failover to db-02 started" in n["content"] for n in pd.list_notes(pd_id)),
    )
    notes = pd.list_notes(pd_id)
    if notes:
        demo.say(f"     PagerDuty note: {notes[-1]['content']!r}")
    await demo.observe(
        "ServiceNow: Alice reassigns the incident to the Network group",
        "PagerDuty: escalation policy Network",
        lambda: sn.update("incident", sys_id, {"assignment_group": groups["Network"]}, user="alice.nguyen"),
        lambda: pd.incidents[pd_id]["escalation_policy"]["id"] == "PEPNET1",
    )
    await demo.observe(
        "PagerDuty: Bob resolves",
        "ServiceNow: Resolved",
        lambda: pd.resolve(pd_id, "PBOBSM1", resolution="Replica rebuilt"),
        lambda: sn.get("incident", sys_id)["state"] == "6",
    )

    demo.say("\nServiceNow first: the service desk opens a priority 1 incident for the Database group.")

    def open_sn() -> None:
        holder["sn"] = sn.insert(
            "incident",
            {
                "short_description": "Payments API returns 500",
                "impact": "1",
                "urgency": "1",
                "assignment_group": groups["Database"],
                "caller_id": users["frank.miller"],
            },
            user="frank.miller",
        )

    def pd_for() -> dict | None:
        key = holder["sn"]["sys_id"]
        found = [i for i in pd.incidents.values() if i.get("incident_key") == key]
        return found[0] if found else None

    inc = await demo.observe(
        "ServiceNow: priority 1 incident opened", "PagerDuty incident triggered on Database", open_sn, pd_for
    )
    if inc:
        demo.say(
            f"     ServiceNow {holder['sn']['number']} -> PagerDuty #{inc['incident_number']} ({inc['id']}), "
            f"incident_key = the sys_id, so a race can never open two"
        )
        await demo.observe(
            "ServiceNow: resolved by the service desk",
            "PagerDuty: resolved",
            lambda: sn.update(
                "incident",
                holder["sn"]["sys_id"],
                {"state": "6", "close_code": "Solved (Permanently)", "close_notes": "Restarted the API pods"},
                user="frank.miller",
            ),
            lambda: pd.incidents[inc["id"]]["status"] == "resolved",
        )
    # No echo: the note that came from ServiceNow did not go back as a second work note.
    echoed = [e for e in sn.journal("incident", sys_id, "work_notes") if "(PagerDuty:" in e["value"]]
    demo.say(
        f"\nNo echo: {len(sn.journal('incident', sys_id, 'work_notes'))} work note(s) on {rec['number']}, "
        f"{len(echoed)} mirrored back from PagerDuty; {len(pd.list_notes(pd_id))} PagerDuty note(s)."
    )
    return all(step.ok for step in demo.steps) and not echoed


def summary(demo: Demo, counts: dict[str, int]) -> None:
    seen = [s for s in demo.steps if s.ok]
    demo.say("\nSummary")
    demo.say(f"  steps observed in both systems: {len(seen)} of {len(demo.steps)}")
    demo.say(f"  inbox: {', '.join(f'{k} {v}' for k, v in sorted(counts.items()) if v) or 'empty'}")
    for step in demo.steps:
        took = f"{step.seconds * 1000:7.0f} ms" if step.ok else "   MISSED"
        demo.say(f"  {took}  {step.hop}")
    if seen:
        demo.say(
            f"  latency per hop: median {statistics.median(s.seconds for s in seen) * 1000:.0f} ms, "
            f"max {max(s.seconds for s in seen) * 1000:.0f} ms"
        )
    demo.say("  result: " + ("every step synced" if len(seen) == len(demo.steps) else "SOME STEPS DID NOT SYNC"))
