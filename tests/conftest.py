"""Shared fixtures: configuration files and validated configs for the core's tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import tomli_w

from tests.support.reference import REGENERATE, missing_files

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    # Without PagerDuty's OpenAPI file every PagerDuty request fails its check deep inside
    # a server or client (a test then times out): say so once, before collecting anything.
    missing = missing_files()
    if missing:
        names = ", ".join(str(path.relative_to(REPO)) for path in missing)
        raise pytest.UsageError(f"vendored test file(s) missing: {names}; {REGENERATE}")


BASE_CONFIG: dict[str, Any] = {
    "daemon": {"listen_port": 0, "store_url": "sqlite:///state/dutybridge.db"},
    "pagerduty": {
        "api_url": "http://127.0.0.1:9",
        "api_key": "pd-key-9f8e7d6c5b4a",
        "default_user_id": "PINTEGR",
        "webhook_secrets": ["whsec-primary-1a2b3c4d", "whsec-rotating-5e6f7a8b"],
    },
    "servicenow": {
        "instance_url": "http://127.0.0.1:9",
        "username": "pagerduty.integration",
        "password": "sn-password-0a9b8c7d",
        "doorbell_token": "doorbell-token-3c2b1a0f",
    },
}


def merge(base: dict, override: dict) -> dict:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


@pytest.fixture
def write_config(tmp_path: Path):
    """write_config({"daemon": {...}}) -> Path of a config file merged over BASE_CONFIG."""

    def write(override: dict | None = None, *, name: str = "config.toml", raw: str | None = None) -> Path:
        path = tmp_path / name
        if raw is not None:
            path.write_text(raw)
        else:
            path.write_text(tomli_w.dumps(merge(BASE_CONFIG, override or {})))
        (tmp_path / "state").mkdir(exist_ok=True)
        return path

    return write


@pytest.fixture
def make_config(write_config):
    """make_config({...}) -> (Config, PluginManager) loaded through the real loader."""
    from dutybridge.app import load

    def make(override: dict | None = None, **kw):
        return load(write_config(override), **kw)

    return make


@pytest.fixture(autouse=True)
def _isolate_env(monkeypatch):
    for name in (
        "DUTYBRIDGE_CONFIG",
        "CONFIGURATION_DIRECTORY",
        "STATE_DIRECTORY",
        "CREDENTIALS_DIRECTORY",
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "DUTYBRIDGE_TRACE_HOOKS",
    ):
        monkeypatch.delenv(name, raising=False)
    yield


SECRETS = [
    BASE_CONFIG["pagerduty"]["api_key"],
    *BASE_CONFIG["pagerduty"]["webhook_secrets"],
    BASE_CONFIG["servicenow"]["password"],
    BASE_CONFIG["servicenow"]["doorbell_token"],
]


@pytest.fixture
def config_secrets() -> list[str]:
    """Every secret in BASE_CONFIG: none may appear in logs or output."""
    return list(SECRETS)


# Every request the PagerDuty client sends anywhere in the suite is checked against
# PagerDuty's OpenAPI description: a request the real API would reject fails the test
# that caused it, whatever that test was about.
_PD_SERVICE = "pagerduty"


@pytest.fixture(autouse=True)
def _pagerduty_requests_match_openapi(monkeypatch, request):
    if request.node.get_closest_marker("no_openapi_check"):
        yield
        return
    from urllib.parse import urlsplit

    from dutybridge import http

    violations: list[str] = []
    original = http.OutboundPipeline._transport

    async def checked(self, req):
        if req.service == _PD_SERVICE:
            from tests.support.openapi import validate_request

            try:
                validate_request(req.method, urlsplit(req.url).path, req.params, dict(req.headers), req.body_bytes())
            except AssertionError as exc:
                violations.append(str(exc))
        return await original(self, req)

    monkeypatch.setattr(http.OutboundPipeline, "_transport", checked)
    yield
    assert not violations, "PagerDuty requests that do not match the OpenAPI file:\n" + "\n".join(violations)
