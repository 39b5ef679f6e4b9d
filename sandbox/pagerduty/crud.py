"""The one route shape resource families share: list, create, get, update and delete, with
PagerDuty's pagination, ``query``, ``include[]``, wrapped bodies and error answers."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from .api import by_name, includes, json_response, no_content, page, query_filter, read_wrapped, state_of

if TYPE_CHECKING:  # the state's modules import this one for their routes
    from .state import PagerDutyState

    State = PagerDutyState

Render = Callable[["State", dict, Iterable[str]], dict]
Select = Callable[[web.Request, "State", "list[dict]"], "list[dict]"]
Hook = Callable[[web.Request], object]


@dataclass(frozen=True)
class Resource:
    """How one resource family answers its CRUD routes.

    ``path`` is the item's path (``/teams/{id}``, ``/users/{id}/contact_methods/{cid}``);
    the collection is that path without its last segment. The callables get the state
    and the path's ids in order (the collection's routes only the parents'), then the
    request's object for ``create``/``update``: ``create(st, *parent_ids, data)``,
    ``update(st, *ids, data)``, ``delete(st, *ids)``, ``get(st, *ids)``,
    ``items(st, *parent_ids)``. ``get`` raises PagerDuty's 404 for an unknown id.
    """

    path: str
    one: str  # JSON key of one object ("team")
    many: str  # JSON key of a list ("teams")
    get: Callable[..., dict]
    items: Callable[..., Iterable[dict]]
    create: Callable[..., dict] | None = None
    update: Callable[..., dict] | None = None
    delete: Callable[..., None] | None = None
    # How an object is shown; ``include[]`` only on GET (create and update show it plainly).
    render: Render | None = None
    show_created: Render | None = None  # when a new object shows more (a subscription's secret)
    search: tuple[str, ...] = ()  # the fields ``?query=`` looks in
    select: Select | None = None  # the family's own list filters
    order: str | None = "name"  # "name", "sort_by" (by name, ``?sort_by=name:desc`` reverses) or None
    paged: bool = True  # False: the whole list, no offset/limit/more/total
    created_status: int = 201
    deleted_status: int = 204
    before_read: Hook | None = None  # e.g. an ability check, before anything else on GET
    before_create: Hook | None = None  # e.g. the From header, before the body is read

    def __post_init__(self) -> None:
        if self.order not in ("name", "sort_by", None):
            raise ValueError(f"Resource {self.path}: order must be 'name', 'sort_by' or None, not {self.order!r}")
        if "/" not in self.path.strip("/"):
            raise ValueError(f"Resource {self.path}: path must be an item path such as /teams/{{id}}")


def crud_routes(routes: web.RouteTableDef, res: Resource) -> None:
    """Register ``res``'s routes on ``routes``: GET (and HEAD) list, POST, GET, PUT, DELETE."""
    names = re.findall(r"\{(\w+)\}", res.path)
    collection = res.path.rsplit("/", 1)[0]

    def ids(request: web.Request, n: int) -> list[str]:
        return [request.match_info[name] for name in names[:n]]

    def show(st: State, obj: dict, include: Iterable[str] = ()) -> dict:
        return res.render(st, obj, include) if res.render is not None else obj

    async def list_all(request: web.Request) -> web.StreamResponse:
        st = state_of(request)
        if res.before_read is not None:
            res.before_read(request)
        items = list(res.items(st, *ids(request, len(names) - 1)))
        if res.search:
            items = query_filter(items, request.query.get("query"), *res.search)
        if res.select is not None:
            items = res.select(request, st, items)
        if res.order == "name":
            items = by_name(items)
        elif res.order == "sort_by":
            items = by_name(items, request.query.get("sort_by"))
        include = includes(request)
        render = (lambda obj: res.render(st, obj, include)) if res.render is not None else None
        if not res.paged:
            return json_response({res.many: [render(x) for x in items] if render else items})
        return page(request, res.many, items, render)

    async def create(request: web.Request) -> web.StreamResponse:
        st = state_of(request)
        if res.before_create is not None:
            res.before_create(request)
        data = await read_wrapped(request, res.one)
        obj = res.create(st, *ids(request, len(names) - 1), data)
        shown = res.show_created(st, obj, ()) if res.show_created is not None else show(st, obj)
        return json_response({res.one: shown}, res.created_status)

    async def get(request: web.Request) -> web.StreamResponse:
        st = state_of(request)
        if res.before_read is not None:
            res.before_read(request)
        obj = res.get(st, *ids(request, len(names)))
        return json_response({res.one: show(st, obj, includes(request))})

    async def update(request: web.Request) -> web.StreamResponse:
        st = state_of(request)
        data = await read_wrapped(request, res.one)
        obj = res.update(st, *ids(request, len(names)), data)
        return json_response({res.one: show(st, obj)})

    async def delete(request: web.Request) -> web.StreamResponse:
        res.delete(state_of(request), *ids(request, len(names)))
        return no_content(res.deleted_status)

    routes.get(collection)(list_all)
    if res.create is not None:
        routes.post(collection)(create)
    routes.get(res.path)(get)
    if res.update is not None:
        routes.put(res.path)(update)
    if res.delete is not None:
        routes.delete(res.path)(delete)
