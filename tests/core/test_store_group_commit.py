"""The SQLite store's group commit: concurrent add_event calls share one transaction.

Each caller still gets its own answer (its row, or None for a duplicate), only once its
row is committed; a failed batch fails every caller in it and writes nothing.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from contextlib import closing
from datetime import datetime

import pytest

from dutybridge.events import Event
from dutybridge.store import sqlite as sqlite_store
from dutybridge.store.sqlite import SQLiteStore


def ev(event_id: str, *, n: int = 0, source: str = "pagerduty", **kw) -> Event:
    return Event(
        source=source,
        type="incident.triggered",
        event_id=event_id,
        resource=f"pagerduty:incident:P{n}",
        payload={"n": n},
        **kw,
    )


def rows(path) -> dict[str, tuple[int, str]]:
    """event_id -> (id, payload), read through a connection of its own."""
    with closing(sqlite3.connect(path)) as db:
        return {r[0]: (r[1], r[2]) for r in db.execute("SELECT event_id, id, payload FROM events")}


class Batches:
    """Records the event ids of each group commit; ``hold()`` makes the next commit wait
    on the connection's thread until ``release()``, so that callers queue behind it."""

    def __init__(self) -> None:
        self.ids: list[list[str]] = []
        self._gate: threading.Event | None = None
        self._entered = threading.Event()

    def hold(self) -> None:
        self._gate = threading.Event()
        self._entered.clear()

    async def held(self) -> None:
        """Wait until the held commit has started (its rows are taken, it waits)."""
        assert await asyncio.to_thread(self._entered.wait, 10), "the held commit never started"

    def release(self) -> None:
        if self._gate is not None:
            self._gate.set()

    def insert(self, real, conn, batch):
        self.ids.append([row[1] for row in batch])
        gate = self._gate
        if gate is not None and not gate.is_set():
            self._entered.set()
            assert gate.wait(10), "the held commit was never released"
            self._gate = None
        return real(conn, batch)


@pytest.fixture
def batches(monkeypatch):
    spy = Batches()
    real = sqlite_store._insert_events
    monkeypatch.setattr(sqlite_store, "_insert_events", lambda conn, batch: spy.insert(real, conn, batch))
    yield spy
    spy.release()


@pytest.fixture
async def store(tmp_path):
    s = SQLiteStore(tmp_path / "d.db")
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def queued(store: SQLiteStore, n: int) -> None:
    """Let the loop run until ``n`` add_event calls wait in the queue."""
    for _ in range(1000):
        if len(store._pending) >= n:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{len(store._pending)} events queued, expected {n}")


async def test_a_lone_event_is_committed_at_once_in_its_own_batch(store, batches):
    for i in range(3):
        assert await store.add_event(ev(f"e{i}")) is not None
    assert batches.ids == [["e0"], ["e1"], ["e2"]]


async def test_events_queued_during_a_commit_share_the_next_one(store, batches):
    batches.hold()
    first = asyncio.create_task(store.add_event(ev("first")))
    await batches.held()
    rest = [asyncio.create_task(store.add_event(ev(f"e{i}", n=i))) for i in range(5)]
    await queued(store, 5)
    batches.release()
    stored = [await first, *await asyncio.gather(*rest)]
    assert batches.ids == [["first"], ["e0", "e1", "e2", "e3", "e4"]]
    assert [s.event_id for s in stored] == ["first", "e0", "e1", "e2", "e3", "e4"]
    assert [s.id for s in stored] == sorted(s.id for s in stored)  # ids follow arrival
    for s in stored:
        assert await store.get_event(s.id) == s  # each caller got its own row, as stored


async def test_a_batch_is_bounded(store, batches, monkeypatch):
    monkeypatch.setattr(sqlite_store, "MAX_BATCH", 2)
    results = await asyncio.gather(*(store.add_event(ev(f"e{i}")) for i in range(5)))
    assert all(r is not None for r in results)
    assert batches.ids == [["e0", "e1"], ["e2", "e3"], ["e4"]]


async def test_duplicates_within_one_batch_store_the_first_and_answer_none(store, batches):
    await store.add_event(ev("old", n=9))
    results = await asyncio.gather(
        store.add_event(ev("a", n=1)),
        store.add_event(ev("a", n=2)),  # the same event delivered twice, in one batch
        store.add_event(ev("b", n=3)),
        store.add_event(ev("old", n=4)),  # a duplicate of a stored event
        store.add_event(ev("a", n=5, source="servicenow")),  # unique per source only
        store.add_event(ev("b", n=6)),
    )
    assert batches.ids[-1] == ["a", "a", "b", "old", "a", "b"]
    a, a_again, b, old, sn_a, b_again = results
    assert a_again is None and old is None and b_again is None
    assert (a.payload, b.payload, sn_a.payload) == ({"n": 1}, {"n": 3}, {"n": 5})
    assert (a.source, sn_a.source) == ("pagerduty", "servicenow")
    assert len({a.id, b.id, sn_a.id}) == 3
    assert await store.counts() == {"pending": 4, "claimed": 0, "done": 0, "dead": 0, "ignored": 0}
    assert (await store.get_event(a.id)).payload == {"n": 1}


async def test_a_failing_batch_fails_every_caller_and_writes_nothing(store, tmp_path, batches):
    with closing(sqlite3.connect(tmp_path / "d.db")) as db:
        db.execute("""CREATE TRIGGER refuse BEFORE INSERT ON events WHEN NEW.event_id = 'poison'
                      BEGIN SELECT RAISE(ABORT, 'poison refused'); END""")
        db.commit()
    results = await asyncio.gather(
        store.add_event(ev("before")),  # inserted ahead of the failing row, then rolled back
        store.add_event(ev("poison")),
        store.add_event(ev("after")),
        return_exceptions=True,
    )
    assert batches.ids == [["before", "poison", "after"]]
    assert all(isinstance(r, sqlite3.IntegrityError) and "poison refused" in str(r) for r in results)
    assert rows(tmp_path / "d.db") == {}
    assert (await store.counts())["pending"] == 0
    # Nothing left open on the shared connection: the next events are written, and the
    # retried ones are new, not duplicates.
    assert await store.add_event(ev("before")) is not None
    assert await store.claim("w", 5, 30) != []
    assert set(rows(tmp_path / "d.db")) == {"before"}


