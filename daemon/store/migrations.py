"""Numbered schema migrations, SQLite and PostgreSQL kept in step.

A migration is applied once, in order, and never edited after release: change the
schema by appending a step. Each list holds ``(version, description, statements)``.
"""

from __future__ import annotations

Migration = tuple[int, str, tuple[str, ...]]

# Timestamps are TEXT in UTC ISO-8601 with a fixed width (2026-01-02T03:04:05.000000Z),
# so that comparing strings compares instants. Ids are AUTOINCREMENT so that a purged
# event's id is never handed out again (operators refer to events by id).
SQLITE_MIGRATIONS: list[Migration] = [
    (1, "inbox", (
        """
        CREATE TABLE events (
            id               INTEGER PRIMARY KEY AUTOINCREMENT,
            source           TEXT NOT NULL,
            event_id         TEXT NOT NULL,
            type             TEXT NOT NULL,
            resource         TEXT NOT NULL,
            payload          TEXT NOT NULL,
            status           TEXT NOT NULL DEFAULT 'pending'
                             CHECK (status IN ('pending', 'claimed', 'done', 'dead', 'ignored')),
            attempts         INTEGER NOT NULL DEFAULT 0,
            next_attempt_at  TEXT,
            last_error       TEXT,
            owner            TEXT,
            lease_expires_at TEXT,
            received_at      TEXT NOT NULL,
            updated_at       TEXT NOT NULL,
            UNIQUE (source, event_id)
        )
        """,
        # The claim query looks for the oldest active event of each resource; only
        # active rows are indexed, so the index stays small however long the history.
        """
        CREATE INDEX events_active_resource ON events (resource, id)
            WHERE status IN ('pending', 'claimed')
        """,
        "CREATE INDEX events_status ON events (status, updated_at)",
    )),
    (2, "links and watermarks", (
        """
        CREATE TABLE links (
            id         INTEGER PRIMARY KEY AUTOINCREMENT,
            kind       TEXT NOT NULL,
            pd_id      TEXT NOT NULL,
            sn_id      TEXT NOT NULL,
            state      TEXT NOT NULL DEFAULT '{}',
            status     TEXT NOT NULL DEFAULT 'linked' CHECK (status IN ('linked', 'unlinked')),
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            UNIQUE (kind, pd_id)
        )
        """,
        # Unlinked rows are history: an old ServiceNow record may have been linked to
        # several PagerDuty objects over time, but to one at a time.
        """
        CREATE UNIQUE INDEX links_linked_sn ON links (kind, sn_id) WHERE status = 'linked'
        """,
        """
        CREATE TABLE watermarks (
            name       TEXT PRIMARY KEY,
            value      TEXT NOT NULL,
            updated_at TEXT NOT NULL
        )
        """,
    )),
    (3, "inbox heads", (
        # One row per resource with active events: its head (the lowest active id, the
        # only one that may be claimed) and when that head is due. NULL means due now;
        # else the head's retry time or lease expiry, or a later lease of another
        # claimed event of the resource (a replayed older event waits for it). A claim
        # reads the NULL prefix of (due_at, event_id) in id order and first turns the
        # rows whose time has come to NULL: both are range scans of one index, so a
        # claim costs the same at any backlog and needs no statistics to be planned.
        """
        CREATE TABLE inbox_heads (
            resource TEXT PRIMARY KEY,
            event_id INTEGER NOT NULL,
            due_at   TEXT
        )
        """,
        "CREATE INDEX inbox_heads_due ON inbox_heads (due_at, event_id)",
        # The claimed events of a resource (a handful at most): when its head may run.
        """
        CREATE INDEX events_claimed_resource ON events (resource, lease_expires_at)
            WHERE status = 'claimed'
        """,
        """
        INSERT INTO inbox_heads (resource, event_id, due_at)
        SELECT resource, id, CASE WHEN blocker IS NULL THEN own
                                  WHEN own IS NULL OR blocker > own THEN blocker ELSE own END
        FROM (
            SELECT h.resource, h.id,
                   CASE WHEN h.status = 'claimed' THEN h.lease_expires_at ELSE h.next_attempt_at END AS own,
                   (SELECT MAX(c.lease_expires_at) FROM events AS c
                    WHERE c.resource = h.resource AND c.status = 'claimed' AND c.id <> h.id) AS blocker
            FROM events AS h
            WHERE h.id IN (SELECT MIN(a.id) FROM events AS a
                           WHERE a.status IN ('pending', 'claimed') GROUP BY a.resource)
        )
        """,
    )),
]

