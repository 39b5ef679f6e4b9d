"""The webhook receivers, probes and metrics route, driven over HTTP with aiohttp_client."""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import hmac
import json
import re
import sqlite3
from contextlib import closing
from typing import Any

import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from structlog.testing import capture_logs

from dutybridge import hookimpl
from dutybridge.config import validate
from dutybridge.context import Ctx
from dutybridge.metrics import Metrics
from dutybridge.plugins import make_test_pm
from dutybridge.receivers.pagerduty import PAGERDUTY_V3_EVENT_TYPES
from dutybridge.server import add_routes
from dutybridge.store.sqlite import SQLiteStore
from dutybridge.web import CTX_KEY, request_middleware
from dutybridge.web import with_key as _with_key

SECRET = "whsec-first-0123456789abcdef"
SECRET2 = "whsec-second-fedcba9876543210"
TOKEN = "doorbell-token-5f2b8e1c9d"
DB_USER = "sn-doorbell"
DB_PASS = "doorbell-pass-7a1c3e"
LIMIT = 2048
SYS_ID = "9d385017c611228701d22104cc95c371"


# -- a store ------------------------------------------------------------------------
class BreakableStore(SQLiteStore):
    """The real SQLite store, which can be made to fail like a locked or lost database."""

    broken = False

    def _check(self) -> None:
        if self.broken:
            raise sqlite3.OperationalError("disk I/O error")

    async def add_event(self, event):
        self._check()
        return await super().add_event(event)

    async def ping(self):
        self._check()
        return await super().ping()

    async def counts(self):
        self._check()
        return await super().counts()

    async def inbox(self):
        """Every stored event, oldest first."""
        return list(reversed(await self.list_events(limit=10_000)))


class FakeScheduler:
    running = True


def make_config(*, secrets=(SECRET,), token=TOKEN, user=DB_USER, password=DB_PASS, limit=LIMIT):
    sn: dict[str, Any] = {"instance_url": "https://acme.service-now.com", "username": "svc", "password": "sn-pass-xyz"}
    if token:
        sn["doorbell_token"] = token
    if user:
        sn["doorbell_username"] = user
    if password:
        sn["doorbell_password"] = password
    raw = {
        "daemon": {"max_body_bytes": limit},
        "pagerduty": {"api_key": "pd-api-key-abc", "webhook_secrets": list(secrets)},
        "servicenow": sn,
    }
    return validate(raw, {})


@pytest.fixture
async def store(tmp_path):
    store = BreakableStore(tmp_path / "dutybridge.db")
    await store.open()
    yield store
    await store.close()


@pytest.fixture
def wakes():
    return []


class IncidentTables:
    """A plugin handling the incident tables' doorbells (the receiver refuses the others)."""

    @hookimpl
    def register_servicenow_tables(self, ctx):
        return ["incident", "sn_si_incident"]


@pytest.fixture
def make_client(aiohttp_client, store, wakes):
    async def make(**config_kw):
        ctx = Ctx(
            config=make_config(**config_kw),
            pm=make_test_pm(IncidentTables()),
            store=store,
            metrics=Metrics(),
            scheduler=FakeScheduler(),
            waker=lambda: wakes.append(1),
        )
        app = web.Application()
        app[CTX_KEY] = ctx

        async def crash(request):
            raise RuntimeError("boom")

        async def contextvars(request):
            return web.json_response(structlog.contextvars.get_contextvars())

        async def refuse(request):
            if request.query.get("json"):
                raise web.HTTPConflict(text='{"error": "taken", "by": "P1"}', content_type="application/json")
            raise web.HTTPBadRequest(text="limit: expected a number")

        app.router.add_get("/crash", crash)
        app.router.add_get("/refuse", refuse)
        app.router.add_get("/contextvars", contextvars)
        add_routes(app)
        client = await aiohttp_client(app)
        client.ctx = ctx
        return client

    return make


@pytest.fixture
async def client(make_client):
    return await make_client()


# -- PagerDuty V3 helpers ------------------------------------------------------------
INCIDENT = {
    "id": "PGR0VU2",
    "type": "incident",
    "self": "https://api.pagerduty.com/incidents/PGR0VU2",
    "number": 2,
    "status": "triggered",
    "title": "A little bump in the road — ünïcode",
    "service": {"id": "PF9KMXH", "type": "service_reference"},
    "conference_bridge": {"conference_number": 1000, "conference_url": "https://example.com"},
}


def v3(
    event_type="incident.triggered",
    event_id="5ac64822-4adc-4fda-ade0-410becf0de4f",
    resource_type="incident",
    data=None,
):
    return {
        "event": {
            "id": event_id,
            "event_type": event_type,
            "resource_type": resource_type,
            "occurred_at": "2020-10-02T18:45:22.169Z",
            "agent": None,
            "client": {"name": "PagerDuty"},
            "data": copy.deepcopy(INCIDENT) if data is None else data,
        }
    }


