"""The SQLite inbox's heads: the claim's plan, its cost at a backlog, and a migrated inbox."""

from __future__ import annotations

import asyncio
import random
import re
import shutil
import sqlite3
import time
from contextlib import closing
from datetime import UTC, datetime, timedelta

import pytest

from dutybridge.events import Event
from dutybridge.store import sqlite_inbox
from dutybridge.store.migrations import SQLITE_HEAD_OF, SQLITE_MIGRATIONS
from dutybridge.store.postgres import PostgresStore
from dutybridge.store.sqlite import SQLiteStore, to_text
from tests.support import postgres

HOT = "pagerduty:incident:PHOT"


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def ev(n: int, resource: str = HOT) -> Event:
    return Event(
        source="pagerduty",
        type="incident.triggered",
        event_id=f"e{n}",
        resource=resource,
        payload={"n": n, "title": "x" * 100},
    )


async def add_many(store: SQLiteStore, events: list[Event]) -> None:
    # Concurrent callers share group commits: a few hundred events per transaction.
    for start in range(0, len(events), 512):
        await asyncio.gather(*(store.add_event(e) for e in events[start : start + 512]))


def analyze(path) -> int:
    with closing(sqlite3.connect(path)) as db:
        db.execute("ANALYZE")
        return db.execute("SELECT COUNT(*) FROM sqlite_stat1").fetchone()[0]


def plan(path, sql: str, params) -> list[str]:
    with closing(sqlite3.connect(path)) as db:
        return [row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}", params)]


def full_scans(details: list[str]) -> list[str]:
    # "SCAN t" reads a whole table, "SCAN t USING ... INDEX" a whole index: either grows
    # with the backlog. A SEARCH is a range or point lookup.
    return [d for d in details if re.match(r"SCAN (events|inbox_heads)\b", d) or "AUTOMATIC" in d]


async def _build_hot_backlog(path) -> None:
    async with SQLiteStore(path) as store:
        await add_many(store, [ev(n) for n in range(1_000)])
        for _ in range(1_000):
            [claimed] = await store.claim("w", 8, 30)
            await store.complete(claimed.id)
        await add_many(store, [ev(n) for n in range(1_000, 21_000)])


@pytest.fixture(scope="module")
def hot_backlog_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("hot") / "d.db"
    asyncio.run(_build_hot_backlog(path))
    with closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # so that the file alone holds it all
    return path


@pytest.fixture(params=["statistics", "no statistics"])
def hot_backlog(hot_backlog_file, tmp_path, request):
    """20k pending events of one resource behind 1k handled ones, after a restart and
    ANALYZE; or with no statistics at all (as before the first PRAGMA optimize)."""
    path = tmp_path / "d.db"
    shutil.copyfile(hot_backlog_file, path)
    assert analyze(path) > 0  # the planner now has statistics
    if request.param == "no statistics":
        with closing(sqlite3.connect(path)) as db:
            db.execute("DROP TABLE sqlite_stat1")
    return path


async def test_a_claim_at_a_hot_backlog_is_quick_and_in_order(hot_backlog):
    async with SQLiteStore(hot_backlog) as store:
        for n in range(1_000, 1_005):
            start = time.perf_counter()
            [claimed] = await store.claim("w", 8, 30)
            # Generous: about 1 ms here; the claim before the heads took seconds.
            assert time.perf_counter() - start < 1.0
            assert claimed.event_id == f"e{n}"
            assert await store.claim("w", 8, 30) == []  # one at a time per resource
            await store.complete(claimed.id)


async def test_the_claim_is_planned_on_the_heads_index_without_a_full_scan(hot_backlog):
    now = to_text(datetime(2026, 1, 1, tzinfo=UTC))
    claim = plan(hot_backlog, sqlite_inbox.CLAIM, {"owner": "w", "lease": now, "now": now, "limit": 8})
    assert any("inbox_heads_due" in d for d in claim), claim
    assert any(re.match(r"SEARCH events USING INTEGER PRIMARY KEY", d) for d in claim), claim
    promote = plan(hot_backlog, sqlite_inbox.PROMOTE, {"now": now})
    assert any("inbox_heads_due" in d for d in promote), promote
    [_, put_head] = [sql for sql in SQLITE_HEAD_OF.format(resource="?").split(";") if sql.strip()][:2]
    head = plan(hot_backlog, put_head, (HOT,))
    assert any("events_active_resource" in d for d in head), head
    assert any("events_claimed_resource" in d for d in head), head
    assert any(re.match(r"SEARCH events USING INTEGER PRIMARY KEY", d) for d in claim), claim
    complete = plan(hot_backlog, sqlite_inbox.COMPLETE, ("done", now, 1))
    for details in (claim, promote, head, complete):
        assert full_scans(details) == [], details
    # A search of events by status reads every pending event: the old claim's cost.
    assert not [d for d in claim + complete if "events_status" in d], claim + complete


