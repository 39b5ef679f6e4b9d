"""The sandbox runner: both sides on free ports, seeds, the command line."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import subprocess
import sys

import aiohttp
import pytest
from aiohttp import web

from dutybridge_sandbox.runner import Sandbox, load_seed, main


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def test_both_sides_answer_authenticated_requests_on_free_ports():
    async with Sandbox() as sandbox:
        creds = sandbox.credentials()
        assert creds["pagerduty_url"] == sandbox.pagerduty_url
        assert creds["servicenow_url"] == sandbox.servicenow_url
        assert sandbox.pagerduty_url != sandbox.servicenow_url
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", sandbox.servicenow_url)
        async with aiohttp.ClientSession() as http:
            sn = await http.get(
                f"{creds['servicenow_url']}/api/now/table/sys_user",
                params={"sysparm_query": "user_name=alice.nguyen"},
                headers=_basic(creds["servicenow_username"], creds["servicenow_password"]),
            )
            assert sn.status == 200
            assert [u["email"] for u in (await sn.json())["result"]] == ["alice.nguyen@acme.example"]
            refused = await http.get(f"{creds['servicenow_url']}/api/now/table/sys_user")
            assert refused.status == 401

            pd = await http.get(
                f"{creds['pagerduty_url']}/users/{creds['pagerduty_user_id']}",
                headers={
                    "Authorization": f"Token token={creds['pagerduty_api_key']}",
                    "Accept": "application/vnd.pagerduty+json;version=2",
                },
            )
            assert pd.status == 200
            assert (await pd.json())["user"]["email"] == creds["pagerduty_user_email"]
            refused = await http.get(f"{creds['pagerduty_url']}/users", headers={"Authorization": "Token token=wrong"})
            assert refused.status == 401

            # Links in ServiceNow's answers point at the sandbox itself.
            created = await http.post(
                f"{creds['servicenow_url']}/api/now/table/incident",
                json={"assignment_group": "Database"},
                headers=_basic(creds["servicenow_username"], creds["servicenow_password"]),
            )
            record = (await created.json())["result"]
            assert record["assignment_group"]["link"].startswith(
                sandbox.servicenow_url + "/api/now/table/sys_user_group/"
            )
            assert created.headers["Location"].startswith(sandbox.servicenow_url)
    assert sandbox.servicenow.tables["incident"], "state stays inspectable after stop"
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectionError):
            await http.get(f"{sandbox.servicenow_url}/api/now/table/sys_user")


async def test_credentials_come_from_the_seed():
    seed = load_seed()
    async with Sandbox(seed) as sandbox:
        creds = sandbox.credentials()
    assert creds["pagerduty_api_key"] == "sandbox-pd-full-key"
    assert creds["pagerduty_read_only_api_key"] == "sandbox-pd-read-only-key"
    assert (creds["pagerduty_user_id"], creds["pagerduty_user_email"]) == ("PINTEGR", "integration@acme.example")
    assert (creds["servicenow_username"], creds["servicenow_password"]) == (
        "pagerduty.integration",
        "sandbox-sn-password",
    )


async def test_a_fault_spec_reaches_both_sides():
    async with Sandbox(faults="error_rate=1") as sandbox:
        creds = sandbox.credentials()
        async with aiohttp.ClientSession() as http:
            sn = await http.get(
                f"{creds['servicenow_url']}/api/now/table/incident",
                headers=_basic(creds["servicenow_username"], creds["servicenow_password"]),
            )
            assert sn.status in (500, 502, 503)
            assert (await sn.json())["status"] == "failure"
            pd = await http.get(
                f"{creds['pagerduty_url']}/incidents",
                headers={"Authorization": f"Token token={creds['pagerduty_api_key']}"},
            )
            assert pd.status in (500, 502, 503)


async def test_per_side_faults_override_the_shared_spec():
    async with Sandbox(faults="error_rate=1", sn_faults="") as sandbox:
        creds = sandbox.credentials()
        async with aiohttp.ClientSession() as http:
            sn = await http.get(
                f"{creds['servicenow_url']}/api/now/table/incident",
                headers=_basic(creds["servicenow_username"], creds["servicenow_password"]),
            )
            assert sn.status == 200


async def test_a_busy_port_is_reported_and_nothing_is_left_running():
    async with Sandbox() as first:
        port = int(first.servicenow_url.rsplit(":", 1)[1])
        second = Sandbox(servicenow_port=port)
        with pytest.raises(OSError):
            await second.start()
        assert second._runners == []


def test_the_packaged_seed_loads():
    seed = load_seed()
    assert {"pagerduty", "servicenow"} <= set(seed)
    assert seed["servicenow"]["users"][0]["user_name"] == "pagerduty.integration"


def test_a_json_seed_loads(tmp_path):
    path = tmp_path / "seed.json"
    path.write_text(json.dumps(load_seed()))
    assert load_seed(path) == load_seed()
    assert load_seed(str(path))["servicenow"]["instance_name"] == "acme-sandbox"


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("bad.toml", "[servicenow\nx = 1", "invalid TOML"),
        ("bad.json", '{"pagerduty": {}, ', "invalid JSON at line 1"),
        ("half.toml", "[pagerduty]\nrate_limit_per_minute = 1\n", "missing the [servicenow] section"),
        ("list.json", "[1, 2]", "a seed is a table/object"),
        ("seed.yaml", "pagerduty: {}", "unknown seed format '.yaml'"),
        ("wrong.json", '{"pagerduty": {}, "servicenow": 3}', "[servicenow] must be a table/object"),
    ],
)
def test_an_unusable_seed_names_the_file_and_the_problem(tmp_path, name, content, problem):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ValueError) as caught:
        load_seed(path)
    assert str(path) in str(caught.value)
    assert problem in str(caught.value)


def test_a_missing_seed_file(tmp_path):
    with pytest.raises(ValueError, match="seed file not found"):
        load_seed(tmp_path / "nope.toml")


def test_main_refuses_a_bad_seed_or_fault_spec(tmp_path, capsys):
    assert main(["--seed", str(tmp_path / "nope.toml")]) == 2
    assert "nope.toml: seed file not found" in capsys.readouterr().err
    assert main(["--faults", "error_rate=2"]) == 2
    assert "error_rate" in capsys.readouterr().err


def test_main_refuses_a_doorbell_without_credentials(capsys):
    assert main(["--doorbell-url", "http://127.0.0.1:9/doorbell"]) == 2
    assert "bearer token or basic credentials" in capsys.readouterr().err


@pytest.mark.slow
async def test_python_m_runs_until_sigint_and_exits_0(aiohttp_server):
    rang = asyncio.Event()
    received = []

    async def doorbell(request: web.Request) -> web.Response:
        received.append((request.headers.get("Authorization"), await request.json()))
        rang.set()
        return web.Response(status=204)

    receiver = web.Application()
    receiver.router.add_post("/doorbell", doorbell)
    server = await aiohttp_server(receiver)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dutybridge_sandbox",
        "--servicenow-port",
        "0",
        "--pagerduty-port",
        "0",
        "--doorbell-url",
        str(server.make_url("/doorbell")),
        "--doorbell-token",
        "tok-9",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    try:
        lines = []
        while not any("doorbell" in line for line in lines):
            line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
            assert line, (await proc.stderr.read()).decode()
            lines.append(line)
        text = "".join(lines)
        sn_url = re.search(r"ServiceNow\s+(http://\S+)", text).group(1)
        password = re.search(r"password\s+(\S+)", text).group(1)
        async with aiohttp.ClientSession() as http:
            response = await http.post(
                f"{sn_url}/api/now/table/incident",
                json={"short_description": "from the CLI test"},
                headers=_basic("pagerduty.integration", password),
            )
            assert response.status == 201
            sys_id = (await response.json())["result"]["sys_id"]
        await asyncio.wait_for(rang.wait(), 10)
        assert received[0][0] == "Bearer tok-9"
        assert received[0][1]["sys_id"] == sys_id and received[0][1]["operation"] == "insert"
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
        rest = (await proc.stdout.read()).decode()
        assert "stopped" in rest
        assert (await proc.stderr.read()).decode() == ""
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
