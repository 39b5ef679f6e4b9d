"""Fixtures for the sandbox tests. ServiceNow-side fixtures are prefixed ``sn_``."""

from __future__ import annotations

import base64
import copy
import tomllib
from importlib import resources

import pytest

from tests.support.clocks import FakeClock

_SEED = tomllib.loads((resources.files("dutybridge_sandbox") / "seed.toml").read_text())


@pytest.fixture
def sn_seed() -> dict:
    """A fresh copy of the packaged seed's [servicenow] section."""
    return copy.deepcopy(_SEED["servicenow"])


@pytest.fixture
def sn_state(sn_seed):
    """A seeded ServiceNow state with its clock frozen at 2025-03-01 12:00:00 UTC."""
    from dutybridge_sandbox.servicenow import ServiceNowState

    state = ServiceNowState.from_seed(sn_seed)
    state.set_time("2025-03-01 12:00:00")
    return state


@pytest.fixture
async def sn_client(aiohttp_client, sn_state):
    """A test client on the ServiceNow app (no default credentials: pass ``headers=sn_admin``)."""
    from dutybridge_sandbox.servicenow import create_app

    return await aiohttp_client(create_app(sn_state))


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture
def sn_basic():
    """sn_basic(user, password) -> headers carrying HTTP basic credentials."""
    return _basic


@pytest.fixture
def sn_admin() -> dict[str, str]:
    """Headers for the integration user (roles admin, itil, x_pd_integration.admin)."""
    return _basic("pagerduty.integration", "sandbox-sn-password")


@pytest.fixture
def sn_itil() -> dict[str, str]:
    """Headers for Alice, an ordinary ITIL user."""
    return _basic("alice.nguyen", "password")


# --------------------------------------------------------------- PagerDuty side (pd_)


@pytest.fixture
def pd_clock() -> FakeClock:
    """The PagerDuty sandbox's clock, frozen at 2025-03-01 12:00:00 UTC until advanced."""
    return FakeClock(1740830400.0)


@pytest.fixture
def pd_state(pd_clock):
    """A PagerDuty state seeded from the packaged seed.toml, on ``pd_clock``."""
    from dutybridge_sandbox.pagerduty import PagerDutyState

    return PagerDutyState.from_seed(copy.deepcopy(_SEED["pagerduty"]), now=pd_clock)


@pytest.fixture
async def pd_client(aiohttp_client, pd_state):
    """A test client on the PagerDuty app, sending the full-access key by default."""
    from dutybridge_sandbox.pagerduty import DEFAULT_API_KEY, create_app

    headers = {"Authorization": f"Token token={DEFAULT_API_KEY}", "Accept": "application/vnd.pagerduty+json;version=2"}
    return await aiohttp_client(create_app(pd_state), headers=headers)
