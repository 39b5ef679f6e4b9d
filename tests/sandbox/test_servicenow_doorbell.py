"""The business rule stand-in: posts to a receiver on insert/update/delete."""

from __future__ import annotations

import base64
import socket

import pytest
from aiohttp import web

from dutybridge_sandbox.servicenow import ServiceNowState

DB01 = "6eb44e1a6c6757691cc51b3f09e7036e"


class Receiver:
    """A real HTTP endpoint that records what it is sent and can fail on demand."""

    def __init__(self):
        self.posts: list[tuple[str, dict]] = []
        self.fail_next: list[int] = []  # statuses to answer before succeeding

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        if self.fail_next:
            status = self.fail_next.pop(0)
            return web.json_response({"error": "nope"}, status=status)
        self.posts.append((request.headers.get("Authorization", ""), body))
        return web.json_response({"ok": True}, status=202)


@pytest.fixture
async def receiver(aiohttp_server):
    rx = Receiver()
    app = web.Application()
    app.router.add_post("/doorbell", rx.handle)
    server = await aiohttp_server(app)
    rx.url = str(server.make_url("/doorbell"))
    return rx


async def test_changes_ring_the_doorbell_with_a_bearer_token_in_order(sn_client, sn_state, sn_admin, receiver):
    sn_state.configure_doorbell(receiver.url, token="door-token-1")
    created = await sn_client.post("/api/now/table/incident", json={"short_description": "x"}, headers=sn_admin)
    sys_id = (await created.json())["result"]["sys_id"]
    sn_state.advance(2)
    await sn_client.patch(f"/api/now/table/incident/{sys_id}", json={"state": "2"}, headers=sn_admin)
    sn_state.advance(2)
    await sn_client.delete(f"/api/now/table/incident/{sys_id}", headers=sn_admin)
    await sn_state.drain_doorbells(5)
    assert [auth for auth, _ in receiver.posts] == ["Bearer door-token-1"] * 3
    assert [body for _, body in receiver.posts] == [
        {
            "table": "incident",
            "sys_id": sys_id,
            "operation": "insert",
            "sys_updated_on": "2025-03-01 12:00:00",
            "sys_mod_count": "0",
        },
        {
            "table": "incident",
            "sys_id": sys_id,
            "operation": "update",
            "sys_updated_on": "2025-03-01 12:00:02",
            "sys_mod_count": "1",
        },
        {
            "table": "incident",
            "sys_id": sys_id,
            "operation": "delete",
            "sys_updated_on": "2025-03-01 12:00:04",
            "sys_mod_count": "2",
        },
    ]
    assert all(d["delivered"] and d["status"] == 202 for d in sn_state.doorbell_deliveries)


async def test_basic_credentials_and_python_side_changes(sn_client, sn_state, receiver):
    sn_state.configure_doorbell(receiver.url, basic=("sn-doorbell", "s3cret"))
    record = sn_state.insert("incident", {"short_description": "typed by a person"}, user="alice.nguyen")
    sn_state.update("incident", record["sys_id"], {"work_notes": "looking"}, user="alice.nguyen")
    await sn_state.drain_doorbells(5)
    expected = "Basic " + base64.b64encode(b"sn-doorbell:s3cret").decode()
    assert [auth for auth, _ in receiver.posts] == [expected, expected]
    assert [body["operation"] for _, body in receiver.posts] == ["insert", "update"]


async def test_a_5xx_is_retried_and_later_changes_wait_their_turn(sn_client, sn_state, receiver):
    sn_state.configure_doorbell(receiver.url, token="t", backoff=(0.01,))
    receiver.fail_next = [500, 503]
    first = sn_state.insert("incident", {"short_description": "first"})
    second = sn_state.insert("incident", {"short_description": "second"})
    await sn_state.drain_doorbells(5)
    assert [body["sys_id"] for _, body in receiver.posts] == [first["sys_id"], second["sys_id"]]
    attempts = [(d["sys_id"], d["attempt"], d["status"]) for d in sn_state.doorbell_deliveries]
    assert attempts == [
        (first["sys_id"], 1, 500),
        (first["sys_id"], 2, 503),
        (first["sys_id"], 3, 202),
        (second["sys_id"], 1, 202),
    ]


async def test_a_4xx_is_not_retried(sn_client, sn_state, receiver):
    sn_state.configure_doorbell(receiver.url, token="wrong")
    receiver.fail_next = [401]
    sn_state.insert("incident", {})
    await sn_state.drain_doorbells(5)
    assert [(d["attempt"], d["status"], d["given_up"]) for d in sn_state.doorbell_deliveries] == [(1, 401, True)]


async def test_connection_errors_are_retried_then_given_up(sn_client, sn_state):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sn_state.configure_doorbell(f"http://127.0.0.1:{port}/doorbell", token="t", max_attempts=3, backoff=(0.0,))
    sn_state.insert("incident", {})
    await sn_state.drain_doorbells(5)
    deliveries = sn_state.doorbell_deliveries
    assert [d["attempt"] for d in deliveries] == [1, 2, 3]
    assert all(d["status"] is None and d["error"] for d in deliveries)
    assert deliveries[-1]["given_up"] is True


async def test_only_configured_tables_and_users_ring(sn_client, sn_state, receiver):
    sn_state.configure_doorbell(receiver.url, token="t", tables=("cmdb_ci",), exclude_users=("pagerduty.integration",))
    sn_state.insert("incident", {"short_description": "not watched"})
    sn_state.update("cmdb_ci_server", DB01, {"ip_address": "10.0.0.5"}, user="pagerduty.integration")
    sn_state.update("cmdb_ci_server", DB01, {"ip_address": "10.0.0.6"}, user="dave.patel")
    await sn_state.drain_doorbells(5)
    assert [body for _, body in receiver.posts] == [
        {
            "table": "cmdb_ci_server",
            "sys_id": DB01,
            "operation": "update",
            "sys_updated_on": "2025-03-01 12:00:00",
            "sys_mod_count": "2",
        },
    ]


async def test_a_write_that_changes_nothing_rings_nothing(sn_client, sn_state, receiver):
    record = sn_state.insert("incident", {"short_description": "same"})
    sn_state.configure_doorbell(receiver.url, token="t")
    sn_state.update("incident", record["sys_id"], {"short_description": "same"})
    await sn_state.drain_doorbells(5)
    assert receiver.posts == []


async def test_draining_without_a_running_app_is_an_error(sn_seed, receiver):
    state = ServiceNowState.from_seed(sn_seed)
    state.configure_doorbell(receiver.url, token="t")
    state.insert("incident", {})
    with pytest.raises(RuntimeError, match="no ServiceNow sandbox app is running"):
        await state.drain_doorbells(0.1)


def test_doorbell_configuration_is_checked(sn_state):
    with pytest.raises(ValueError):
        sn_state.configure_doorbell("http://x/doorbell")
    with pytest.raises(ValueError):
        sn_state.configure_doorbell("http://x/doorbell", token="t", basic=("u", "p"))
    with pytest.raises(ValueError):
        sn_state.configure_doorbell("ftp://x", token="t")
    sn_state.configure_doorbell("http://x/doorbell", token="t")
    sn_state.configure_doorbell(None)
    sn_state.insert("incident", {})
    assert sn_state.doorbells_pending == 0
