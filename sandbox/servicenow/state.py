"""The instance's data and behaviour, independent of HTTP.

``ServiceNowState`` holds every table in memory and applies what a real instance
does on a write: system fields, incident numbers, the priority lookup, journal
entries for ``work_notes``/``comments``, resolve/close stamps, and the business
rule stand-in ("doorbell") that tells dutybridge a record changed. The HTTP routes
and Python callers (tests, the demo acting as a person in ServiceNow) share these
code paths.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import math
import re
import uuid
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ..faults import FaultInjector
from .query import CompiledQuery, Context, compile_query
from .schema import (
    ANCESTORS,
    BOOLEAN,
    COLUMNS,
    DEFAULT_ACL,
    INTEGER,
    JOURNAL,
    JOURNAL_LIST,
    PRIORITY_MATRIX,
    REFERENCE,
    STRING,
    TABLES,
    Field,
    is_descendant,
)

Record = dict[str, str]
_SYS_ID = re.compile(r"[0-9a-f]{32}")
_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
_NOT_WRITABLE = {
    "sys_created_on",
    "sys_created_by",
    "sys_updated_on",
    "sys_updated_by",
    "sys_mod_count",
    "sys_class_name",
    "sys_id",
}
RATE_LIMIT_RULE_SYS_ID = "5b1fd2d1c3a0301065ba73bc7a40dd4b"


class ServiceNowError(Exception):
    """A failure the Table API reports with a status and ServiceNow's error body."""

    status = 400
    message = "Bad Request"

    def __init__(self, detail: str | None = None, message: str | None = None):
        super().__init__(detail or message or self.message)
        self.detail = detail
        if message is not None:
            self.message = message


class UnknownTable(ServiceNowError, KeyError):
    status = 400

    def __init__(self, table: str):
        super().__init__(None, f"Invalid table {table}")
        self.table = table

    def __str__(self) -> str:
        return self.message


class RecordNotFound(ServiceNowError, KeyError):
    status = 404
    message = "No Record found"

    def __init__(self, table: str, sys_id: str):
        super().__init__("Record doesn't exist or ACL restricts the record retrieval")
        self.table, self.sys_id = table, sys_id

    def __str__(self) -> str:
        return f"no {self.table} record with sys_id {self.sys_id}"


class OperationFailed(ServiceNowError):
    """Data policies, unique keys: what the instance answers 403 "Operation Failed"."""

    status = 403
    message = "Operation Failed"


@dataclass(frozen=True)
class DoorbellConfig:
    url: str
    token: str | None
    basic: tuple[str, str] | None
    tables: tuple[str, ...]
    exclude_users: frozenset[str]
    max_attempts: int
    backoff: tuple[float, ...]
    timeout: float
    mod_count: bool = True


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _stable_id(*parts: str) -> str:
    return hashlib.md5(":".join(parts).encode()).hexdigest()


def _parse_time(value: datetime | str) -> datetime:
    if isinstance(value, str):
        value = datetime.strptime(value, _TIME_FORMAT)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value