def raw(doc) -> bytes:
    # Not json.dumps defaults: PagerDuty's bytes are what is signed, whitespace and all.
    return json.dumps(doc, indent=1, ensure_ascii=False).encode("utf-8")


def sign(body: bytes, *secrets: str) -> str:
    return ",".join("v1=" + hmac.new(s.encode(), body, hashlib.sha256).hexdigest() for s in secrets)


async def post_v3(client, doc_or_body, *, signature=None, secrets=(SECRET,), headers=None):
    body = doc_or_body if isinstance(doc_or_body, bytes) else raw(doc_or_body)
    h = {"Content-Type": "application/json", "X-Webhook-Id": "wh-1"}
    h["X-PagerDuty-Signature"] = signature if signature is not None else sign(body, *secrets)
    h.update(headers or {})
    return await client.post("/webhooks/pagerduty", data=body, headers=h)


async def assert_error(resp, status, contains=""):
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert set(body) >= {"error"} and isinstance(body["error"], str)
    assert contains in body["error"]
    return body


# -- PagerDuty V3 ---------------------------------------------------------------------
async def test_v3_signed_event_is_stored(client, store, wakes):
    resp = await post_v3(client, v3())
    assert resp.status == 202
    body = await resp.json()
    assert body == {"status": "accepted", "id": 1}
    [event] = await store.inbox()
    assert event.source == "pagerduty"
    assert event.type == "incident.triggered"
    assert event.event_id == "5ac64822-4adc-4fda-ade0-410becf0de4f"
    assert event.resource == "pagerduty:incident:PGR0VU2"
    assert event.payload["event"]["data"]["title"].endswith("ünïcode")
    assert event.payload["webhook_id"] == "wh-1"
    assert wakes == [1]


def stored_payload_text(store, row_id) -> str:
    with closing(sqlite3.connect(store.path)) as db:
        return db.execute("SELECT payload FROM events WHERE id = ?", (row_id,)).fetchone()[0]


async def test_v3_payload_is_stored_as_the_body_was_sent_plus_the_webhook_id(client, store):
    doc = v3()
    doc["webhook_id"] = "from-the-body"  # a key the body already has: the header's wins, in its place
    body = raw(doc)
    resp = await post_v3(client, body)
    assert resp.status == 202
    [event] = await store.inbox()
    expected = json.loads(body)
    expected["webhook_id"] = "wh-1"
    assert event.payload == expected and list(event.payload) == list(expected)
    text = stored_payload_text(store, event.id)
    assert text.startswith(body.decode("utf-8").rstrip()[:-1])  # the sender's text, untouched
    assert json.loads(text) == expected


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"])
async def test_v3_body_in_another_json_encoding_is_still_accepted(client, store, encoding):
    doc = v3()
    resp = await post_v3(client, json.dumps(doc, ensure_ascii=False).encode(encoding))
    assert resp.status == 202
    [event] = await store.inbox()
    assert event.payload == {**doc, "webhook_id": "wh-1"}
    # Not stored as sent: encoded from the parsed payload.
    assert stored_payload_text(store, event.id) == event.payload_json()


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"a": 1}', '{"a": 1,"k":"v"}'),
        ('  {"a": {"b": []}}\r\n\t ', '  {"a": {"b": []},"k":"v"}'),
        ("{ }", '{ "k":"v"}'),
        ('{"k": 0, "a": 1}', '{"k": 0, "a": 1,"k":"v"}'),
    ],
)
def test_with_key_appends_a_key_as_json_loads_reads_it(text, expected):
    doc = json.loads(text)
    out = _with_key(text, doc, "k", "v")
    assert out == expected
    assert json.loads(out) == {**doc, "k": "v"} and list(json.loads(out)) == list({**doc, "k": "v"})
    assert _with_key(None, doc, "k", "v") is None


async def test_v3_rotation_second_secret_matches(make_client, store):
    client = await make_client(secrets=(SECRET, SECRET2))
    body = raw(v3())
    # PagerDuty signs with the new secret only; an unrelated v1 and a v0 come first.
    header = "v0=abc, v1=" + "0" * 64 + "," + sign(body, SECRET2)
    resp = await post_v3(client, body, signature=header)
    assert resp.status == 202
    assert len(await store.inbox()) == 1


async def test_v3_several_signatures_one_configured_secret(client, store):
    body = raw(v3())
    resp = await post_v3(client, body, signature=sign(body, "some-other-secret", SECRET))
    assert resp.status == 202
    assert len(await store.inbox()) == 1


@pytest.mark.parametrize(
    "header, reason",
    [
        ("", "missing X-PagerDuty-Signature"),
        ("v1=" + "0" * 64, "does not match"),
        ("v1=not-hex-at-all", "does not match"),
        ("garbage", "does not match"),
        ("v1=ünïcödé" + "a" * 56, "does not match"),
        (",,,", "does not match"),
    ],
)
async def test_v3_bad_signature_401(client, store, header, reason):
    body = raw(v3())
    if header == "":
        resp = await client.post("/webhooks/pagerduty", data=body)
    else:
        resp = await post_v3(client, body, signature=header)
    await assert_error(resp, 401, reason)
    assert (await store.inbox()) == []


