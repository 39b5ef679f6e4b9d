"""Fixtures for the incident sync tests: ``make_world`` / ``world`` (see world.py)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.plugins.incident_sync.world import World, start_world, stop_world
from tests.support import postgres


@pytest.fixture
def store_kind() -> str:
    """The daemon's store: "sqlite"; a module parametrised over both overrides this."""
    return "sqlite"


@pytest.fixture
async def make_world(tmp_path, store_kind):
    """make_world(**kw) -> a started World (see ``start_world``); all stop at the test's end.

    On PostgreSQL each world gets a schema of its own, dropped at the end."""
    made: list[World] = []
    schemas: list[str] = []

    async def make(**kw: Any) -> World:
        if store_kind == "postgresql" and "store_url" not in kw:
            schemas.append(postgres.new_schema())
            kw["store_url"] = postgres.with_schema(postgres.server_url(), schemas[-1])
        world = await start_world(tmp_path / f"world{len(made) + 1}", **kw)
        made.append(world)
        return world

    yield make
    for world in reversed(made):
        await stop_world(world)
    for schema in schemas:
        await postgres.drop_schema(postgres.server_url(), schema)


@pytest.fixture
async def world(make_world):
    return await make_world()
