"""End to end: the ``dutybridge mobilize`` commands, and an action another plugin adds
to the registry, served by the API and the CLI alike."""

from __future__ import annotations

import json
import re

import aiohttp

from dutybridge.cli import build_parser
from dutybridge_plugins.response_mobilizer import Action, ActionError
from tests.plugins.response_mobilizer.conftest import Api, linked_incident, mobilizer, seed_with

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[")


async def mobilize(world, capsys, *argv: str) -> tuple[int, str]:
    args = build_parser().parse_args(["mobilize", *argv])
    assert args.plugin == "response_mobilizer"
    code = await args.plugin_command.handler(args, world.ctx)
    # The daemon's own log lines share stdout in tests; the command's output is the rest.
    return code, "\n".join(line for line in capsys.readouterr().out.splitlines() if not LOG_LINE.match(line))


async def test_cli_responders_bridge_workflows_and_status(api_world, capsys):
    world, _api, rec, pd_id = await api_world()
    code, out = await mobilize(
        world,
        capsys,
        "responders",
        rec["number"],
        "--as",
        "alice.nguyen",
        "--user",
        "bob.smith",
        "--message",
        "join the bridge",
        "--dial-in",
        "+1 415-555-0199",
    )
    assert code == 0, out
    assert json.loads(out)["responder_request"]["targets"][0]["id"] == "PBOBSM1"
    inc = world.pd.incidents[pd_id]
    assert inc["responder_requests"][0]["message"] == "join the bridge"
    assert inc["conference_bridge"] == {"conference_number": "+1 415-555-0199"}

    code, out = await mobilize(
        world, capsys, "bridge", rec["number"], "--as", "bob.smith", "--name", "Major incident bridge"
    )
    assert (
        code == 0
        and world.pd.incidents[pd_id]["conference_bridge"]["conference_url"] == "https://meet.example.com/major"
    )
    code, out = await mobilize(world, capsys, "bridge", rec["number"])
    assert code == 0 and json.loads(out)["conference_bridge"]["url"] == "https://meet.example.com/major"

    code, out = await mobilize(world, capsys, "workflows", pd_id)
    assert code == 0 and [w["name"] for w in json.loads(out)["workflows"]] == ["Major incident"]
    code, out = await mobilize(world, capsys, "workflows", pd_id, "--as", "alice.nguyen", "--run", "PWFMAJ1")
    assert code == 0 and len(world.pd.workflow_instances) == 1

    code, out = await mobilize(
        world, capsys, "status", rec["sys_id"], "--as", "alice.nguyen", "--message", "Mitigated", "--impact", "PBSPAY1"
    )
    assert code == 0 and json.loads(out)["published"] is True
    assert world.pd.status_updates[pd_id][-1]["message"] == "Mitigated"
    code, out = await mobilize(world, capsys, "status", rec["sys_id"])
    assert code == 0 and json.loads(out)["impacted_business_services"] == [{"id": "PBSPAY1", "name": "Payments"}]


async def test_cli_refusals_say_why(api_world, capsys):
    world, _api, rec, _pd_id = await api_world(seed=seed_with(("coordinated_responding",)), status_updates=False)
    code, out = await mobilize(world, capsys, "responders", rec["number"], "--user", "bob.smith")
    assert code == 2 and "--as USER (the acting ServiceNow user) is required" in out
    code, out = await mobilize(world, capsys, "responders", rec["number"], "--as", "carol.jones", "--user", "bob.smith")
    assert code == 1 and "does not hold the role x_pd_integration.incident_response" in out
    code, out = await mobilize(
        world, capsys, "responders", rec["number"], "--as", "alice.nguyen", "--user", "bob.smith"
    )
    assert code == 1 and "lacks the ability to add responders" in out
    code, out = await mobilize(world, capsys, "status", rec["number"], "--as", "alice.nguyen", "--message", "x")
    assert code == 1 and "plugins.response_mobilizer.status_updates = true" in out
    code, out = await mobilize(world, capsys, "workflows", "INC0000000x")
    assert code == 1 and "neither a ServiceNow number" in out


class PageNote:
    """Another plugin: adds a 'page-note' action (a note in PagerDuty, as the acting user)."""

    def __init__(self):
        self.mobilizer_actions = [
            Action(
                "page-note",
                "add a PagerDuty note as the acting user",
                post=self.note,
                setting="responders",
                what="adding notes",
            )
        ]

    async def note(self, call):
        content = call.body.get("content")
        if not isinstance(content, str) or not content:
            raise ActionError(400, "content: a non-empty string")
        answer = await call.pagerduty(
            "POST",
            f"/incidents/{call.incident.pd_id}/notes",
            "add a note",
            json={"note": {"content": content}},
            operation="POST /incidents/{id}/notes",
        )
        return {"note": answer["note"]["id"]}


async def test_a_plugin_adds_an_action_served_by_api_and_cli(make_world, capsys):
    world = await make_world(extra=mobilizer(), extra_plugins=[PageNote()])
    rec, pd_id = await linked_incident(world)
    async with aiohttp.ClientSession() as session:
        api = Api(world, session)
        status, body = await api.post(rec["number"], "page-note", {"requested_by": "alice.nguyen", "content": "hi"})
        assert status == 200, body
        assert body["acted_as"]["pagerduty_user"] == "PALICE1"
        status, body = await api.post(rec["number"], "page-note", {"requested_by": "carol.jones", "content": "no"})
        assert status == 403  # the role check applies to added actions too
        status, body = await api.post(rec["number"], "page-note", {"requested_by": "alice.nguyen"})
        assert (status, body["error"]) == (400, "content: a non-empty string")
    code, out = await mobilize(
        world, capsys, "action", "page-note", pd_id, "--as", "bob.smith", "--body", '{"content": "from the CLI"}'
    )
    assert code == 0, out
    notes = [(n["content"], n["user"]["id"]) for n in world.pd.list_notes(pd_id)]
    assert notes == [("hi", "PALICE1"), ("from the CLI", "PBOBSM1")]