async def test_v3_signature_of_other_version_is_ignored(client, store):
    body = raw(v3())
    good = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    resp = await post_v3(client, body, signature=f"v2={good}")
    await assert_error(resp, 401)
    assert (await store.inbox()) == []


async def test_v3_signature_over_altered_body_401(client, store):
    body = raw(v3())
    altered = body.replace(b'"triggered"', b'"resolved" ')
    resp = await post_v3(client, altered, signature=sign(body, SECRET))
    await assert_error(resp, 401)
    assert (await store.inbox()) == []


async def test_v3_no_secret_configured_503(make_client, store):
    client = await make_client(secrets=())
    resp = await post_v3(client, v3(), secrets=("anything",))
    await assert_error(resp, 503, "webhook_secrets")
    assert (await store.inbox()) == []


async def test_v3_body_over_limit_413(client, store):
    doc = v3()
    doc["event"]["data"]["title"] = "x" * (LIMIT + 10)
    resp = await post_v3(client, doc)
    await assert_error(resp, 413, str(LIMIT))
    assert (await store.inbox()) == []


async def test_v3_chunked_body_over_limit_413(client, store):
    doc = v3()
    doc["event"]["data"]["title"] = "x" * (LIMIT * 8)
    body = raw(doc)

    async def chunks():
        for i in range(0, len(body), 512):
            yield body[i : i + 512]

    resp = await client.post(
        "/webhooks/pagerduty", data=chunks(), headers={"X-PagerDuty-Signature": sign(body, SECRET)}
    )
    assert resp.request_info.headers.get("Transfer-Encoding") == "chunked"
    await assert_error(resp, 413)
    assert (await store.inbox()) == []


async def test_v3_body_with_content_length_arriving_in_pieces_is_read_whole(client, store):
    body = raw(v3())
    reader, writer = await asyncio.open_connection(client.host, client.port)
    head = (
        f"POST /webhooks/pagerduty HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nX-PagerDuty-Signature: {sign(body, SECRET)}\r\n"
        f"Connection: close\r\n\r\n"
    ).encode()
    try:
        writer.write(head + body[:300])
        await writer.drain()
        await asyncio.sleep(0.05)  # the handler is already reading
        writer.write(body[300:])
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 202"), answer
    [event] = await store.inbox()
    assert event.payload == {**json.loads(body), "webhook_id": None}


async def test_v3_chunked_body_under_limit_accepted(client, store):
    body = raw(v3())

    async def chunks():
        for i in range(0, len(body), 100):
            yield body[i : i + 100]

    resp = await client.post(
        "/webhooks/pagerduty", data=chunks(), headers={"X-PagerDuty-Signature": sign(body, SECRET)}
    )
    assert resp.status == 202
    assert len(await store.inbox()) == 1


@pytest.mark.parametrize("body", [b"{not json", b"", b"\xff\xfe\x00", b"[1, 2]", b'"event"', b"[" * 1000])
async def test_v3_malformed_json_400(make_client, store, body):
    client = await make_client()
    resp = await post_v3(client, body)
    err = await assert_error(resp, 400)
    assert err["error"].startswith("body:")
    assert (await store.inbox()) == []


def _drop(path):
    def mutate(doc):
        parts = path.split(".")
        target = doc
        for p in parts[:-1]:
            target = target[p]
        del target[parts[-1]]

    return mutate


def _set(path, value):
    def mutate(doc):
        parts = path.split(".")
        target = doc
        for p in parts[:-1]:
            target = target[p]
        target[parts[-1]] = value

    return mutate


@pytest.mark.parametrize(
    "mutate, field",
    [
        (_drop("event"), "event"),
        (_set("event", []), "event"),
        (_drop("event.id"), "event.id"),
        (_set("event.id", 42), "event.id"),
        (_set("event.id", ""), "event.id"),
        (_drop("event.event_type"), "event.event_type"),
        (_set("event.event_type", None), "event.event_type"),
        (_drop("event.resource_type"), "event.resource_type"),
        (_set("event.resource_type", "service"), "event.resource_type"),
        (_drop("event.data"), "event.data"),
        (_set("event.data", "PGR0VU2"), "event.data"),
        (_drop("event.data.id"), "event.data.id"),
        (_set("event.data.id", "bad id with spaces"), "event.data.id"),
    ],
)
async def test_v3_envelope_missing_field_400_names_it(client, store, mutate, field):
    doc = v3()
    mutate(doc)
    resp = await post_v3(client, doc)
    err = await assert_error(resp, 400)
    assert err["error"].startswith(field + ":"), err
    assert (await store.inbox()) == []


async def test_v3_unknown_event_type_202_not_stored(client, store, wakes):
    with capture_logs() as logs:
        resp = await post_v3(client, v3(event_type="incident.teleported"))
    assert resp.status == 202
    assert (await resp.json())["status"] == "ignored"
    assert (await store.inbox()) == [] and wakes == []
    assert any(e["event"] == "webhook_ignored" and e.get("event_type") == "incident.teleported" for e in logs)


