"""``dutybridge store migrate``: copy a SQLite store's inbox, links and watermarks into an
empty PostgreSQL store, keeping event ids (operators refer to events by id) and order.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .postgres import PostgresStore
from .sqlite import from_text

BATCH = 1000


@dataclass
class Copied:
    events: int = 0
    links: int = 0
    watermarks: int = 0
    released: int = 0  # claimed in the source: pending in the copy


def _rows(db: sqlite3.Connection, query: str) -> Iterator[list[sqlite3.Row]]:
    cursor = db.execute(query)
    while batch := cursor.fetchmany(BATCH):
        yield batch


def _at(value: str | None) -> datetime | None:
    return from_text(value)


async def copy_sqlite_to_postgres(source: Path, target: PostgresStore) -> Copied:
    """Copy everything from the SQLite file ``source`` into the open, empty ``target``.

    Refuses (``ValueError``) a target that holds events, links or watermarks already:
    a second run would double them. Claimed events arrive pending (their owner, the
    stopped daemon, is gone). One transaction: all or nothing.
    """
    if not source.is_file():  # noqa: ASYNC240 - once, before the copy: a stat, not I/O worth a thread
        raise ValueError(f"no SQLite store at {source}")
    copied = Copied()
    # Read-only: the source is left exactly as it was, to go back to if need be.
    with closing(sqlite3.connect(f"file:{source}?mode=ro", uri=True)) as db:
        db.row_factory = sqlite3.Row
        version = db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()[0]
        if version < 2:
            raise ValueError(f"{source} has schema version {version}; open it once with this dutybridge first")
        async with target.connection() as conn, conn.transaction():
            for table in ("events", "links", "watermarks"):
                if await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {table})"):
                    raise ValueError(f"the target store already has {table}; migrate into an empty database")
            for batch in _rows(db, "SELECT * FROM events ORDER BY id"):
                records: list[tuple[Any, ...]] = []
                for r in batch:
                    claimed = r["status"] == "claimed"
                    copied.released += claimed
                    records.append(
                        (
                            r["id"],
                            r["source"],
                            r["event_id"],
                            r["type"],
                            r["resource"],
                            r["payload"],
                            "pending" if claimed else r["status"],
                            r["attempts"],
                            _at(r["next_attempt_at"]),
                            r["last_error"],
                            None if claimed else r["owner"],
                            None if claimed else _at(r["lease_expires_at"]),
                            _at(r["received_at"]),
                            _at(r["updated_at"]),
                        )
                    )
                await conn.executemany(
                    """
                    INSERT INTO events (id, source, event_id, type, resource, payload, status, attempts,
                                        next_attempt_at, last_error, owner, lease_expires_at, received_at,
                                        updated_at)
                    OVERRIDING SYSTEM VALUE
                    VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9, $10, $11, $12, $13, $14)
                    """,
                    records,
                )
                copied.events += len(records)
            for batch in _rows(db, "SELECT * FROM links ORDER BY id"):
                await conn.executemany(
                    """
                    INSERT INTO links (id, kind, pd_id, sn_id, state, status, created_at, updated_at)
                    OVERRIDING SYSTEM VALUE VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8)
                    """,
                    [
                        (
                            r["id"],
                            r["kind"],
                            r["pd_id"],
                            r["sn_id"],
                            json.dumps(json.loads(r["state"])),
                            r["status"],
                            _at(r["created_at"]),
                            _at(r["updated_at"]),
                        )
                        for r in batch
                    ],
                )
                copied.links += len(batch)
            for batch in _rows(db, "SELECT * FROM watermarks ORDER BY name"):
                await conn.executemany(
                    "INSERT INTO watermarks (name, value, updated_at) VALUES ($1, $2, $3)",
                    [(r["name"], r["value"], _at(r["updated_at"]) or datetime.now(UTC)) for r in batch],
                )
                copied.watermarks += len(batch)
            # New ids continue after the copied ones (also after purged ones: SQLite's
            # AUTOINCREMENT counter remembers them, and ids are never handed out twice).
            for table in ("events", "links"):
                seq = db.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchone()
                top = max(seq[0] if seq else 0, await conn.fetchval(f"SELECT COALESCE(MAX(id), 0) FROM {table}"))
                if top:
                    await conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), $1)", top)
    return copied
