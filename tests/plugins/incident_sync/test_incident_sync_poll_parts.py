"""The poll in parts: GET /log_entries refused (permissions, an outage) leaves the
ServiceNow poll and the open-incident sweep running, their watermarks moving; the
failing part is logged when it starts failing and when it recovers, and shows in
``/readyz`` (degraded, still 200) and ``/metrics``."""

from __future__ import annotations

import json

import aiohttp
from structlog.testing import capture_logs

from dutybridge import hookimpl
from dutybridge.http import OutboundResponse
from dutybridge_plugins.incident_sync.poll import WM_PD, WM_SN
from tests.plugins.incident_sync.world import DB_GROUP


class RefuseLogEntries:
    """GET /log_entries answers 404 while ``refusing`` (as the independent PagerDuty did)."""

    def __init__(self) -> None:
        self.refusing = True

    @hookimpl
    def send_request(self, request, ctx):
        if self.refusing and request.service == "pagerduty" and request.operation == "GET /log_entries":
            body = json.dumps({"error": {"message": "Not Found", "code": 2100}}).encode()
            return OutboundResponse(
                status=404, headers={"Content-Type": "application/json"}, body=body, url=request.url
            )
        return None


async def readyz(world) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{world.url}/readyz") as resp:
            return resp.status, await resp.json()


async def metrics(world) -> str:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{world.url}/metrics") as resp:
            return await resp.text()


async def test_a_refused_log_entries_poll_leaves_the_other_parts_running(make_world):
    refuse = RefuseLogEntries()
    # No webhooks, no doorbell: only the poll syncs (the daemon was down when they came).
    world = await make_world(extra_plugins=[refuse], webhooks=False, doorbell=False)
    with capture_logs() as logs:
        await world.poll()  # the first pass: watermarks (the log entries' is set, not read)
        inc = world.pd.create_incident(title="Triggered while we were down", service_id="PSVCDB1", from_user="PALICE1")
        rec = world.sn.insert(
            "incident",
            {
                "short_description": "Opened while we were down",
                "assignment_group": DB_GROUP,
                "impact": "1",
                "urgency": "1",
            },
            user="alice.nguyen",
        )
        pd_mark = "2020-01-01T00:00:00Z"  # long ago: whether a pass moved it shows, whatever the second
        await world.store.set_watermark(WM_PD, pd_mark)
        for _ in range(3):  # three intervals
            await world.poll()
            await world.settle()
    assert len(world.sn_for(inc["id"])) == 1, "the open-incident sweep ran although the log entries failed"
    assert len(world.pd_for(rec["sys_id"])) == 1, "the ServiceNow poll ran although the log entries failed"
    assert await world.store.get_watermark(WM_PD) == pd_mark  # not moved past what was never read
    assert await world.store.get_watermark(WM_SN.format(table="incident")) >= rec["sys_updated_on"]
    failed = [e for e in logs if e["event"] == "poll_part_failed"]
    assert [e["part"] for e in failed] == ["poll.pagerduty_log_entries"]  # once, not every interval
    assert "404" in failed[0]["error"]

    status, body = await readyz(world)
    assert status == 200 and body["status"] == "degraded"
    parts = body["health"]["incident_sync"]
    assert "404" in parts["poll.pagerduty_log_entries"]
    assert parts["poll.pagerduty_open_incidents"] == "ok" and parts["poll.servicenow.incident"] == "ok"
    text = await metrics(world)
    assert 'dutybridge_plugin_health{part="poll.pagerduty_log_entries",plugin="incident_sync"} 0.0' in text
    assert 'dutybridge_plugin_health{part="poll.servicenow.incident",plugin="incident_sync"} 1.0' in text

    refuse.refusing = False
    with capture_logs() as logs:
        counts = await world.poll()
        await world.poll()
    assert counts["pagerduty"] > 0  # the log entries since the watermark, read at last
    assert [e["part"] for e in logs if e["event"] == "poll_part_recovered"] == ["poll.pagerduty_log_entries"]
    assert await world.store.get_watermark(WM_PD) > pd_mark
    status, body = await readyz(world)
    assert status == 200 and body["status"] == "ready"
    assert set(body["health"]["incident_sync"].values()) == {"ok"}


async def test_with_the_poll_off_nothing_is_reported(world):
    status, body = await readyz(world)
    assert status == 200 and body["status"] == "ready" and body["health"] == {}
