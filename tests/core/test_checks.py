"""`dutybridge check`: the guide's three connection tests against the sandbox, and plugin checks."""

from __future__ import annotations

import asyncio
import sys

import pytest

from dutybridge_sandbox.runner import Sandbox


@pytest.fixture
async def sandbox():
    async with Sandbox() as sb:
        yield sb


@pytest.fixture
def sandbox_config(write_config, sandbox):
    creds = sandbox.credentials()

    def make(pagerduty: dict | None = None, servicenow: dict | None = None, daemon: dict | None = None):
        return write_config(
            {
                "daemon": daemon or {},
                "pagerduty": {
                    "api_url": creds["pagerduty_url"],
                    "api_key": creds["pagerduty_api_key"],
                    "default_user_id": creds["pagerduty_user_id"],
                    "max_retries": 0,
                    **(pagerduty or {}),
                },
                "servicenow": {
                    "instance_url": creds["servicenow_url"],
                    "username": creds["servicenow_username"],
                    "password": creds["servicenow_password"],
                    "max_retries": 0,
                    **(servicenow or {}),
                },
            }
        )

    return make


async def run_check(path) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dutybridge.cli",
        "check",
        "--config",
        str(path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode()


def line(out: str, name: str) -> str:
    return next(row for row in out.splitlines() if f"  {name}: " in row)


async def test_all_three_pass_against_the_seeded_sandbox(sandbox_config, sandbox):
    code, out = await run_check(sandbox_config())
    assert code == 0, out
    assert line(out, "Test REST API Connection").startswith("success") and "HTTP 200" in out
    assert line(out, "Test ServiceNow User Authentication").startswith("success")
    assert line(out, "Test Default User Settings").startswith("success")
    assert "3 passed, 0 failed" in out
    assert sandbox.credentials()["pagerduty_api_key"] not in out
    assert sandbox.credentials()["servicenow_password"] not in out


async def test_wrong_keys_fail_with_the_http_status_and_no_secret(sandbox_config):
    code, out = await run_check(
        sandbox_config(pagerduty={"api_key": "wrong-pd-key-123"}, servicenow={"password": "wrong-sn-password"})
    )
    assert code == 1
    assert line(out, "Test REST API Connection").startswith("FAILED") and "HTTP 401" in line(
        out, "Test REST API Connection"
    )
    assert "HTTP 401" in line(out, "Test ServiceNow User Authentication")
    assert "wrong-pd-key-123" not in out and "wrong-sn-password" not in out


@pytest.mark.parametrize(
    "user, reason",
    [
        ("PCAROL1", "has base role 'limited_user'; it needs Manager or higher"),
        ("PALICE1", "does not match the ServiceNow integration user's email"),
        ("PNOSUCH", "HTTP 404"),
    ],
)
async def test_default_user_settings_explain_what_is_wrong(sandbox_config, user, reason):
    code, out = await run_check(sandbox_config(pagerduty={"default_user_id": user}))
    assert code == 1
    row = line(out, "Test Default User Settings")
    assert row.startswith("FAILED") and reason in row, row
    assert line(out, "Test REST API Connection").startswith("success")


async def test_a_hook_file_adds_a_check(sandbox_config, tmp_path):
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "extra_check.py").write_text(
        "from dutybridge.checks import Check, CheckResult\n\n"
        "async def _fails(ctx):\n"
        "    return CheckResult(False, 'the proxy is not reachable')\n\n"
        "def register_checks(ctx):\n"
        "    return [Check('Test Egress Proxy', _fails)]\n"
    )
    (hooks / "extra_check.py").chmod(0o644)
    code, out = await run_check(sandbox_config(daemon={"hooks_dir": "hooks"}))
    assert code == 1
    assert line(out, "Test Egress Proxy") == "FAILED   Test Egress Proxy: the proxy is not reachable"
    assert "3 passed, 1 failed" in out
