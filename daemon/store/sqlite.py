"""The SQLite store: inbox, dead letters, links and watermarks in one WAL-mode file, which
other processes (the ``dutybridge events`` CLI) may read while the daemon writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, get_args

import aiosqlite
import structlog

from ..events import EncodedEvent, Event, EventStatus, StoredEvent, utcnow
from . import sqlite_inbox as inbox
from .base import Store
from .migrations import SCHEMA_MIGRATIONS_SQLITE, SQLITE_MIGRATIONS, Migration
from .sqlite_links import SQLiteLinks, fetch
from .sqlite_time import from_text, required_time, to_text

log = structlog.get_logger("dutybridge.store")

STATUSES: tuple[str, ...] = get_args(EventStatus)
MEMORY = ":memory:"
#: The most events one group commit writes; the rest wait for the next one. Bounds the
#: time the write lock is held (and a claim waits) under a burst.
MAX_BATCH = 256

_Row = inbox.Row


def _event(row: sqlite3.Row) -> StoredEvent:
    return StoredEvent(
        source=row["source"],
        type=row["type"],
        event_id=row["event_id"],
        resource=row["resource"],
        payload=json.loads(row["payload"]),
        received_at=required_time(row["received_at"]),
        id=row["id"],
        status=row["status"],
        attempts=row["attempts"],
        next_attempt_at=from_text(row["next_attempt_at"]),
        last_error=row["last_error"],
        updated_at=from_text(row["updated_at"]),
        owner=row["owner"],
        lease_expires_at=from_text(row["lease_expires_at"]),
    )


def _insert_events(conn: sqlite3.Connection, rows: list[_Row]) -> list[int | None]:
    """Insert ``rows`` in one transaction (one commit, one fsync); on the connection's thread.

    Returns each row's id, or None when it was a duplicate: of a stored event, or of an
    earlier row of ``rows`` (that one is stored). All or nothing: on any error the
    transaction is rolled back and the error raised.
    """
    conn.execute("PRAGMA synchronous = FULL")
    try:
        return inbox.insert_events(conn, rows)
    finally:
        conn.execute("PRAGMA synchronous = NORMAL")


def _rowcount(conn: sqlite3.Connection, sql: str, params: Any) -> int:
    return conn.execute(sql, params).rowcount


def _rows(conn: sqlite3.Connection, sql: str, params: Any) -> list[sqlite3.Row]:
    return conn.execute(sql, params).fetchall()


def _stored(row: _Row, event: Event, row_id: int) -> StoredEvent:
    """The event as ``_insert_events`` stored it: what ``get_event`` would read back."""
    if isinstance(event, EncodedEvent) and row[4] is event.payload_text:
        # Its producer decoded ``payload`` from the text just written and handed it over:
        # decoding that text again would only make an equal copy.
        payload = event.payload
    else:
        # A copy: the caller's dict may change later, and JSON normalises (tuples, keys).
        payload = json.loads(row[4])
    return StoredEvent(
        source=event.source,
        type=event.type,
        event_id=event.event_id,
        resource=event.resource,
        payload=payload,
        received_at=required_time(row[5]),
        id=row_id,
        status="pending",
        attempts=0,
        updated_at=from_text(row[6]),
    )


class SQLiteStore(SQLiteLinks, Store):
    """``Store`` on one SQLite database file (or ``:memory:``, for tests).

    ``clock`` returns the current time (timezone-aware) for leases, due times and
    ``updated_at``; tests pass a fake one. ``migrations`` defaults to every known
    step; tests pass a prefix to build an older schema.

    One connection serves the whole daemon's writes; an asyncio lock makes each method
    one transaction on it. Counts and listings read on a second, query-only connection.
    Other processes (the ``dutybridge events`` CLI) may open the same file at the same
    time: WAL lets them read while the daemon writes.

    ``add_event`` commits in groups: the events that arrive while one commit is in flight
    are written together by the next one, in one transaction and one fsync, on the
    connection's thread in one call. A lone event is committed at once; each caller still
    returns only once its own row is committed.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], datetime] | None = None,
        busy_timeout: float = 10.0,
        migrations: Sequence[Migration] | None = None,
    ) -> None:
        self.path = str(path)
        self._clock = clock or utcnow
        self._busy_timeout_ms = int(busy_timeout * 1000)
        self._migrations = list(SQLITE_MIGRATIONS if migrations is None else migrations)
        versions = [m[0] for m in self._migrations]
        if versions != sorted(set(versions)) or (versions and versions[0] < 1):
            raise ValueError(f"migration versions must be positive and strictly increasing: {versions}")
        self._db: aiosqlite.Connection | None = None
        # One connection and one queue for inserts, claims and every write. A connection of
        # its own for inserts was measured and lost: WAL lets one connection write at a
        # time, the other sleeps in SQLite's busy handler (1, 2, 5 ms...), and insert p99
        # and the worker's drain rate got worse (bench/RESULTS.md). A claim is a few
        # index lookups, so an insert queued behind one waits well under a millisecond.
        self._lock = asyncio.Lock()
        # Reads that grow with the table (counts for /metrics, listings for the CLI) run
        # on a connection of their own: WAL lets it read while the other writes, so an
        # insert never queues behind a count of a million rows (0.1-0.2 s).
        self._reader: aiosqlite.Connection | None = None
        self._reader_lock = asyncio.Lock()
        # Group commit: add_event() queues (row, event, future); one writer task at a
        # time drains the queue a batch per transaction.
        self._pending: list[tuple[_Row, Event, asyncio.Future[StoredEvent | None]]] = []
        self._writer: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r})"

    # -- lifecycle ---------------------------------------------------------------
    async def open(self) -> None:
        if self._db is not None:
            return
        if self.path != MEMORY:
            self._prepare_file(Path(self.path))
        db = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            db.row_factory = sqlite3.Row
            await db.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
            rows = await fetch(db, "PRAGMA journal_mode = WAL")
            mode = rows[0][0] if rows else "?"
            if mode != "wal" and self.path != MEMORY:
                log.warning(
                    "store_not_in_wal_mode",
                    path=self.path,
                    journal_mode=mode,
                    hint="the file system may not support WAL; readers will block writers",
                )
            # NORMAL for everything but the inbox: in WAL mode a NORMAL commit survives a
            # crash of the process (kill -9) and may be lost only on power loss, where
            # losing a "done" mark or a link's state means an idempotent redo. The
            # inbox batch switches to FULL for its own commit (an event answered 202
            # must survive power loss), and that fsync also persists every earlier
            # commit in the WAL. One fsync per batch instead of one per write.
            await db.execute("PRAGMA synchronous = NORMAL")
            self._db = db
            await self._migrate()
            if self.path != MEMORY:  # a second connection to :memory: is another database
                reader = await aiosqlite.connect(self.path, isolation_level=None)
                reader.row_factory = sqlite3.Row
                await reader.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
                await reader.execute("PRAGMA query_only = ON")
                self._reader = reader
        except BaseException:
            self._db = None
            await db.close()
            raise

    @staticmethod
    def _prepare_file(path: Path) -> None:
        if not path.parent.is_dir():
            raise FileNotFoundError(f"cannot create the store's database {path}: folder {path.parent} does not exist")
        if not path.exists():
            # Created by us with 0600 so that incident data is not world-readable
            # under a permissive umask; SQLite gives the -wal/-shm files the same mode.
            fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)

    async def close(self) -> None:
        if self._db is None:
            return
        writer = self._writer
        if writer is not None:
            # Let queued events be committed (and answered) before the connection goes;
            # asyncio.wait neither raises the writer's errors nor cancels it.
            await asyncio.wait({writer})
        db, self._db = self._db, None
        if db is None:
            return
        reader, self._reader = self._reader, None
        if reader is not None:
            async with self._reader_lock:
                await reader.close()
        async with self._lock:
            with contextlib.suppress(sqlite3.Error):
                await db.execute("PRAGMA optimize")
            await db.close()

    async def ping(self) -> bool:
        if self._db is None:
            return False
        try:
            async with self._transaction(write=False) as db:
                rows = await fetch(db, "SELECT 1")
            return bool(rows) and rows[0][0] == 1
        except (sqlite3.Error, RuntimeError):
            return False

    async def schema_version(self) -> int:
        async with self._transaction(write=False) as db:
            rows = await fetch(db, "SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
        return int(rows[0][0])

    async def _migrate(self) -> None:
        known = self._migrations[-1][0] if self._migrations else 0
        applied = []
        async with self._transaction() as db:
            await db.execute(SCHEMA_MIGRATIONS_SQLITE)
            rows = await fetch(db, "SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
            current = int(rows[0][0])
            if current > known:
                raise RuntimeError(
                    f"the store {self.path} has schema version {current}, newer than this "
                    f"dutybridge knows ({known}): it was written by a newer release; upgrade dutybridge"
                )
            now = to_text(self._clock())
            for version, description, statements in self._migrations:
                if version <= current:
                    continue
                for statement in statements:
                    await db.execute(statement)
                await db.execute(
                    "INSERT INTO schema_migrations (version, description, applied_at) VALUES (?, ?, ?)",
                    (version, description, now),
                )
                applied.append(version)
        if applied:
            log.info("store_migrated", path=self.path, from_version=current, to_version=applied[-1])

    @contextlib.asynccontextmanager
    async def _transaction(self, write: bool = True) -> AsyncIterator[aiosqlite.Connection]:
        """One transaction on the shared connection; the lock keeps others out of it.

        Writes take the write lock at BEGIN (IMMEDIATE): a deferred transaction that
        later upgrades gets SQLITE_BUSY at once instead of waiting busy_timeout.
        """
        async with self._lock:
            db = self._db
            if db is None:
                raise RuntimeError("the store is not open (await store.open() first)")
            if not write:
                yield db
                return
            try:
                await db.execute("BEGIN IMMEDIATE")
                yield db
                await db.execute("COMMIT")
            except BaseException:
                # Also on cancellation, even during BEGIN (it still runs on the
                # connection's thread): the connection is shared, and a transaction
                # left open would swallow every later caller's writes.
                with contextlib.suppress(sqlite3.Error):
                    await db.execute("ROLLBACK")
                raise

    @contextlib.asynccontextmanager
    async def _read(self) -> AsyncIterator[aiosqlite.Connection]:
        """The reader connection (the shared one for ``:memory:``), for one read."""
        if self._reader is None:
            async with self._transaction(write=False) as db:
                yield db
            return
        async with self._reader_lock:
            reader = self._reader
            if reader is None:
                raise RuntimeError("the store is not open (await store.open() first)")
            yield reader

    def _now(self) -> str:
        return to_text(self._clock())

    # -- inbox -------------------------------------------------------------------
    async def add_event(self, event: Event) -> StoredEvent | None:
        """Store ``event``, committing in groups: the events that arrive while one commit is in
        flight are written together by the next one, in one transaction and one fsync, on the
        connection's thread in one call. A lone event is committed at once; each caller still
        returns only once its own row is committed.
        """
        # Everything that can fail for this event alone (a naive datetime, a payload
        # that is not JSON) fails here, in its caller, before it can spoil a batch.
        received = to_text(event.received_at)
        row: _Row = (
            event.source,
            event.event_id,
            event.type,
            event.resource,
            event.payload_json(),
            received,
            self._now(),
        )
        future: asyncio.Future[StoredEvent | None] = asyncio.get_running_loop().create_future()
        self._pending.append((row, event, future))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_events(), name=f"{self!r} writer")
        # A cancelled caller cancels only its own future: the writer skips it if its
        # batch has not started, else commits it anyway (nobody was told 202, and a
        # sender's retry is then a duplicate).
        return await future

    async def _write_events(self) -> None:
        """The writer: commit what is queued, a batch per transaction, until nothing is.

        The first event is written at once; the events queued while a commit is in
        flight make the next batch. Each caller gets its row (or None for a duplicate,
        also of an event earlier in the same batch) or the batch's error.
        """
        batch: list[tuple[_Row, Event, asyncio.Future[StoredEvent | None]]] = []
        try:
            while self._pending:
                batch = [item for item in self._pending[:MAX_BATCH] if not item[2].done()]
                del self._pending[:MAX_BATCH]
                if not batch:
                    continue
                try:
                    async with self._lock:
                        db = self._db
                        if db is None:
                            raise RuntimeError("the store is not open (await store.open() first)")
                        ids = await self._in_thread(db, _insert_events, [item[0] for item in batch])
                except Exception as exc:
                    for _, _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                else:
                    for (row, event, future), row_id in zip(batch, ids, strict=False):
                        if not future.done():
                            future.set_result(None if row_id is None else _stored(row, event, row_id))
                batch = []
        except BaseException:
            # The writer itself was cancelled (the loop is shutting down): no caller may
            # wait for ever. Whether the batch in flight committed is unknown to them, so
            # it is an error, and the sender's retry settles it (a duplicate if it did).
            error = RuntimeError("the store's writer stopped before the event was known to be committed")
            for _, _, future in [*batch, *self._pending]:
                if not future.done():
                    future.set_exception(error)
            self._pending.clear()
            raise
        finally:
            self._writer = None

    @staticmethod
    async def _in_thread(db: aiosqlite.Connection, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(sqlite3_connection, *args)`` on the connection's own thread, in one hop.

        aiosqlite runs each statement as one job on its thread (a thread hop, and a
        wait for the GIL, per statement); a whole transaction as one job costs one.
        Jobs run in order, so this never interleaves with another statement.
        aiosqlite has no public call for it: ``_execute`` (queue a job, await its
        result) and ``_conn`` (the sqlite3 connection) are what its own methods use,
        and the store's tests exercise both on every add_event.
        """
        return await db._execute(lambda: fn(db._conn, *args))

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(sqlite3_connection, *args)`` on the connection's thread, under the lock."""
        async with self._lock:
            db = self._db
            if db is None:
                raise RuntimeError("the store is not open (await store.open() first)")
            return await self._in_thread(db, fn, *args)

    async def claim(self, owner: str, limit: int, lease_seconds: float) -> list[StoredEvent]:
        return await self.complete_and_claim((), owner, limit, lease_seconds)

    async def complete_and_claim(
        self,
        completions: Sequence[tuple[int, EventStatus]],
        owner: str,
        limit: int,
        lease_seconds: float,
    ) -> list[StoredEvent]:
        completions = list(completions)
        for _, status in completions:
            if status not in ("done", "ignored"):
                raise ValueError(f"complete() takes status 'done' or 'ignored', not {status!r}")
        if not completions and limit <= 0:
            return []
        now_dt = self._clock()
        now = to_text(now_dt)
        lease = to_text(now_dt + timedelta(seconds=lease_seconds))
        rows = await self._run(inbox.complete_and_claim, completions, owner, max(limit, 0), now, lease)
        # RETURNING gives no order guarantee.
        return sorted((_event(r) for r in rows), key=lambda e: e.id)

    async def renew(self, event_ids: Sequence[int], owner: str, lease_seconds: float) -> list[int]:
        if not event_ids:
            return []
        now_dt = self._clock()
        lease, now = to_text(now_dt + timedelta(seconds=lease_seconds)), to_text(now_dt)
        marks = ",".join("?" * len(event_ids))
        rows = await self._write_rows(
            f"UPDATE events NOT INDEXED SET lease_expires_at = ?, updated_at = ? "
            f"WHERE id IN ({marks}) AND status = 'claimed' AND owner = ? RETURNING id",
            (lease, now, *event_ids, owner),
        )
        return sorted(r[0] for r in rows)

    async def release_claims(self, owner: str | None = None) -> int:
        sql = """
            UPDATE events SET status = 'pending', owner = NULL, lease_expires_at = NULL,
                              updated_at = ?
            WHERE status = 'claimed'
        """
        params: tuple[Any, ...] = (self._now(),)
        if owner is not None:
            sql += " AND owner = ?"
            params += (owner,)
        return await self._write_count(sql, params)

    async def complete(self, event_id: int, status: EventStatus = "done") -> None:
        await self.complete_and_claim([(event_id, status)], "", 0, 0)

    async def fail(self, event_id: int, error: str, retry_at: datetime | None) -> None:
        status = "dead" if retry_at is None else "pending"
        await self._write_count(
            """
            UPDATE events NOT INDEXED SET status = ?, next_attempt_at = ?, last_error = ?, owner = NULL,
                              lease_expires_at = NULL, updated_at = ?
            WHERE id = ? AND status = 'claimed'
            """,
            (status, None if retry_at is None else to_text(retry_at), error, self._now(), event_id),
        )

    async def get_event(self, event_id: int) -> StoredEvent | None:
        async with self._transaction(write=False) as db:
            rows = await fetch(db, "SELECT * FROM events WHERE id = ?", (event_id,))
        return _event(rows[0]) if rows else None

    async def list_events(
        self, status: EventStatus | None = None, limit: int = 50, source: str | None = None
    ) -> list[StoredEvent]:
        if status is not None and status not in STATUSES:
            raise ValueError(f"unknown event status {status!r} (one of: {', '.join(STATUSES)})")
        where: list[str] = []
        params: list[object] = []
        if status is not None:
            where.append("status = ?")
            params.append(status)
        if source is not None:
            where.append("source = ?")
            params.append(source)
        sql = "SELECT * FROM events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ?"
        params.append(max(0, limit))
        async with self._read() as db:
            rows = await fetch(db, sql, params)
        return [_event(r) for r in rows]

    async def replay(self, event_id: int) -> bool:
        changed = await self._write_count(
            """
            UPDATE events NOT INDEXED SET status = 'pending', attempts = 0, next_attempt_at = NULL,
                              owner = NULL, lease_expires_at = NULL, updated_at = ?
            WHERE id = ? AND status IN ('dead', 'done', 'ignored')
            """,
            (self._now(), event_id),
        )
        return changed > 0

    async def replay_dead(self) -> int:
        return await self._write_count(
            """
            UPDATE events SET status = 'pending', attempts = 0, next_attempt_at = NULL,
                              owner = NULL, lease_expires_at = NULL, updated_at = ?
            WHERE status = 'dead'
            """,
            (self._now(),),
        )

    async def purge_dead(self) -> int:
        return await self._write_count("DELETE FROM events WHERE status = 'dead'", ())

    async def counts(self) -> dict[str, int]:
        async with self._read() as db:
            rows = await fetch(db, "SELECT status, COUNT(*) FROM events GROUP BY status")
        out = dict.fromkeys(STATUSES, 0)
        out.update({r[0]: r[1] for r in rows})
        return out

    async def purge_done(self, older_than: datetime) -> int:
        return await self._write_count(
            "DELETE FROM events WHERE status IN ('done', 'ignored') AND updated_at < ?",
            (to_text(older_than),),
        )

    async def _write_count(self, sql: str, params: Any) -> int:
        """``sql`` in one write transaction, in one hop; the rows it changed."""
        count: int = await self._run(inbox.transaction, _rowcount, sql, params)
        return count

    async def _write_rows(self, sql: str, params: Any) -> list[sqlite3.Row]:
        """``sql`` (a write with RETURNING) in one write transaction, in one hop; its rows."""
        rows: list[sqlite3.Row] = await self._run(inbox.transaction, _rows, sql, params)
        return rows
