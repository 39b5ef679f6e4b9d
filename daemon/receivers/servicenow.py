"""The ServiceNow receiver: the doorbell a business rule rings when a record changes.

It carries no data: the worker re-reads the record, so a forged doorbell injects nothing.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime

from aiohttp import web

from ..events import Event
from ..web import (
    Reject,
    ctx_of,
    doorbell_auth,
    parse_json_object,
    read_body,
    require_string,
)
from .common import store_event

SERVICENOW_OPERATIONS = frozenset({"insert", "update", "delete"})
DOORBELL_FIELDS = ("table", "sys_id", "operation", "sys_updated_on", "sys_mod_count")

_SN_TABLE = re.compile(r"[a-z0-9_]{1,80}")
_SN_SYS_ID = re.compile(r"[0-9a-f]{32}")
# [0-9], never \d: \d also matches Arabic-Indic, NKo and fullwidth digits, which would
# make "7" and "٧" two event ids for one change.
_SN_DATETIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}")
_SN_MOD_COUNT = re.compile(r"[0-9]{1,12}")


def valid_datetime(value: str) -> bool:
    try:
        datetime.strptime(value, "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return False
    return True


async def servicenow(request: web.Request) -> web.StreamResponse:
    """The doorbell a ServiceNow business rule rings when a record changes.

    It only says which record changed: the worker re-reads the record through the
    Table API, so a forged doorbell can make the daemon look, never inject data.
    """
    ctx = ctx_of(request)
    doorbell_auth(request, ctx.config.servicenow)
    body = await read_body(request, ctx.config.daemon.max_body_bytes)
    doc = parse_json_object(body)
    for key in doc:
        if key not in DOORBELL_FIELDS:
            raise Reject(400, "bad_envelope", f"{key[:60]}: unknown field (expected {', '.join(DOORBELL_FIELDS)})")
    table = require_string(doc, "table", "table", _SN_TABLE, "a table name (lowercase letters, digits, _)")
    known = ctx.hooks.register_servicenow_tables(ctx=ctx)
    if table not in known:
        # Refused, not stored as "ignored": each stored table would be a new metrics series.
        raise Reject(
            400,
            "unknown_table",
            f"table: no enabled plugin handles {table!r} (handled: {', '.join(sorted(known)) or 'none'})",
        )
    sys_id = require_string(doc, "sys_id", "sys_id", _SN_SYS_ID, "32 lowercase hex characters")
    operation = require_string(doc, "operation", "operation", None, "insert, update or delete")
    if operation not in SERVICENOW_OPERATIONS:
        raise Reject(400, "bad_envelope", "operation: expected insert, update or delete")
    updated = require_string(doc, "sys_updated_on", "sys_updated_on", _SN_DATETIME, "YYYY-MM-DD HH:MM:SS")
    if not valid_datetime(updated):
        raise Reject(400, "bad_envelope", "sys_updated_on: not a valid date and time")

    payload = {"table": table, "sys_id": sys_id, "operation": operation, "sys_updated_on": updated}
    # sys_updated_on has one-second resolution: two changes within a second would
    # share an id and the second would be dropped as a duplicate. sys_mod_count
    # (sent by the shipped business rule; optional for older ones) is unique per change.
    # Without it each delivery gets an id of its own: the doorbell carries no data, so a
    # repeated one costs the worker one read, where a shared id could lose a change.
    version = f"{updated}:{uuid.uuid4().hex}"
    if "sys_mod_count" in doc:
        mod_count = doc["sys_mod_count"]
        if isinstance(mod_count, int) and not isinstance(mod_count, bool) and mod_count >= 0:
            mod_count = str(mod_count)
        if not isinstance(mod_count, str) or not _SN_MOD_COUNT.fullmatch(mod_count):
            raise Reject(400, "bad_envelope", "sys_mod_count: expected a non-negative whole number")
        payload["sys_mod_count"] = mod_count
        version = f"m{mod_count}"
    row_id = await store_event(
        ctx,
        "servicenow",
        Event(
            source="servicenow",
            type=f"{table}.{operation}",
            event_id=f"{table}:{sys_id}:{version}:{operation}",
            resource=f"servicenow:{table}:{sys_id}",
            payload=payload,
        ),
    )
    if row_id is None:
        return web.json_response({"status": "duplicate"}, status=202)
    return web.json_response({"status": "accepted", "id": row_id}, status=202)
