"""Classic offset pagination of PagerDuty's REST API v2 and its query parameters: the
``Paginator`` that stops at the 10,000-record ceiling and the ``ResultList`` it collects.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from .pagerduty_api import PagerDutyApi

# The client's logger: a truncated listing is reported as the client's own warning.
log = structlog.get_logger("dutybridge.pagerduty")

#: offset + limit may not exceed this in classic pagination (PagerDuty answers 400).
PAGINATION_CEILING = 10_000
PAGE_LIMIT = 100


#: Query parameters as the client methods take them: a dict or (name, value) pairs; a
#: None value is left out, a list value repeats its key.
Params = Mapping[str, Any] | Iterable[tuple[str, Any]] | None


def _qs(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return _iso(value)
    return str(value)


def _encode_params(params: Params) -> list[tuple[str, str]]:
    """A dict or pairs -> query pairs; a list value repeats the key (``statuses[]``)."""
    if not params:
        return []
    items = params.items() if isinstance(params, Mapping) else params
    out: list[tuple[str, str]] = []
    for key, value in items:
        if value is None:
            continue
        if isinstance(value, (list, tuple, set, frozenset)):
            name = key if key.endswith("[]") else f"{key}[]"
            out.extend((name, _qs(v)) for v in value)
        else:
            out.append((key, _qs(value)))
    return out


def _iso(value: datetime | str) -> str:
    if isinstance(value, str):
        return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.isoformat()


class ResultList(list[dict[str, Any]]):
    """A list of collected results; ``truncated`` is true when PagerDuty had more than
    its pagination ceiling lets a client read (narrow the query to get the rest)."""

    truncated: bool = False
    total: int | None = None


class Paginator:
    """``async for item in client.paginate(...)``: classic offset pagination.

    Pages of ``limit`` (at most 100) until ``more`` is false. PagerDuty refuses
    ``offset + limit > 10000`` with a 400, so the paginator never asks for that: at
    the ceiling it stops, logs a warning and sets ``truncated``. Read ``truncated``
    after the loop (``await paginator.collect()`` returns a ``ResultList`` carrying it).
    """

    def __init__(
        self,
        client: PagerDutyApi,
        path: str,
        key: str,
        params: Params = None,
        *,
        limit: int = PAGE_LIMIT,
        operation: str | None = None,
    ):
        self.client = client
        self.path = path
        self.key = key
        self.params = _encode_params(params)
        self.limit = max(1, min(limit, PAGE_LIMIT))
        self.operation = operation
        self.truncated = False
        self.total: int | None = None
        self.fetched = 0

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        offset = 0
        base = [(k, v) for k, v in self.params if k not in ("limit", "offset")]
        while True:
            limit = min(self.limit, PAGINATION_CEILING - offset)
            if limit <= 0:
                self.truncated = True
                log.warning(
                    "pagination_truncated",
                    reason="the API's ceiling",
                    path=self.path,
                    fetched=self.fetched,
                    ceiling=PAGINATION_CEILING,
                    hint="narrow the query (since/until, service_ids, statuses) to read the rest",
                )
                return
            page = await self.client.get(
                self.path, params=[*base, ("limit", str(limit)), ("offset", str(offset))], operation=self.operation
            )
            page = page or {}
            items = page.get(self.key) or []
            if page.get("total") is not None:
                self.total = page["total"]
            for item in items:
                self.fetched += 1
                yield item
            if not page.get("more") or not items:
                return
            offset += len(items)

    async def collect(self) -> ResultList:
        out = ResultList()
        async for item in self:
            out.append(item)
        out.truncated = self.truncated
        out.total = self.total
        return out
