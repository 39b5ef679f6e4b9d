"""A local PagerDuty REST API v2 sandbox: stateful, in memory, with outbound webhooks.

    from dutybridge_sandbox.pagerduty import PagerDutyState, create_app
    state = PagerDutyState.from_seed(tomllib.load(open("sandbox/seed.toml", "rb"))["pagerduty"])
    app = create_app(state)                       # an aiohttp web.Application
    state.create_incident(title="Disk full", service_id="PSVCDB1", from_user="PALICE1")
    await state.drain_webhooks()                 # wait for queued webhooks

``state.py`` composes the model from one module per resource family (``users.py``,
``teams.py``, ``services.py``...), each holding that family's operations and routes;
``incident_changes.py`` has the incident status machine, ``webhooks.py`` the delivery
behaviour, ``app.py`` the rules all routes share and ``crud.py`` the route shape most reuse.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from .app import STATE_KEY, create_app
from .errors import PDError, pd_error_body
from .state import DEFAULT_API_KEY, PagerDutyState
from .webhooks import sign

SEED_PATH = Path(__file__).resolve().parent.parent / "seed.toml"


def load_seed(path: str | Path | None = None) -> dict:
    """The ``[pagerduty]`` table of a seed file (the packaged ``seed.toml`` by default)."""
    with open(path or SEED_PATH, "rb") as fh:
        return tomllib.load(fh)["pagerduty"]


__all__ = [
    "DEFAULT_API_KEY",
    "SEED_PATH",
    "STATE_KEY",
    "PDError",
    "PagerDutyState",
    "create_app",
    "load_seed",
    "pd_error_body",
    "sign",
]
