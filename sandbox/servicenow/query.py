"""ServiceNow encoded queries (``sysparm_query``): parse once, then filter and order.

Grammar, as the Table API reads it::

    query   := group ( "^NQ" group )*
    group   := clause ( "^" clause )*            (AND)
    clause  := term ( "^OR" term )*              (OR binds tighter than AND)
    term    := field op value | ORDERBY field | ORDERBYDESC field
    field   := column ( "." column )*            (dot-walks through reference columns)

A literal ``^`` inside a value is written ``^^``. As on a real instance, a term
naming an unknown column or using an operator this reading does not know is
dropped and the rest of the query still applies (the instance property
``glide.invalid_query.returns_no_rows`` turns that into "no rows": see
``ServiceNowState.invalid_query_returns_no_rows``). Dropped terms are recorded on
``CompiledQuery.invalid`` so tests can see them.

Comparisons follow the instance's database: string matches are case-insensitive,
``!=``/``NOT IN``/``NOTLIKE`` also match empty values, ordering comparisons never
match empty values, integer columns compare as numbers and date-times compare as
``YYYY-MM-DD HH:MM:SS`` text.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from .schema import BOOLEAN, INTEGER, REFERENCE, Field, is_descendant

Record = dict[str, str]
Getter = Callable[[Record], str]
Predicate = Callable[[Record], bool]

_FIELD = re.compile(r"[a-z0-9_]+(?:\.[a-z0-9_]+)*")
_UNARY = ("ISNOTEMPTY", "ISEMPTY", "ANYTHING", "EMPTYSTRING")
_BINARY = (
    "NOT IN",
    "NOTLIKE",
    "STARTSWITH",
    "ENDSWITH",
    "LIKE",
    "INSTANCEOF",
    "IN",
    "BETWEEN",
    "NSAMEAS",
    "SAMEAS",
    "!=",
    ">=",
    "<=",
    "=",
    ">",
    "<",
)
_SYS_ID = re.compile(r"[0-9a-f]{32}")
_JS_DATE = re.compile(r"gs\.dateGenerate\(\s*'([^']*)'\s*,\s*'([^']*)'\s*\)")
_JS_AGO = re.compile(r"gs\.(minutes|hours|days)Ago(?:Start)?\(\s*(\d+)\s*\)")


@dataclass
class Context:
    """What compiling a query needs from the state."""

    columns: Callable[[str], dict[str, Field]]  # table -> its columns (custom ones included)
    lookup: Callable[[str, str], Record | None]  # (table, sys_id) -> record
    now: Callable[[], datetime]
    user_sys_id: str = ""
    display_lookup: Callable[[str, str], str | None] | None = None  # (table, display value) -> sys_id


@dataclass
class CompiledQuery:
    groups: list[list[list[Predicate]]] = field(default_factory=list)  # NQ groups of AND-ed OR-clauses
    order: list[tuple[Getter, Field, bool]] = field(default_factory=list)  # (getter, field, descending)
    invalid: list[str] = field(default_factory=list)
    no_rows: bool = False

    def matches(self, record: Record) -> bool:
        if self.no_rows:
            return False
        if not self.groups:
            return True
        for group in self.groups:
            for clause in group:
                for predicate in clause:
                    if predicate(record):
                        break
                else:
                    break  # a clause with no true term: this group fails
            else:
                return True
        return False

    def narrowing(self) -> list[tuple[str, str]] | None:
        """(column, value) pairs, one a group, that every matching record has one of (see
        ``Narrowed``); None when some group has no such term (or there is no query)."""
        if self.no_rows or not self.groups:
            return None
        out = []
        for group in self.groups:
            term = next((c[0] for c in group if len(c) == 1 and isinstance(c[0], Narrowed)), None)
            if term is None:
                return None
            out.append((term.column, term.value))
        return out

    def sort(self, records: list[Record]) -> list[Record]:
        for getter, column, descending in reversed(self.order):
            records.sort(key=_sort_key(getter, column), reverse=descending)
        return records


def _sort_key(getter: Getter, column: Field) -> Callable[[Record], tuple]:
    if column.kind == INTEGER:

        def key(r: Record) -> tuple:
            v = getter(r)
            try:
                return (1, int(v), "")
            except ValueError:
                return (0 if v == "" else 1, 0, v)

        return key
    return lambda r: (getter(r) != "", getter(r).lower())


def _as_int(value: str) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _resolve_js(value: str, ctx: Context) -> str | None:
    """The value of a ``javascript:`` operand this sandbox understands, else None."""
    body = value[len("javascript:") :].strip()
    if body in ("gs.getUserID()", "gs.getUserID();"):
        return ctx.user_sys_id
    if body.startswith("gs.nowDateTime()"):
        return ctx.now().strftime("%Y-%m-%d %H:%M:%S")
    m = _JS_DATE.fullmatch(body.rstrip(";"))
    if m:
        return f"{m.group(1)} {m.group(2)}".strip()
    m = _JS_AGO.fullmatch(body.rstrip(";"))
    if m:
        delta = timedelta(**{m.group(1): int(m.group(2))})
        return (ctx.now() - delta).strftime("%Y-%m-%d %H:%M:%S")
    return None


class Narrowed:
    """An equality term on a plain column: ``record.get(column, "").lower() == value`` is
    all it tests, so a scan can test that inline before running the whole query."""

    __slots__ = ("column", "predicate", "value")

    def __init__(self, predicate: Predicate, column: str, value: str) -> None:
        self.predicate, self.column, self.value = predicate, column, value

    def __call__(self, record: Record) -> bool:
        return self.predicate(record)


class InvalidTerm(Exception):
    pass


def resolve_path(table: str, text: str, ctx: Context) -> tuple[Getter, Field]:
    """A getter for a (possibly dot-walked) column and the last column's definition."""
    names = text.split(".")
    columns = ctx.columns(table)
    column = columns.get(names[0])
    if column is None:
        raise InvalidTerm(f"unknown column {names[0]!r} on {table}")
    if len(names) == 1:
        name = column.name
        return (lambda r: r.get(name, "")), column
    if column.kind != REFERENCE or column.ref is None:
        raise InvalidTerm(f"{names[0]!r} on {table} is not a reference: cannot dot-walk")
    inner, last = resolve_path(column.ref, ".".join(names[1:]), ctx)
    name, ref_table, lookup = column.name, column.ref, ctx.lookup

    def walk(r: Record) -> str:
        sys_id = r.get(name, "")
        if not sys_id:
            return ""
        target = lookup(ref_table, sys_id)
        return inner(target) if target is not None else ""

    return walk, last