async def test_v3_ping_202_not_stored(client, store):
    ping = {
        "event": {
            "id": "01BZ",
            "event_type": "pagey.ping",
            "resource_type": "pagey",
            "occurred_at": "2021-12-08T22:45:14.154Z",
            "agent": None,
            "client": None,
            "data": {"message": "Hello from your friend Pagey!", "type": "ping"},
        }
    }
    with capture_logs() as logs:
        resp = await post_v3(client, ping)
    assert resp.status == 202
    assert await resp.json() == {"status": "ignored", "reason": "ping"}
    assert (await store.inbox()) == []
    assert any(e["event"] == "webhook_ignored" and e["reason"] == "ping" for e in logs)


async def test_v3_ping_still_needs_a_signature(client, store):
    ping = raw({"event": {"id": "01BZ", "event_type": "pagey.ping", "resource_type": "pagey", "data": {}}})
    resp = await post_v3(client, ping, signature="v1=" + "a" * 64)
    await assert_error(resp, 401)


async def test_v3_duplicate_stored_once(client, store, wakes):
    first = await post_v3(client, v3())
    assert (await first.json())["status"] == "accepted"
    # A retry of the same delivery, then the same event through a second subscription.
    again = await post_v3(client, v3())
    other_sub = await post_v3(client, v3(), headers={"X-Webhook-Id": "wh-2"})
    for resp in (again, other_sub):
        assert resp.status == 202
        assert await resp.json() == {"status": "duplicate"}
    assert len(await store.inbox()) == 1
    assert wakes == [1]


@pytest.mark.parametrize(
    "event_type, data, resource",
    [
        (
            "incident.annotated",
            {
                "incident": {"id": "PGR0VU2", "type": "incident_reference"},
                "id": "P2LA89X",
                "content": "note",
                "trimmed": False,
                "type": "incident_note",
            },
            "pagerduty:incident:PGR0VU2",
        ),
        (
            "incident.task.created",
            {
                "name": "t",
                "id": "PGR0VU2X",
                "type": "incident_task",
                "incident": {"id": "Q0SDD3HB6SGFTI", "type": "incident_reference"},
            },
            "pagerduty:incident:Q0SDD3HB6SGFTI",
        ),
        (
            "incident.role.assigned",
            {
                "type": "incident_role_assignment",
                "incident_role_assignments": [
                    {
                        "id": "af64b84c-137e",
                        "incident": {"id": "PBAZLIU", "type": "incident_reference"},
                        "type": "role_assignment_reference",
                    }
                ],
            },
            "pagerduty:incident:PBAZLIU",
        ),
        (
            "incident.conference_bridge.updated",
            {
                "incident": {"id": "PGR0VU2", "type": "incident_reference"},
                "conference_numbers": [],
                "type": "incident_conference_bridge",
            },
            "pagerduty:incident:PGR0VU2",
        ),
        (
            "incident.workflow.started",
            {
                "id": "P3SNKQS",
                "type": "incident_workflow_instance",
                "incident": {"id": "PBAZLIU"},
                "service": {"id": "PF9KMXH"},
            },
            "pagerduty:incident:PBAZLIU",
        ),
    ],
)
async def test_v3_events_about_an_incident_are_keyed_by_it(client, store, event_type, data, resource):
    resp = await post_v3(client, v3(event_type=event_type, data=data))
    assert resp.status == 202, await resp.text()
    assert (await store.inbox())[0].resource == resource


async def test_v3_service_events(client, store):
    data = {"id": "PF9KMXH", "type": "service", "summary": "svc"}
    resp = await post_v3(client, v3("service.updated", "01BRB6ZP4M6T8ZG4X6BP63ZB9O", "service", data))
    assert resp.status == 202
    fv = {
        "service": {"id": "PY0TW31", "type": "service_reference"},
        "custom_fields": [],
        "type": "service_field_values",
    }
    resp = await post_v3(client, v3("service.custom_field_values.updated", "01C", "service", fv))
    assert resp.status == 202
    assert [e.resource for e in (await store.inbox())] == ["pagerduty:service:PF9KMXH", "pagerduty:service:PY0TW31"]


def test_v3_event_type_list_covers_the_documented_families():
    assert {t.split(".")[0] for t in PAGERDUTY_V3_EVENT_TYPES} == {"incident", "service"}
    assert len(PAGERDUTY_V3_EVENT_TYPES) == 30
    assert "incident.triggered" in PAGERDUTY_V3_EVENT_TYPES and "pagey.ping" not in PAGERDUTY_V3_EVENT_TYPES


async def test_v3_store_failure_503_so_pagerduty_retries(client, store, wakes):
    store.broken = True
    resp = await post_v3(client, v3())
    await assert_error(resp, 503, "retry")
    assert wakes == []


