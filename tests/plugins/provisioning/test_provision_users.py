"""``dutybridge provision users``: email match first (linked, never duplicated), created
users with E.164 contact methods and high-urgency rules, bad numbers reported and not
sent, the licence question, idempotence, write-back."""

from __future__ import annotations

import pytest

from tests.plugins.incident_sync.world import ALICE_SN, CAROL_SN, ERIN_SN
from tests.plugins.provisioning.world import FRANK_SN, outcomes, summary

pytestmark = pytest.mark.slow


def pd_user(world, email):
    return [u for u in world.pd.users.values() if u["email"] == email]


def methods(world, uid):
    return sorted(
        (c["type"], c["country_code"], c["address"])
        for c in world.pd.contact_methods.get(uid, {}).values()
        if c["type"] in ("phone_contact_method", "sms_contact_method")
    )


async def test_a_user_with_a_pagerduty_account_is_linked_not_created(make_world):
    world = await make_world()
    users = len(world.pd.users)
    code, lines, err = await world.cli("provision", "users", "alice.nguyen")
    assert code == 0, err
    assert [(o["status"], o["pagerduty"]) for o in outcomes(lines, "user")] == [("linked", {"user": "PALICE1"})]
    assert len(world.pd.users) == users
    assert (await world.store.get_link("user", sn_id=ALICE_SN)).pd_id == "PALICE1"


async def test_a_new_user_gets_phone_and_sms_with_notification_rules(make_world):
    world = await make_world(write_back=True)
    code, lines, err = await world.cli("provision", "users", "erin.garcia@acme.example", "--yes")
    assert code == 0, err
    assert "1 PagerDuty user(s) will be created" in err
    [erin] = pd_user(world, "erin.garcia@acme.example")
    assert erin["name"] == "Erin Garcia" and erin["role"] == "limited_user"
    assert methods(world, erin["id"]) == [
        ("phone_contact_method", 1, "4155550105"),
        ("phone_contact_method", 1, "4155550115"),
        ("sms_contact_method", 1, "4155550115"),
    ]
    rules = list(world.pd.notification_rules[erin["id"]].values())
    assert len(rules) == 3 and {(r["urgency"], r["start_delay_in_minutes"]) for r in rules} == {("high", 0)}
    assert world.sn.get("sys_user", ERIN_SN)["x_pd_integration_pagerduty_id"] == erin["id"]

    code, lines, _ = await world.cli("provision", "users", "erin.garcia", "--yes")
    assert code == 0 and [o["status"] for o in outcomes(lines, "user")] == ["skipped"]
    assert len(pd_user(world, "erin.garcia@acme.example")) == 1 and len(methods(world, erin["id"])) == 3


async def test_a_bad_number_is_reported_and_not_sent(make_world):
    world = await make_world(default_region="GB")
    world.sn.update("sys_user", FRANK_SN, {"phone": "call me maybe", "mobile_phone": "07911 123456"})
    code, lines, err = await world.cli("provision", "users", "frank.miller", "--yes")
    assert code == 0, err
    [frank] = outcomes(lines, "user")
    assert frank["status"] == "created" and "'call me maybe' is not a phone number" in frank["detail"]
    [user] = pd_user(world, "frank.miller@acme.example")
    # Written without a country code: the configured region (GB) gives it one.
    assert methods(world, user["id"]) == [
        ("phone_contact_method", 44, "7911123456"),
        ("sms_contact_method", 44, "7911123456"),
    ]


async def test_no_licence_is_spent_without_an_answer(make_world):
    world = await make_world()
    users = len(world.pd.users)
    code, _lines, err = await world.cli("provision", "users", "--group", "Database")
    assert code == 2
    assert "1 PagerDuty user(s) will be created" in err and "--yes" in err
    assert len(world.pd.users) == users


async def test_a_group_s_members_dry_run(make_world):
    world = await make_world()
    users = len(world.pd.users)
    code, lines, _err = await world.cli("provision", "users", "--group", "Database", "--dry-run")
    assert code == 0
    got = {o["sn_id"]: o["status"] for o in outcomes(lines, "user")}
    assert got[ERIN_SN] == "planned" and got[ALICE_SN] == "linked"
    assert summary(lines)["planned"] == 1
    assert len(world.pd.users) == users and await world.store.get_link("user", sn_id=ALICE_SN) is None


async def test_a_user_without_email_fails_and_others_go_on(make_world):
    world = await make_world()
    world.sn.update("sys_user", CAROL_SN, {"email": ""})
    code, lines, _ = await world.cli("provision", "users", "carol.jones", "bob.smith")
    assert code == 1
    got = {o["name"]: (o["status"], o["detail"]) for o in outcomes(lines, "user")}
    assert got["Carol Jones"][0] == "failed" and "no email" in got["Carol Jones"][1]
    assert got["Bob Smith"][0] == "linked"
