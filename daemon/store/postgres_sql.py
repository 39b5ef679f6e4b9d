"""The PostgreSQL store's statements, kept apart from the code that runs them.

Claims read ``inbox_heads`` (migration 3) as SQLite's do; the heads' rows are also the
per-resource locks that keep several instances' transactions on one resource in turn.
"""

from __future__ import annotations

# Rows ($1 sources, $2 event ids, ..., $7 updated_at) in order; duplicates already
# dropped by the caller. WITH ORDINALITY ... ORDER BY keeps the ids in that order.
INSERT_EVENTS = """
    INSERT INTO events (source, event_id, type, resource, payload, status, attempts,
                        received_at, updated_at)
    SELECT r.source, r.event_id, r.type, r.resource, r.payload::jsonb, 'pending', 0,
           r.received_at, r.updated_at
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                $6::timestamptz[], $7::timestamptz[]) WITH ORDINALITY
         AS r(source, event_id, type, resource, payload, received_at, updated_at, n)
    ORDER BY r.n
    ON CONFLICT (source, event_id) DO NOTHING
    RETURNING id, source, event_id
"""

# An insert first holds each of its resources (a transaction-level advisory lock, in
# one global order), so that two instances' inserts of one resource take their ids in
# the order they commit: a claimer sees a resource's events appear in id order, never
# a later id committed before an earlier one it would then overtake.
LOCK_RESOURCES = """
    SELECT pg_advisory_xact_lock(1, k)
    FROM (SELECT DISTINCT hashtext(r) AS k FROM unnest($1::text[]) AS r ORDER BY 1) AS keys
"""

# Every transaction that changes the events of several resources first locks their
# heads in resource order: the triggers then take each head lock again (already held),
# and two such transactions never wait for each other in a circle.
LOCK_HEADS = "SELECT 1 FROM inbox_heads WHERE resource = ANY($1::text[]) ORDER BY resource FOR UPDATE"
LOCK_HEADS_OF_EVENTS = """
    SELECT 1 FROM inbox_heads
    WHERE resource IN (SELECT resource FROM events WHERE id = ANY($1::bigint[]))
    ORDER BY resource FOR UPDATE
"""
LOCK_HEADS_OF_STATUS = """
    SELECT 1 FROM inbox_heads
    WHERE resource IN (SELECT resource FROM events WHERE status = $1 AND ($2::text IS NULL OR owner = $2))
    ORDER BY resource FOR UPDATE
"""

COMPLETE = """
    UPDATE events AS e SET status = c.status, owner = NULL, lease_expires_at = NULL,
                           next_attempt_at = NULL, last_error = NULL, updated_at = $3
    FROM unnest($1::bigint[], $2::text[]) AS c(id, status)
    WHERE e.id = c.id AND e.status = 'claimed'
"""

# Heads whose retry time, lease or blocker's lease has passed are due now. SKIP LOCKED:
# a head another transaction holds is its business (it recomputes it anyway).
PROMOTE = """
    UPDATE inbox_heads SET due_at = NULL
    WHERE resource IN (SELECT resource FROM inbox_heads WHERE due_at <= $1
                       ORDER BY due_at FOR UPDATE SKIP LOCKED)
"""

# The oldest due heads no other instance is claiming (SKIP LOCKED), then their events
# unless another transaction holds one of them (a late completion by an owner whose
# lease ran out: it is skipped rather than waited for). The trigger sets each claimed
# head's due_at to its lease.
CLAIM = """
    WITH due AS (
        SELECT event_id FROM inbox_heads WHERE due_at IS NULL
        ORDER BY event_id LIMIT $4 FOR UPDATE SKIP LOCKED
    ), free AS (
        SELECT e.id FROM events AS e JOIN due ON e.id = due.event_id
        WHERE e.status IN ('pending', 'claimed')
        FOR UPDATE OF e SKIP LOCKED
    )
    UPDATE events SET status = 'claimed', owner = $1, lease_expires_at = $2,
                      attempts = attempts + 1, next_attempt_at = NULL, updated_at = $3
    WHERE id IN (SELECT id FROM free)
    RETURNING *
"""

RENEW = """
    UPDATE events SET lease_expires_at = $3, updated_at = $4
    WHERE id = ANY($1::bigint[]) AND status = 'claimed' AND owner = $2
    RETURNING id
"""

RELEASE = """
    UPDATE events SET status = 'pending', owner = NULL, lease_expires_at = NULL, updated_at = $1
    WHERE status = 'claimed' AND ($2::text IS NULL OR owner = $2)
"""

FAIL = """
    UPDATE events SET status = $1, next_attempt_at = $2, last_error = $3, owner = NULL,
                      lease_expires_at = NULL, updated_at = $4
    WHERE id = $5 AND status = 'claimed'
"""

REPLAY = """
    UPDATE events SET status = 'pending', attempts = 0, next_attempt_at = NULL,
                      owner = NULL, lease_expires_at = NULL, updated_at = $1
    WHERE id = $2 AND status IN ('dead', 'done', 'ignored')
"""

REPLAY_DEAD = """
    UPDATE events SET status = 'pending', attempts = 0, next_attempt_at = NULL,
                      owner = NULL, lease_expires_at = NULL, updated_at = $1
    WHERE status = 'dead'
"""

PUT_LINK = """
    INSERT INTO links (kind, pd_id, sn_id, state, status, created_at, updated_at)
    VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7)
    ON CONFLICT (kind, pd_id) DO UPDATE SET
        sn_id = excluded.sn_id, state = excluded.state,
        status = excluded.status, updated_at = excluded.updated_at
    RETURNING *
"""

SET_WATERMARK = """
    INSERT INTO watermarks (name, value, updated_at) VALUES ($1, $2, $3)
    ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at
"""

# A lease row per name: taken when free or expired, renewed by its holder. The
# database's clock decides expiry, so instances' clocks need not agree.
TAKE_LEADERSHIP = """
    INSERT INTO leases (name, holder, expires_at, taken_at)
    VALUES ($1, $2, clock_timestamp() + make_interval(secs => $3), clock_timestamp())
    ON CONFLICT (name) DO UPDATE SET
        holder = excluded.holder, expires_at = excluded.expires_at,
        taken_at = CASE WHEN leases.holder = excluded.holder THEN leases.taken_at ELSE excluded.taken_at END
    WHERE leases.holder = excluded.holder OR leases.expires_at < clock_timestamp()
    RETURNING holder
"""
RESIGN_LEADERSHIP = "DELETE FROM leases WHERE name = $1 AND holder = $2"
LEADER = "SELECT holder FROM leases WHERE name = $1 AND expires_at >= clock_timestamp()"
