"""The SQLite inbox's transactions, each run whole on the connection's thread in one call.

Claims read ``inbox_heads`` (migration 3), which its triggers keep in step with events.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

INSERT_EVENT = """
    INSERT INTO events (source, event_id, type, resource, payload, status,
                        attempts, received_at, updated_at)
    VALUES (?, ?, ?, ?, ?, 'pending', 0, ?, ?)
    ON CONFLICT (source, event_id) DO NOTHING
"""

# (source, event_id, type, resource, payload JSON, received_at, updated_at): one row.
Row = tuple[str, str, str, str, str, str, str]

# Heads whose retry time, lease or blocker's lease has passed are due now.
PROMOTE = "UPDATE inbox_heads INDEXED BY inbox_heads_due SET due_at = NULL WHERE due_at <= :now"

# NOT INDEXED: by rowid only. Without statistics the planner would rather read every
# pending event through events_status (the status term) than look up a few ids.
CLAIM = """
    UPDATE events NOT INDEXED
    SET status = 'claimed', owner = :owner, lease_expires_at = :lease,
        attempts = attempts + 1, next_attempt_at = NULL, updated_at = :now
    WHERE id IN (SELECT event_id FROM inbox_heads INDEXED BY inbox_heads_due
                 WHERE due_at IS NULL ORDER BY event_id LIMIT :limit)
      AND status IN ('pending', 'claimed')
    RETURNING *
"""
COMPLETE = """
    UPDATE events NOT INDEXED SET status = ?, owner = NULL, lease_expires_at = NULL,
                      next_attempt_at = NULL, last_error = NULL, updated_at = ?
    WHERE id = ? AND status = 'claimed'
"""


def transaction(conn: sqlite3.Connection, fn: Callable[..., T], *args: Any) -> T:
    """``fn(conn, *args)`` in one write transaction: committed, or rolled back and raised."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn, *args)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise
    return result


def insert_events(conn: sqlite3.Connection, rows: list[Row]) -> list[int | None]:
    """Insert ``rows`` in one transaction; each row's id, or None for a duplicate.

    A duplicate is of a stored event or of an earlier row of ``rows`` (that one is
    stored). The caller sets synchronous = FULL around it.
    """

    def insert(conn: sqlite3.Connection) -> dict[tuple[str, str], int]:
        # AUTOINCREMENT ids only grow, and BEGIN IMMEDIATE holds the write lock: the
        # rows above the current maximum are exactly the ones inserted here.
        (last,) = conn.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()
        conn.executemany(INSERT_EVENT, rows)
        return {
            (source, event_id): row_id
            for row_id, source, event_id in conn.execute(
                "SELECT id, source, event_id FROM events WHERE id > ?", (last,)
            )
        }

    inserted = transaction(conn, insert)
    # The first of several rows with one key is the one stored (executemany goes in order).
    return [inserted.pop((row[0], row[1]), None) for row in rows]


def complete_and_claim(
    conn: sqlite3.Connection,
    completions: Sequence[tuple[int, str]],
    owner: str,
    limit: int,
    now: str,
    lease: str,
) -> list[sqlite3.Row]:
    """Record ``completions`` ((id, status) of claimed events), then claim up to ``limit``.

    One transaction: an event's successor is claimed only with its completion committed.
    """

    def work(conn: sqlite3.Connection) -> list[sqlite3.Row]:
        conn.executemany(COMPLETE, [(status, now, event_id) for event_id, status in completions])
        if limit <= 0:
            return []
        conn.execute(PROMOTE, {"now": now})
        # The trigger sets each claimed head's due_at to its lease: due again when it
        # expires (its owner died).
        return conn.execute(CLAIM, {"owner": owner, "lease": lease, "now": now, "limit": limit}).fetchall()

    return transaction(conn, work)