async def test_v3_reload_applies_new_secret(client, store):
    client.ctx.config = make_config(secrets=(SECRET2,))
    resp = await post_v3(client, v3(), secrets=(SECRET,))
    await assert_error(resp, 401)
    resp = await post_v3(client, v3(), secrets=(SECRET2,))
    assert resp.status == 202


# -- PagerDuty V2 -----------------------------------------------------------------------
def v2_message(event="incident.trigger", mid="8a1d6420-a2cf-11e7-a7e1-22000a6d0e3e", incident_id="PRORDTY"):
    return {
        "event": event,
        "id": mid,
        "created_on": "2017-09-26T15:14:36Z",
        "incident": {"id": incident_id, "incident_number": 33, "status": "triggered", "title": "My new incident"},
        "webhook": {"id": "PKT9NNX", "type": "webhook"},
        "log_entries": [],
    }


def basic(user=DB_USER, password=DB_PASS):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def test_v2_messages_stored_one_event_each(client, store, wakes):
    doc = {
        "messages": [
            v2_message(),
            v2_message("incident.acknowledge", "m-2"),
            v2_message("incident.resolve", "m-3", "PXYZ"),
        ]
    }
    resp = await client.post("/webhooks/pagerduty/v2", json=doc, headers={"Authorization": basic()})
    assert resp.status == 202
    assert await resp.json() == {"status": "accepted", "ids": [1, 2, 3], "duplicates": 0, "ignored": 0}
    # Stored under the V3 names, so a plugin never knows which version carried them.
    assert [(e.type, e.event_id, e.resource) for e in (await store.inbox())] == [
        ("incident.triggered", "8a1d6420-a2cf-11e7-a7e1-22000a6d0e3e", "pagerduty:incident:PRORDTY"),
        ("incident.acknowledged", "m-2", "pagerduty:incident:PRORDTY"),
        ("incident.resolved", "m-3", "pagerduty:incident:PXYZ"),
    ]
    first = (await store.inbox())[0]
    assert first.payload["message"]["incident"]["incident_number"] == 33
    change = first.pagerduty
    assert (change.type, change.id, change.data["incident_number"], change.webhook_version) == (
        "incident.triggered",
        "PRORDTY",
        33,
        2,
    )
    assert wakes == [1, 1, 1]  # one per stored message: ctx.enqueue wakes the worker
    resp = await client.post("/webhooks/pagerduty/v2", json=doc, headers={"Authorization": basic()})
    assert (await resp.json())["duplicates"] == 3
    assert len(await store.inbox()) == 3


async def test_v2_unknown_type_skipped(client, store):
    doc = {"messages": [v2_message("incident.teleport", "m-9"), v2_message()]}
    resp = await client.post("/webhooks/pagerduty/v2", json=doc, headers={"Authorization": basic()})
    assert (await resp.json())["ignored"] == 1
    assert [e.event_id for e in (await store.inbox())] == ["8a1d6420-a2cf-11e7-a7e1-22000a6d0e3e"]


@pytest.mark.parametrize(
    "auth",
    [
        None,
        basic(password="wrong"),
        basic(user="other"),
        "Bearer " + TOKEN,
        "Basic !!!notbase64",
        "Basic " + base64.b64encode(b"nocolon").decode(),
    ],
)
async def test_v2_needs_basic_credentials(client, store, auth):
    headers = {"Authorization": auth} if auth else {}
    resp = await client.post("/webhooks/pagerduty/v2", json={"messages": [v2_message()]}, headers=headers)
    await assert_error(resp, 401)
    assert resp.headers["WWW-Authenticate"].startswith("Basic ")
    assert (await store.inbox()) == []


async def test_v2_one_bad_message_refuses_the_delivery(client, store):
    bad = v2_message("incident.acknowledge", "m-2")
    del bad["incident"]["id"]
    resp = await client.post(
        "/webhooks/pagerduty/v2", json={"messages": [v2_message(), bad]}, headers={"Authorization": basic()}
    )
    await assert_error(resp, 400, "messages[1].incident.id")
    assert (await store.inbox()) == []


async def test_v2_not_configured_503(make_client, store):
    client = await make_client(user="", password="")
    resp = await client.post("/webhooks/pagerduty/v2", json={"messages": []}, headers={"Authorization": basic()})
    await assert_error(resp, 503, "doorbell_username")


# -- ServiceNow doorbell ----------------------------------------------------------------
def doorbell(**over):
    doc = {"table": "incident", "sys_id": SYS_ID, "operation": "update", "sys_updated_on": "2024-03-05 14:07:09"}
    doc.update(over)
    return doc


