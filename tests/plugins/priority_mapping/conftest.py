"""The incident sync e2e world (tests/plugins/incident_sync/world.py), with priority_mapping on."""

from __future__ import annotations

from tests.plugins.incident_sync.conftest import make_world, store_kind  # noqa: F401 - the fixtures, reused
