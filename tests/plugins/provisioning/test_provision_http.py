"""``POST /api/v1/provision/...`` (what the ServiceNow UI action calls) and the
configuration rules: a bearer token, validated bodies, ``daemon.public_url`` required."""

from __future__ import annotations

import tomllib

import aiohttp
import pytest
import tomli_w

from dutybridge.app import load
from dutybridge.config import ConfigError
from tests.plugins.provisioning.world import API_TOKEN, DESK_GROUP

pytestmark = pytest.mark.slow


async def post(world, what, body, token=API_TOKEN):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{world.url}/api/v1/provision/{what}", json=body, headers=headers) as r:
            return r.status, await r.json()


async def test_the_ui_action_provisions_a_group(make_world):
    world = await make_world()
    status, body = await post(world, "groups", {"refs": [DESK_GROUP], "requested_by": "alice.nguyen"})
    assert status == 200, body
    assert body["summary"] == {"created": 1} and body["exit_code"] == 0
    [outcome] = body["outcomes"]
    assert outcome["sn_id"] == DESK_GROUP and outcome["pagerduty"]["service"] in world.pd.services
    assert await world.store.get_link("group", sn_id=DESK_GROUP) is not None


@pytest.mark.parametrize("token, status", [("", 401), ("wrong", 401)])
async def test_the_endpoint_wants_the_token(make_world, token, status):
    world = await make_world()
    code, body = await post(world, "groups", {"refs": [DESK_GROUP]}, token=token)
    assert code == status and "error" in body
    assert not [e for e in world.pd.escalation_policies.values() if e["name"] == "Service Desk"]


@pytest.mark.parametrize(
    "what, body, field",
    [
        ("groups", {"refs": "Service Desk"}, "refs"),
        ("groups", {"refs": []}, "refs"),
        ("cis", {"refs": ["x"], "as": "other"}, "as"),
        ("groups", {"refs": ["x"], "dry_run": "yes"}, "dry_run"),
        ("webhook", {"service": "PSVCDB1"}, "service and group"),
    ],
)
async def test_bad_bodies_are_refused_naming_the_field(make_world, what, body, field):
    world = await make_world()
    code, answer = await post(world, what, body)
    assert code == 400 and answer["error"].startswith(field)


async def test_an_unknown_action_is_404(make_world):
    world = await make_world()
    code, answer = await post(world, "printers", {"refs": ["x"]})
    assert code == 404 and "printers" in answer["error"]


async def test_config_check_requires_public_url(make_world, tmp_path):
    world = await make_world(daemon=False)
    doc = tomllib.loads(world.config_path.read_text())
    doc["daemon"]["public_url"] = ""
    path = tmp_path / "no-url.toml"
    path.write_text(tomli_w.dumps(doc))
    with pytest.raises(ConfigError) as exc:
        load(path)
    assert "daemon.public_url is required when provisioning is enabled" in str(exc.value)