def _normalise(column: Field, value: str) -> str:
    if column.kind == INTEGER:
        n = _as_int(value)
        return str(n) if n is not None else value.lower()
    if column.kind == BOOLEAN:
        low = value.lower()
        return {"1": "true", "0": "false"}.get(low, low)
    return value.lower()


def _predicate(table: str, term: str, ctx: Context, display_values: bool = False) -> Predicate:
    m = _FIELD.match(term)
    if not m:
        raise InvalidTerm("no column name")
    get, column = resolve_path(table, m.group(0), ctx)
    rest = term[m.end() :]
    for op in _UNARY:
        if rest == op:
            if op in ("ISEMPTY", "EMPTYSTRING"):
                return lambda r: get(r) == ""
            if op == "ISNOTEMPTY":
                return lambda r: get(r) != ""
            return lambda r: True
    for op in _BINARY:
        if rest.startswith(op):
            raw = rest[len(op) :]
            break
    else:
        raise InvalidTerm(f"unknown operator in {rest!r}")

    def value_of(text: str) -> str:
        if text.startswith("javascript:"):
            resolved = _resolve_js(text, ctx)
            if resolved is None:
                raise InvalidTerm(f"unsupported script value {text!r}")
            return resolved
        if display_values:
            return _from_display(column, text, ctx)
        return text

    if op in ("=", "!="):
        q = _normalise(column, value_of(raw))
        if column.kind == INTEGER and _as_int(q) is not None:

            def eq(r: Record) -> bool:
                return _normalise(column, get(r)) == q
        else:

            def eq(r: Record) -> bool:
                return get(r).lower() == q if column.kind != BOOLEAN else _normalise(column, get(r)) == q

        if op == "=":
            if "." not in m.group(0) and column.kind not in (INTEGER, BOOLEAN):
                # A plain column's value, case-folded: what a scan may test first (Narrowed).
                return Narrowed(eq, column.name, q)
            return eq
        return lambda r: not eq(r)
    if op in ("IN", "NOT IN"):
        wanted = {_normalise(column, value_of(v)) for v in raw.split(",")}
        if op == "IN":
            return lambda r: _normalise(column, get(r)) in wanted
        return lambda r: _normalise(column, get(r)) not in wanted
    if op in ("LIKE", "NOTLIKE"):
        needle = value_of(raw).lower()
        if op == "LIKE":
            return lambda r: needle in get(r).lower()
        return lambda r: needle not in get(r).lower()
    if op == "STARTSWITH":
        prefix = value_of(raw).lower()
        return lambda r: get(r).lower().startswith(prefix)
    if op == "ENDSWITH":
        suffix = value_of(raw).lower()
        return lambda r: get(r).lower().endswith(suffix)
    if op == "INSTANCEOF":
        if column.name != "sys_class_name":
            raise InvalidTerm("INSTANCEOF applies to sys_class_name")
        parent = raw
        return lambda r: is_descendant(get(r), parent)
    if op in ("SAMEAS", "NSAMEAS"):
        other, _ = resolve_path(table, raw, ctx)
        if op == "SAMEAS":
            return lambda r: get(r) == other(r)
        return lambda r: get(r) != other(r)
    if op == "BETWEEN":
        if "@" not in raw:
            raise InvalidTerm("BETWEEN needs low@high")
        lo_text, hi_text = raw.split("@", 1)
        return _between(get, column, value_of(lo_text), value_of(hi_text))
    return _compare(get, column, op, value_of(raw))


