"""``dutybridge events``: list, show, replay and purge, against a real store."""

from __future__ import annotations

import io
import json

import pytest

from dutybridge import events_cli
from dutybridge.events import Event
from dutybridge.store.sqlite import SQLiteStore


@pytest.fixture
async def store():
    s = SQLiteStore(":memory:")
    await s.open()
    yield s
    await s.close()


@pytest.fixture
def out():
    return io.StringIO()


@pytest.fixture
def err():
    return io.StringIO()


async def add(store, n: int, resource: str = "pagerduty:incident:P1", **payload):
    return await store.add_event(
        Event(
            source="pagerduty",
            type="incident.triggered",
            event_id=f"e{n}",
            resource=resource,
            payload=payload or {"n": n},
        )
    )


async def make_dead(store, n: int, error: str = "ConnectionError: refused"):
    stored = await add(store, n, resource=f"r:{n}")
    [claimed] = [e for e in await store.claim("w", 100, 30) if e.id == stored.id]
    await store.fail(claimed.id, error, None)
    await store.release_claims()  # the others were claimed along with it
    return stored


async def test_list_prints_a_table_with_counts(store, out):
    await add(store, 1)
    dead = await make_dead(store, 2, error="RuntimeError: " + "very long line\n" * 20)
    assert await events_cli.list_events(store, out) == 0
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["ID", "STATUS", "ATTEMPTS", "SOURCE", "TYPE", "RESOURCE", "RECEIVED", "LAST", "ERROR"]
    assert lines[1].split()[:6] == [str(dead.id), "dead", "1", "pagerduty", "incident.triggered", "r:2"]
    assert lines[1].endswith("...") and len(lines[1].split("RuntimeError")[1]) < 60
    assert lines[2].split()[:2] == ["1", "pending"]
    assert lines[-1] == "pending: 1  claimed: 0  done: 0  dead: 1  ignored: 0"


async def test_list_filters_by_status_and_limits(store, out):
    for n in range(3):
        await make_dead(store, n)
    await add(store, 10)
    assert await events_cli.list_events(store, out, status="dead", limit=2) == 0
    text = out.getvalue()
    assert "pending " not in text.splitlines()[1] and "the newest 2" in text
    assert len([line for line in text.splitlines() if " dead " in line]) == 2


async def test_list_when_empty(store, out):
    assert await events_cli.list_events(store, out, status="dead") == 0
    assert out.getvalue().splitlines()[0] == "no dead events"


async def test_list_as_json(store, out):
    stored = await add(store, 1)
    newer = await add(store, 2)
    assert await events_cli.list_events(store, out, as_json=True) == 0
    rows = [json.loads(line) for line in out.getvalue().splitlines()]  # JSON lines, newest first
    assert [r["id"] for r in rows] == [newer.id, stored.id]
    row = rows[1]
    assert row["status"] == "pending" and row["event_id"] == "e1" and row["attempts"] == 0
    assert row["received_at"].endswith("Z")
    assert "payload" not in row  # `show` has it


@pytest.mark.parametrize(("kwargs", "message"), [({"status": "bogus"}, "unknown status"), ({"limit": 0}, "at least 1")])
async def test_list_rejects_bad_arguments(store, out, err, kwargs, message):
    assert await events_cli.list_events(store, out, err=err, **kwargs) == 2
    assert message in err.getvalue() and out.getvalue() == ""


async def test_show_prints_everything_as_json(store, out):
    dead = await make_dead(store, 1)
    assert await events_cli.show_event(store, out, dead.id) == 0
    shown = json.loads(out.getvalue())
    assert shown["payload"] == {"n": 1}
    assert shown["status"] == "dead" and shown["last_error"] == "ConnectionError: refused"
    assert shown["resource"] == "r:1" and shown["attempts"] == 1


async def test_show_missing(store, out, err):
    assert await events_cli.show_event(store, out, 42, err=err) == 1
    assert "no event with id 42" in err.getvalue() and out.getvalue() == ""


async def test_replay_one(store, out, err):
    dead = await make_dead(store, 1)
    assert await events_cli.replay_event(store, out, dead.id) == 0
    assert f"event {dead.id} is pending again" in out.getvalue()
    assert (await store.get_event(dead.id)).status == "pending"
    # Pending now: nothing to replay.
    assert await events_cli.replay_event(store, out, dead.id, err=err) == 1
    assert "is pending; only dead, done or ignored" in err.getvalue()
    assert await events_cli.replay_event(store, out, 999, err=err) == 1
    assert "no event with id 999" in err.getvalue()


async def test_replay_dead_and_purge_dead(store, out):
    for n in range(3):
        await make_dead(store, n)
    assert await events_cli.replay_dead(store, out) == 0
    assert await events_cli.replay_dead(store, out) == 0
    assert out.getvalue().splitlines() == ["3 dead events pending again", "no dead events"]
    for n in range(3, 5):
        await make_dead(store, n)
    out.truncate(0)
    out.seek(0)
    assert await events_cli.purge_dead(store, out) == 0
    assert out.getvalue() == "deleted 2 dead events\n"
    assert (await store.counts())["dead"] == 0
