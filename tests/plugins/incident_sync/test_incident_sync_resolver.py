"""Who resolved, and the description, when PagerDuty's answers leave fields out: close
notes name the person from the resolve log entry or the resolve webhook's agent, never
"PagerDuty" while someone is known; no dangling "PagerDuty incident: " line."""

from __future__ import annotations

import json
import re

from dutybridge import hookimpl
from dutybridge.http import OutboundResponse

LOG_ENTRIES = re.compile(r"/incidents/[^/]+/log_entries$")


class PagerDutyLeavesOut:
    """An account whose PagerDuty answers lack some fields (as an independently written
    PagerDuty did): incidents without ``last_status_change_by`` / ``html_url``, and
    optionally an incident's log entries refused (permissions)."""

    def __init__(self, fields: tuple[str, ...], refuse_log_entries: bool = False) -> None:
        self.fields = fields
        self.refuse_log_entries = refuse_log_entries
        self.refused = 0

    @hookimpl
    def send_request(self, request, ctx):
        if self.refuse_log_entries and request.service == "pagerduty" and LOG_ENTRIES.search(request.url.split("?")[0]):
            self.refused += 1
            body = json.dumps({"error": {"message": "Access Denied", "code": 2010}}).encode()
            return OutboundResponse(
                status=403, headers={"Content-Type": "application/json"}, body=body, url=request.url
            )
        return None

    @hookimpl
    def outbound_response(self, request, response, ctx):
        if request.service != "pagerduty" or not response.body.startswith(b"{"):
            return
        doc = json.loads(response.body)
        incidents = [doc["incident"]] if isinstance(doc.get("incident"), dict) else doc.get("incidents") or []
        for inc in incidents:
            for field in self.fields:
                inc.pop(field, None)
        response.body = json.dumps(doc).encode()


async def test_close_notes_name_the_resolver_from_the_webhook_when_nothing_else_does(make_world):
    leaves_out = PagerDutyLeavesOut(("last_status_change_by",), refuse_log_entries=True)
    world = await make_world(extra_plugins=[leaves_out])
    inc = world.pd.create_incident(title="Queue stuck", service_id="PSVCDB1", from_user="PALICE1")
    await world.settle()
    world.pd.resolve(inc["id"], "PBOBSM1")
    await world.settle()
    [rec] = world.sn_for(inc["id"])
    assert rec["state"] == "6"
    assert rec["close_notes"] == "Resolved in PagerDuty by Bob Smith."
    assert leaves_out.refused >= 1  # the log entries were asked for, and refused


async def test_close_notes_name_who_resolved_last_after_a_reopen(make_world):
    world = await make_world(extra_plugins=[PagerDutyLeavesOut(("last_status_change_by",))], webhooks=False)
    await world.poll()  # the watermarks: the next poll finds the incident
    inc = world.pd.create_incident(title="Flapping", service_id="PSVCDB1", from_user="PALICE1")
    await world.poll()
    await world.settle()
    [rec] = world.sn_for(inc["id"])
    world.pd.resolve(inc["id"], "PALICE1")
    world.pd.reopen(inc["id"], "PALICE1")
    world.pd.resolve(inc["id"], "PCAROL1", resolution="for good")
    await world.engine.pagerduty_changed(inc["id"])  # no webhook: only the log entries say who
    rec = world.sn.get("incident", rec["sys_id"])
    assert rec["close_notes"] == "Resolved in PagerDuty by Carol Jones."


async def test_a_bare_user_reference_is_named_by_the_user(world):
    name = await world.engine.pd_to_sn._agent_name({"id": "PBOBSM1", "type": "user_reference"})
    assert name == "Bob Smith"
    assert await world.engine.pd_to_sn._agent_name({"type": "service_reference"}) == ""


async def test_a_description_without_html_url_has_no_dangling_line(make_world):
    world = await make_world(extra_plugins=[PagerDutyLeavesOut(("html_url",))])
    inc = world.pd.create_incident(
        title="No link", service_id="PSVCDB1", from_user="PALICE1", body_details="disk at 99%"
    )
    await world.settle()
    [rec] = world.sn_for(inc["id"])
    assert rec["description"] == "disk at 99%"


async def test_a_description_with_html_url_links_the_incident(world):
    inc = world.pd.create_incident(
        title="With link", service_id="PSVCDB1", from_user="PALICE1", body_details="disk at 99%"
    )
    await world.settle()
    [rec] = world.sn_for(inc["id"])
    assert rec["description"] == f"disk at 99%\n\nPagerDuty incident: {world.pd.incidents[inc['id']]['html_url']}"
