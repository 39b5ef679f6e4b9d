"""A scripted HTTP API for client tests: each route answered by a handler the test gives,
every request recorded in ``seen``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

Handler = Callable[[web.Request, Any], Any]


class ScriptedApi:
    """``on(method, path, handler)``: ``handler(request, body)`` answers (it may be async).

    An unrouted request gets ``not_found(request, body)``. Each request's query is kept
    as a list of pairs (``query_pairs``, repeated keys kept) or as a dict.
    """

    def __init__(self, not_found: Handler, *, query_pairs: bool = False) -> None:
        self.routes: dict[tuple[str, str], Handler] = {}
        self.seen: list[dict[str, Any]] = []
        self._not_found = not_found
        self._query_pairs = query_pairs

    def on(self, method: str, path: str, handler: Handler) -> None:
        self.routes[(method, path)] = handler

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = json.loads(raw) if raw else None
        query = list(request.query.items()) if self._query_pairs else dict(request.query)
        self.seen.append(
            {
                "method": request.method,
                "path": request.path,
                "raw_path": request.raw_path,
                "headers": request.headers.copy(),
                "query": query,
                "body": body,
            }
        )
        handler = self.routes.get((request.method, request.path), self._not_found)
        result = handler(request, body)
        if asyncio.iscoroutine(result):
            result = await result
        return result

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app