async def test_an_event_that_cannot_be_stored_fails_only_its_caller(store, batches):
    results = await asyncio.gather(
        store.add_event(ev("ok-1")),
        store.add_event(ev("naive", received_at=datetime(2026, 1, 1, 12, 0))),
        store.add_event(
            Event(source="pagerduty", type="t", event_id="not-json", resource="r", payload={"x": object()})
        ),
        store.add_event(ev("ok-2")),
        return_exceptions=True,
    )
    ok1, naive, not_json, ok2 = results
    assert isinstance(naive, ValueError) and isinstance(not_json, TypeError)
    assert ok1.event_id == "ok-1" and ok2.event_id == "ok-2"
    assert batches.ids == [["ok-1", "ok-2"]]


async def test_a_cancelled_caller_does_not_break_the_batch(store, tmp_path, batches):
    batches.hold()
    in_flight = asyncio.create_task(store.add_event(ev("in-flight")))
    await batches.held()
    waiting = {name: asyncio.create_task(store.add_event(ev(name))) for name in ("w1", "w2", "w3")}
    await queued(store, 3)
    # One caller gives up while its commit runs, another while it waits for its batch.
    in_flight.cancel()
    waiting["w2"].cancel()
    batches.release()
    assert (await waiting["w1"]).event_id == "w1"
    assert (await waiting["w3"]).event_id == "w3"
    for task in (in_flight, waiting["w2"]):
        with pytest.raises(asyncio.CancelledError):
            await task
    # The commit in flight went through (its caller was never told, so a retry of it is a
    # duplicate); the event not yet taken was dropped before its batch.
    assert batches.ids == [["in-flight"], ["w1", "w3"]]
    assert set(rows(tmp_path / "d.db")) == {"in-flight", "w1", "w3"}
    assert await store.add_event(ev("in-flight")) is None
    assert await store.add_event(ev("w2")) is not None


async def test_a_returned_event_is_committed_for_a_new_connection(store, tmp_path):
    results = await asyncio.gather(*(store.add_event(ev(f"e{i}", n=i)) for i in range(20)))
    # Read from a connection of its own, while the store is still open: only committed
    # rows are visible there.
    on_disk = rows(tmp_path / "d.db")
    for stored in results:
        assert on_disk[stored.event_id] == (stored.id, f'{{"n":{stored.payload["n"]}}}')


async def test_close_commits_what_is_queued(tmp_path, batches):
    store = SQLiteStore(tmp_path / "d.db")
    await store.open()
    batches.hold()
    tasks = [asyncio.create_task(store.add_event(ev("e0")))]
    await batches.held()
    tasks += [asyncio.create_task(store.add_event(ev(f"e{i}"))) for i in range(1, 10)]
    await queued(store, 9)
    closing = asyncio.create_task(store.close())
    batches.release()
    await closing
    assert [(await t).event_id for t in tasks] == [f"e{i}" for i in range(10)]
    assert len(rows(tmp_path / "d.db")) == 10
    # Once closed, an event is refused, not lost quietly.
    with pytest.raises(RuntimeError, match="not open"):
        await store.add_event(ev("late"))


async def test_unopened_store_refuses_every_caller(tmp_path):
    store = SQLiteStore(tmp_path / "d.db")
    results = await asyncio.gather(*(store.add_event(ev(f"e{i}")) for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) and "not open" in str(r) for r in results)


async def test_other_transactions_interleave_with_group_commits(store):
    async def add(i: int):
        return await store.add_event(ev(f"e{i}", n=i % 4))

    async def work():
        done = 0
        while done < 40:
            for claimed in await store.claim("w", 8, 30):
                await store.complete(claimed.id)
                done += 1
            await asyncio.sleep(0)
        return done

    added, done = await asyncio.gather(asyncio.gather(*(add(i) for i in range(40))), work())
    assert all(a is not None for a in added) and done == 40
    assert (await store.counts())["done"] == 40


# -- kill -9 ---------------------------------------------------------------------

_WRITER = """
import asyncio, sys
from dutybridge.events import Event
from dutybridge.store.sqlite import SQLiteStore

async def main():
    store = SQLiteStore(sys.argv[1])
    await store.open()
    async def add(i):
        stored = await store.add_event(Event(source="pagerduty", type="incident.triggered",
                                             event_id=f"e{i}", resource=f"r:{i % 7}", payload={"i": i}))
        print("ACK", stored.id, stored.event_id, flush=True)  # acknowledged
    i = 0
    while True:  # until killed
        await asyncio.gather(*(add(i + k) for k in range(16)))
        i += 16

asyncio.run(main())
"""


@pytest.mark.slow
def test_every_acknowledged_event_survives_kill_9(tmp_path):
    path = tmp_path / "d.db"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    acknowledged = []
    try:
        for line in proc.stdout:
            if line.startswith("ACK "):
                acknowledged.append(tuple(line.split()[1:]))
            if len(acknowledged) >= 300:
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        proc.stdout.close()
    assert len(acknowledged) >= 300, f"the writer stopped early (exit {proc.returncode})"
    on_disk = rows(path)
    for row_id, event_id in acknowledged:
        assert on_disk[event_id][0] == int(row_id)
