"""What only the SQLite store does: its file, pragmas, migrations and URL."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3
import stat
import threading
from contextlib import closing
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from dutybridge.events import EncodedEvent, Event
from dutybridge.store import open_store
from dutybridge.store.base import Link
from dutybridge.store.migrations import POSTGRES_MIGRATIONS, SQLITE_MIGRATIONS
from dutybridge.store.sqlite import SQLiteStore, from_text, to_text


def ev(n: int, resource: str = "r:A") -> Event:
    return Event(source="pagerduty", type="incident.triggered", event_id=f"e{n}", resource=resource, payload={"n": n})


def insert_old(path: Path, *rows: tuple) -> None:
    """Events written straight into a database of an older schema (the inbox exists from
    version 1): ``(event_id, resource, status, extra columns...)``."""
    now = to_text(datetime(2026, 1, 1, 12, 0, tzinfo=UTC))
    with closing(sqlite3.connect(path)) as db, db:
        for event_id, resource, status, *extra in rows:
            columns = dict(extra[0]) if extra else {}
            columns.update(
                source="pagerduty",
                event_id=event_id,
                type="incident.triggered",
                resource=resource,
                payload=json.dumps({"n": event_id}),
                status=status,
                received_at=now,
                updated_at=now,
            )
            db.execute(
                f"INSERT INTO events ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                tuple(columns.values()),
            )


def tables(path: Path) -> set[str]:
    with closing(sqlite3.connect(path)) as db:
        return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def schema_objects(path: Path) -> set[str]:
    """Tables and indexes: a migration may add only an index."""
    with closing(sqlite3.connect(path)) as db:
        return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'index')")}


async def test_file_is_wal_and_private_and_only_the_inbox_commit_is_synchronous_full(tmp_path):
    path = tmp_path / "d.db"
    async with SQLiteStore(path) as store:
        db = store._db
        assert (await db.execute_fetchall("PRAGMA journal_mode"))[0][0] == "wal"
        assert (await db.execute_fetchall("PRAGMA synchronous"))[0][0] == 1  # NORMAL at rest
        assert (await db.execute_fetchall("PRAGMA busy_timeout"))[0][0] > 0
        statements: list[str] = []
        await db._execute(lambda: db._conn.set_trace_callback(statements.append))
        await store.add_event(ev(1))
        [claimed] = await store.claim("w", 1, 60)
        await store.complete(claimed.id)
        await db._execute(lambda: db._conn.set_trace_callback(None))
        # The inbox batch commits under FULL (an event answered 202 survives power loss);
        # the claim and the completion commit under NORMAL.
        full = statements.index("PRAGMA synchronous = FULL")
        assert statements[full + 1] == "BEGIN IMMEDIATE"
        back = statements.index("PRAGMA synchronous = NORMAL", full)
        assert "COMMIT" in statements[full:back]
        assert statements.count("PRAGMA synchronous = FULL") == 1
        assert (await db.execute_fetchall("PRAGMA synchronous"))[0][0] == 1
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        await SQLiteStore(tmp_path / "nope" / "d.db").open()


async def test_in_memory_store(tmp_path):
    async with SQLiteStore(":memory:") as store:
        assert await store.add_event(ev(1)) is not None
        assert await store.schema_version() == SQLITE_MIGRATIONS[-1][0]
    assert not list(tmp_path.iterdir())


async def test_a_second_process_sees_committed_events(tmp_path):
    # The CLI opens the daemon's file while the daemon runs.
    path = tmp_path / "d.db"
    async with SQLiteStore(path) as daemon, SQLiteStore(path) as cli:
        stored = await daemon.add_event(ev(1))
        assert (await cli.get_event(stored.id)).payload == {"n": 1}
        assert await cli.replay(stored.id) is False
        await daemon.claim("w", 1, 30)
        await daemon.fail(stored.id, "boom", None)
        assert await cli.replay_dead() == 1
        assert (await daemon.get_event(stored.id)).status == "pending"


async def test_inserts_and_claims_do_not_wait_for_a_long_read(tmp_path):
    # /metrics counts every event, a CLI lists them: at a large table that takes a
    # while, and it must not hold up the receiver or the worker.
    async with SQLiteStore(tmp_path / "d.db") as store:
        await store.add_event(ev(1))
        gate, entered = threading.Event(), threading.Event()

        def long_read():
            entered.set()
            gate.wait(10)

        reader = store._reader
        held = asyncio.ensure_future(reader._execute(long_read))
        await asyncio.to_thread(entered.wait, 10)
        counting = asyncio.ensure_future(store.counts())  # queued behind the long read
        try:
            async with asyncio.timeout(5):
                stored = await store.add_event(ev(2, "r:B"))
                claimed = await store.claim("w", 5, 30)
            assert {e.id for e in claimed} == {stored.id, 1}
            assert not counting.done()
        finally:
            gate.set()
            await held
        assert (await counting)["claimed"] == 2


def test_migration_versions_increase_and_both_dialects_stay_in_step():
    versions = [m[0] for m in SQLITE_MIGRATIONS]
    assert versions == list(range(1, len(versions) + 1))
    assert [(v, d) for v, d, _ in SQLITE_MIGRATIONS] == [(v, d) for v, d, _ in POSTGRES_MIGRATIONS]


def test_migrations_must_be_ordered():
    with pytest.raises(ValueError, match="increasing"):
        SQLiteStore(":memory:", migrations=[SQLITE_MIGRATIONS[1], SQLITE_MIGRATIONS[0]])


@pytest.mark.parametrize("n", range(1, len(SQLITE_MIGRATIONS)))
async def test_upgrade_from_each_version_keeps_rows(tmp_path, n):
    path = tmp_path / "d.db"
    async with SQLiteStore(path, migrations=SQLITE_MIGRATIONS[:n]) as old:
        assert await old.schema_version() == n
    lease = {"owner": "w", "attempts": 1, "lease_expires_at": "2026-01-01T12:00:30.000000Z"}
    insert_old(path, ("e0", "r:A", "claimed", lease), ("e1", "r:A", "pending"), ("e2", "r:B", "pending"))
    before = schema_objects(path)

    async with SQLiteStore(path, migrations=SQLITE_MIGRATIONS[: n + 1]) as new:
        assert await new.schema_version() == n + 1
        assert await new.counts() == {"pending": 2, "claimed": 1, "done": 0, "dead": 0, "ignored": 0}
        assert (await new.list_events())[-1].payload == {"n": "e0"}
    assert before < schema_objects(path)


async def test_upgrade_from_version_1_to_latest(tmp_path):
    path = tmp_path / "d.db"
    async with SQLiteStore(path, migrations=SQLITE_MIGRATIONS[:1]):
        pass
    insert_old(path, ("e1", "r:A", "pending"))
    async with SQLiteStore(path) as new:
        assert await new.schema_version() == SQLITE_MIGRATIONS[-1][0]
        [claimed] = await new.claim("w", 5, 30)
        assert claimed.event_id == "e1"
        await new.put_link(Link("incident", "PD1", "SN1"))
        await new.set_watermark("w", "v")
    with closing(sqlite3.connect(path)) as db:
        applied = [r[0] for r in db.execute("SELECT version FROM schema_migrations ORDER BY version")]
    assert applied == [m[0] for m in SQLITE_MIGRATIONS]


async def test_a_failing_migration_changes_nothing(tmp_path):
    path = tmp_path / "d.db"
    async with SQLiteStore(path, migrations=SQLITE_MIGRATIONS[:1]):
        pass
    insert_old(path, ("e1", "r:A", "pending"))
    broken = [*SQLITE_MIGRATIONS[:1], (2, "half", ("CREATE TABLE half_done (x)", "CREATE TABLE oops ("))]
    with pytest.raises(sqlite3.OperationalError):
        await SQLiteStore(path, migrations=broken).open()
    assert "half_done" not in tables(path)
    async with SQLiteStore(path, migrations=SQLITE_MIGRATIONS[:1]) as again:
        assert await again.schema_version() == 1
        assert (await again.counts())["pending"] == 1


async def test_a_newer_schema_is_refused(tmp_path):
    path = tmp_path / "d.db"
    async with SQLiteStore(path):
        pass
    with pytest.raises(RuntimeError, match="newer release"):
        await SQLiteStore(path, migrations=SQLITE_MIGRATIONS[:1]).open()


async def test_reopening_applies_nothing_twice(tmp_path):
    path = tmp_path / "d.db"
    for _ in range(2):
        async with SQLiteStore(path) as store:
            assert await store.schema_version() == SQLITE_MIGRATIONS[-1][0]


# -- open_store ------------------------------------------------------------------


def test_open_store_relative_absolute_and_memory(tmp_path):
    assert open_store("sqlite:///state/d.db", tmp_path).path == str(tmp_path / "state" / "d.db")
    assert open_store("sqlite:////var/lib/dutybridge/d.db", tmp_path).path == "/var/lib/dutybridge/d.db"
    assert open_store("sqlite:///:memory:", tmp_path).path == ":memory:"
    assert isinstance(open_store("SQLITE:///d.db", tmp_path), SQLiteStore)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://app:hunter2@db/dutybridge", "daemon.store_password"),
        ("postgresql:///dutybridge", "names no host"),
        ("mysql://db/x", "unsupported scheme 'mysql'"),
        ("sqlite://host/d.db", "three slashes"),
        ("sqlite:///", "names no file"),
        ("dutybridge.db", "not a URL"),
    ],
)
def test_open_store_rejects_what_it_cannot_open(tmp_path, url, message):
    with pytest.raises(ValueError, match=message) as info:
        open_store(url, tmp_path)
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    "dt",
    [
        datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
        datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-5))),
        datetime(2026, 6, 1, 0, 0, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    ],
)
def test_time_text_is_fixed_width_utc_and_reads_back(dt):
    text = to_text(dt)
    assert text == dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert from_text(text) == dt
    with pytest.raises(ValueError, match="naive"):
        to_text(dt.replace(tzinfo=None))


def encoded(n: int, text: str, payload: dict) -> EncodedEvent:
    return EncodedEvent(
        source="pagerduty",
        type="incident.triggered",
        event_id=f"e{n}",
        resource="r:A",
        payload=payload,
        payload_text=text,
    )


async def test_an_encoded_event_is_stored_as_its_text_and_returned_with_its_payload(tmp_path):
    text = '{"event": {"id": "e1", "n": [1, 2.5]}, "z": null, "a": "\u2603"}'
    payload = json.loads(text)
    async with SQLiteStore(tmp_path / "d.db") as store:
        stored = await store.add_event(encoded(1, text, payload))
        # The producer handed the payload over: no decoded copy.
        assert stored.payload is payload
        got = await store.get_event(stored.id)
        assert got == stored and got.payload == payload
        with closing(sqlite3.connect(tmp_path / "d.db")) as db:
            assert db.execute("SELECT payload FROM events WHERE id = ?", (stored.id,)).fetchone()[0] == text


async def test_a_plain_or_derived_event_gets_a_decoded_copy(tmp_path):
    payload = {"b": (1, 2), "a": {"x": 1}}
    async with SQLiteStore(tmp_path / "d.db") as store:
        plain = await store.add_event(
            Event(source="pagerduty", type="t", event_id="p", resource="r:A", payload=payload)
        )
        # A copy, as get_event would read it: the caller's dict may still change.
        assert plain.payload == {"a": {"x": 1}, "b": [1, 2]} and plain.payload["a"] is not payload["a"]
        # dataclasses.replace drops the text: the new payload is encoded, not the old text.
        derived = dataclasses.replace(encoded(2, '{"old": 1}', {"old": 1}), payload={"new": 2})
        assert derived.payload_text is None and derived.payload_json() == '{"new":2}'
        stored = await store.add_event(derived)
        assert stored.payload == {"new": 2}
        assert (await store.get_event(stored.id)).payload == {"new": 2}


async def test_a_link_looked_up_by_servicenow_id_with_history_reads_no_other_link(tmp_path):
    """get_link(sn_id=..., include_unlinked=True) is what every ServiceNow event of incident
    sync asks: its cost must not grow with the links stored (it read them all before
    migration 4). Counted in SQLite VM steps, not time: 20,000 links make a scan cost
    hundreds of thousands, an index lookup a few hundred."""
    path = tmp_path / "links.db"
    async with SQLiteStore(path):
        pass
    now = to_text(datetime.now(UTC))
    with closing(sqlite3.connect(path)) as db, db:
        db.executemany(
            "INSERT INTO links (kind, pd_id, sn_id, state, status, created_at, updated_at)"
            " VALUES ('incident', ?, ?, '{}', ?, ?, ?)",
            [(f"P{i}", f"sys{i % 19_999}", "unlinked" if i == 19_999 else "linked", now, now) for i in range(20_000)],
        )
    async with SQLiteStore(path) as store:
        steps = 0

        def count() -> int:
            nonlocal steps
            steps += 1
            return 0

        # On the writer connection, which get_link reads on, and in its thread.
        conn = store._db._conn
        await store._db._execute(lambda: conn.set_progress_handler(count, 1))
        try:
            linked = await store.get_link("incident", sn_id="sys0", include_unlinked=True)
            by_pd = await store.get_link("incident", pd_id="P19999", include_unlinked=True)
        finally:
            await store._db._execute(lambda: conn.set_progress_handler(None, 1))
    assert (linked.pd_id, linked.status) == ("P0", "linked")  # the live one wins over the unlinked P19999
    assert (by_pd.sn_id, by_pd.status) == ("sys0", "unlinked")
    assert steps < 2_000, f"{steps} VM steps for two lookups among 20,000 links"