def recomputed_heads(path) -> dict[str, tuple[int, str | None]]:
    """Every head as migration 3 computes them from the events alone."""
    populate = SQLITE_MIGRATIONS[2][2][-1]
    assert populate.strip().startswith("INSERT INTO inbox_heads")
    with closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TEMP TABLE check_heads (resource TEXT PRIMARY KEY, event_id INTEGER, due_at TEXT)")
        db.execute(populate.replace("INSERT INTO inbox_heads", "INSERT INTO temp.check_heads"))
        return {r: (i, d) for r, i, d in db.execute("SELECT * FROM temp.check_heads")}


def stored_heads(path) -> dict[str, tuple[int, str | None]]:
    with closing(sqlite3.connect(path)) as db:
        return {r: (i, d) for r, i, d in db.execute("SELECT resource, event_id, due_at FROM main.inbox_heads")}


async def test_heads_stay_what_the_events_say_through_every_kind_of_change(tmp_path):
    # Random operations of every kind; after each, the maintained heads must equal the
    # heads computed afresh (NULL, due now, is also what a due time in the past means).
    path = tmp_path / "d.db"
    clock = FakeClock()
    rng = random.Random(20261204)
    resources = [f"r:{i}" for i in range(5)]
    n = 0

    def normal(heads, now):
        return {r: (i, None if d is not None and d <= now else d) for r, (i, d) in heads.items()}

    async with SQLiteStore(path, clock=clock) as store:
        claimed: list[int] = []
        for step in range(600):
            op = rng.choice(
                [
                    "add",
                    "add",
                    "claim",
                    "complete",
                    "retry",
                    "dead",
                    "replay",
                    "release",
                    "replay_dead",
                    "purge",
                    "tick",
                    "batch",
                    "by hand",
                ]
            )
            if op == "add":
                n += 1
                await store.add_event(ev(n, rng.choice(resources)))
            elif op == "claim":
                claimed += [e.id for e in await store.claim(rng.choice(["w1", "w2"]), rng.randint(1, 3), 20)]
            elif op in ("complete", "retry", "dead") and claimed:
                event_id = claimed.pop(rng.randrange(len(claimed)))
                if op == "complete":
                    await store.complete(event_id, rng.choice(["done", "ignored"]))
                else:
                    await store.fail(event_id, "boom", clock.now + timedelta(seconds=5) if op == "retry" else None)
            elif op == "batch" and claimed:
                done = [(claimed.pop(), "done") for _ in range(min(len(claimed), 2))]
                claimed += [e.id for e in await store.complete_and_claim(done, "w1", 2, 20)]
            elif op == "replay":
                await store.replay(rng.randint(1, max(n, 1)))
            elif op == "release":
                await store.release_claims(rng.choice([None, "w1"]))
            elif op == "replay_dead":
                await store.replay_dead()
            elif op == "purge":
                await store.purge_dead()
                await store.purge_done(clock.now)
            elif op == "tick":
                clock.advance(rng.choice([1, 5, 25]))
            elif op == "by hand":
                # Another writer (an operator's sqlite3 session, a daemon of the last
                # release while the CLI migrated the file): the triggers follow it too.
                row_id = rng.randint(1, max(n, 1))
                lease = to_text(clock.now + timedelta(seconds=rng.choice([-5, 15])))
                with closing(sqlite3.connect(path)) as db, db:
                    db.execute(
                        rng.choice(
                            [
                                "UPDATE events SET status = 'pending', owner = NULL, lease_expires_at = NULL WHERE id = :id",
                                "UPDATE events SET status = 'dead', owner = NULL, lease_expires_at = NULL WHERE id = :id",
                                "UPDATE events SET resource = 'r:moved' WHERE id = :id",
                                "DELETE FROM events WHERE id = :id",
                                # Back under an id deleted before (older than the resource's head), or claimed.
                                "INSERT OR IGNORE INTO events (id, source, event_id, type, resource, payload, received_at, updated_at)"
                                " SELECT :id, 'hand', :id, 't', :r, '{}', :lease, :lease"
                                " WHERE NOT EXISTS (SELECT 1 FROM events WHERE id = :id)",
                                "INSERT OR IGNORE INTO events (source, event_id, type, resource, payload, status, owner,"
                                " lease_expires_at, received_at, updated_at)"
                                " VALUES ('hand', 'c' || :id || :lease, 't', :r, '{}', 'claimed', 'hand', :lease, :lease, :lease)",
                            ]
                        ),
                        {"id": row_id, "r": rng.choice(resources), "lease": lease},
                    )
            now = to_text(clock.now)
            assert normal(stored_heads(path), now) == normal(recomputed_heads(path), now), (step, op)


