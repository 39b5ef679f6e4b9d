"""The example hook files in hooks/, loaded as the daemon loads them, against a real server;
a raising hook, the order of files, and ``dutybridge hooks test``."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import shutil
from pathlib import Path

import pytest
from aiohttp import web
from multidict import CIMultiDict
from structlog.testing import capture_logs

from dutybridge import hookimpl
from dutybridge.cli import main
from dutybridge.context import Ctx
from dutybridge.events import Event
from dutybridge.http import HookFailed, OutboundPipeline, OutboundRequest, RequestVetoed, RetryPolicy
from dutybridge.plugins import PluginError, build_plugin_manager
from dutybridge.store.sqlite import SQLiteStore
from dutybridge.worker import Worker

REPO = Path(__file__).resolve().parents[2]
HOOKS = REPO / "hooks"
HMAC_KEY = "hmac-key-41d2c7e8"


class Recorder:
    def __init__(self) -> None:
        self.seen: list[dict] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append(
            {
                "method": request.method,
                "path": request.path,
                "headers": dict(request.headers),
                "body": await request.read(),
            }
        )
        return web.json_response({"ok": True})


@pytest.fixture
async def server(aiohttp_server):
    rec = Recorder()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", rec.handle)
    srv = await aiohttp_server(app)
    rec.url = str(srv.make_url("")).rstrip("/")
    return rec


async def send(pm, *requests: OutboundRequest):
    async with OutboundPipeline(pm, default_retry=RetryPolicy(max_retries=0)) as pipeline:
        return [await pipeline.request(r) for r in requests]


PD_HEADERS = {
    "Authorization": "Token token=pd-key",
    "Accept": "application/vnd.pagerduty+json;version=2",
    "From": "integration@example.com",
}


def pd(url, op="GET /users", method="GET", path="/users", body=None):
    return OutboundRequest(
        method, f"{url}{path}", service="pagerduty", operation=op, json=body, headers=CIMultiDict(PD_HEADERS)
    )


def sn(url, body=None, method="PATCH", path="/api/now/table/incident/abc"):
    return OutboundRequest(
        method, f"{url}{path}", service="servicenow", operation="PATCH /api/now/table/incident/{sys_id}", json=body
    )


def hooks_dir(tmp_path: Path, *names: str, extra: dict[str, str] | None = None) -> Path:
    folder = tmp_path / "hooks"
    folder.mkdir()
    for name in names:
        shutil.copy(HOOKS / name, folder / name)
    for name, text in (extra or {}).items():
        (folder / name).write_text(text)
    for path in folder.iterdir():
        path.chmod(0o644)
    return folder


# -- the examples, all loaded together from hooks/ as a daemon with hooks_dir = hooks/ would -------


async def test_tenant_header_reaches_every_service(server, monkeypatch):
    monkeypatch.setenv("DUTYBRIDGE_TENANT", "acme-eu")
    monkeypatch.setenv("DUTYBRIDGE_SN_HMAC_KEY", HMAC_KEY)
    pm = build_plugin_manager([], HOOKS)
    other = OutboundRequest("POST", f"{server.url}/hook", service="webhook", json={})
    await send(pm, pd(server.url), sn(server.url, {"state": "2"}), other)
    assert [s["headers"].get("X-Tenant") for s in server.seen] == ["acme-eu"] * 3


async def test_servicenow_requests_carry_an_hmac_of_what_was_sent(server, monkeypatch):
    monkeypatch.setenv("DUTYBRIDGE_SN_HMAC_KEY", HMAC_KEY)
    pm = build_plugin_manager([], HOOKS)
    await send(pm, sn(server.url, {"state": "2", "u_caller_phone": "555-0100"}), pd(server.url))
    got_sn, got_pd = server.seen
    stamp = got_sn["headers"]["X-Signature-Timestamp"]
    signed = b"\n".join([stamp.encode(), b"PATCH", b"/api/now/table/incident/abc", got_sn["body"]])
    assert got_sn["headers"]["X-Signature"] == hmac.new(HMAC_KEY.encode(), signed, hashlib.sha256).hexdigest()
    # redact_field.py ran before the signature (file-name order): the signed body lacks the phone.
    assert json.loads(got_sn["body"]) == {"state": "2"}
    assert got_sn["headers"]["Content-Type"] == "application/json"
    assert "X-Signature" not in got_pd["headers"]


async def test_without_a_key_servicenow_requests_are_vetoed_not_sent_unsigned(server, monkeypatch, tmp_path):
    pm = build_plugin_manager([], hooks_dir(tmp_path, "servicenow_hmac.py"))
    with pytest.raises(
        RequestVetoed, match=r"vetoed by hook .*servicenow_hmac\.py:\d+: DUTYBRIDGE_SN_HMAC_KEY is not set"
    ):
        await send(pm, sn(server.url, {"state": "2"}))
    assert server.seen == []


async def test_one_services_incidents_are_opened_on_another(server, monkeypatch, tmp_path):
    monkeypatch.setenv("DUTYBRIDGE_ROUTE_SERVICES", "PFROM01=PTO0001, POTHER1=PTO0002")
    pm = build_plugin_manager([], hooks_dir(tmp_path, "route_service.py"))

    def incident(service_id):
        return pd(
            server.url,
            "POST /incidents",
            "POST",
            "/incidents",
            {
                "incident": {
                    "type": "incident",
                    "title": "disk",
                    "service": {"id": service_id, "type": "service_reference"},
                }
            },
        )

    await send(pm, incident("PFROM01"), incident("PKEEP01"))
    services = [json.loads(s["body"])["incident"]["service"]["id"] for s in server.seen]
    assert services == ["PTO0001", "PKEEP01"]


def test_a_bad_route_setting_stops_loading_naming_the_file(monkeypatch, tmp_path):
    monkeypatch.setenv("DUTYBRIDGE_ROUTE_SERVICES", "PFROM01")
    with pytest.raises(PluginError, match=r"route_service\.py:\d+: ValueError while importing: .*expected FROM=TO"):
        build_plugin_manager([], hooks_dir(tmp_path, "route_service.py"))


async def test_notes_that_look_like_credentials_are_dropped(server, tmp_path):
    pm = build_plugin_manager([], hooks_dir(tmp_path, "drop_notes.py"))

    def note(text):
        return pd(server.url, "POST /incidents/{id}/notes", "POST", "/incidents/P1/notes", {"note": {"content": text}})

    with pytest.raises(RequestVetoed, match="looks like it holds a credential"):
        await send(pm, note("db password: hunter2"))
    await send(
        pm,
        note("disk full on db-1"),
        sn(server.url, {"work_notes": "new API key = abc123", "comments": "restarted", "state": "2"}),
    )
    pd_note, sn_write = server.seen
    assert json.loads(pd_note["body"]) == {"note": {"content": "disk full on db-1"}}
    assert json.loads(sn_write["body"]) == {"comments": "restarted", "state": "2"}


# -- a raising hook, and the order of hook files -------------------------------------------

BROKEN = """
def outbound_request(request, ctx):
    if request.service == "servicenow":
        return request.json["missing"]
