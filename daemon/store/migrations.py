"""Numbered schema migrations, SQLite and PostgreSQL kept in step. A migration is applied once,
in order, and never edited after release: change the schema by appending a step.
"""

from __future__ import annotations

# Each list holds ``(version, description, statements)``.
Migration = tuple[int, str, tuple[str, ...]]

# The head of one resource recomputed from its events, as the last statement of
# migration 3 computes every head; the body of its triggers. Part of migration 3: never
# edit it (a later change of the triggers is a new migration with its own text).
# INDEXED BY pins both lookups to the partial indexes of active and of claimed events:
# planned by statistics, a lookup by resource of a hot resource became a walk over the
# whole table's rowids.
SQLITE_HEAD_OF = """
    DELETE FROM inbox_heads WHERE resource = {resource};
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
                      WHERE a.resource = {resource} AND a.status IN ('pending', 'claimed')
                      ORDER BY a.id LIMIT 1)
    );
"""

# Timestamps are TEXT in UTC ISO-8601 with a fixed width (2026-01-02T03:04:05.000000Z),
# so that comparing strings compares instants. Ids are AUTOINCREMENT so that a purged
# event's id is never handed out again (operators refer to events by id).
SQLITE_MIGRATIONS: list[Migration] = [
    (
        1,
        "inbox",
        (
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
        ),
    ),
    (
        2,
        "links and watermarks",
        (
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
        ),
    ),
    (
        3,
        "inbox heads",
        (
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
            # Triggers keep the heads in step with every write to events, whoever makes
            # it: this release, a daemon of the previous one still running while the CLI
            # migrated the file, or an operator's sqlite3 session.
            # An event stored by add_event has the highest id: it is its resource's head
            # only when the resource has none (and, being pending, blocked by nothing).
            # That costs a lookup, not a recompute; any other insert gets the recompute.
            """
        CREATE TRIGGER inbox_heads_insert AFTER INSERT ON events
        WHEN NEW.status = 'pending'
         AND NOT EXISTS (SELECT 1 FROM inbox_heads WHERE resource = NEW.resource AND event_id > NEW.id)
        BEGIN
            INSERT INTO inbox_heads (resource, event_id, due_at)
            VALUES (NEW.resource, NEW.id, NEW.next_attempt_at)
            ON CONFLICT (resource) DO NOTHING;
        END
        """,
            f"""
        CREATE TRIGGER inbox_heads_insert_other AFTER INSERT ON events
        WHEN NEW.status = 'claimed'
          OR (NEW.status = 'pending'
              AND EXISTS (SELECT 1 FROM inbox_heads WHERE resource = NEW.resource AND event_id > NEW.id))
        BEGIN {SQLITE_HEAD_OF.format(resource="NEW.resource")} END
        """,
            f"""
        CREATE TRIGGER inbox_heads_update
        AFTER UPDATE OF status, next_attempt_at, lease_expires_at, resource ON events
        WHEN OLD.status IN ('pending', 'claimed') OR NEW.status IN ('pending', 'claimed')
        BEGIN {SQLITE_HEAD_OF.format(resource="NEW.resource")} END
        """,
            f"""
        CREATE TRIGGER inbox_heads_move AFTER UPDATE OF resource ON events
        WHEN OLD.resource <> NEW.resource AND OLD.status IN ('pending', 'claimed')
        BEGIN {SQLITE_HEAD_OF.format(resource="OLD.resource")} END
        """,
            f"""
        CREATE TRIGGER inbox_heads_delete AFTER DELETE ON events
        WHEN OLD.status IN ('pending', 'claimed')
        BEGIN {SQLITE_HEAD_OF.format(resource="OLD.resource")} END
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
        ),
    ),
    (
        4,
        "leadership leases",
        (
            # Who leads an elected role (the scheduler's) until when. One instance uses a
            # SQLite store, so it always wins; the row tells the CLI who that is.
            """
        CREATE TABLE leases (
            name       TEXT PRIMARY KEY,
            holder     TEXT NOT NULL,
            expires_at TEXT NOT NULL,
            taken_at   TEXT NOT NULL
        )
        """,
        ),
    ),
    # get_link(sn_id=..., include_unlinked=True), as every ServiceNow event of incident
    # sync asks it, cannot use the partial links_linked_sn: without this index it read
    # every link of the kind (bench/links_memory.py: ~100,000 rows a lookup).
    (5, "links by ServiceNow id, unlinked too", ("CREATE INDEX links_sn ON links (kind, sn_id)",)),
]

# The PostgreSQL store (postgres.py, its statements in postgres_sql.py): the same tables
# with native types and one trigger function keeping the heads. postgres.py applies them
# under an advisory lock, so that instances starting together do not race.
POSTGRES_MIGRATIONS: list[Migration] = [
    (
        1,
        "inbox",
        (
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
        ),
    ),
    (
        2,
        "links and watermarks",
        (
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
        ),
    ),
    (
        3,
        "inbox heads",
        (
            """
        CREATE TABLE inbox_heads (
            resource TEXT PRIMARY KEY,
            event_id BIGINT NOT NULL,
            due_at   TIMESTAMPTZ
        )
        """,
            "CREATE INDEX inbox_heads_due ON inbox_heads (due_at, event_id)",
            # The heads due now, in id order: what a claim reads. PostgreSQL does not take
            # "due_at IS NULL" as fixing the first column of inbox_heads_due, so it would
            # sort every due head for each claim; this index hands them over in order.
            "CREATE INDEX inbox_heads_ready ON inbox_heads (event_id) WHERE due_at IS NULL",
            """
        CREATE INDEX events_claimed_resource ON events (resource, lease_expires_at)
            WHERE status = 'claimed'
        """,
            # The triggers' body; SQLite's CASE is GREATEST here (it ignores NULLs). Several
            # instances write at once, so the head's row is also the resource's lock: taken
            # (created if missing, as a placeholder never due) before the head is read, so
            # two transactions on one resource recompute its head one after the other, the
            # second seeing what the first committed (a volatile function's statements each
            # take a fresh snapshot under READ COMMITTED). Unreleased when this text was
            # fixed: no database had the PostgreSQL schema before the store existed.
            """
        CREATE FUNCTION inbox_head_of(r TEXT, candidate BIGINT) RETURNS void LANGUAGE plpgsql AS $$
        DECLARE
            current  BIGINT;
            created  BOOLEAN := false;
            head_id  BIGINT;
            head_due TIMESTAMPTZ;
        BEGIN
            LOOP
                SELECT event_id INTO current FROM inbox_heads WHERE resource = r FOR UPDATE;
                EXIT WHEN FOUND;
                INSERT INTO inbox_heads (resource, event_id, due_at) VALUES (r, 0, 'infinity')
                ON CONFLICT (resource) DO NOTHING;
                created := FOUND;
            END LOOP;
            -- No active event of r lies below the head kept, but for the changed row
            -- (candidate, when it became active): the search starts there, not at the
            -- oldest event of r ever stored, which a planner may walk (a hot resource's
            -- handled history) however the indexes stand.
            current := LEAST(CASE WHEN created OR current = 0 THEN NULL ELSE current END, candidate);
            IF current IS NOT NULL THEN
                SELECT h.id,
                       GREATEST(CASE WHEN h.status = 'claimed' THEN h.lease_expires_at ELSE h.next_attempt_at END,
                                (SELECT MAX(c.lease_expires_at) FROM events AS c
                                 WHERE c.resource = h.resource AND c.status = 'claimed' AND c.id <> h.id))
                  INTO head_id, head_due
                FROM events AS h
                WHERE h.id = (SELECT a.id FROM events AS a
                              WHERE a.resource = r AND a.status IN ('pending', 'claimed') AND a.id >= current
                              ORDER BY a.id LIMIT 1);
            END IF;
            IF head_id IS NULL THEN
                DELETE FROM inbox_heads WHERE resource = r;
            ELSE
                UPDATE inbox_heads SET event_id = head_id, due_at = head_due WHERE resource = r;
            END IF;
        END
        $$
        """,
            """
        CREATE FUNCTION inbox_heads_follow() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP <> 'INSERT' AND OLD.status IN ('pending', 'claimed') THEN
                PERFORM inbox_head_of(OLD.resource, CASE WHEN TG_OP = 'UPDATE' AND NEW.resource = OLD.resource
                                                          AND NEW.status IN ('pending', 'claimed')
                                                         THEN NEW.id END);
            END IF;
            IF TG_OP <> 'DELETE' AND NEW.status IN ('pending', 'claimed')
               AND (TG_OP = 'INSERT' OR OLD.status NOT IN ('pending', 'claimed')
                    OR NEW.resource <> OLD.resource) THEN
                PERFORM inbox_head_of(NEW.resource, NEW.id);
            END IF;
            RETURN NULL;
        END
        $$
        """,
            """
        CREATE TRIGGER inbox_heads_follow
        AFTER INSERT OR UPDATE OF status, next_attempt_at, lease_expires_at, resource OR DELETE ON events
        FOR EACH ROW EXECUTE FUNCTION inbox_heads_follow()
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
        ),
    ),
    (
        4,
        "leadership leases",
        (
            # One row per elected role (the scheduler's): who holds it until when.
            """
        CREATE TABLE leases (
            name       TEXT PRIMARY KEY,
            holder     TEXT NOT NULL,
            expires_at TIMESTAMPTZ NOT NULL,
            taken_at   TIMESTAMPTZ NOT NULL
        )
        """,
        ),
    ),
    (5, "links by ServiceNow id, unlinked too", ("CREATE INDEX links_sn ON links (kind, sn_id)",)),
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
