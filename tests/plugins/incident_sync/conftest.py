"""Fixtures for the incident sync tests: ``make_world`` / ``world`` (see world.py)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.plugins.incident_sync.world import World, start_world, stop_world


@pytest.fixture
async def make_world(tmp_path):
    """make_world(**kw) -> a started World (see ``start_world``); all stop at the test's end."""
    made: list[World] = []

    async def make(**kw: Any) -> World:
        world = await start_world(tmp_path / f"world{len(made) + 1}", **kw)
        made.append(world)
        return world

    yield make
    for world in reversed(made):
        await stop_world(world)


@pytest.fixture
async def world(make_world):
    return await make_world()
