"""``dutybridge store migrate`` from SQLite into PostgreSQL, and the CLI against PostgreSQL."""

from __future__ import annotations

import asyncio
import json

import pytest

from dutybridge.cli import main
from dutybridge.events import Event
from dutybridge.store.base import Link
from dutybridge.store.postgres import PostgresStore
from dutybridge.store.sqlite import SQLiteStore
from tests.support import postgres


@pytest.fixture
def pg_url():
    base, schema = postgres.server_url(), postgres.new_schema()
    try:
        yield postgres.with_schema(base, schema)
    finally:
        postgres.drop_schema_sync(base, schema)


def ev(n: int, resource: str) -> Event:
    return Event(
        source="pagerduty",
        type="incident.triggered",
        event_id=f"e{n}",
        resource=resource,
        payload={"n": n, "title": "disk full"},
    )


async def fill_sqlite(db):
    async with SQLiteStore(db) as old:
        stored = [await old.add_event(ev(n, f"r:{n % 3}")) for n in range(9)]
        claimed = await old.claim("old-daemon", 2, 300)
        await old.complete(claimed[0].id)
        await old.fail(claimed[1].id, "RuntimeError: boom", None)
        await old.claim("old-daemon", 1, 300)  # left claimed: the daemon was stopped mid-way
        await old.put_link(Link("incident", "P1", "sys1", {"status": "triggered"}))
        await old.put_link(Link("incident", "P0", "sys0", status="unlinked"))
        await old.set_watermark("incident_sync.poll", "2026-12-04T03:00:00Z")
        return stored, claimed, {e.id: e for e in await old.list_events(limit=100)}


async def check_copy(pg_url, stored, before):
    async with PostgresStore(pg_url) as new:
        after = {e.id: e for e in await new.list_events(limit=100)}
        assert sorted(after) == sorted(before) == sorted(e.id for e in stored)
        for event_id, old_event in before.items():
            got = after[event_id]
            assert (got.event_id, got.resource, got.payload, got.attempts, got.last_error) == (
                old_event.event_id,
                old_event.resource,
                old_event.payload,
                old_event.attempts,
                old_event.last_error,
            )
            assert got.status == ("pending" if old_event.status == "claimed" else old_event.status)
        assert (await new.counts())["claimed"] == 0
        assert (await new.get_link("incident", sn_id="sys1")).state == {"status": "triggered"}
        assert len(await new.list_links(include_unlinked=True)) == 2
        assert await new.get_watermark("incident_sync.poll") == "2026-12-04T03:00:00Z"
        # The copy is a working inbox: per-resource order holds, new ids follow the old.
        claims = await new.claim("new", 10, 30)
        assert all(
            c.id == min(e.id for e in after.values() if e.resource == c.resource and e.status == "pending")
            for c in claims
        )
        fresh = await new.add_event(ev(100, "r:new"))
        assert fresh.id > max(before)


async def status_of(pg_url, event_id):
    async with PostgresStore(pg_url) as new:
        return (await new.get_event(event_id)).status


def test_migrate_copies_inbox_links_and_watermarks_and_the_cli_reads_them(tmp_path, pg_url, capsys, write_config):
    db = tmp_path / "old.db"
    stored, claimed, before = asyncio.run(fill_sqlite(db))
    assert main(["store", "migrate", "--from", f"sqlite:///{db}", "--to", pg_url]) == 0
    assert "copied 9 events (1 claimed ones made pending), 2 links and 1 watermarks" in capsys.readouterr().out
    asyncio.run(check_copy(pg_url, stored, before))

    # A second run would double everything: refused.
    assert main(["store", "migrate", "--from", f"sqlite:///{db}", "--to", pg_url]) == 1
    assert "already has events" in capsys.readouterr().err

    # The events CLI against the PostgreSQL store.
    config = write_config({"daemon": {"store_url": pg_url}})
    assert main(["events", "list", "--status", "dead", "--json", "-c", str(config)]) == 0
    [dead] = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()] or [None]
    assert dead is not None and dead["id"] == claimed[1].id and dead["status"] == "dead"
    assert main(["events", "replay", str(claimed[1].id), "-c", str(config)]) == 0
    capsys.readouterr()
    assert asyncio.run(status_of(pg_url, claimed[1].id)) == "pending"


def test_migrate_refuses_a_password_given_on_the_command_line(tmp_path, capsys):
    db = tmp_path / "x.db"
    db.write_bytes(b"")
    code = main(
        ["store", "migrate", "--from", f"sqlite:///{db}", "--to", "postgresql://u@h/db", "--to-password", "hunter2"]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "env:NAME or file:PATH" in err and "hunter2" not in err
