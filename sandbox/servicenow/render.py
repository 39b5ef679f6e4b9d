"""Records as the Table API writes them: every value a string, references as
``{"link", "value"}``, and ``sysparm_display_value`` true/all renderings."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .query import InvalidTerm, resolve_path
from .schema import INTEGER, JOURNAL, JOURNAL_LIST, REFERENCE, Field

if TYPE_CHECKING:
    from .state import ServiceNowState

Record = dict[str, str]
Renderer = Callable[[Record], Any]


def _display_function(state: ServiceNowState, column: Field, walked: bool) -> Callable[[Record, str], str]:
    if column.choices:
        choices = column.choices
        return lambda r, v: choices.get(v, v)
    if column.kind == INTEGER:

        def number(r: Record, v: str) -> str:
            try:
                return f"{int(v):,}"
            except ValueError:
                return v

        return number
    if column.kind in (JOURNAL, JOURNAL_LIST) and not walked:
        elements = (column.name,) if column.kind == JOURNAL else ("comments", "work_notes")
        return lambda r, v: state.journal_text(r.get("sys_id", ""), elements)
    return lambda r, v: v


def _renderer(
    state: ServiceNowState,
    get: Callable[[Record], str],
    column: Field,
    mode: str,
    exclude_links: bool,
    base: str,
    walked: bool,
) -> Renderer:
    if column.kind == REFERENCE and column.ref:
        ref = column.ref
        prefix = f"{base}/api/now/table/{ref}/"
        if mode == "false":
            if exclude_links:
                return get

            def reference(r: Record) -> Any:
                v = get(r)
                return {"link": prefix + v, "value": v} if v else ""

            return reference
        if mode == "true":

            def reference_display(r: Record) -> Any:
                v = get(r)
                if not v:
                    return ""
                shown = state.display_value(ref, v)
                return shown if exclude_links else {"display_value": shown, "link": prefix + v}

            return reference_display

        def reference_all(r: Record) -> Any:
            v = get(r)
            if not v:
                return {"display_value": "", "value": ""}
            out = {"display_value": state.display_value(ref, v)}
            if not exclude_links:
                out["link"] = prefix + v
            out["value"] = v
            return out

        return reference_all
    if mode == "false":
        return get
    display = _display_function(state, column, walked)
    if mode == "true":
        return lambda r: display(r, get(r))
    return lambda r: {"display_value": display(r, v := get(r)), "value": v}


def record_renderer(
    state: ServiceNowState,
    table: str,
    fields: list[str] | None,
    mode: str = "false",
    exclude_links: bool = False,
    base: str | None = None,
) -> Callable[[Record], dict[str, Any]]:
    """A function rendering one record of ``table`` for a response.

    ``fields`` is ``sysparm_fields`` split (None: every column of ``table``; unknown
    names are skipped; dot-walked names such as ``assignment_group.name`` are
    allowed and keep their dotted name as the key). ``mode`` is the
    ``sysparm_display_value`` value: "false", "true" or "all".
    """
    base = base if base is not None else state.base_url
    columns = state.columns(table)
    key = (table, tuple(fields) if fields is not None else None, mode, exclude_links, base, tuple(columns))
    cache = state._render_cache
    render = cache.get(key)
    if render is None:
        if len(cache) >= 256:
            cache.clear()
        render = cache[key] = _build(state, table, columns, fields, mode, exclude_links, base)
    return render


def _build(
    state: ServiceNowState,
    table: str,
    columns: dict[str, Field],
    fields: list[str] | None,
    mode: str,
    exclude_links: bool,
    base: str,
) -> Callable[[Record], dict[str, Any]]:
    plan: list[tuple[str, Renderer]] = []
    if fields is None:
        for name, column in columns.items():
            plan.append((name, _renderer(state, _getter(name), column, mode, exclude_links, base, False)))
    else:
        ctx = state._context()
        for name in fields:
            name = name.strip()
            if not name or any(key == name for key, _ in plan):
                continue
            try:
                get, column = resolve_path(table, name, ctx)
            except InvalidTerm:
                continue  # invalid fields are ignored
            plan.append((name, _renderer(state, get, column, mode, exclude_links, base, "." in name)))

    def render(record: Record) -> dict[str, Any]:
        return {key: fn(record) for key, fn in plan}

    return render


def _getter(name: str) -> Callable[[Record], str]:
    return lambda r: r.get(name, "")
