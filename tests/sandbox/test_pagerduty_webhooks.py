"""Outbound webhooks from the PagerDuty sandbox, received by a real aiohttp server."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from collections import deque

import pytest
from aiohttp import web

from tests.support.reference import webhook_example

FROM = {"From": "integration@acme.example"}


class Receiver:
    """A webhook endpoint that records raw requests; answers can be scripted per path."""

    def __init__(self):
        self.requests: list[dict] = []
        self.scripts: dict[str, deque] = {}
        self.default = 202
        self.server = None

    def script(self, path: str, *answers) -> None:
        """Next answers for ``path``: an int status, or ``"hang"`` (sleep past the timeout)."""
        self.scripts.setdefault(path, deque()).extend(answers)

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        self.requests.append({"path": request.path, "headers": dict(request.headers), "raw": raw})
        queue = self.scripts.get(request.path)
        answer = queue.popleft() if queue else self.default
        if answer == "hang":
            await asyncio.sleep(0.3)
            answer = 202
        return web.Response(status=answer)

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))

    def on(self, path: str) -> list[dict]:
        return [r for r in self.requests if r["path"] == path]

    def events(self, path: str) -> list[dict]:
        return [json.loads(r["raw"])["event"] for r in self.on(path)]


@pytest.fixture
async def receiver(aiohttp_server):
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/{tail:.*}", rec.handle)
    rec.server = await aiohttp_server(app)
    return rec


@pytest.fixture
def fast_retries(pd_state):
    pd_state.webhook_retry_base = 0.005
    pd_state.webhook_retry_max_delay = 0.02
    return pd_state


async def subscribe(client, url, events=None, flt=None, headers=None) -> dict:
    body = {
        "webhook_subscription": {
            "type": "webhook_subscription",
            "delivery_method": {"type": "http_delivery_method", "url": url, "custom_headers": headers or []},
            "events": events
            or [
                "incident.triggered",
                "incident.acknowledged",
                "incident.resolved",
                "incident.annotated",
                "incident.reassigned",
                "incident.priority_updated",
            ],
            "filter": flt or {"type": "account_reference"},
            "description": "test",
        }
    }
    resp = await client.post("/webhook_subscriptions", json=body)
    assert resp.status == 200, await resp.text()
    return (await resp.json())["webhook_subscription"]


async def create_incident(client, title="Disk full", service="PSVCDB1", **extra) -> dict:
    body = {
        "incident": {
            "type": "incident",
            "title": title,
            "service": {"id": service, "type": "service_reference"},
            **extra,
        }
    }
    resp = await client.post("/incidents", json=body, headers=FROM)
    assert resp.status == 201, await resp.text()
    return (await resp.json())["incident"]


async def put_status(client, iid, status, user="integration@acme.example"):
    resp = await client.put(
        f"/incidents/{iid}", json={"incident": {"type": "incident_reference", "status": status}}, headers={"From": user}
    )
    assert resp.status == 200, await resp.text()


def verify(raw: bytes, header: str, secret: str) -> bool:
    expected = "v1=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, sig.strip()) for sig in header.split(","))


# ---------------------------------------------------------------- V3


async def test_v3_webhook_is_signed_over_the_raw_body_with_the_subscription_secret(pd_client, pd_state, receiver):
    sub = await subscribe(pd_client, receiver.url("/hook"))
    secret = sub["delivery_method"]["secret"]
    assert secret
    inc = await create_incident(pd_client)
    await pd_state.drain_webhooks()

    [req] = receiver.on("/hook")
    assert verify(req["raw"], req["headers"]["X-PagerDuty-Signature"], secret)
    assert not verify(req["raw"], req["headers"]["X-PagerDuty-Signature"], secret + "x")
    assert not verify(req["raw"] + b" ", req["headers"]["X-PagerDuty-Signature"], secret)
    assert req["headers"]["Content-Type"].startswith("application/json")
    assert req["headers"]["User-Agent"] == "PagerDuty-Webhook/V3.0"
    assert req["headers"]["X-Webhook-Subscription"] == sub["id"]
    assert req["headers"]["X-Webhook-Id"]
    event = json.loads(req["raw"])["event"]
    assert event["event_type"] == "incident.triggered"
    assert event["resource_type"] == "incident"
    assert event["data"]["id"] == inc["id"]
    assert event["data"]["number"] == inc["incident_number"]
    assert event["agent"]["id"] == "PINTEGR"


async def test_v3_envelope_and_incident_data_have_the_documented_fields(pd_client, pd_state, receiver):
    example = webhook_example("pd-v3-incident.priority_updated.json")
    await subscribe(pd_client, receiver.url("/hook"), events=["incident.priority_updated"])
    inc = await create_incident(pd_client)
    resp = await pd_client.put(
        f"/incidents/{inc['id']}", headers=FROM, json={"incident": {"type": "incident_reference", "priority": "P1"}}
    )
    assert resp.status == 200
    await pd_state.drain_webhooks()
    [event] = receiver.events("/hook")
    assert set(event) == set(example["event"])
    assert event["event_type"] == "incident.priority_updated"
    expected_keys = set(example["event"]["data"]) - {"reopened_at"}
    assert expected_keys <= set(event["data"])
    assert event["data"]["priority"]["summary"] == "P1"
    assert event["data"]["priority"]["type"] == "priority_reference"
    assert event["occurred_at"].endswith("Z")


async def test_custom_headers_are_sent_but_redacted_on_read(pd_client, pd_state, receiver):
    sub = await subscribe(pd_client, receiver.url("/hook"), headers=[{"name": "X-Bridge-Token", "value": "s3cr3t"}])
    got = await (await pd_client.get(f"/webhook_subscriptions/{sub['id']}")).json()
    dm = got["webhook_subscription"]["delivery_method"]
    assert dm["secret"] is None
    assert dm["custom_headers"][0]["name"] == "X-Bridge-Token"
    assert dm["custom_headers"][0]["value"] != "s3cr3t"
    await create_incident(pd_client)
    await pd_state.drain_webhooks()
    assert receiver.on("/hook")[0]["headers"]["X-Bridge-Token"] == "s3cr3t"


async def test_filters_and_event_lists_decide_which_subscriptions_get_an_event(pd_client, pd_state, receiver):
    await subscribe(pd_client, receiver.url("/db"), flt={"type": "service_reference", "id": "PSVCDB1"})
    await subscribe(pd_client, receiver.url("/net-team"), flt={"type": "team_reference", "id": "PTNET01"})
    await subscribe(pd_client, receiver.url("/all"), flt={"type": "account_reference"})
    await subscribe(pd_client, receiver.url("/resolved-only"), events=["incident.resolved"])
    db = await create_incident(pd_client, service="PSVCDB1")
    net = await create_incident(pd_client, service="PSVCNET")
    await put_status(pd_client, net["id"], "resolved")
    await pd_state.drain_webhooks()

    assert [e["data"]["id"] for e in receiver.events("/db")] == [db["id"]]
    assert {e["data"]["id"] for e in receiver.events("/net-team")} == {net["id"]}
    assert len(receiver.events("/all")) == 3
    assert [e["event_type"] for e in receiver.events("/resolved-only")] == ["incident.resolved"]


async def test_inactive_subscription_gets_nothing(pd_client, pd_state, receiver):
    sub = await subscribe(pd_client, receiver.url("/hook"))
    resp = await pd_client.put(f"/webhook_subscriptions/{sub['id']}", json={"webhook_subscription": {"active": False}})
    assert (await resp.json())["webhook_subscription"]["active"] is False
    await create_incident(pd_client)
    await pd_state.drain_webhooks()
    assert receiver.requests == []


async def test_events_of_one_incident_arrive_in_the_order_they_happened(pd_client, pd_state, receiver):
    await subscribe(pd_client, receiver.url("/hook"))
    inc = await create_incident(pd_client)
    await put_status(pd_client, inc["id"], "acknowledged", "bob.smith@acme.example")
    resp = await pd_client.post(f"/incidents/{inc['id']}/notes", json={"note": {"content": "looking"}}, headers=FROM)
    assert resp.status == 200
    await put_status(pd_client, inc["id"], "resolved", "bob.smith@acme.example")
    await pd_state.drain_webhooks()
    types = [e["event_type"] for e in receiver.events("/hook")]
    assert types == ["incident.triggered", "incident.acknowledged", "incident.annotated", "incident.resolved"]
    note = receiver.events("/hook")[2]["data"]
    assert note["type"] == "incident_note" and note["content"] == "looking" and note["incident"]["id"] == inc["id"]


async def test_a_retried_webhook_holds_back_later_ones_of_the_same_incident(pd_client, fast_retries, receiver):
    pd_state = fast_retries
    await subscribe(pd_client, receiver.url("/hook"))
    receiver.script("/hook", 500, 503)
    inc = await create_incident(pd_client)
    await put_status(pd_client, inc["id"], "acknowledged")
    await put_status(pd_client, inc["id"], "resolved")
    await pd_state.drain_webhooks()

    reqs = receiver.on("/hook")
    types = [json.loads(r["raw"])["event"]["event_type"] for r in reqs]
    assert types == ["incident.triggered"] * 3 + ["incident.acknowledged", "incident.resolved"]
    ids = [r["headers"]["X-Webhook-Id"] for r in reqs]
    assert len(set(ids[:3])) == 1, "a retry repeats the X-Webhook-Id"
    assert len(set(ids)) == 3
    attempts = [d for d in pd_state.webhook_deliveries if d["event_type"] == "incident.triggered"]
    assert [(d["status"], d["outcome"]) for d in attempts] == [(500, "retry"), (503, "retry"), (202, "delivered")]


async def test_429_and_timeouts_are_retried(pd_client, fast_retries, receiver):
    pd_state = fast_retries
    pd_state.webhook_timeout = 0.1
    await subscribe(pd_client, receiver.url("/hook"))
    receiver.script("/hook", 429, "hang")
    await create_incident(pd_client)
    await pd_state.drain_webhooks()
    outcomes = [(d["status"], d["error"], d["outcome"]) for d in pd_state.webhook_deliveries]
    assert outcomes == [(429, None, "retry"), (None, "timeout", "retry"), (202, None, "delivered")]


async def test_connection_errors_are_retried_until_attempts_run_out(pd_client, fast_retries, unused_tcp_port):
    pd_state = fast_retries
    pd_state.webhook_max_attempts = 3
    await subscribe(pd_client, f"http://127.0.0.1:{unused_tcp_port}/nobody-home")
    await create_incident(pd_client)
    await pd_state.drain_webhooks()
    assert [d["outcome"] for d in pd_state.webhook_deliveries] == ["retry", "retry", "dropped"]
    assert all(d["status"] is None and d["error"] for d in pd_state.webhook_deliveries)


async def test_other_4xx_answers_drop_the_webhook_without_retry(pd_client, fast_retries, receiver):
    pd_state = fast_retries
    sub = await subscribe(pd_client, receiver.url("/hook"))
    receiver.script("/hook", 400)
    inc = await create_incident(pd_client)
    await put_status(pd_client, inc["id"], "acknowledged")
    await pd_state.drain_webhooks()
    assert [(d["event_type"], d["status"], d["outcome"]) for d in pd_state.webhook_deliveries] == [
        ("incident.triggered", 400, "dropped"),
        ("incident.acknowledged", 202, "delivered"),
    ]
    assert pd_state.webhook_subscriptions[sub["id"]]["delivery_method"]["temporarily_disabled"] is False


async def test_three_consecutive_drops_disable_the_subscription_until_enabled(pd_client, fast_retries, receiver):
    pd_state = fast_retries
    sub = await subscribe(pd_client, receiver.url("/hook"))
    receiver.script("/hook", 410, 404, 400)
    for n in range(3):
        await create_incident(pd_client, title=f"incident {n}")
        await pd_state.drain_webhooks()
    got = (await (await pd_client.get(f"/webhook_subscriptions/{sub['id']}")).json())["webhook_subscription"]
    assert got["delivery_method"]["temporarily_disabled"] is True

    await create_incident(pd_client, title="while disabled")
    await pd_state.drain_webhooks()
    assert len(receiver.on("/hook")) == 3, "nothing is sent while disabled"
    assert pd_state.webhook_drops[-1]["event_type"] == "incident.triggered"

    resp = await pd_client.post(f"/webhook_subscriptions/{sub['id']}/enable")
    assert resp.status == 200
    assert (await resp.json())["webhook_subscription"]["delivery_method"]["temporarily_disabled"] is False
    await create_incident(pd_client, title="after enable")
    await pd_state.drain_webhooks()
    assert receiver.events("/hook")[-1]["data"]["title"] == "after enable"


async def test_a_success_resets_the_consecutive_drop_count(pd_client, fast_retries, receiver):
    pd_state = fast_retries
    sub = await subscribe(pd_client, receiver.url("/hook"))
    receiver.script("/hook", 400, 400, 202, 400, 400)
    for n in range(5):
        await create_incident(pd_client, title=f"incident {n}")
        await pd_state.drain_webhooks()
    assert pd_state.webhook_subscriptions[sub["id"]]["delivery_method"]["temporarily_disabled"] is False


async def test_ping_delivers_pagey_ping(pd_client, pd_state, receiver):
    sub = await subscribe(pd_client, receiver.url("/hook"), events=["incident.resolved"])
    resp = await pd_client.post(f"/webhook_subscriptions/{sub['id']}/ping")
    assert resp.status == 202
    await pd_state.drain_webhooks()
    [req] = receiver.on("/hook")
    event = json.loads(req["raw"])["event"]
    assert event["event_type"] == "pagey.ping"
    assert verify(req["raw"], req["headers"]["X-PagerDuty-Signature"], sub["delivery_method"]["secret"])


async def test_python_helpers_send_the_same_webhooks_as_http(pd_client, pd_state, receiver):
    await subscribe(pd_client, receiver.url("/hook"))
    inc = pd_state.create_incident(title="Acting as a human", service_id="PSVCDB1", from_user="PALICE1")
    pd_state.acknowledge(inc["id"], "PALICE1")
    pd_state.add_note(inc["id"], "PALICE1", "on it")
    pd_state.reassign(inc["id"], ["PDAVEP1"], by="PALICE1")
    pd_state.resolve(inc["id"], "PDAVEP1")
    await pd_state.drain_webhooks()
    events = receiver.events("/hook")
    assert [e["event_type"] for e in events] == [
        "incident.triggered",
        "incident.acknowledged",
        "incident.annotated",
        "incident.reassigned",
        "incident.resolved",
    ]
    assert [e["agent"]["id"] for e in events] == ["PALICE1", "PALICE1", "PALICE1", "PALICE1", "PDAVEP1"]


async def test_more_incident_events(pd_client, pd_state, receiver):
    events = [
        "incident.unacknowledged",
        "incident.reopened",
        "incident.escalated",
        "incident.delegated",
        "incident.responder.added",
        "incident.status_update_published",
        "incident.conference_bridge.updated",
        "incident.workflow.started",
        "incident.workflow.completed",
    ]
    await subscribe(pd_client, receiver.url("/hook"), events=events)
    inc = pd_state.create_incident(title="x", service_id="PSVCDB1", from_user="PINTEGR")
    iid = inc["id"]
    pd_state.acknowledge(iid, "PALICE1")
    pd_state.unacknowledge(iid, "PALICE1")
    pd_state.escalate(iid, 2, by="PINTEGR")
    pd_state.delegate(iid, "PEPDBP1", by="PINTEGR")
    pd_state.add_responder_request(
        iid, "PINTEGR", "help", [{"responder_request_target": {"id": "PBOBSM1", "type": "user_reference"}}]
    )
    pd_state.add_status_update(iid, "PINTEGR", "We are on it")
    pd_state.set_conference_bridge(iid, "+1 555 0100", "https://meet.example/x", by="PINTEGR")
    pd_state.start_workflow("PWFMAJ1", iid, by="PINTEGR")
    pd_state.resolve(iid, "PINTEGR")
    pd_state.reopen(iid, "PINTEGR")
    await pd_state.drain_webhooks()
    got = receiver.events("/hook")
    assert [e["event_type"] for e in got] == [
        "incident.unacknowledged",
        "incident.escalated",
        "incident.delegated",
        "incident.responder.added",
        "incident.status_update_published",
        "incident.conference_bridge.updated",
        "incident.workflow.started",
        "incident.workflow.completed",
        "incident.reopened",
    ]
    by_type = {e["event_type"]: e["data"] for e in got}
    assert by_type["incident.responder.added"]["type"] == "incident_responder"
    assert by_type["incident.responder.added"]["user"]["id"] == "PBOBSM1"
    assert by_type["incident.status_update_published"]["message"] == "We are on it"
    assert by_type["incident.conference_bridge.updated"]["conference_url"] == "https://meet.example/x"
    assert by_type["incident.workflow.started"]["incident_workflow"]["id"] == "PWFMAJ1"
    assert by_type["incident.reopened"]["status"] == "triggered"
    assert by_type["incident.reopened"]["reopened_at"]


async def test_service_events_reach_account_subscriptions(pd_client, pd_state, receiver):
    await subscribe(pd_client, receiver.url("/hook"), events=["service.created", "service.updated"])
    resp = await pd_client.post(
        "/services",
        json={
            "service": {
                "type": "service",
                "name": "payments-api",
                "escalation_policy": {"id": "PEPDB01", "type": "escalation_policy_reference"},
            }
        },
    )
    sid = (await resp.json())["service"]["id"]
    await pd_client.put(f"/services/{sid}", json={"service": {"type": "service", "description": "d"}})
    await pd_state.drain_webhooks()
    events = receiver.events("/hook")
    assert [(e["event_type"], e["resource_type"], e["data"]["id"]) for e in events] == [
        ("service.created", "service", sid),
        ("service.updated", "service", sid),
    ]


# ---------------------------------------------------------------- V2


async def create_extension(client, url, schema="PJFWPEP", config=None, services=("PSVCDB1",)) -> dict:
    resp = await client.post(
        "/extensions",
        json={
            "extension": {
                "name": "V2 hook",
                "endpoint_url": url,
                "extension_schema": {"id": schema, "type": "extension_schema_reference"},
                "extension_objects": [{"id": s, "type": "service_reference"} for s in services],
                "config": config or {},
            }
        },
    )
    assert resp.status == 201, await resp.text()
    return (await resp.json())["extension"]


async def test_generic_v2_extension_gets_one_message_per_post_with_its_headers(pd_client, pd_state, receiver):
    example = webhook_example("pd-v2-webhook-incident.trigger.json")
    ext = await create_extension(
        pd_client, receiver.url("/v2"), config={"headers": [{"name": "X-Api-Token", "value": "tok"}]}
    )
    inc = await create_incident(pd_client)
    await put_status(pd_client, inc["id"], "acknowledged")
    resp = await pd_client.post(f"/incidents/{inc['id']}/notes", json={"note": {"content": "hi"}}, headers=FROM)
    assert resp.status == 200
    await put_status(pd_client, inc["id"], "resolved")
    await create_incident(pd_client, service="PSVCNET")  # no extension on this service
    await pd_state.drain_webhooks()

    reqs = receiver.on("/v2")
    bodies = [json.loads(r["raw"]) for r in reqs]
    assert all(len(b["messages"]) == 1 for b in bodies)
    messages = [b["messages"][0] for b in bodies]
    assert [m["event"] for m in messages] == [
        "incident.trigger",
        "incident.acknowledge",
        "incident.annotate",
        "incident.resolve",
    ]
    assert set(example["messages"][0]) <= set(messages[0])
    first = messages[0]
    assert first["incident"]["id"] == inc["id"]
    assert first["incident"]["incident_number"] == inc["incident_number"]
    assert first["incident"]["service"]["type"] == "service"
    assert first["webhook"]["id"] == ext["id"]
    assert first["webhook"]["outbound_integration"]["id"] == "PJFWPEP"
    assert first["log_entries"][0]["type"] == "trigger_log_entry"
    assert messages[1]["incident"]["acknowledgements"][0]["acknowledger"]["id"] == "PINTEGR"
    assert messages[3]["incident"]["status"] == "resolved"
    assert all(r["headers"]["X-Api-Token"] == "tok" for r in reqs)
    assert len({m["id"] for m in messages}) == 4


async def test_servicenow_v7_extension_posts_with_basic_auth(pd_client, pd_state, receiver):
    await create_extension(
        pd_client,
        receiver.url("/snow"),
        schema="PAKM60Z",
        config={
            "snow_user": "pagerduty.integration",
            "snow_password": "pw",
            "sync_options": "sync_all",
            "target": receiver.url("/snow"),
        },
    )
    inc = pd_state.create_incident(title="snow", service_id="PSVCDB1", from_user="PINTEGR")
    pd_state.reassign(inc["id"], ["PBOBSM1"], by="PINTEGR")
    await pd_state.drain_webhooks()
    reqs = receiver.on("/snow")
    assert [json.loads(r["raw"])["messages"][0]["event"] for r in reqs] == ["incident.trigger", "incident.assign"]
    auth = reqs[0]["headers"]["Authorization"]
    assert base64.b64decode(auth.split()[1]).decode() == "pagerduty.integration:pw"
    assert "snow_password" not in json.loads(reqs[0]["raw"])["messages"][0]["webhook"]["config"]


async def test_extension_is_disabled_after_three_drops_and_enabled_again(pd_client, fast_retries, receiver):
    pd_state = fast_retries
    ext = await create_extension(pd_client, receiver.url("/v2"))
    receiver.script("/v2", 403, 403, 403)
    for n in range(3):
        await create_incident(pd_client, title=f"i{n}")
        await pd_state.drain_webhooks()
    got = (await (await pd_client.get(f"/extensions/{ext['id']}")).json())["extension"]
    assert got["temporarily_disabled"] is True
    resp = await pd_client.post(f"/extensions/{ext['id']}/enable")
    assert (await resp.json())["extension"]["temporarily_disabled"] is False
    await create_incident(pd_client, title="again")
    await pd_state.drain_webhooks()
    assert json.loads(receiver.on("/v2")[-1]["raw"])["messages"][0]["incident"]["title"] == "again"


async def test_disabling_drops_the_rest_of_the_queue(pd_client, fast_retries, receiver):
    pd_state = fast_retries
    sub = await subscribe(pd_client, receiver.url("/hook"))
    receiver.script("/hook", 400, 400, 400)
    # Five events for one incident, queued before the loop gets a chance to deliver any.
    inc = pd_state.create_incident(title="queued", service_id="PSVCDB1", from_user="PINTEGR")
    pd_state.acknowledge(inc["id"], "PALICE1")
    pd_state.add_note(inc["id"], "PALICE1", "one")
    pd_state.add_note(inc["id"], "PALICE1", "two")
    pd_state.resolve(inc["id"], "PALICE1")
    await pd_state.drain_webhooks()
    assert len(receiver.on("/hook")) == 3
    assert pd_state.webhook_subscriptions[sub["id"]]["delivery_method"]["temporarily_disabled"] is True
    assert [(d["event_type"], d["reason"]) for d in pd_state.webhook_drops] == [
        ("incident.annotated", "target disabled after consecutive drops"),
        ("incident.resolved", "target disabled after consecutive drops"),
    ]


async def test_webhooks_queued_before_the_app_starts_are_delivered_once_it_runs(aiohttp_client, pd_clock, receiver):
    from dutybridge_sandbox.pagerduty import PagerDutyState, create_app, load_seed

    state = PagerDutyState.from_seed(load_seed(), now=pd_clock)
    sub = state.create_webhook_subscription(
        {
            "type": "webhook_subscription",
            "events": ["incident.triggered"],
            "filter": {"type": "account_reference"},
            "delivery_method": {"type": "http_delivery_method", "url": receiver.url("/early")},
        }
    )
    state.create_incident(title="before start", service_id="PSVCNET", from_user="PBOBSM1")
    with pytest.raises(RuntimeError):
        await state.drain_webhooks(timeout=0.1)
    await aiohttp_client(create_app(state))
    await state.drain_webhooks()
    [req] = receiver.on("/early")
    assert verify(req["raw"], req["headers"]["X-PagerDuty-Signature"], state.subscription_secret(sub["id"]))
