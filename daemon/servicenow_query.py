"""ServiceNow encoded queries (``sysparm_query``) built so that outside data cannot inject
terms: ``Query``, and the checks of field names, values and ``order_by`` terms.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def _value(value: Any) -> str:
    if value is None:
        raise ValueError("None is not a query value: use is_empty() / is_not_empty()")
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, datetime):
        # sys_ date-times are stored, compared and returned by the Table API in UTC.
        if value.tzinfo is not None:
            value = value.astimezone(UTC)
        text = value.strftime("%Y-%m-%d %H:%M:%S")
    else:
        text = str(value)
    if text.strip().lower().startswith("javascript:"):
        # The instance evaluates javascript: values server-side; never from data.
        raise ValueError(f"refusing a query value that the instance would run as script: {text[:40]!r}")
    if text.endswith("^"):
        raise ValueError(f"refusing a query value ending in '^' (its escape would be ambiguous): {text[:40]!r}")
    # A literal caret is written ^^; unescaped, it would end the term and start another.
    return text.replace("^", "^^")


def _field(name: str) -> str:
    if not isinstance(name, str) or not _FIELD.match(name):
        raise ValueError(f"not a field name (letters, digits, _ and dot-walks): {name!r}")
    return name


class Query:
    """An encoded query (``sysparm_query``) built from parts that cannot inject terms.

        Query().eq("assignment_group", gid).gte("sys_updated_on", since).order_by("sys_updated_on")
        Query().eq("state", "1").or_().eq("state", "2")       # state=1^ORstate=2
        Query().in_("sys_id", ids).new_query().eq("active", True)

    Terms are joined with AND (``^``) unless ``or_()`` comes before one (``^OR``);
    ``and_()`` is accepted for readability. Values are text, bools (``true``/``false``)
    or datetimes (UTC ``YYYY-MM-DD HH:MM:SS``); a ``^`` in a value is escaped as ``^^``,
    and values the instance would run as script (``javascript:...``) are refused, as
    are commas inside ``in_``/``not_in`` items (no escape exists for them). Field names
    must be plain names or dot-walks. ``str(query)`` is the encoded query.

    ``sysparm_query`` is built only from these parts, so outside data cannot be injected into it.
    """

    def __init__(self) -> None:
        self._terms: list[str] = []
        self._orders: list[str] = []
        self._next_join = "^"

    def _add(self, term: str) -> Query:
        if self._terms:
            self._terms.append(self._next_join + term)
        elif self._next_join == "^OR":
            raise ValueError("or_() needs a term before it")
        else:
            self._terms.append(term)
        self._next_join = "^"
        return self

    def _op(self, field: str, op: str, value: Any) -> Query:
        return self._add(f"{_field(field)}{op}{_value(value)}")

    def eq(self, field: str, value: Any) -> Query:
        return self._op(field, "=", value)

    def ne(self, field: str, value: Any) -> Query:
        return self._op(field, "!=", value)

    def gt(self, field: str, value: Any) -> Query:
        return self._op(field, ">", value)

    def gte(self, field: str, value: Any) -> Query:
        return self._op(field, ">=", value)

    def lt(self, field: str, value: Any) -> Query:
        return self._op(field, "<", value)

    def lte(self, field: str, value: Any) -> Query:
        return self._op(field, "<=", value)

    def like(self, field: str, value: Any) -> Query:
        return self._op(field, "LIKE", value)

    def not_like(self, field: str, value: Any) -> Query:
        return self._op(field, "NOTLIKE", value)

    def starts_with(self, field: str, value: Any) -> Query:
        return self._op(field, "STARTSWITH", value)

    def ends_with(self, field: str, value: Any) -> Query:
        return self._op(field, "ENDSWITH", value)

    def _in(self, field: str, op: str, values: Iterable[Any]) -> Query:
        items = [_value(v) for v in values]
        if not items:
            raise ValueError(f"{op.strip()} needs at least one value")
        for item in items:
            if "," in item:
                raise ValueError(f"refusing an {op.strip()} value containing ',' (it would split): {item[:40]!r}")
        return self._add(f"{_field(field)}{op}{','.join(items)}")

    def in_(self, field: str, values: Iterable[Any]) -> Query:
        return self._in(field, "IN", values)

    def not_in(self, field: str, values: Iterable[Any]) -> Query:
        return self._in(field, "NOT IN", values)

    def is_empty(self, field: str) -> Query:
        return self._add(f"{_field(field)}ISEMPTY")

    def is_not_empty(self, field: str) -> Query:
        return self._add(f"{_field(field)}ISNOTEMPTY")

    def and_(self) -> Query:
        self._next_join = "^"
        return self

    def or_(self) -> Query:
        if not self._terms:
            raise ValueError("or_() needs a term before it")
        self._next_join = "^OR"
        return self

    def new_query(self) -> Query:
        """Start a second query whose results are added (``^NQ``)."""
        if not self._terms:
            raise ValueError("new_query() needs a term before it")
        self._next_join = "^NQ"
        return self

    def order_by(self, field: str, *, desc: bool = False) -> Query:
        self._orders.append(("ORDERBYDESC" if desc else "ORDERBY") + _field(field))
        return self

    def encode(self) -> str:
        return "^".join(["".join(self._terms)] + self._orders) if self._terms else "^".join(self._orders)

    def __str__(self) -> str:
        return self.encode()

    def __repr__(self) -> str:
        return f"Query({self.encode()!r})"


def _order_terms(order_by: str | Iterable[str] | None) -> list[str]:
    if not order_by:
        return []
    names = [order_by] if isinstance(order_by, str) else list(order_by)
    return [("ORDERBYDESC" + _field(n[1:])) if n.startswith("-") else ("ORDERBY" + _field(n)) for n in names]
