"""The SQLite store's links, leadership leases and watermarks: the state that outlives
events, on the store's one write connection.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import AbstractAsyncContextManager
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import aiosqlite

from .base import Link, LinkConflictError
from .sqlite_inbox import transaction
from .sqlite_time import from_text, to_text

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable

LINK_STATUSES = ("linked", "unlinked")


async def fetch(db: aiosqlite.Connection, sql: str, params: Any = ()) -> list[sqlite3.Row]:
    """Every row of ``sql`` (aiosqlite declares an Iterable; it is a list)."""
    return list(await db.execute_fetchall(sql, params))


def _link(row: sqlite3.Row) -> Link:
    return Link(
        kind=row["kind"],
        pd_id=row["pd_id"],
        sn_id=row["sn_id"],
        state=json.loads(row["state"]),
        status=row["status"],
        created_at=from_text(row["created_at"]),
        updated_at=from_text(row["updated_at"]),
    )


def _state_json(state: dict[str, Any]) -> str:
    return json.dumps(state, separators=(",", ":"), sort_keys=True)


# Each runs whole on the connection's thread, inside ``transaction``: one hop a write.
PUT_LINK = """
    INSERT INTO links (kind, pd_id, sn_id, state, status, created_at, updated_at)
    VALUES (?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (kind, pd_id) DO UPDATE SET
        sn_id = excluded.sn_id, state = excluded.state,
        status = excluded.status, updated_at = excluded.updated_at
    RETURNING *
"""


def _check_sn_free(conn: sqlite3.Connection, kind: str, sn_id: str, pd_id: str) -> None:
    row = conn.execute(
        "SELECT pd_id FROM links WHERE kind = ? AND sn_id = ? AND status = 'linked' AND pd_id <> ?",
        (kind, sn_id, pd_id),
    ).fetchone()
    if row is not None:
        raise LinkConflictError(
            f"ServiceNow {sn_id} is already linked ({kind}) to PagerDuty {row[0]}; unlink that first"
        )


def _put_link(conn: sqlite3.Connection, params: tuple[str, ...]) -> sqlite3.Row:
    kind, pd_id, sn_id, _, status, _, _ = params
    if status == "linked":
        _check_sn_free(conn, kind, sn_id, pd_id)
    row: sqlite3.Row = conn.execute(PUT_LINK, params).fetchall()[0]
    return row


def _update_link_state(
    conn: sqlite3.Connection, kind: str, pd_id: str, state: str, status: str | None, now: str
) -> int:
    """The number of links changed (0: there is none for ``pd_id``)."""
    if status == "linked":
        row = conn.execute("SELECT sn_id FROM links WHERE kind = ? AND pd_id = ?", (kind, pd_id)).fetchone()
        if row is not None:
            _check_sn_free(conn, kind, row[0], pd_id)
    cur = conn.execute(
        "UPDATE links SET state = ?, status = COALESCE(?, status), updated_at = ? WHERE kind = ? AND pd_id = ?",
        (state, status, now, kind, pd_id),
    )
    return cur.rowcount


class SQLiteLinks:
    """Links, leases and watermarks for ``SQLiteStore``, which provides the connection."""

    if TYPE_CHECKING:  # provided by SQLiteStore

        def _transaction(self, write: bool = True) -> AbstractAsyncContextManager[aiosqlite.Connection]: ...
        async def _write_count(self, sql: str, params: Any) -> int: ...
        async def _write_rows(self, sql: str, params: Any) -> list[sqlite3.Row]: ...
        async def _run(self, fn: Callable[..., Any], *args: Any) -> Any: ...
        def _now(self) -> str: ...

        _clock: Callable[[], datetime]

    # -- links -------------------------------------------------------------------
    async def put_link(self, link: Link) -> Link:
        if link.status not in LINK_STATUSES:
            raise ValueError(f"link status must be 'linked' or 'unlinked', not {link.status!r}")
        now = self._now()
        created = to_text(link.created_at) if link.created_at else now
        params = (link.kind, link.pd_id, link.sn_id, _state_json(link.state), link.status, created, now)
        try:
            row = await self._run(transaction, _put_link, params)
        except sqlite3.IntegrityError as exc:
            raise LinkConflictError(f"{link.kind} link {link.pd_id} <-> {link.sn_id}: {exc}") from None
        return _link(row)

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
        sql = f"SELECT * FROM links WHERE kind = ? AND {column} = ?"
        if not include_unlinked:
            sql += " AND status = 'linked'"
        # Several unlinked rows may share an sn_id; the live one, else the latest, wins.
        sql += " ORDER BY status = 'linked' DESC, updated_at DESC, id DESC LIMIT 1"
        async with self._transaction(write=False) as db:
            rows = await fetch(db, sql, (kind, value))
        return _link(rows[0]) if rows else None

    async def update_link_state(self, kind: str, pd_id: str, state: dict[str, Any], status: str | None = None) -> None:
        if status is not None and status not in LINK_STATUSES:
            raise ValueError(f"link status must be 'linked' or 'unlinked', not {status!r}")
        try:
            changed = await self._run(
                transaction, _update_link_state, kind, pd_id, _state_json(state), status, self._now()
            )
        except sqlite3.IntegrityError as exc:
            raise LinkConflictError(f"{kind} link of PagerDuty {pd_id}: {exc}") from None
        if not changed:
            raise LookupError(f"no {kind} link for PagerDuty {pd_id}")

    async def list_links(self, kind: str | None = None, include_unlinked: bool = False) -> list[Link]:
        where, params = [], []
        if kind is not None:
            where.append("kind = ?")
            params.append(kind)
        if not include_unlinked:
            where.append("status = 'linked'")
        sql = "SELECT * FROM links"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id"
        async with self._transaction(write=False) as db:
            rows = await fetch(db, sql, params)
        return [_link(r) for r in rows]

    async def delete_link(self, kind: str, pd_id: str) -> bool:
        return await self._write_count("DELETE FROM links WHERE kind = ? AND pd_id = ?", (kind, pd_id)) > 0

    # -- leadership --------------------------------------------------------------
    async def take_leadership(self, name: str, holder: str, seconds: float) -> bool:
        now_dt = self._clock()
        now, until = to_text(now_dt), to_text(now_dt + timedelta(seconds=seconds))
        rows = await self._write_rows(
            """
            INSERT INTO leases (name, holder, expires_at, taken_at) VALUES (?, ?, ?, ?)
            ON CONFLICT (name) DO UPDATE SET
                holder = excluded.holder, expires_at = excluded.expires_at,
                taken_at = CASE WHEN holder = excluded.holder THEN taken_at ELSE excluded.taken_at END
            WHERE holder = excluded.holder OR expires_at < excluded.taken_at
            RETURNING holder
            """,
            (name, holder, until, now),
        )
        return bool(rows) and rows[0][0] == holder

    async def resign_leadership(self, name: str, holder: str) -> None:
        await self._write_count("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder))

    async def leader(self, name: str) -> str | None:
        async with self._transaction(write=False) as db:
            rows = await fetch(db, "SELECT holder FROM leases WHERE name = ? AND expires_at >= ?", (name, self._now()))
        return rows[0][0] if rows else None

    # -- watermarks --------------------------------------------------------------
    async def get_watermark(self, name: str) -> str | None:
        async with self._transaction(write=False) as db:
            rows = await fetch(db, "SELECT value FROM watermarks WHERE name = ?", (name,))
        return rows[0][0] if rows else None

    async def set_watermark(self, name: str, value: str) -> None:
        await self._write_count(
            """
            INSERT INTO watermarks (name, value, updated_at) VALUES (?, ?, ?)
            ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at
            """,
            (name, value, self._now()),
        )