async def test_doorbell_with_bearer(client, store, wakes):
    resp = await client.post("/webhooks/servicenow", json=doorbell(), headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status == 202
    assert await resp.json() == {"status": "accepted", "id": 1}
    [e] = await store.inbox()
    assert (e.source, e.type, e.resource) == ("servicenow", "incident.update", f"servicenow:incident:{SYS_ID}")
    assert re.fullmatch(rf"incident:{SYS_ID}:2024-03-05 14:07:09:[0-9a-f]{{32}}:update", e.event_id)
    assert e.payload == doorbell()
    assert wakes == [1]


async def test_doorbell_mod_count_keeps_two_changes_of_one_second_apart(client, store):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for count in ("3", "4", 4):  # the third repeats the second change: a duplicate
        resp = await client.post("/webhooks/servicenow", json=doorbell(sys_mod_count=count), headers=auth)
        assert resp.status == 202
    assert (await resp.json())["status"] == "duplicate"
    events = await store.inbox()
    assert [e.event_id for e in events] == [f"incident:{SYS_ID}:m3:update", f"incident:{SYS_ID}:m4:update"]
    assert events[1].payload["sys_mod_count"] == "4"


@pytest.mark.parametrize("count", ["-1", "1.5", "abc", True, None, ""])
async def test_doorbell_bad_mod_count_is_400_and_nothing_stored(client, store, count):
    resp = await client.post(
        "/webhooks/servicenow", json=doorbell(sys_mod_count=count), headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert resp.status == 400
    assert "sys_mod_count" in (await resp.json())["error"]
    assert await store.inbox() == []


async def test_doorbells_without_mod_count_are_never_dropped(client, store):
    # Keyed by the second, a change in the same second as the one before would be dropped
    # (the daemon's own write, then a person's): each delivery is kept, and read.
    for _ in range(2):
        resp = await client.post("/webhooks/servicenow", json=doorbell(), headers={"Authorization": f"Bearer {TOKEN}"})
        assert (await resp.json())["status"] == "accepted"
    assert len({e.event_id for e in await store.inbox()}) == 2


async def test_doorbell_with_basic_and_duplicate(client, store):
    for _ in range(2):
        resp = await client.post(
            "/webhooks/servicenow",
            json=doorbell(table="sn_si_incident", operation="delete", sys_mod_count="7"),
            headers={"Authorization": basic()},
        )
        assert resp.status == 202
    assert (await resp.json())["status"] == "duplicate"
    assert [e.type for e in (await store.inbox())] == ["sn_si_incident.delete"]


async def test_doorbell_basic_only_configured(make_client, store):
    client = await make_client(token="")
    resp = await client.post("/webhooks/servicenow", json=doorbell(), headers={"Authorization": f"Bearer {TOKEN}"})
    await assert_error(resp, 401)
    assert resp.headers["WWW-Authenticate"] == 'Basic realm="dutybridge", charset="UTF-8"'
    resp = await client.post("/webhooks/servicenow", json=doorbell(), headers={"Authorization": basic()})
    assert resp.status == 202


@pytest.mark.parametrize(
    "auth",
    [
        None,
        "Bearer wrong-token",
        f"Bearer {TOKEN}x",
        f"bearer  {TOKEN[:-1]}",
        basic(password="nope"),
        "Token " + TOKEN,
        "Bearer",
    ],
)
async def test_doorbell_wrong_credentials_401(client, store, auth):
    headers = {"Authorization": auth} if auth else {}
    resp = await client.post("/webhooks/servicenow", json=doorbell(), headers=headers)
    await assert_error(resp, 401)
    assert "Bearer" in resp.headers["WWW-Authenticate"] and "Basic" in resp.headers["WWW-Authenticate"]
    assert (await store.inbox()) == []


@pytest.mark.parametrize(
    "over, field",
    [
        ({"sys_id": "not-a-sys-id"}, "sys_id"),
        ({"sys_id": SYS_ID.upper()}, "sys_id"),
        ({"sys_id": SYS_ID + "\n"}, "sys_id"),
        ({"sys_id": None}, "sys_id"),
        ({"table": "Incident"}, "table"),
        ({"table": "incident; drop"}, "table"),
        ({"table": ""}, "table"),
        ({"operation": "merge"}, "operation"),
        ({"operation": 1}, "operation"),
        ({"sys_updated_on": "2024-03-05T14:07:09Z"}, "sys_updated_on"),
        ({"sys_updated_on": "2024-13-45 25:61:61"}, "sys_updated_on"),
        ({"short_description": "injected"}, "short_description"),
    ],
)
async def test_doorbell_invalid_400_names_field(client, store, over, field):
    doc = doorbell(**over)
    if over.get("sys_id", "") is None:
        del doc["sys_id"]
    resp = await client.post("/webhooks/servicenow", json=doc, headers={"Authorization": f"Bearer {TOKEN}"})
    err = await assert_error(resp, 400)
    assert err["error"].startswith(field + ":"), err
    assert (await store.inbox()) == []


async def test_doorbell_of_a_table_no_plugin_handles_is_400_and_no_metric_label(client, store):
    for i in range(5):
        resp = await client.post(
            "/webhooks/servicenow", json=doorbell(table=f"made_up_{i}"), headers={"Authorization": f"Bearer {TOKEN}"}
        )
        err = await assert_error(resp, 400)
        assert err["error"].startswith("table:") and "incident" in err["error"]
    assert await store.inbox() == []
    text = (await (await client.get("/metrics")).read()).decode()
    assert "made_up" not in text


@pytest.mark.parametrize("digit", ["\u0667", "\u07c7", "\uff17", "\u09ed"])
async def test_doorbell_mod_count_in_other_scripts_digits_is_400(client, store, digit):
    ok = await client.post(
        "/webhooks/servicenow", json=doorbell(sys_mod_count="7"), headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert ok.status == 202
    resp = await client.post(
        "/webhooks/servicenow", json=doorbell(sys_mod_count=digit), headers={"Authorization": f"Bearer {TOKEN}"}
    )
    await assert_error(resp, 400, "sys_mod_count")
    resp = await client.post(
        "/webhooks/servicenow",
        json=doorbell(sys_updated_on="2024-03-05 14:07:0" + digit),
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    await assert_error(resp, 400, "sys_updated_on")
    assert len(await store.inbox()) == 1


async def test_doorbell_not_configured_503(make_client, store):
    client = await make_client(token="", user="", password="")
    resp = await client.post("/webhooks/servicenow", json=doorbell(), headers={"Authorization": f"Bearer {TOKEN}"})
    await assert_error(resp, 503, "doorbell_token")
    assert (await store.inbox()) == []


async def test_doorbell_body_over_limit_413(client, store):
    resp = await client.post(
        "/webhooks/servicenow", data=b"{" + b" " * LIMIT + b"}", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    await assert_error(resp, 413)


# -- probes, metrics, errors -------------------------------------------------------------
async def test_healthz(client):
    resp = await client.get("/healthz")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok"}


async def test_readyz(client, store):
    resp = await client.get("/readyz")
    assert resp.status == 200
    assert (await resp.json())["checks"] == {"store": "ok", "scheduler": "ok"}
    store.broken = True
    resp = await client.get("/readyz")
    body = await assert_error(resp, 503, "store")
    assert body["checks"]["store"].startswith("error")
    store.broken = False
    client.ctx.scheduler = type("Stopped", (), {"running": False})()
    body = await assert_error(await client.get("/readyz"), 503, "scheduler")
    assert body["checks"]["store"] == "ok"


class PollParts:
    """A plugin whose parts report their health (report_health), as a poll's do."""

    def __init__(self) -> None:
        self.parts = {"poll.a": "ok", "poll.b": "ok"}

    @hookimpl
    def report_health(self, ctx):
        return dict(self.parts)


async def test_readyz_shows_plugin_parts_and_a_failing_one_only_degrades(client):
    parts = PollParts()
    client.ctx.pm.register(parts, name="parts")
    resp = await client.get("/readyz")
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "ready" and body["health"] == {"parts": {"poll.a": "ok", "poll.b": "ok"}}
    assert 'dutybridge_plugin_health{part="poll.b",plugin="parts"} 1.0' in await (await client.get("/metrics")).text()

    parts.parts["poll.b"] = "ApiError: GET /log_entries: 404 Not Found"
    resp = await client.get("/readyz")
    # Still ready: webhooks work; a load balancer must not pull the daemon for one poll.
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "degraded"
    assert body["health"]["parts"]["poll.b"] == "ApiError: GET /log_entries: 404 Not Found"
    assert body["checks"] == {"store": "ok", "scheduler": "ok"}
    metrics = await (await client.get("/metrics")).text()
    assert 'dutybridge_plugin_health{part="poll.b",plugin="parts"} 0.0' in metrics
    assert 'dutybridge_plugin_health{part="poll.a",plugin="parts"} 1.0' in metrics


async def test_a_failing_health_report_does_not_fail_the_probe(client):
    class Broken:
        @hookimpl
        def report_health(self, ctx):
            raise RuntimeError("boom")

    client.ctx.pm.register(Broken(), name="broken")
    resp = await client.get("/readyz")
    assert resp.status == 200
    assert (await resp.json())["status"] == "degraded"


async def test_metrics_after_events(client, store):
    await post_v3(client, v3())
    await post_v3(client, v3())
    await post_v3(client, v3(), signature="v1=" + "0" * 64)
    await client.post("/webhooks/servicenow", json=doorbell(), headers={"Authorization": f"Bearer {TOKEN}"})
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    text = await resp.text()
    assert 'dutybridge_events_received_total{source="pagerduty",type="incident.triggered"} 1.0' in text
    assert 'dutybridge_events_duplicate_total{source="pagerduty",type="incident.triggered"} 1.0' in text
    assert 'dutybridge_events_received_total{source="servicenow",type="incident.update"} 1.0' in text
    assert 'dutybridge_webhook_rejected_total{reason="bad_signature",route="pagerduty"} 1.0' in text
    assert 'dutybridge_inbox_events{status="pending"} 2.0' in text
    assert "dutybridge_store_up 1.0" in text
    store.broken = True
    assert "dutybridge_store_up 0.0" in await (await client.get("/metrics")).text()


async def test_unknown_route_and_method_are_json(client):
    body = await assert_error(await client.get("/nope"), 404, "not found: /nope")
    assert body == {"error": "not found: /nope"}
    resp = await client.get("/webhooks/pagerduty")
    await assert_error(resp, 405, "method GET not allowed")
    assert "POST" in resp.headers["Allow"]


async def test_route_http_errors_keep_their_words(client):
    assert await assert_error(await client.get("/refuse"), 400) == {"error": "limit: expected a number"}
    resp = await client.get("/refuse?json=1")
    assert await assert_error(resp, 409) == {"error": "taken", "by": "P1"}
    assert resp.headers["X-Request-Id"]


async def test_handler_crash_is_json_500_without_details(client):
    with capture_logs() as logs:
        resp = await client.get("/crash")
    assert await assert_error(resp, 500) == {"error": "internal error"}
    assert any(e["event"] == "request_failed" for e in logs)


async def test_request_id_echoed_sanitised_or_generated(client):
    resp = await client.get("/healthz", headers={"X-Request-Id": "abc-123.DEF"})
    assert resp.headers["X-Request-Id"] == "abc-123.DEF"
    resp = await client.get("/healthz", headers={"X-Request-Id": "a b\tc<script>"})
    assert resp.headers["X-Request-Id"] == "abcscript"
    resp = await client.get("/nope")
    assert len(resp.headers["X-Request-Id"]) == 32
    resp = await client.get("/healthz", headers={"X-Request-Id": "x" * 500})
    assert resp.headers["X-Request-Id"] == "x" * 128


async def test_request_id_bound_for_the_request(client):
    resp = await client.get("/contextvars", headers={"X-Request-Id": "req-42"})
    assert (await resp.json())["request_id"] == "req-42"
    assert "request_id" not in structlog.contextvars.get_contextvars()


async def test_generated_request_ids_differ_and_each_is_unbound_after_its_request():
    seen = []

    async def handler(request):
        seen.append(structlog.contextvars.get_contextvars()["request_id"])
        if len(seen) == 2:
            raise RuntimeError("boom")
        return web.json_response({})

    structlog.contextvars.bind_contextvars(request_id="outer")
    try:
        for status in (200, 500):
            resp = await request_middleware(make_mocked_request("GET", "/x"), handler)
            assert resp.status == status and resp.headers["X-Request-Id"] == seen[-1]
            # Restored, on success and on a crash: the connection's next request starts clean.
            assert structlog.contextvars.get_contextvars()["request_id"] == "outer"
    finally:
        structlog.contextvars.unbind_contextvars("request_id")
    assert len(set(seen)) == 2 and all(len(i) == 32 and int(i, 16) >= 0 for i in seen)


async def test_no_secret_or_signature_in_logs(client, store):
    body = raw(v3())
    signature = sign(body, SECRET)
    with capture_logs() as logs:
        await post_v3(client, body, signature=signature)
        await post_v3(client, body, signature="v1=" + "1" * 64)
        await post_v3(client, body, signature=signature)
        await client.post("/webhooks/servicenow", json=doorbell(), headers={"Authorization": "Bearer " + TOKEN + "x"})
        await client.post("/webhooks/servicenow", json=doorbell(), headers={"Authorization": "Bearer " + TOKEN})
        await client.post(
            "/webhooks/pagerduty/v2", json={"messages": [v2_message()]}, headers={"Authorization": basic()}
        )
        await client.get("/crash")
        store.broken = True
        await post_v3(client, v3(event_id="other"))
        await client.get("/readyz")
    assert len(logs) >= 8
    text = repr(logs)
    for needle in (
        SECRET,
        TOKEN,
        DB_PASS,
        signature.split("=", 1)[1],
        base64.b64encode(f"{DB_USER}:{DB_PASS}".encode()).decode(),
    ):
        assert needle not in text, needle


async def test_v3_and_v2_webhooks_of_one_change_read_alike(client, store):
    """The normalised view a plugin reads: the same type, incident and data either way."""
    body = json.dumps(
        {
            "event": {
                "id": "01V3EVT",
                "event_type": "incident.acknowledged",
                "resource_type": "incident",
                "occurred_at": "2026-11-28T10:00:00Z",
                "agent": {"id": "PBOB", "type": "user_reference"},
                "data": {"id": "PRORDTY", "type": "incident", "status": "acknowledged"},
            }
        }
    ).encode()
    assert (await post_v3(client, body)).status == 202
    message = v2_message("incident.acknowledge", "m-v2")
    message["log_entries"] = [{"agent": {"id": "PBOB", "type": "user_reference"}}]
    resp = await client.post("/webhooks/pagerduty/v2", json={"messages": [message]}, headers={"Authorization": basic()})
    assert resp.status == 202
    v3_change, v2_change = [e.pagerduty for e in await store.inbox()]
    for change in (v3_change, v2_change):
        assert (change.type, change.resource_type, change.id, change.agent["id"]) == (
            "incident.acknowledged",
            "incident",
            "PRORDTY",
            "PBOB",
        )
    assert (v3_change.webhook_version, v2_change.webhook_version) == (3, 2)
