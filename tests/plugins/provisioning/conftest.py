"""Fixtures for the provisioning tests: ``make_world`` (see world.py)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.plugins.provisioning.world import World, start_world, stop_world


@pytest.fixture
async def make_world(tmp_path):
    made: list[World] = []

    async def make(**kw: Any) -> World:
        world = await start_world(tmp_path / f"world{len(made) + 1}", **kw)
        made.append(world)
        return world

    yield make
    for world in reversed(made):
        await stop_world(world)