"""


async def test_a_raising_hook_fails_only_that_request_naming_file_and_line(server, tmp_path):
    folder = hooks_dir(tmp_path, extra={"broken.py": BROKEN})
    pm = build_plugin_manager([], folder)
    with capture_logs() as logs, pytest.raises(HookFailed) as info:
        await send(pm, sn(server.url, {"state": "2"}))
    where = f"{folder / 'broken.py'}:4"
    assert info.value.hook == where and "raised KeyError: 'missing'" in str(info.value)
    assert info.value.transient  # the worker's backoff retries it, as any failure
    assert [e["hook"] for e in logs if e["event"] == "outbound_hook_failed"] == [where]
    # The pipeline goes on: the next request is sent.
    await send(pm, pd(server.url))
    assert [s["path"] for s in server.seen] == ["/users"]


ORDERED = """
from dutybridge import hookimpl

def outbound_request(request, ctx):
    request.headers["X-Order"] = request.headers.get("X-Order", "") + "{name},"
"""

FIRST = """
from dutybridge import hookimpl

@hookimpl(tryfirst=True)
def outbound_request(request, ctx):
    request.headers["X-Order"] = request.headers.get("X-Order", "") + "first,"
"""


class Plugin:
    @hookimpl
    def outbound_request(self, request):
        request.headers["X-Order"] = request.headers.get("X-Order", "") + "plugin,"


async def test_hook_files_run_after_the_plugins_by_file_name_unless_tryfirst(server, tmp_path):
    folder = hooks_dir(
        tmp_path, extra={"20_b.py": ORDERED.format(name="b"), "10_a.py": ORDERED.format(name="a"), "30_first.py": FIRST}
    )
    pm = build_plugin_manager([], folder, extra_plugins=[Plugin()])
    await send(pm, pd(server.url))
    assert server.seen[0]["headers"]["X-Order"] == "first,plugin,a,b,"


# -- dutybridge hooks test ----------------------------------------------------------------


def test_hooks_test_prints_the_request_the_file_makes(capsys, monkeypatch):
    monkeypatch.setenv("DUTYBRIDGE_TENANT", "acme-eu")
    sample = {
        "method": "get",
        "url": "https://api.pagerduty.com/users",
        "service": "pagerduty",
        "headers": {"Accept": "application/json"},
    }
    assert main(["hooks", "test", str(HOOKS / "tenant_header.py"), "--request", json.dumps(sample)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["method"] == "GET" and shown["headers"] == {"Accept": "application/json", "X-Tenant": "acme-eu"}


def test_hooks_test_shows_a_veto_and_a_bad_sample(capsys, tmp_path):
    note = {
        "method": "POST",
        "url": "https://api.pagerduty.com/incidents/P1/notes",
        "service": "pagerduty",
        "operation": "POST /incidents/{id}/notes",
        "json": {"note": {"content": "password: x"}},
    }
    sample = tmp_path / "note.json"
    sample.write_text(json.dumps(note))
    assert main(["hooks", "test", str(HOOKS / "drop_notes.py"), "--request", f"@{sample}"]) == 1
    assert "drop_notes.py:" in capsys.readouterr().err
    assert main(["hooks", "test", str(HOOKS / "drop_notes.py"), "--request", '{"method": "GET"}']) == 2
    assert "--request.url: required" in capsys.readouterr().err
    assert main(["hooks", "test", str(tmp_path / "nope.py"), "--request", "{}"]) == 2
    assert "no such file" in capsys.readouterr().err


# -- a raising hook inside the running worker: the event fails, is retried, and heals ------

FLAKY = """
import os
from pathlib import Path