class ServiceNowState:
    """An in-memory ServiceNow instance. Build one with ``from_seed``."""

    def __init__(self, seed: dict | None = None):
        seed = copy.deepcopy(dict(seed or {}))
        self._seed = seed
        self.instance_name: str = str(seed.get("instance_name", "sandbox"))
        self.base_url = f"https://{self.instance_name}.service-now.com"  # for links built outside a request
        self.now: Callable[[], datetime] = _utcnow
        self.faults = FaultInjector()
        self.rate_limit_per_hour = int(seed.get("rate_limit_per_hour", 0))
        self.rate_limit_rule = RATE_LIMIT_RULE_SYS_ID
        # glide.invalid_query.returns_no_rows: false on a default instance
        self.invalid_query_returns_no_rows = bool(seed.get("invalid_query_returns_no_rows", False))
        # A data policy making close_code and close_notes mandatory to resolve or close
        # an incident (off on a default instance, where only a UI policy asks for them).
        self.require_close_fields = bool(seed.get("require_close_fields", False))
        self.custom_fields: dict[str, set[str]] = {}
        for table, names in dict(seed.get("custom_fields", {})).items():
            if table not in TABLES:
                raise ValueError(
                    f"servicenow.custom_fields: unknown table {table!r} (known: {', '.join(sorted(TABLES))})"
                )
            self.custom_fields[table] = set(names)
        self.acl: dict[str, dict[str, frozenset[str]]] = {t: dict(v) for t, v in DEFAULT_ACL.items()}
        for table, rules in dict(seed.get("acl", {})).items():
            self.acl[table] = {op: frozenset(rules.get(op, ())) for op in ("read", "write")}
        self.oauth_tokens: dict[str, str] = dict(seed.get("oauth_tokens", {}))  # bearer token -> user_name
        self.doorbell: DoorbellConfig | None = None
        self.doorbell_deliveries: list[dict[str, Any]] = []
        self.ignored_query_terms: list[str] = []
        self._columns_cache: dict[str, tuple[tuple, dict[str, Field]]] = {}
        self._render_cache: dict[tuple, Callable[[Record], dict[str, Any]]] = {}
        self._frozen: datetime | None = None
        self._bell_queue: deque[tuple[DoorbellConfig, dict[str, str]]] = deque()
        self._bell_busy = False
        self._bell_signal: asyncio.Event | None = None
        self._bell_waiters: list[asyncio.Future] = []
        self._bell_attached = False
        self._load()

    @classmethod
    def from_seed(cls, seed: dict | None) -> ServiceNowState:
        return cls(seed)

    # ------------------------------------------------------------------ loading

    def reset(self) -> None:
        """Back to the seeded data. Configuration (clock, doorbell, custom fields,
        ACLs, rate limit, faults) is kept; queued doorbells and records are not."""
        self.faults.reset()
        self._load()

    def _load(self) -> None:
        self.tables: dict[str, dict[str, Record]] = {name: {} for name in TABLES}
        self._numbers: dict[str, int] = {}
        self._journal_index: dict[str, list[Record]] = defaultdict(list)
        self._passwords: dict[str, str] = {}
        self._roles: dict[str, frozenset[str]] = {}
        self._user_ids: dict[str, str] = {}
        self._rate: dict[str, tuple[int, int]] = {}
        self._bell_queue.clear()
        self.doorbell_deliveries.clear()
        self.ignored_query_terms.clear()
        self._seed_records(self._seed)

    def _seed_records(self, seed: dict) -> None:
        stamp = str(seed.get("seeded_at", "2024-01-01 00:00:00"))
        try:
            _parse_time(stamp)
        except ValueError:
            raise ValueError(f"servicenow.seeded_at: expected 'YYYY-MM-DD HH:MM:SS', found {stamp!r}") from None

        def sys_id_of(where: str, item: dict) -> str:
            value = item.get("sys_id")
            if not isinstance(value, str) or not _SYS_ID.fullmatch(value):
                raise ValueError(f"servicenow.{where}.sys_id: expected 32 lowercase hex digits, found {value!r}")
            return value

        def put(table: str, fields: dict, where: str) -> Record:
            try:
                return self._insert(table, fields, "admin", stamp=stamp, fire=False)
            except ServiceNowError as exc:
                raise ValueError(f"servicenow.{where}: {exc}") from None

        def need(table: str, sys_id: str, where: str) -> None:
            if sys_id not in self.tables[table]:
                raise ValueError(f"servicenow.{where}: no {table} record with sys_id {sys_id!r}")

        for i, user in enumerate(seed.get("users", [])):
            where = f"users[{i}]"
            sys_id_of(where, user)
            if not user.get("user_name"):
                raise ValueError(f"servicenow.{where}: user_name is required")
            fields = {k: v for k, v in user.items() if k not in ("roles", "password")}
            put("sys_user", fields, where)
            if user.get("password") is not None:
                self._passwords[user["user_name"]] = str(user["password"])
            self._roles[user["user_name"]] = frozenset(user.get("roles", ()))
            self._role_records(user["user_name"], stamp)
        for i, group in enumerate(seed.get("groups", [])):
            where = f"groups[{i}]"
            group_id = sys_id_of(where, group)
            if group.get("manager"):
                need("sys_user", group["manager"], f"{where}.manager")
            put("sys_user_group", {k: v for k, v in group.items() if k != "members"}, where)
            for j, member in enumerate(group.get("members", [])):
                need("sys_user", member, f"{where}.members[{j}]")
                put(
                    "sys_user_grmember",
                    {"sys_id": _stable_id("grmember", group_id, member), "group": group_id, "user": member},
                    f"{where}.members[{j}]",
                )
        for i, ci in enumerate(seed.get("cis", [])):
            where = f"cis[{i}]"
            sys_id_of(where, ci)
            cls = ci.get("sys_class_name", "cmdb_ci")
            if cls not in TABLES or not is_descendant(cls, "cmdb_ci"):
                raise ValueError(f"servicenow.{where}.sys_class_name: {cls!r} is not a cmdb_ci class")
            if ci.get("assignment_group"):
                need("sys_user_group", ci["assignment_group"], f"{where}.assignment_group")
            put(cls, ci, where)
        for i, rel_type in enumerate(seed.get("rel_types", [])):
            where = f"rel_types[{i}]"
            sys_id_of(where, rel_type)
            fields = dict(rel_type)
            parent, _, child = str(fields.get("name", "")).partition("::")
            fields.setdefault("parent_descriptor", parent)
            fields.setdefault("child_descriptor", child)
            put("cmdb_rel_type", fields, where)
        for i, rel in enumerate(seed.get("relationships", [])):
            where = f"relationships[{i}]"
            for key, table in (("parent", "cmdb_ci"), ("child", "cmdb_ci"), ("type", "cmdb_rel_type")):
                need(table, str(rel.get(key)), f"{where}.{key}")
            fields = dict(rel)
            fields.setdefault("sys_id", _stable_id("rel", rel["parent"], rel["child"], rel["type"]))
            put("cmdb_rel_ci", fields, where)
        for table, items in dict(seed.get("records", {})).items():
            if table not in TABLES:
                raise ValueError(f"servicenow.records: unknown table {table!r}")
            for i, fields in enumerate(items):
                put(table, fields, f"records.{table}[{i}]")

    # ------------------------------------------------------------------ clock

    def set_time(self, when: datetime | str) -> None:
        """Freeze the clock at ``when`` (a datetime, or 'YYYY-MM-DD HH:MM:SS' UTC)."""
        self._frozen = _parse_time(when)
        self.now = lambda: self._frozen  # type: ignore[return-value]

    def advance(self, seconds: float) -> None:
        """Move a frozen clock on (freezing it at the current time first if needed)."""
        if self._frozen is None:
            self.set_time(self.now())
        self._frozen = self._frozen + timedelta(seconds=seconds)  # type: ignore[operator]

    def timestamp(self) -> str:
        """Now, as the instance writes it: UTC with one-second resolution."""
        now = self.now()
        if now.tzinfo is not None:
            now = now.astimezone(UTC)
        return now.strftime(_TIME_FORMAT)

    # ------------------------------------------------------------------ schema

    def table_exists(self, table: str) -> bool:
        return table in TABLES

    def columns(self, table: str) -> dict[str, Field]:
        """The columns of ``table``: the dictionary's plus configured custom ones."""
        if table not in TABLES:
            raise UnknownTable(table)
        extra = tuple(name for t in ANCESTORS[table] for name in sorted(self.custom_fields.get(t, ())))
        if not extra:
            return COLUMNS[table]
        cached = self._columns_cache.get(table)
        if cached and cached[0] == extra:
            return cached[1]
        merged = dict(COLUMNS[table])
        for name in extra:
            merged.setdefault(name, Field(name, STRING))
        self._columns_cache[table] = (extra, merged)
        return merged

    def allowed(self, roles: Iterable[str], table: str, operation: str) -> bool:
        """Whether a user with ``roles`` may ``operation`` ("read"/"write") ``table``."""
        roles = frozenset(roles)
        if "admin" in roles:
            return True
        for name in ANCESTORS.get(table, (table,)):
            if name in self.acl:
                return bool(self.acl[name].get(operation, frozenset()) & roles)
        return False

    # ------------------------------------------------------------------ users

    def set_password(self, user_name: str, password: str, roles: Iterable[str] | None = None) -> None:
        """Let ``user_name`` (a sys_user record) call the API; optionally set roles."""
        self._passwords[user_name] = password
        if roles is not None:
            self.set_roles(user_name, roles)

    def set_roles(self, user_name: str, roles: Iterable[str]) -> None:
        """Give ``user_name`` exactly ``roles``: what the ACLs check and what
        ``sys_user_has_role`` (with ``sys_user_role``) shows over the Table API."""
        self._roles[user_name] = frozenset(roles)
        self._role_records(user_name)

    def _role_records(self, user_name: str, stamp: str | None = None) -> None:
        user_id = self._user_ids.get(user_name)
        if not user_id:
            return
        roles = self._roles.get(user_name, frozenset())
        by_name = {r["name"]: sid for sid, r in self.tables["sys_user_role"].items()}
        for role in sorted(roles - set(by_name)):
            rec = self._insert(
                "sys_user_role", {"sys_id": _stable_id("role", role), "name": role}, "admin", stamp=stamp, fire=False
            )
            by_name[role] = rec["sys_id"]
        held = {r["role"]: sid for sid, r in self.tables["sys_user_has_role"].items() if r["user"] == user_id}
        wanted = {by_name[role] for role in roles}
        for role_id in sorted(wanted - set(held)):
            self._insert(
                "sys_user_has_role",
                {"sys_id": _stable_id("has_role", user_id, role_id), "user": user_id, "role": role_id},
                "admin",
                stamp=stamp,
                fire=False,
            )
        for role_id in set(held) - wanted:
            del self.tables["sys_user_has_role"][held[role_id]]

    def roles_of(self, user_name: str) -> frozenset[str]:
        return self._roles.get(user_name, frozenset())

    def user_sys_id(self, user_name: str) -> str:
        return self._user_ids.get(user_name, "")

    def authenticate(self, user_name: str, password: str) -> bool:
        expected = self._passwords.get(user_name)
        if expected is None or expected != password:
            return False
        record = self.tables["sys_user"].get(self._user_ids.get(user_name, ""))
        return record is not None and record.get("active") == "true" and record.get("locked_out") != "true"

    def user_for_token(self, token: str) -> str | None:
        user_name = self.oauth_tokens.get(token)
        if user_name is None:
            return None
        record = self.tables["sys_user"].get(self._user_ids.get(user_name, ""))
        return user_name if record is not None and record.get("active") == "true" else None

    def rate_limit(self, user_name: str) -> tuple[bool, dict[str, str]]:
        """Count one request; (allowed, rate-limit headers). Windows are clock hours."""
        limit = self.rate_limit_per_hour
        if not limit:
            return True, {}
        now = _parse_time(self.now()).timestamp()
        window = int(now // 3600) * 3600
        reset = window + 3600
        start, count = self._rate.get(user_name, (window, 0))
        if start != window:
            count = 0
        headers = {
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Reset": str(reset),
            "X-RateLimit-Rule": self.rate_limit_rule,
        }
        if count >= limit:
            headers["Retry-After"] = str(max(1, math.ceil(reset - now)))
            return False, headers
        self._rate[user_name] = (window, count + 1)
        return True, headers

    # ------------------------------------------------------------------ reads

    def _context(self, user: str = "admin") -> Context:
        return Context(
            columns=self.columns,
            lookup=lambda table, sys_id: self.tables[table].get(sys_id),
            now=self.now,
            user_sys_id=self._user_ids.get(user, ""),
            display_lookup=self.find_by_display_value,
        )

    def compile(
        self, table: str, query: str | None, *, user: str = "admin", extra: list[tuple[str, str]] = ()
    ) -> CompiledQuery:
        if table not in TABLES:
            raise UnknownTable(table)
        compiled = compile_query(
            table, query, self._context(user), extra=extra, invalid_returns_no_rows=self.invalid_query_returns_no_rows
        )
        if compiled.invalid:
            self.ignored_query_terms.extend(compiled.invalid)
            del self.ignored_query_terms[:-100]
        return compiled

    def select(
        self, table: str, query: str | None = None, *, user: str = "admin", extra: list[tuple[str, str]] = ()
    ) -> list[Record]:
        """Matching records (the stored dicts, not copies), in query order. With no
        ORDERBY the order is by sys_id, like an unordered database scan: do not rely on it."""
        compiled = self.compile(table, query, user=user, extra=extra)
        rows = self.tables[table]
        narrow = compiled.narrowing()
        # Filtered, then only the matches sorted; a query with an equality term in each
        # group first tests those inline (a table of thousands, queried once a sync).
        if narrow is None:
            keys = [k for k, r in rows.items() if compiled.matches(r)]
        elif len(narrow) == 1:
            [(column, value)] = narrow
            keys = [k for k, r in rows.items() if r.get(column, "").lower() == value and compiled.matches(r)]
        else:
            keys = [
                k
                for k, r in rows.items()
                if any(r.get(column, "").lower() == value for column, value in narrow) and compiled.matches(r)
            ]
        return compiled.sort([rows[k] for k in sorted(keys)])

    def query(self, table: str, encoded_query: str | None = None) -> list[Record]:
        """Copies of the records matching ``encoded_query``, in query order."""
        return [dict(r) for r in self.select(table, encoded_query)]

    def get(self, table: str, sys_id: str) -> Record | None:
        if table not in TABLES:
            raise UnknownTable(table)
        record = self.tables[table].get(sys_id)
        return dict(record) if record is not None else None

    def display_value(self, table: str, sys_id: str) -> str:
        """The display value of the record ``sys_id`` of ``table`` ("" when unknown)."""
        record = self.tables.get(table, {}).get(sys_id)
        if record is None:
            return ""
        column = TABLES[table].display
        return record.get(column, "") if column else ""

    def find_by_display_value(self, table: str, text: str) -> str | None:
        column = TABLES[table].display if table in TABLES else None
        if not column:
            return None
        wanted = text.lower()
        for sys_id in sorted(self.tables[table]):
            if self.tables[table][sys_id].get(column, "").lower() == wanted:
                return sys_id
        return None

    def journal(self, table: str, sys_id: str, element: str | None = "work_notes") -> list[Record]:
        """Journal entries (sys_journal_field) of a record, oldest first; all elements when None."""
        if table not in TABLES:
            raise UnknownTable(table)
        return [dict(e) for e in self._journal_index.get(sys_id, []) if element is None or e["element"] == element]

    def journal_text(self, sys_id: str, elements: tuple[str, ...]) -> str:
        """A journal field's display value: entries newest first, as a form shows them."""
        labels = {"work_notes": "Work notes", "comments": "Additional comments"}
        parts = []
        for entry in reversed(self._journal_index.get(sys_id, [])):
            if entry["element"] not in elements:
                continue
            who = entry["sys_created_by"]
            user = self.tables["sys_user"].get(self._user_ids.get(who, ""))
            name = user.get("name") if user else None
            label = labels.get(entry["element"], entry["element"])
            parts.append(f"{entry['sys_created_on']} - {name or who} ({label})\n{entry['value']}\n\n")
        return "".join(parts)

    # ------------------------------------------------------------------ writes

    def insert(self, table: str, fields: dict[str, Any], user: str = "admin") -> Record:
        """Insert as ``user`` (a user_name), firing business rules and the doorbell."""
        return dict(self._insert(table, fields, user))

    def update(self, table: str, sys_id: str, fields: dict[str, Any], user: str = "admin") -> Record:
        """Update as ``user``; a write that changes nothing is no update (as on an instance)."""
        return dict(self._update(table, sys_id, fields, user))

    def delete(self, table: str, sys_id: str, user: str = "admin") -> None:
        if table not in TABLES:
            raise UnknownTable(table)
        record = self.tables[table].get(sys_id)
        if record is None:
            raise RecordNotFound(table, sys_id)
        cls = self._class_of(table, record)
        for name in ANCESTORS[cls]:
            self.tables[name].pop(sys_id, None)
        if cls == "sys_user":
            self._user_ids.pop(record.get("user_name", ""), None)
        self._ring(cls, sys_id, "delete", self.timestamp(), user, str(int(record.get("sys_mod_count") or 0) + 1))

    @staticmethod
    def _class_of(table: str, record: Record) -> str:
        cls = record.get("sys_class_name") or table
        return cls if cls in TABLES else table

    def _coerce(self, column: Field, value: Any) -> str:
        if isinstance(value, dict):  # {"value": ...} as some clients send references
            value = value.get("value", value.get("sys_id", ""))
        if value is None:
            text = ""
        elif isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, float) and value.is_integer():
            text = str(int(value))
        elif isinstance(value, (list, tuple)):
            text = ",".join(str(v) for v in value)
        else:
            text = str(value)
        kind = column.kind
        if kind == BOOLEAN:
            return "true" if text.lower() in ("true", "1", "yes") else "false"
        if kind == INTEGER and text:
            try:
                return str(int(text))
            except ValueError:
                return text
        if kind == REFERENCE and text and column.ref:
            if text not in self.tables[column.ref]:
                found = self.find_by_display_value(column.ref, text)
                if found is not None:
                    return found
        return text

    def _writable(self, columns: dict[str, Field], fields: dict[str, Any]):
        for name, value in fields.items():
            column = columns.get(name)
            if column is None or name in _NOT_WRITABLE or column.kind == JOURNAL_LIST:
                continue  # unknown or system columns: ignored, as the Table API does
            yield name, column, self._coerce(column, value)

    def _insert(
        self, table: str, fields: dict[str, Any], user: str, *, stamp: str | None = None, fire: bool = True
    ) -> Record:
        if table not in TABLES:
            raise UnknownTable(table)
        if table == "sys_journal_field":  # a direct journal insert (admins only over HTTP)
            entry = {name: value for name, _, value in self._writable(self.columns(table), fields)}
            return self._add_journal(
                entry.get("name", ""),
                entry.get("element_id", ""),
                entry.get("element", ""),
                entry.get("value", ""),
                user,
                stamp or self.timestamp(),
            )
        cls = table
        wanted = fields.get("sys_class_name")
        if isinstance(wanted, str) and wanted != table and wanted in TABLES and is_descendant(wanted, table):
            cls = wanted
        stamp = stamp or self.timestamp()
        record: Record = {name: column.default for name, column in self.columns(cls).items()}
        sys_id = fields.get("sys_id")
        root = self.tables[ANCESTORS[cls][-1]]
        if isinstance(sys_id, str) and _SYS_ID.fullmatch(sys_id):
            if sys_id in root:
                raise OperationFailed(
                    f"Unique Key violation detected by database (Duplicate entry '{sys_id}' for key 'PRIMARY')"
                )
        else:
            sys_id = uuid.uuid4().hex
        journals = []
        for name, column, value in self._writable(self.columns(table), fields):
            if column.kind == JOURNAL:
                if value.strip():
                    journals.append((name, value))
            else:
                record[name] = value
        record.update(
            sys_id=sys_id,
            sys_created_on=stamp,
            sys_created_by=user,
            sys_updated_on=stamp,
            sys_updated_by=user,
            sys_mod_count="0",
        )
        if "sys_class_name" in record:
            record["sys_class_name"] = cls
        self._rules(cls, record, None, user, stamp)
        for name in ANCESTORS[cls]:
            self.tables[name][sys_id] = record
        if cls == "sys_user" and record.get("user_name"):
            self._user_ids[record["user_name"]] = sys_id
        for name, value in journals:
            self._add_journal(cls, sys_id, name, value, user, stamp)
        if fire:
            self._ring(cls, sys_id, "insert", stamp, user, str(record.get("sys_mod_count") or "0"))
        return record

    def _update(self, table: str, sys_id: str, fields: dict[str, Any], user: str, *, fire: bool = True) -> Record:
        if table not in TABLES:
            raise UnknownTable(table)
        record = self.tables[table].get(sys_id)
        if record is None:
            raise RecordNotFound(table, sys_id)
        cls = self._class_of(table, record)
        changes: Record = {}
        journals = []
        for name, column, value in self._writable(self.columns(table), fields):
            if column.kind == JOURNAL:
                if value.strip():
                    journals.append((name, value))
            elif record.get(name, "") != value:
                changes[name] = value
        if not changes and not journals:
            return record
        stamp = self.timestamp()
        candidate = dict(record)
        candidate.update(changes)
        self._rules(cls, candidate, record, user, stamp)
        if candidate == record and not journals:
            return record
        old_user_name = record.get("user_name")
        candidate.update(
            sys_updated_on=stamp, sys_updated_by=user, sys_mod_count=str(int(record.get("sys_mod_count") or 0) + 1)
        )
        record.update(candidate)
        if cls == "sys_user" and old_user_name != record.get("user_name"):
            self._user_ids.pop(old_user_name or "", None)
            self._user_ids[record["user_name"]] = sys_id
        for name, value in journals:
            self._add_journal(cls, sys_id, name, value, user, stamp)
        if fire:
            self._ring(cls, sys_id, "update", stamp, user, record["sys_mod_count"])
        return record

    def _add_journal(self, cls: str, element_id: str, element: str, value: str, user: str, stamp: str) -> Record:
        entry = {
            "sys_id": uuid.uuid4().hex,
            "sys_created_on": stamp,
            "sys_created_by": user,
            "element_id": element_id,
            "element": element,
            "name": cls,
            "value": value,
        }
        self.tables["sys_journal_field"][entry["sys_id"]] = entry
        self._journal_index[element_id].append(entry)
        return entry

    def _next_number(self, cls: str) -> str:
        prefix = next(TABLES[t].number_prefix for t in ANCESTORS[cls] if TABLES[t].number_prefix)
        n = self._numbers.get(prefix, 10001)
        self._numbers[prefix] = n + 1
        return f"{prefix}{n:07d}"

    # ------------------------------------------------------------------ business rules

    def _rules(self, cls: str, record: Record, previous: Record | None, user: str, stamp: str) -> None:
        lineage = ANCESTORS[cls]
        if "task" in lineage:
            self._task_rules(lineage, record, previous, user, stamp)
        elif cls == "sys_user":
            if (
                previous is None
                or record.get("first_name") != previous.get("first_name")
                or record.get("last_name") != previous.get("last_name")
            ):
                full = f"{record.get('first_name', '')} {record.get('last_name', '')}".strip()
                if full and (previous is not None or not record.get("name")):
                    record["name"] = full

    def _task_rules(
        self, lineage: tuple[str, ...], record: Record, previous: Record | None, user: str, stamp: str
    ) -> None:
        user_id = self._user_ids.get(user, "")
        if previous is None:
            if not record.get("number"):
                record["number"] = self._next_number(lineage[0])
            if not record.get("opened_at"):
                record["opened_at"] = stamp
            if not record.get("opened_by"):
                record["opened_by"] = user_id
        state = record.get("state", "")
        old_state = previous.get("state") if previous else None
        if "incident" in lineage or "sn_si_incident" in lineage:
            # The Priority data lookup: priority always follows impact x urgency.
            priority = PRIORITY_MATRIX.get((record.get("impact", ""), record.get("urgency", "")))
            if priority:
                record["priority"] = priority
        if "incident" in lineage:
            record["incident_state"] = state
            if state != old_state:
                if state == "6":
                    record["resolved_at"], record["resolved_by"] = stamp, user_id
                elif state == "7":
                    record["closed_at"], record["closed_by"] = stamp, user_id
                    if not record.get("resolved_at"):
                        record["resolved_at"], record["resolved_by"] = stamp, user_id
                elif old_state in ("6", "7"):  # reopened
                    for name in ("resolved_at", "resolved_by", "closed_at", "closed_by"):
                        record[name] = ""
                    record["reopen_count"] = str(int(record.get("reopen_count") or 0) + 1)
                if self.require_close_fields and state in ("6", "7"):
                    missing = [
                        label
                        for name, label in (("close_code", "Resolution code"), ("close_notes", "Resolution notes"))
                        if not record.get(name)
                    ]
                    if missing:
                        raise OperationFailed(
                            f"Data Policy Exception: \n\tThe following fields are mandatory: {', '.join(missing)}\n"
                        )
            record["active"] = "false" if state in ("7", "8") else "true"
        elif "sn_si_incident" in lineage:
            if state != old_state and state == "3":
                record["closed_at"], record["closed_by"] = stamp, user_id
            record["active"] = "false" if state in ("3", "7") else "true"
        if (
            previous is not None
            and previous.get("assignment_group")
            and record.get("assignment_group") != previous.get("assignment_group")
        ):
            record["reassignment_count"] = str(int(record.get("reassignment_count") or 0) + 1)

    # ------------------------------------------------------------------ doorbell

    def configure_doorbell(
        self,
        url: str | None,
        token: str | None = None,
        basic: tuple[str, str] | None = None,
        tables: Iterable[str] = ("incident",),
        *,
        exclude_users: Iterable[str] = (),
        max_attempts: int = 6,
        backoff: Iterable[float] = (0.01, 0.02, 0.05, 0.1, 0.2),
        timeout: float = 5.0,
        mod_count: bool = True,
    ) -> None:
        """The business rule stand-in: on insert/update/delete of ``tables`` (and
        their child classes), POST ``{"table", "sys_id", "operation",
        "sys_updated_on"}`` to ``url`` with a bearer ``token`` or ``basic``
        (user, password) credentials. ``url=None`` turns it off. Changes made by
        ``exclude_users`` ring nothing (a rule condition on the updating user).
        ``mod_count=False``: the post carries no ``sys_mod_count`` (an older or
        hand-written business rule)."""
        if url is None:
            self.doorbell = None
            return
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"doorbell url must be http(s), found {url!r}")
        if (token is None) == (basic is None):
            raise ValueError("doorbell needs exactly one of a bearer token or basic credentials")
        tables = tuple(tables)
        for table in tables:
            if table not in TABLES:
                raise UnknownTable(table)
        if max_attempts < 1:
            raise ValueError("doorbell max_attempts must be at least 1")
        self.doorbell = DoorbellConfig(
            url=url,
            token=token,
            basic=tuple(basic) if basic is not None else None,  # type: ignore[arg-type]
            tables=tables,
            exclude_users=frozenset(exclude_users),
            max_attempts=max_attempts,
            backoff=tuple(backoff) or (0.0,),
            timeout=timeout,
            mod_count=mod_count,
        )

    def _ring(self, cls: str, sys_id: str, operation: str, stamp: str, user: str, mod_count: str) -> None:
        config = self.doorbell
        if config is None or user in config.exclude_users:
            return
        if not any(name in config.tables for name in ANCESTORS[cls]):
            return
        payload = {"table": cls, "sys_id": sys_id, "operation": operation, "sys_updated_on": stamp}
        if config.mod_count:
            payload["sys_mod_count"] = mod_count
        self._bell_queue.append((config, payload))
        if self._bell_signal is not None:
            self._bell_signal.set()

    @property
    def doorbells_pending(self) -> int:
        return len(self._bell_queue)

    async def drain_doorbells(self, timeout: float = 5.0) -> None:
        """Wait until every queued doorbell was delivered (or given up on)."""
        if not self._bell_queue and not self._bell_busy:
            return
        if not self._bell_attached:
            raise RuntimeError(
                f"{len(self._bell_queue)} doorbell(s) queued but no ServiceNow sandbox app is running to deliver them"
            )
        future = asyncio.get_running_loop().create_future()
        self._bell_waiters.append(future)
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise TimeoutError(
                f"doorbells not delivered within {timeout}s: {len(self._bell_queue)} still queued"
            ) from None

    def _bell_idle(self) -> None:
        waiters, self._bell_waiters = self._bell_waiters, []
        for future in waiters:
            if not future.done():
                future.set_result(None)