@pytest.fixture(params=["sqlite", "postgresql"])
async def any_store(request, tmp_path):
    if request.param == "sqlite":
        async with SQLiteStore(tmp_path / "d.db") as store:
            yield store
        return
    base, schema = postgres.server_url(), postgres.new_schema()
    try:
        async with PostgresStore(postgres.with_schema(base, schema)) as store:
            yield store
    finally:
        await postgres.drop_schema(base, schema)


async def test_complete_and_claim_completes_first_then_claims_the_successor(any_store):
    store = any_store
    first = await store.add_event(ev(1))
    second = await store.add_event(ev(2))
    other = await store.add_event(ev(3, "r:other"))
    assert [e.id for e in await store.complete_and_claim([], "w", 1, 30)] == [first.id]
    got = await store.complete_and_claim([(first.id, "ignored")], "w", 8, 30)
    assert [e.id for e in got] == [second.id, other.id]
    assert (await store.get_event(first.id)).status == "ignored"
    with pytest.raises(ValueError, match="done"):
        await store.complete_and_claim([(second.id, "done"), (other.id, "dead")], "w", 8, 30)
    # Refused whole: nothing completed.
    assert (await store.get_event(second.id)).status == "claimed"
    await store.complete_and_claim([(second.id, "done"), (other.id, "done")], "w", 0, 30)
    assert (await store.counts())["done"] == 2


async def test_a_version_2_inbox_with_events_in_every_state_migrates_and_keeps_its_order(tmp_path):
    path = tmp_path / "d.db"
    clock = FakeClock()
    async with SQLiteStore(path, migrations=SQLITE_MIGRATIONS[:2]):
        pass
    t = to_text(clock.now)
    lease, retry = to_text(clock.now + timedelta(seconds=30)), to_text(clock.now + timedelta(seconds=10))
    rows = [
        # id, resource, status, next_attempt_at, owner, lease_expires_at, attempts
        (1, "r:A", "done", None, None, None, 1),
        (2, "r:A", "claimed", None, "old", lease, 1),  # in flight when the old release stopped
        (3, "r:A", "pending", None, None, None, 0),
        (4, "r:B", "pending", retry, None, None, 1),  # waiting for its retry
        (5, "r:B", "pending", None, None, None, 0),
        (6, "r:C", "dead", None, None, None, 3),
        (7, "r:C", "pending", None, None, None, 0),
        (8, "r:D", "pending", None, None, None, 0),
    ]
    with closing(sqlite3.connect(path)) as db, db:
        db.executemany(
            "INSERT INTO events (id, source, event_id, type, resource, payload, status, next_attempt_at, owner,"
            " lease_expires_at, attempts, received_at, updated_at)"
            " VALUES (?, 'pagerduty', 'e' || ?, 't', ?, '{}', ?, ?, ?, ?, ?, ?, ?)",
            [(i, i, r, s, n, o, le, a, t, t) for i, r, s, n, o, le, a in rows],
        )

    async with SQLiteStore(path, clock=clock, migrations=SQLITE_MIGRATIONS[:3]) as store:
        assert await store.schema_version() == 3
        assert set(stored_heads(path)) == {"r:A", "r:B", "r:C", "r:D"}
        # r:A's head is in flight, r:B's waits for its retry.
        assert [e.id for e in await store.claim("w", 10, 300)] == [7, 8]
        clock.advance(10)
        assert [e.id for e in await store.claim("w", 10, 300)] == [4]
        clock.advance(20)
        [taken] = await store.claim("w", 10, 300)  # the old process's lease expired
        assert (taken.id, taken.attempts) == (2, 2)
        await store.complete(2)
        assert [e.id for e in await store.claim("w", 10, 300)] == [3]
        await store.complete_and_claim([(4, "done"), (3, "done")], "w", 0, 30)
        assert [e.id for e in await store.claim("w", 10, 300)] == [5]
        assert await store.replay(6)
        assert [e.id for e in await store.claim("w", 10, 300)] == []  # 7 of r:C is in flight
        await store.complete(7)
        assert [e.id for e in await store.claim("w", 10, 300)] == [6]
