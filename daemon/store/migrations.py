"""Numbered schema migrations, SQLite and PostgreSQL kept in step. A migration is applied once,
in order, and never edited after release: change the schema by appending a step.
"""

from __future__ import annotations

# Each list holds ``(version, description, statements)``.
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
]

# For the PostgreSQL store (not implemented yet): the same tables, native types. It
# satisfies the same contract with these statements:
#   add_event:  INSERT ... ON CONFLICT (source, event_id) DO NOTHING RETURNING *
#   claim:      WITH heads AS (
#                   SELECT DISTINCT ON (resource) id FROM events
#                   WHERE status IN ('pending', 'claimed') ORDER BY resource, id),
#               due AS (
#                   SELECT e.id FROM events e JOIN heads USING (id)
#                   WHERE ((e.status = 'pending' AND (e.next_attempt_at IS NULL OR e.next_attempt_at <= now()))
#                       OR (e.status = 'claimed' AND e.lease_expires_at <= now()))
#                     AND NOT EXISTS (SELECT 1 FROM events c WHERE c.resource = e.resource
#                         AND c.status = 'claimed' AND c.id <> e.id AND c.lease_expires_at > now())
#                   ORDER BY e.id LIMIT $limit
#                   FOR UPDATE OF e SKIP LOCKED)
#               UPDATE events SET status = 'claimed', owner = $owner, attempts = attempts + 1, ...
#               FROM due WHERE events.id = due.id RETURNING events.*
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
