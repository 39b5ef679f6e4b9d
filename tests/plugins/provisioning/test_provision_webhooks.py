"""``provision webhook`` for an existing service (V3 subscription or v7 extension),
``migrate webhooks`` (V2 extensions to V3, and back) and ``migrate from-v7``."""

from __future__ import annotations

import pytest

from tests.plugins.incident_sync.world import BOB_SN, DB_GROUP, NET_GROUP
from tests.plugins.provisioning.world import outcomes

pytestmark = pytest.mark.slow


def subs_of(world, service):
    return [s for s in world.pd.webhook_subscriptions.values() if s["filter"].get("id") == service]


async def test_a_webhook_for_an_existing_service(make_world):
    world = await make_world()
    code, lines, err = await world.cli("provision", "webhook", "--service", "PSVCDB1", "--group", "Database")
    assert code == 0, err
    [sub] = subs_of(world, "PSVCDB1")
    assert sub["delivery_method"]["url"] == f"{world.url}/webhooks/pagerduty"
    link = await world.store.get_link("group", sn_id=DB_GROUP)
    assert link.pd_id == "PSVCDB1" and link.state["escalation_policy"] == "PEPDB01"
    code, lines, _ = await world.cli("provision", "webhook", "--service", "PSVCDB1", "--group", DB_GROUP)
    assert code == 0 and [o["status"] for o in outcomes(lines)] == ["skipped"]
    assert len(subs_of(world, "PSVCDB1")) == 1


async def test_an_unknown_service_fails(make_world):
    world = await make_world()
    code, lines, _ = await world.cli("provision", "webhook", "--service", "PNOPE99", "--group", "Database")
    assert code == 1 and "not found" in outcomes(lines)[0]["detail"]


async def test_a_legacy_extension_delivers_v2_webhooks_to_the_daemon(make_world):
    world = await make_world()
    code, _lines, err = await world.cli(
        "provision", "webhook", "--service", "PSVCNET", "--group", "Network", "--extension"
    )
    assert code == 0, err
    [ext] = [e for e in world.pd.extensions.values() if e["extension_schema"]["id"] == "PAKM60Z"]
    assert ext["endpoint_url"].endswith("/webhooks/pagerduty/v2") and "@127.0.0.1" in ext["endpoint_url"]
    assert not subs_of(world, "PSVCNET")
    rec = world.sn.insert(
        "incident", {"short_description": "Switch down", "assignment_group": NET_GROUP, "impact": "1", "urgency": "1"}
    )
    await world.wait_for(
        lambda: [i for i in world.pd.incidents.values() if i["incident_key"] == rec["sys_id"]],
        what="the PagerDuty incident",
    )
    delivered = await world.wait_for(
        lambda: [d for d in world.pd.webhook_deliveries if d["target_id"] == ext["id"] and d["outcome"] != "retry"],
        what="a V2 webhook",
    )
    assert delivered[0]["status"] == 202


async def test_migrate_webhooks_replaces_v2_extensions_and_rolls_back(make_world):
    world = await make_world()
    code, _, err = await world.cli("provision", "webhook", "--service", "PSVCNET", "--group", "Network", "--extension")
    assert code == 0, err
    [ext] = list(world.pd.extensions.values())

    code, lines, err = await world.cli("migrate", "webhooks")
    assert code == 0, err
    assert not world.pd.extensions
    [_sub] = subs_of(world, "PSVCNET")
    assert [o["status"] for o in outcomes(lines)] == ["created"]
    code, lines, _ = await world.cli("migrate", "webhooks")
    assert code == 0 and [o["status"] for o in outcomes(lines)] == ["skipped"]

    code, lines, err = await world.cli("migrate", "webhooks", "--rollback")
    assert code == 0, err
    [back] = list(world.pd.extensions.values())
    assert back["endpoint_url"] == ext["endpoint_url"] and back["extension_schema"]["id"] == "PAKM60Z"
    assert not subs_of(world, "PSVCNET")
    assert not await world.store.list_links("pd_webhook_secret")


async def test_from_v7_imports_the_app_s_links_and_they_sync(make_world):
    world = await make_world(configured_secret=True)
    world.sn.update(
        "sys_user_group",
        NET_GROUP,
        {"x_pd_integration_pagerduty_service": "PSVCNET", "x_pd_integration_pagerduty_escalation": "PEPNET1"},
    )
    world.sn.update("sys_user", BOB_SN, {"x_pd_integration_pagerduty_id": "PBOBSM1"})
    code, lines, err = await world.cli("migrate", "from-v7")
    assert code == 0, err
    assert {(o["kind"], o["status"]) for o in outcomes(lines)} == {("group", "linked"), ("user", "linked")}
    link = await world.store.get_link("group", sn_id=NET_GROUP)
    assert link.pd_id == "PSVCNET" and link.state["escalation_policy"] == "PEPNET1"
    assert (await world.store.get_link("user", sn_id=BOB_SN)).pd_id == "PBOBSM1"
    code, lines, _ = await world.cli("migrate", "from-v7")
    assert {o["status"] for o in outcomes(lines)} == {"skipped"}
    # The running daemon reads the imported link without a restart.
    rec = world.sn.insert(
        "incident",
        {"short_description": "Router flapping", "assignment_group": NET_GROUP, "impact": "1", "urgency": "1"},
    )
    inc = await world.wait_for(
        lambda: [i for i in world.pd.incidents.values() if i["incident_key"] == rec["sys_id"]],
        what="the PagerDuty incident",
    )
    assert inc[0]["service"]["id"] == "PSVCNET"