# For the PostgreSQL store (not implemented yet): the same tables, native types. It
# satisfies the same contract with these statements:
#   add_event:  INSERT ... ON CONFLICT (source, event_id) DO NOTHING RETURNING id, resource;
#               INSERT INTO inbox_heads VALUES ($resource, $id, NULL) ON CONFLICT (resource) DO NOTHING
#   claim:      UPDATE inbox_heads SET due_at = NULL WHERE resource IN (
#                   SELECT resource FROM inbox_heads WHERE due_at <= now() FOR UPDATE SKIP LOCKED);
#               WITH due AS (
#                   SELECT resource, event_id FROM inbox_heads WHERE due_at IS NULL
#                   ORDER BY event_id LIMIT $limit FOR UPDATE SKIP LOCKED),
#               heads AS (UPDATE inbox_heads h SET due_at = $lease FROM due WHERE h.resource = due.resource)
#               UPDATE events SET status = 'claimed', owner = $owner, attempts = attempts + 1, ...
#               FROM due WHERE events.id = due.event_id RETURNING events.*
#               (GREATEST ignores NULLs, so the head's due time is GREATEST(own, blocker) as in
#               migration 3; SKIP LOCKED lets instances claim different heads at once)
#   complete, fail, release, replay: the UPDATE ... RETURNING resource, then per resource
#               the head recomputed as in migration 3 (SELECT ... FOR UPDATE of its
#               inbox_heads row first, so that two instances do not race on one resource)
#   put_link:   INSERT ... ON CONFLICT (kind, pd_id) DO UPDATE ..., a unique violation on
#               links_linked_sn becoming LinkConflictError
# and one advisory lock (pg_advisory_xact_lock) around applying migrations, so that
# instances starting together do not race.
POSTGRES_MIGRATIONS: list[Migration] = [
    (1, "inbox", (
        """
        CREATE TABLE events (
            id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            source           TEXT NOT NULL,
            event_id         TEXT NOT NULL,
            type             TEXT NOT NULL,
            resource         TEXT NOT NULL,
            payload          JSONB NOT NULL,
            status           TEXT NOT NULL DEFAULT 'pending'
                             CHECK (status IN ('pending', 'claimed', 'done', 'dead', 'ignored')),
            attempts         INTEGER NOT NULL DEFAULT 0,
            next_attempt_at  TIMESTAMPTZ,
            last_error       TEXT,
            owner            TEXT,
            lease_expires_at TIMESTAMPTZ,
            received_at      TIMESTAMPTZ NOT NULL,
            updated_at       TIMESTAMPTZ NOT NULL,
            UNIQUE (source, event_id)
        )
        """,
        """
        CREATE INDEX events_active_resource ON events (resource, id)
            WHERE status IN ('pending', 'claimed')
        """,
        "CREATE INDEX events_status ON events (status, updated_at)",
    )),
    (2, "links and watermarks", (
        """
        CREATE TABLE links (
            id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            kind       TEXT NOT NULL,
            pd_id      TEXT NOT NULL,
            sn_id      TEXT NOT NULL,
            state      JSONB NOT NULL DEFAULT '{}'::jsonb,
            status     TEXT NOT NULL DEFAULT 'linked' CHECK (status IN ('linked', 'unlinked')),
            created_at TIMESTAMPTZ NOT NULL,
            updated_at TIMESTAMPTZ NOT NULL,
            UNIQUE (kind, pd_id)
        )
        """,
        """
        CREATE UNIQUE INDEX links_linked_sn ON links (kind, sn_id) WHERE status = 'linked'
        """,
        """
        CREATE TABLE watermarks (
            name       TEXT PRIMARY KEY,
            value      TEXT NOT NULL,
            updated_at TIMESTAMPTZ NOT NULL
        )
        """,
    )),
    (3, "inbox heads", (
        """
        CREATE TABLE inbox_heads (
            resource TEXT PRIMARY KEY,
            event_id BIGINT NOT NULL,
            due_at   TIMESTAMPTZ
        )
        """,
        "CREATE INDEX inbox_heads_due ON inbox_heads (due_at, event_id)",
        """
        CREATE INDEX events_claimed_resource ON events (resource, lease_expires_at)
            WHERE status = 'claimed'
        """,
        """
        INSERT INTO inbox_heads (resource, event_id, due_at)
        SELECT DISTINCT ON (h.resource) h.resource, h.id,
               GREATEST(CASE WHEN h.status = 'claimed' THEN h.lease_expires_at ELSE h.next_attempt_at END,
                        (SELECT MAX(c.lease_expires_at) FROM events AS c
                         WHERE c.resource = h.resource AND c.status = 'claimed' AND c.id <> h.id))
        FROM events AS h WHERE h.status IN ('pending', 'claimed')
        ORDER BY h.resource, h.id
        """,
    )),
]

SCHEMA_MIGRATIONS_SQLITE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     INTEGER PRIMARY KEY,
    description TEXT NOT NULL,
    applied_at  TEXT NOT NULL
)
"""

SCHEMA_MIGRATIONS_POSTGRES = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     INTEGER PRIMARY KEY,
    description TEXT NOT NULL,
    applied_at  TIMESTAMPTZ NOT NULL
)
"""