def _between(get: Getter, column: Field, lo: str, hi: str) -> Predicate:
    above = _compare(get, column, ">=", lo)
    below = _compare(get, column, "<=", hi)
    return lambda r: above(r) and below(r)


def _compare(get: Getter, column: Field, op: str, q: str) -> Predicate:
    if column.kind == INTEGER:
        n = _as_int(q)
        if n is None:
            return lambda r: False

        def num(r: Record) -> int | None:
            return _as_int(get(r))

        if op == ">":
            return lambda r: (v := num(r)) is not None and v > n
        if op == ">=":
            return lambda r: (v := num(r)) is not None and v >= n
        if op == "<":
            return lambda r: (v := num(r)) is not None and v < n
        return lambda r: (v := num(r)) is not None and v <= n
    s = q.lower()
    if op == ">":
        return lambda r: (v := get(r)) != "" and v.lower() > s
    if op == ">=":
        return lambda r: (v := get(r)) != "" and v.lower() >= s
    if op == "<":
        return lambda r: (v := get(r)) != "" and v.lower() < s
    return lambda r: (v := get(r)) != "" and v.lower() <= s


def _from_display(column: Field, text: str, ctx: Context) -> str:
    """For name-value pair filters: a choice label or a reference's display value."""
    if column.choices:
        for value, label in column.choices.items():
            if text.lower() == label.lower():
                return value
        return text
    if column.kind == REFERENCE and column.ref and not _SYS_ID.fullmatch(text) and ctx.display_lookup:
        found = ctx.display_lookup(column.ref, text)
        return found if found is not None else text
    return text


def compile_query(
    table: str,
    text: str | None,
    ctx: Context,
    *,
    extra: list[tuple[str, str]] = (),
    invalid_returns_no_rows: bool = False,
) -> CompiledQuery:
    """Compile ``text`` (a ``sysparm_query``) and name-value pair filters ``extra``."""
    out = CompiledQuery()
    raw = (text or "").replace("^^", "\x00")
    for group_text in raw.split("^NQ") if raw else []:
        group: list[list[Predicate]] = []
        for part in group_text.split("^"):
            part = part.replace("\x00", "^")
            if not part or part == "EQ":
                continue
            if part.startswith("ORDERBYDESC") or part.startswith("ORDERBY"):
                desc = part.startswith("ORDERBYDESC")
                name = part[len("ORDERBYDESC" if desc else "ORDERBY") :]
                try:
                    getter, column = resolve_path(table, name, ctx)
                except InvalidTerm:
                    out.invalid.append(part)
                    continue
                out.order.append((getter, column, desc))
                continue
            if part.startswith("GROUPBY"):
                continue
            is_or = part.startswith("OR") and bool(group)
            term = part[2:] if part.startswith("OR") else part
            try:
                predicate = _predicate(table, term, ctx)
            except InvalidTerm:
                out.invalid.append(part)
                continue
            if is_or:
                group[-1].append(predicate)
            else:
                group.append([predicate])
        if group:
            out.groups.append(group)
    for name, value in extra:
        try:
            predicate = _predicate(table, f"{name}={value}", ctx, display_values=True)
        except InvalidTerm:
            out.invalid.append(f"{name}={value}")
            continue
        if not out.groups:
            out.groups.append([])
        for group in out.groups:
            group.append([predicate])
    if out.invalid and invalid_returns_no_rows:
        out.no_rows = True
    return out
