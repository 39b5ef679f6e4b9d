"""Input a stranger (or a careless sender with a valid token) controls: the manual sync
action's ids, doorbell tables, digits from other scripts. 400 naming the field, nothing stored.
"""

from __future__ import annotations

import aiohttp
import pytest

from tests.hostile.conftest import AUTH, inbox

SYS_ID = "0123456789abcdef0123456789abcdef"


def doorbell(**over):
    return {
        "table": "incident",
        "sys_id": SYS_ID,
        "operation": "update",
        "sys_updated_on": "2024-03-05 14:07:09",
        **over,
    }


@pytest.mark.parametrize(
    "body, field",
    [
        ({"incident_id": "'; DROP TABLE events;--"}, "incident_id"),
        ({"incident_id": "../../users"}, "incident_id"),
        ({"incident_id": "P" * 60_000}, "incident_id"),
        ({"incident_id": {"x": 1}}, "incident_id"),
        ({"incident_id": "pabc123"}, "incident_id"),
        ({"incident_id": "PABC\u0661"}, "incident_id"),
        (
            {"messages": [{"id": "m1", "incident": {"id": "PGOOD01"}}, {"incident": {"id": "../x"}}]},
            "messages[1].incident.id",
        ),
        ({"messages": [{"incident": "PGOOD01"}]}, "messages[0].incident"),
        ({"messages": {"incident": {"id": "PGOOD01"}}}, "messages"),
        ({"messages": [{"id": "m" * 500, "incident": {"id": "PGOOD01"}}]}, "messages[0].id"),
        ({"event": {"id": "e1", "data": {"type": "incident", "id": "x" * 30}}}, "event.data.id"),
        ({"event": {"id": "e1", "data": {"type": "incident_note", "incident": {"id": 7}}}}, "event.data.incident.id"),
        ({"event": []}, "event"),
        ({"x": 1}, "no incident id"),
    ],
)
async def test_sync_action_refuses_bad_ids_naming_the_field_and_stores_nothing(daemon, body, field):
    d = await daemon()
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{d.url}/webhooks/pagerduty/sync", json=body, headers=AUTH) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"].startswith(field)
        assert await inbox(d) == []
        # A good request is still accepted afterwards.
        good = {"messages": [{"id": "m-1", "incident": {"id": "PT4KHLK"}}]}
        async with http.post(f"{d.url}/webhooks/pagerduty/sync", json=good, headers=AUTH) as resp:
            assert resp.status == 202
    assert [e.resource for e in await inbox(d)] == ["pagerduty:incident:PT4KHLK"]


async def test_sync_action_deeply_nested_body_is_400_not_500(daemon):
    d = await daemon()
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{d.url}/webhooks/pagerduty/sync", data=b"[" * 60_000, headers={**AUTH, "Content-Type": "application/json"}
        ) as resp:
            assert resp.status == 400
            assert "JSON" in (await resp.json())["error"]
    assert await inbox(d) == []


async def test_doorbell_tables_follow_the_enabled_plugin_and_never_become_labels(daemon):
    d = await daemon()
    async with aiohttp.ClientSession() as http:
        for i in range(20):
            async with http.post(
                f"{d.url}/webhooks/servicenow", json=doorbell(table=f"u_table_{i}"), headers=AUTH
            ) as resp:
                assert resp.status == 400
        # Groups and CIs only matter with v7_fields (off by default).
        async with http.post(f"{d.url}/webhooks/servicenow", json=doorbell(table="cmdb_ci"), headers=AUTH) as resp:
            assert resp.status == 400
        for table in ("incident", "sn_si_incident"):
            async with http.post(f"{d.url}/webhooks/servicenow", json=doorbell(table=table), headers=AUTH) as resp:
                assert resp.status == 202
        async with http.get(f"{d.url}/metrics") as resp:
            text = await resp.text()
    assert "u_table" not in text and "cmdb_ci" not in text
    assert len(await inbox(d)) == 2


async def test_doorbell_groups_and_cis_are_handled_with_v7_fields(daemon):
    d = await daemon({"plugins": {"incident_sync": {"v7_fields": True}}})
    async with aiohttp.ClientSession() as http:
        for table in ("sys_user_group", "cmdb_ci"):
            async with http.post(f"{d.url}/webhooks/servicenow", json=doorbell(table=table), headers=AUTH) as resp:
                assert resp.status == 202


@pytest.mark.parametrize("seven", ["7", "\u0667", "\u07c7", "\uff17"])
async def test_one_change_is_one_event_whatever_script_its_digits(daemon, seven):
    d = await daemon()
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{d.url}/webhooks/servicenow", json=doorbell(sys_mod_count=seven), headers=AUTH) as resp:
            assert resp.status == (202 if seven == "7" else 400)
    assert len(await inbox(d)) == (1 if seven == "7" else 0)
