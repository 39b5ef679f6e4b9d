"""The PostgreSQL store: the ``Store`` contract on asyncpg, for several daemon instances
sharing one inbox, one set of links and watermarks (``shared = True``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

import asyncpg
import structlog

from ..events import EncodedEvent, Event, EventStatus, StoredEvent, utcnow
from . import postgres_sql as sql
from .base import Link, LinkConflictError, Store
from .migrations import POSTGRES_MIGRATIONS, SCHEMA_MIGRATIONS_POSTGRES, Migration
from .postgres_url import split_url

log = structlog.get_logger("dutybridge.store")

T = TypeVar("T")
STATUSES = ("pending", "claimed", "done", "dead", "ignored")
LINK_STATUSES = ("linked", "unlinked")
MAX_BATCH = 256
#: Any constant: the key of the advisory lock that lets one instance migrate at a time.
MIGRATION_LOCK = 0x64757479  # "duty"
#: Attempts of a transaction that PostgreSQL aborted to break a deadlock.
DEADLOCK_RETRIES = 5


def _aware(dt: datetime) -> datetime:
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"timezone-aware datetime required, got naive {dt.isoformat()}")
    return dt


def _event(row: asyncpg.Record) -> StoredEvent:
    return StoredEvent(
        source=row["source"],
        type=row["type"],
        event_id=row["event_id"],
        resource=row["resource"],
        payload=json.loads(row["payload"]),
        received_at=row["received_at"],
        id=row["id"],
        status=row["status"],
        attempts=row["attempts"],
        next_attempt_at=row["next_attempt_at"],
        last_error=row["last_error"],
        updated_at=row["updated_at"],
        owner=row["owner"],
        lease_expires_at=row["lease_expires_at"],
    )


def _link(row: asyncpg.Record) -> Link:
    return Link(
        kind=row["kind"],
        pd_id=row["pd_id"],
        sn_id=row["sn_id"],
        state=json.loads(row["state"]),
        status=row["status"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _state_json(state: dict[str, Any]) -> str:
    return json.dumps(state, separators=(",", ":"), sort_keys=True)


class PostgresStore(Store):
    """``Store`` on one PostgreSQL database (``schema`` given: in that schema, created if
    missing), through an asyncpg pool; several daemon instances may share it.

    ``clock`` gives the time of leases, due times and ``updated_at`` as on SQLite
    (tests pass a fake one); leadership leases use the database's clock instead.
    """

    shared = True

    def __init__(
        self,
        url: str,
        *,
        password: str | None = None,
        clock: Callable[[], datetime] | None = None,
        migrations: Sequence[Migration] | None = None,
        pool_size: int = 10,
    ) -> None:
        self.url = url
        self._dsn, self.schema = split_url(url)
        self._password = password
        self._clock = clock or utcnow
        self._migrations = list(POSTGRES_MIGRATIONS if migrations is None else migrations)
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._pending: list[tuple[tuple[Any, ...], Event, asyncio.Future[StoredEvent | None]]] = []
        self._writer: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"PostgresStore({self.url!r})"

    # -- lifecycle ---------------------------------------------------------------
    async def open(self) -> None:
        if self._pool is not None:
            return
        settings = {"search_path": self.schema} if self.schema else {}
        try:
            if self.schema:
                # The schema must exist before a pooled connection may use it. Under the
                # migrations' lock: two CREATE SCHEMA IF NOT EXISTS at once (instances
                # started together) fail one of them on pg_namespace's unique index.
                conn = await asyncpg.connect(self._dsn, password=self._password)
                try:
                    async with conn.transaction():
                        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
                        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                finally:
                    await conn.close()
            pool = await asyncpg.create_pool(
                self._dsn, password=self._password, min_size=1, max_size=self._pool_size, server_settings=settings
            )
        except (OSError, asyncpg.PostgresError) as exc:
            # asyncpg's messages name host, user and database, never the password.
            raise ConnectionError(f"cannot connect to the store {self.url}: {exc}") from None
        self._pool = pool
        try:
            await self._migrate()
        except BaseException:
            self._pool = None
            await pool.close()
            raise

    async def close(self) -> None:
        if self._pool is None:
            return
        writer = self._writer
        if writer is not None:
            await asyncio.wait({writer})
        pool, self._pool = self._pool, None
        await pool.close()

    async def ping(self) -> bool:
        if self._pool is None:
            return False
        try:
            return await self._pool.fetchval("SELECT 1") == 1
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return False

    async def schema_version(self) -> int:
        return int(await self._conn_pool().fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_migrations"))

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection of its own, for bulk work (``dutybridge store migrate``)."""
        async with self._conn_pool().acquire() as conn:
            yield conn

    def _conn_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("the store is not open (await store.open() first)")
        return self._pool

    async def _migrate(self) -> None:
        known = self._migrations[-1][0] if self._migrations else 0
        applied: list[int] = []
        async with self._conn_pool().acquire() as conn, conn.transaction():
            # Instances starting together: one migrates, the others wait and find it done.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            await conn.execute(SCHEMA_MIGRATIONS_POSTGRES)
            current = int(await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_migrations"))
            if current > known:
                raise RuntimeError(
                    f"the store {self.url} has schema version {current}, newer than this dutybridge "
                    f"knows ({known}): it was written by a newer release; upgrade dutybridge"
                )
            for version, description, statements in self._migrations:
                if version <= current:
                    continue
                for statement in statements:
                    await conn.execute(statement)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, description, applied_at) VALUES ($1, $2, $3)",
                    version,
                    description,
                    self._clock(),
                )
                applied.append(version)
        if applied:
            log.info("store_migrated", store=self.url, from_version=current, to_version=applied[-1])

    async def _tx(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """``fn(conn)`` in one transaction, again if PostgreSQL broke a deadlock by aborting it."""
        pool = self._conn_pool()
        for attempt in range(DEADLOCK_RETRIES):
            try:
                async with pool.acquire() as conn, conn.transaction():
                    return await fn(conn)
            except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError):
                if attempt == DEADLOCK_RETRIES - 1:
                    raise
                log.debug("store_transaction_retried", attempt=attempt + 1)
        raise RuntimeError("unreachable")  # pragma: no cover - the loop returns or raises

    # -- inbox -------------------------------------------------------------------
    async def add_event(self, event: Event) -> StoredEvent | None:
        """Store ``event``, committing in groups as SQLite's store does: the events that
        arrive while a commit is in flight are inserted together by the next one."""
        row = (
            event.source,
            event.event_id,
            event.type,
            event.resource,
            event.payload_json(),
            _aware(event.received_at),
            self._clock(),
        )
        future: asyncio.Future[StoredEvent | None] = asyncio.get_running_loop().create_future()
        self._pending.append((row, event, future))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_events(), name=f"{self!r} writer")
        return await future

    async def _write_events(self) -> None:
        batch: list[tuple[tuple[Any, ...], Event, asyncio.Future[StoredEvent | None]]] = []
        try:
            while self._pending:
                batch = [item for item in self._pending[:MAX_BATCH] if not item[2].done()]
                del self._pending[:MAX_BATCH]
                if not batch:
                    continue
                try:
                    ids = await self._insert([item[0] for item in batch])
                except Exception as exc:
                    for _, _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                else:
                    for (row, event, future), row_id in zip(batch, ids, strict=True):
                        if not future.done():
                            future.set_result(None if row_id is None else self._stored(row, event, row_id))
                batch = []
        except BaseException:
            error = RuntimeError("the store's writer stopped before the event was known to be committed")
            for _, _, future in [*batch, *self._pending]:
                if not future.done():
                    future.set_exception(error)
            self._pending.clear()
            raise
        finally:
            self._writer = None

    async def _insert(self, rows: list[tuple[Any, ...]]) -> list[int | None]:
        """Insert ``rows`` in one transaction; each row's id, None for a duplicate (also of
        an earlier row of ``rows``: the first of a key is the one stored)."""
        unique: dict[tuple[str, str], tuple[Any, ...]] = {}
        for row in rows:
            unique.setdefault((row[0], row[1]), row)
        # Sorted by resource (stable: one resource's rows keep their order) so that the
        # triggers lock the heads in the order every transaction takes them.
        ordered = sorted(unique.values(), key=lambda r: r[3])
        columns = [list(c) for c in zip(*ordered, strict=True)]

        async def insert(conn: asyncpg.Connection) -> dict[tuple[str, str], int]:
            resources = sorted({r[3] for r in ordered})
            await conn.execute(sql.LOCK_RESOURCES, resources)
            await conn.execute(sql.LOCK_HEADS, resources)
            got = await conn.fetch(sql.INSERT_EVENTS, *columns)
            return {(r["source"], r["event_id"]): r["id"] for r in got}

        inserted = await self._tx(insert)
        return [inserted.pop((row[0], row[1]), None) for row in rows]

    @staticmethod
    def _stored(row: tuple[Any, ...], event: Event, row_id: int) -> StoredEvent:
        if isinstance(event, EncodedEvent) and row[4] is event.payload_text:
            payload = event.payload
        else:
            payload = json.loads(row[4])
        return StoredEvent(
            source=event.source,
            type=event.type,
            event_id=event.event_id,
            resource=event.resource,
            payload=payload,
            received_at=row[5],
            id=row_id,
            status="pending",
            attempts=0,
            updated_at=row[6],
        )

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
        now = self._clock()
        lease = now + timedelta(seconds=lease_seconds)

        async def work(conn: asyncpg.Connection) -> list[asyncpg.Record]:
            # Not waiting for the flush to disk, as SQLite's NORMAL does not: a claim or
            # a "done" lost when the database server itself crashes means an event
            # handled again (idempotent), never one lost; the inbox's inserts (an event
            # answered 202) keep the synchronous commit.
            await conn.execute("SET LOCAL synchronous_commit = off")
            if completions:
                ids = [event_id for event_id, _ in completions]
                await conn.execute(sql.LOCK_HEADS_OF_EVENTS, ids)
                await conn.execute(sql.COMPLETE, ids, [status for _, status in completions], now)
            if limit <= 0:
                return []
            await conn.execute(sql.PROMOTE, now)
            return await conn.fetch(sql.CLAIM, owner, lease, now, limit)

        rows = await self._tx(work)
        return sorted((_event(r) for r in rows), key=lambda e: e.id)

    async def renew(self, event_ids: Sequence[int], owner: str, lease_seconds: float) -> list[int]:
        if not event_ids:
            return []
        now = self._clock()
        rows = await self._tx(
            lambda conn: conn.fetch(sql.RENEW, list(event_ids), owner, now + timedelta(seconds=lease_seconds), now)
        )
        return sorted(r["id"] for r in rows)

    async def release_claims(self, owner: str | None = None) -> int:
        async def work(conn: asyncpg.Connection) -> str:
            await conn.execute(sql.LOCK_HEADS_OF_STATUS, "claimed", owner)
            return await conn.execute(sql.RELEASE, self._clock(), owner)

        return _count(await self._tx(work))

    async def complete(self, event_id: int, status: EventStatus = "done") -> None:
        await self.complete_and_claim([(event_id, status)], "", 0, 0)

    async def fail(self, event_id: int, error: str, retry_at: datetime | None) -> None:
        status = "dead" if retry_at is None else "pending"
        retry = None if retry_at is None else _aware(retry_at)
        await self._tx(lambda conn: conn.execute(sql.FAIL, status, retry, error, self._clock(), event_id))

    async def get_event(self, event_id: int) -> StoredEvent | None:
        row = await self._conn_pool().fetchrow("SELECT * FROM events WHERE id = $1", event_id)
        return _event(row) if row else None

    async def list_events(
        self, status: EventStatus | None = None, limit: int = 50, source: str | None = None
    ) -> list[StoredEvent]:
        if status is not None and status not in STATUSES:
            raise ValueError(f"unknown event status {status!r} (one of: {', '.join(STATUSES)})")
        rows = await self._conn_pool().fetch(
            """
            SELECT * FROM events WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR source = $2)
            ORDER BY id DESC LIMIT $3
            """,
            status,
            source,
            max(0, limit),
        )
        return [_event(r) for r in rows]

    async def replay(self, event_id: int) -> bool:
        return _count(await self._tx(lambda conn: conn.execute(sql.REPLAY, self._clock(), event_id))) > 0

    async def replay_dead(self) -> int:
        async def work(conn: asyncpg.Connection) -> str:
            await conn.execute(sql.LOCK_HEADS_OF_STATUS, "dead", None)
            return await conn.execute(sql.REPLAY_DEAD, self._clock())

        return _count(await self._tx(work))

    async def purge_dead(self) -> int:
        return _count(await self._tx(lambda conn: conn.execute("DELETE FROM events WHERE status = 'dead'")))

    async def counts(self) -> dict[str, int]:
        rows = await self._conn_pool().fetch("SELECT status, COUNT(*) AS n FROM events GROUP BY status")
        out = dict.fromkeys(STATUSES, 0)
        out.update({r["status"]: r["n"] for r in rows})
        return out

    async def purge_done(self, older_than: datetime) -> int:
        return _count(
            await self._tx(
                lambda conn: conn.execute(
                    "DELETE FROM events WHERE status IN ('done', 'ignored') AND updated_at < $1", _aware(older_than)
                )
            )
        )

    # -- links -------------------------------------------------------------------
    async def put_link(self, link: Link) -> Link:
        if link.status not in LINK_STATUSES:
            raise ValueError(f"link status must be 'linked' or 'unlinked', not {link.status!r}")
        now = self._clock()
        created = _aware(link.created_at) if link.created_at else now

        async def work(conn: asyncpg.Connection) -> asyncpg.Record:
            if link.status == "linked":
                await self._check_sn_free(conn, link.kind, link.sn_id, link.pd_id)
            return await conn.fetchrow(
                sql.PUT_LINK, link.kind, link.pd_id, link.sn_id, _state_json(link.state), link.status, created, now
            )

        try:
            row = await self._tx(work)
        except asyncpg.UniqueViolationError as exc:
            # Another instance linked that ServiceNow id between the check and the insert.
            raise LinkConflictError(f"{link.kind} link {link.pd_id} <-> {link.sn_id}: {exc}") from None
        return _link(row)

    @staticmethod
    async def _check_sn_free(conn: asyncpg.Connection, kind: str, sn_id: str, pd_id: str) -> None:
        other = await conn.fetchval(
            "SELECT pd_id FROM links WHERE kind = $1 AND sn_id = $2 AND status = 'linked' AND pd_id <> $3",
            kind,
            sn_id,
            pd_id,
        )
        if other is not None:
            raise LinkConflictError(
                f"ServiceNow {sn_id} is already linked ({kind}) to PagerDuty {other}; unlink that first"
            )

    async def get_link(
        self,
        kind: str,
        *,
        pd_id: str | None = None,
        sn_id: str | None = None,
        include_unlinked: bool = False,
    ) -> Link | None:
        if (pd_id is None) == (sn_id is None):
            raise ValueError("get_link() takes exactly one of pd_id or sn_id")
        column, value = ("pd_id", pd_id) if pd_id is not None else ("sn_id", sn_id)
        query = f"SELECT * FROM links WHERE kind = $1 AND {column} = $2"
        if not include_unlinked:
            query += " AND status = 'linked'"
        query += " ORDER BY status = 'linked' DESC, updated_at DESC, id DESC LIMIT 1"
        row = await self._conn_pool().fetchrow(query, kind, value)
        return _link(row) if row else None

    async def update_link_state(self, kind: str, pd_id: str, state: dict[str, Any], status: str | None = None) -> None:
        if status is not None and status not in LINK_STATUSES:
            raise ValueError(f"link status must be 'linked' or 'unlinked', not {status!r}")

        async def work(conn: asyncpg.Connection) -> str:
            if status == "linked":
                sn_id = await conn.fetchval("SELECT sn_id FROM links WHERE kind = $1 AND pd_id = $2", kind, pd_id)
                if sn_id is not None:
                    await self._check_sn_free(conn, kind, sn_id, pd_id)
            return await conn.execute(
                """
                UPDATE links SET state = $1::jsonb, status = COALESCE($2, status), updated_at = $3
                WHERE kind = $4 AND pd_id = $5
                """,
                _state_json(state),
                status,
                self._clock(),
                kind,
                pd_id,
            )

        try:
            result = await self._tx(work)
        except asyncpg.UniqueViolationError as exc:
            raise LinkConflictError(f"{kind} link of PagerDuty {pd_id}: {exc}") from None
        if _count(result) == 0:
            raise LookupError(f"no {kind} link for PagerDuty {pd_id}")

    async def list_links(self, kind: str | None = None, include_unlinked: bool = False) -> list[Link]:
        rows = await self._conn_pool().fetch(
            "SELECT * FROM links WHERE ($1::text IS NULL OR kind = $1) AND ($2 OR status = 'linked') ORDER BY id",
            kind,
            include_unlinked,
        )
        return [_link(r) for r in rows]

    async def delete_link(self, kind: str, pd_id: str) -> bool:
        return (
            _count(
                await self._tx(
                    lambda conn: conn.execute("DELETE FROM links WHERE kind = $1 AND pd_id = $2", kind, pd_id)
                )
            )
            > 0
        )

    # -- watermarks --------------------------------------------------------------
    async def get_watermark(self, name: str) -> str | None:
        return await self._conn_pool().fetchval("SELECT value FROM watermarks WHERE name = $1", name)

    async def set_watermark(self, name: str, value: str) -> None:
        await self._tx(lambda conn: conn.execute(sql.SET_WATERMARK, name, value, self._clock()))

    # -- coordination ------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def lock(self, key: str) -> AsyncIterator[None]:
        """Hold ``key`` across every instance: a transaction-level advisory lock on a
        connection of its own, released at once if this process dies. The in-process
        lock comes first: one instance's waiting handlers then wait in memory, not each
        on a pooled connection."""
        async with super().lock(key), self._conn_pool().acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", key)
            yield

    async def take_leadership(self, name: str, holder: str, seconds: float) -> bool:
        row = await self._tx(lambda conn: conn.fetchval(sql.TAKE_LEADERSHIP, name, holder, float(seconds)))
        return row == holder

    async def resign_leadership(self, name: str, holder: str) -> None:
        await self._tx(lambda conn: conn.execute(sql.RESIGN_LEADERSHIP, name, holder))

    async def leader(self, name: str) -> str | None:
        return await self._conn_pool().fetchval(sql.LEADER, name)


def _count(status: str) -> int:
    """The row count of a command tag (``UPDATE 3``, ``DELETE 0``)."""
    return int(status.rsplit(" ", 1)[-1])
