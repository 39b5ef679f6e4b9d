"""What ``dutybridge events list|show|replay|purge`` does, as functions of a Store. Each writes
to ``out`` (errors to ``err``, stderr by default), returns the exit code; parsing is in the CLI.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import Any, TextIO, get_args

from .events import EventStatus, StoredEvent
from .store.base import Store

STATUSES: tuple[str, ...] = get_args(EventStatus)
ERROR_WIDTH = 60


def _when(dt: datetime | None) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ") if dt else "-"


def _iso(dt: datetime | None) -> str | None:
    return dt.isoformat().replace("+00:00", "Z") if dt else None


def _short(text: str | None, width: int) -> str:
    if not text:
        return ""
    text = " ".join(text.split())  # tracebacks and multi-line messages on one row
    return text if len(text) <= width else text[: width - 3] + "..."


def event_dict(ev: StoredEvent, *, payload: bool = True) -> dict[str, Any]:
    """An event as JSON-ready data, in a stable field order."""
    out: dict[str, Any] = {
        "id": ev.id,
        "status": ev.status,
        "attempts": ev.attempts,
        "source": ev.source,
        "type": ev.type,
        "event_id": ev.event_id,
        "resource": ev.resource,
        "received_at": _iso(ev.received_at),
        "updated_at": _iso(ev.updated_at),
        "next_attempt_at": _iso(ev.next_attempt_at),
        "owner": ev.owner,
        "lease_expires_at": _iso(ev.lease_expires_at),
        "last_error": ev.last_error,
    }
    if payload:
        out["payload"] = ev.payload
    return out


def _table(rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        line = "  ".join(cell.ljust(w) for cell, w in zip(row, widths))
        print(line.rstrip(), file=out)


async def list_events(
    store: Store,
    out: TextIO,
    status: str | None = None,
    limit: int = 50,
    as_json: bool = False,
    *,
    err: TextIO | None = None,
) -> int:
    """The newest ``limit`` events (of ``status``): a table, or one JSON object per line
    (for ``jq`` and ``grep``; payloads are left to ``show``)."""
    err = err or sys.stderr
    if status is not None and status not in STATUSES:
        print(f"unknown status {status!r}; one of: {', '.join(STATUSES)}", file=err)
        return 2
    if limit < 1:
        print(f"--limit must be at least 1, not {limit}", file=err)
        return 2
    events = await store.list_events(status=status, limit=limit)  # type: ignore[arg-type]
    if as_json:
        for ev in events:
            print(json.dumps(event_dict(ev, payload=False), ensure_ascii=False), file=out)
        return 0
    if events:
        rows = [["ID", "STATUS", "ATTEMPTS", "SOURCE", "TYPE", "RESOURCE", "RECEIVED", "LAST ERROR"]]
        for ev in events:
            rows.append(
                [
                    str(ev.id),
                    ev.status,
                    str(ev.attempts),
                    ev.source,
                    ev.type,
                    ev.resource,
                    _when(ev.received_at),
                    _short(ev.last_error, ERROR_WIDTH),
                ]
            )
        _table(rows, out)
        if len(events) == limit:
            print(f"(the newest {limit}; use --limit for more)", file=out)
    else:
        print(f"no {status} events" if status else "no events", file=out)
    counts = await store.counts()
    print("  ".join(f"{name}: {counts.get(name, 0)}" for name in STATUSES), file=out)
    return 0


async def show_event(store: Store, out: TextIO, id: int, *, err: TextIO | None = None) -> int:
    """One event in full, payload included, as JSON."""
    ev = await store.get_event(id)
    if ev is None:
        print(f"no event with id {id} (see: dutybridge events list)", file=err or sys.stderr)
        return 1
    json.dump(event_dict(ev), out, indent=2, ensure_ascii=False)
    print(file=out)
    return 0


async def replay_event(store: Store, out: TextIO, id: int, *, err: TextIO | None = None) -> int:
    """Make one dead, done or ignored event pending again."""
    if await store.replay(id):
        print(f"event {id} is pending again; the worker handles it next", file=out)
        return 0
    ev = await store.get_event(id)
    if ev is None:
        print(f"no event with id {id} (see: dutybridge events list)", file=err or sys.stderr)
    else:
        print(f"event {id} is {ev.status}; only dead, done or ignored events can be replayed", file=err or sys.stderr)
    return 1


async def replay_dead(store: Store, out: TextIO) -> int:
    """Make every dead event pending again."""
    count = await store.replay_dead()
    if count:
        print(f"{count} dead event{'s' if count != 1 else ''} pending again", file=out)
    else:
        print("no dead events", file=out)
    return 0


async def purge_dead(store: Store, out: TextIO) -> int:
    """Delete every dead event."""
    count = await store.purge_dead()
    print(f"deleted {count} dead event{'s' if count != 1 else ''}", file=out)
    return 0