def outbound_request(request, ctx):
    if Path(os.environ["HOOK_BROKEN_FLAG"]).exists():
        raise RuntimeError("the gateway table is missing")
"""


class Caller:
    """A plugin whose events each make one outbound call."""

    def __init__(self, url: str) -> None:
        self.url = url

    @hookimpl
    async def handle_event(self, event, ctx):
        await ctx.http.request(OutboundRequest("POST", f"{self.url}/calls", service="webhook", json={"n": 1}))
        return True


class NoSecrets:
    def secrets(self) -> list[str]:
        return []


async def test_a_raising_hook_fails_the_event_which_is_retried_and_heals(server, tmp_path, monkeypatch):
    flag = tmp_path / "broken"
    flag.touch()
    monkeypatch.setenv("HOOK_BROKEN_FLAG", str(flag))
    folder = hooks_dir(tmp_path, extra={"flaky.py": FLAKY})
    pm = build_plugin_manager([], folder, extra_plugins=[Caller(server.url)])
    store = SQLiteStore(":memory:")
    await store.open()
    ctx = Ctx(config=NoSecrets(), pm=pm, store=store)
    ctx.http = OutboundPipeline(pm, ctx)
    await ctx.http.start()
    worker = Worker(
        store,
        pm,
        ctx,
        concurrency=1,
        max_attempts=10,
        retry_base=0.02,
        retry_max=0.05,
        lease_seconds=30,
        poll_interval=0.02,
    )
    stored = await store.add_event(
        Event(source="pagerduty", type="incident.triggered", event_id="e1", resource="incident:P1", payload={})
    )
    try:
        await worker.start()
        async with asyncio.timeout(10):
            while (got := await store.get_event(stored.id)).last_error is None:
                await asyncio.sleep(0.01)
        assert got.status == "pending" and f"{folder / 'flaky.py'}:8" in got.last_error
        assert "RuntimeError: the gateway table is missing" in got.last_error
        flag.unlink()  # the operator fixes the cause; the next retry goes through
        async with asyncio.timeout(10):
            while (got := await store.get_event(stored.id)).status != "done":
                await asyncio.sleep(0.01)
    finally:
        await worker.stop(timeout=1)
        await ctx.http.close()
        await store.close()
    assert got.attempts >= 2 and [s["path"] for s in server.seen] == ["/calls"]
