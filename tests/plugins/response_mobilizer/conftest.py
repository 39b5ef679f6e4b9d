"""The incident sync e2e world (tests/plugins/incident_sync/world.py) with the mobilizer on,
and a ServiceNow incident linked to a PagerDuty one to act on."""

from __future__ import annotations

import copy
from typing import Any

import aiohttp
import pytest

from tests.plugins.incident_sync.conftest import make_world, store_kind  # noqa: F401 - the fixtures, reused
from tests.plugins.incident_sync.world import DB_GROUP, SEED

TOKEN = "mobilizer-e2e-token"
ALL_ON = {"responders": True, "conference_bridges": True, "response_plays": True, "status_updates": True}
BRIDGES = [
    {
        "name": "Major incident bridge",
        "dial_in_number": "+1 415-555-0100,,123456#",
        "url": "https://meet.example.com/major",
    }
]


def mobilizer(**settings: Any) -> dict:
    section = {k: v for k, v in {"api_token": TOKEN, "bridges": BRIDGES, **ALL_ON, **settings}.items() if v is not None}
    return {"plugins": {"enabled": ["incident_sync", "response_mobilizer"], "response_mobilizer": section}}


def seed_with(abilities_without: tuple[str, ...] = (), response_plays: bool = True) -> dict:
    seed = copy.deepcopy(SEED)
    pd = seed["pagerduty"]
    pd["abilities"] = [a for a in pd["abilities"] if a not in abilities_without]
    pd["response_plays_enabled"] = response_plays
    return seed


class Api:
    """The mobilizer's HTTP API on the world's daemon, as a ServiceNow UI action calls it."""

    def __init__(self, world, session: aiohttp.ClientSession):
        self.world, self.session = world, session

    async def call(
        self, method: str, ref: str, action: str, body: dict | None = None, token: str | None = TOKEN
    ) -> tuple[int, dict]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.session.request(
            method,
            f"{self.world.url}/api/v1/incidents/{ref}/{action}",
            json=body if method == "POST" else None,
            headers=headers,
        ) as resp:
            return resp.status, await resp.json()

    async def post(self, ref: str, action: str, body: dict, **kw: Any) -> tuple[int, dict]:
        return await self.call("POST", ref, action, body, **kw)

    async def get(self, ref: str, action: str, **kw: Any) -> tuple[int, dict]:
        return await self.call("GET", ref, action, **kw)


async def linked_incident(world) -> tuple[dict, str]:
    """A priority 1 Database incident opened in ServiceNow, and its PagerDuty incident id."""
    rec = world.sn.insert(
        "incident",
        {"short_description": "Payments API 500s", "assignment_group": DB_GROUP, "impact": "1", "urgency": "1"},
        user="alice.nguyen",
    )
    await world.settle()
    [inc] = world.pd_for(rec["sys_id"])
    return world.sn.get("incident", rec["sys_id"]), inc["id"]


@pytest.fixture
async def api_world(make_world):  # noqa: F811 - the fixture imported above
    """make(**settings, seed=...) -> (world, Api, ServiceNow record, PagerDuty id)."""
    sessions: list[aiohttp.ClientSession] = []

    async def make(seed: dict | None = None, **settings: Any):
        world = await make_world(extra=mobilizer(**settings), seed=seed)
        session = aiohttp.ClientSession()
        sessions.append(session)
        rec, pd_id = await linked_incident(world)
        return world, Api(world, session), rec, pd_id

    yield make
    for session in sessions:
        await session.close()
