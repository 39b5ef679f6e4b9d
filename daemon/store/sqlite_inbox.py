"""The SQLite inbox's transactions, each run whole on the connection's thread in one call.

Every status change of an event keeps ``inbox_heads`` (migration 3) in step: one row per
resource with active events, naming its head and when that head is due.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

INSERT_EVENT = """
    INSERT INTO events (source, event_id, type, resource, payload, status,
                        attempts, received_at, updated_at)
    VALUES (?, ?, ?, ?, ?, 'pending', 0, ?, ?)
    ON CONFLICT (source, event_id) DO NOTHING
"""

# A new event is its resource's head only when the resource has no active event: ids
# only grow, so an existing head is older.
INSERT_HEAD = "INSERT INTO inbox_heads (resource, event_id, due_at) VALUES (?, ?, NULL) ON CONFLICT (resource) DO NOTHING"

# (source, event_id, type, resource, payload JSON, received_at, updated_at): one row.
Row = tuple[str, str, str, str, str, str, str]

# The head of one resource recomputed from its events, as migration 3 computes every
# head. INDEXED BY pins both lookups to the partial indexes of active and of claimed
# events: planned by statistics, a lookup by resource of a hot resource became a walk
# over the whole table's rowids.
_DROP_HEAD = "DELETE FROM inbox_heads WHERE resource = ?"
_PUT_HEAD = """
    INSERT INTO inbox_heads (resource, event_id, due_at)
    SELECT resource, id, CASE WHEN blocker IS NULL THEN own
                              WHEN own IS NULL OR blocker > own THEN blocker ELSE own END
    FROM (
        SELECT h.resource, h.id,
               CASE WHEN h.status = 'claimed' THEN h.lease_expires_at ELSE h.next_attempt_at END AS own,
               (SELECT MAX(c.lease_expires_at) FROM events AS c INDEXED BY events_claimed_resource
                WHERE c.resource = h.resource AND c.status = 'claimed' AND c.id <> h.id) AS blocker
        FROM events AS h
        WHERE h.id = (SELECT a.id FROM events AS a INDEXED BY events_active_resource
                      WHERE a.resource = ? AND a.status IN ('pending', 'claimed')
                      ORDER BY a.id LIMIT 1)
    )
"""

# Heads whose retry time, lease or blocker's lease has passed are due now.
_PROMOTE = "UPDATE inbox_heads INDEXED BY inbox_heads_due SET due_at = NULL WHERE due_at <= :now"

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
# A claimed head is due again when its lease expires (its owner died).
_LEASE_HEAD = "UPDATE inbox_heads SET due_at = ? WHERE resource = ?"

COMPLETE = """
    UPDATE events NOT INDEXED SET status = ?, owner = NULL, lease_expires_at = NULL,
                      next_attempt_at = NULL, updated_at = ?
    WHERE id = ? AND status = 'claimed'
    RETURNING resource
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


def refresh_heads(conn: sqlite3.Connection, resources: Iterable[str]) -> None:
    """Recompute the head of each of ``resources`` (inside the caller's transaction)."""
    params = [(r,) for r in dict.fromkeys(resources)]
    if params:
        conn.executemany(_DROP_HEAD, params)
        conn.executemany(_PUT_HEAD, params)


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
        new = conn.execute("SELECT id, source, event_id, resource FROM events WHERE id > ? ORDER BY id",
                           (last,)).fetchall()
        conn.executemany(INSERT_HEAD, [(resource, row_id) for row_id, _, _, resource in new])
        return {(source, event_id): row_id for row_id, source, event_id, _ in new}

    inserted = transaction(conn, insert)
    # The first of several rows with one key is the one stored (executemany goes in order).
    return [inserted.pop((row[0], row[1]), None) for row in rows]


def complete_and_claim(
    conn: sqlite3.Connection, completions: Sequence[tuple[int, str]], owner: str, limit: int,
    now: str, lease: str,
) -> list[sqlite3.Row]:
    """Record ``completions`` ((id, status) of claimed events), then claim up to ``limit``.

    One transaction: an event's successor is claimed only with its completion committed.
    """
    def work(conn: sqlite3.Connection) -> list[sqlite3.Row]:
        touched = []
        for event_id, status in completions:
            row = conn.execute(COMPLETE, (status, now, event_id)).fetchone()
            if row is not None:
                touched.append(row[0])
        refresh_heads(conn, touched)
        if limit <= 0:
            return []
        conn.execute(_PROMOTE, {"now": now})
        rows = conn.execute(CLAIM, {"owner": owner, "lease": lease, "now": now, "limit": limit}).fetchall()
        conn.executemany(_LEASE_HEAD, [(lease, r["resource"]) for r in rows])
        return rows

    return transaction(conn, work)


def update_events(conn: sqlite3.Connection, sql: str, params: Any) -> int:
    """Run ``sql`` (an UPDATE of events ... RETURNING resource) and refresh those heads; the count."""
    def work(conn: sqlite3.Connection) -> int:
        resources = [r[0] for r in conn.execute(sql, params).fetchall()]
        refresh_heads(conn, resources)
        return len(resources)

    return transaction(conn, work)
