"""A thin async client for ServiceNow's Table API, on the outbound pipeline: CRUD on
``/api/now/table/{table}`` and offset pagination (queries and errors in their own modules).
"""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any
from urllib.parse import quote

from multidict import CIMultiDict

from .config import ServiceNowConfig
from .http import OutboundPipeline, OutboundRequest, OutboundResponse, RetryPolicy
from .servicenow_errors import (
    ServiceNowAuthError,
    ServiceNowError,
    ServiceNowNotFound,
    ServiceNowRateLimited,
    _snippet,
    error_from_response,
)
from .servicenow_query import Query, _field, _order_terms

TABLE_API = "/api/now/table"
PAGE_SIZE = 100
#: Journal fields: writing one appends an entry, so a repeated write is a duplicate.
JOURNAL_FIELDS = frozenset({"work_notes", "comments"})

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


_LINK = re.compile(r'<([^>]*)>\s*;\s*rel="?([^";,]+)"?')


def _links(header: str | None) -> dict[str, str]:
    """``<url>;rel="next",<url>;rel="last"`` -> {"next": url, "last": url}.

    Matched as ``<...>;rel=...`` runs rather than split on commas: ServiceNow leaves
    the commas of ``sysparm_fields`` unencoded inside each URL.
    """
    return {m.group(2).strip(): m.group(1) for m in _LINK.finditer(header or "")}


# -- the client -------------------------------------------------------------------------


class QueryResult:
    """``async for record in client.query(...)``; ``total`` is X-Total-Count once read."""

    def __init__(
        self, client: ServiceNowClient, table: str, params: list[tuple[str, str]], limit: int | None, page_size: int
    ):
        self.client = client
        self.table = table
        self.params = params
        self.limit = limit
        self.page_size = page_size
        self.total: int | None = None
        self.pages = 0

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[dict[str, Any]]:
        offset = 0
        yielded = 0
        while True:
            want = self.page_size if self.limit is None else min(self.page_size, self.limit - yielded)
            if want <= 0:
                return
            response = await self.client._send(
                "GET",
                self.table,
                None,
                params=[*self.params, ("sysparm_limit", str(want)), ("sysparm_offset", str(offset))],
                operation=f"GET {TABLE_API}/{self.table}",
            )
            self.pages += 1
            rows = (self.client._decode(response, f"GET {TABLE_API}/{self.table}") or {}).get("result") or []
            total = response.headers.get("X-Total-Count")
            if total is not None and total.strip().isdigit():
                self.total = int(total)
            for row in rows:
                yield row
                yielded += 1
                if self.limit is not None and yielded >= self.limit:
                    return
            # Offsets count rows before row ACLs drop some, so a page may come back
            # short with more to read: advance by what was asked for, not what came.
            offset += want
            if self.total is not None and offset >= self.total:
                return
            link = response.headers.get("Link")
            if link is not None:
                if "next" not in _links(link):
                    return
            elif self.total is None and len(rows) < want:
                return


class ServiceNowClient:
    """The ServiceNow Table API through the outbound pipeline (``ctx.servicenow``).

    Basic auth as the integration user, ``Accept: application/json``. Reads send
    ``sysparm_exclude_reference_link=true`` unless told otherwise, so a reference
    field reads as its plain sys_id string (``"assignment_group": "<sys_id>"``)
    rather than ``{"link", "value"}``; with ``display_value=True`` it reads as the
    display value, with ``"all"`` as ``{"display_value", "value"}``.

    Retries: reads, PUT-like updates and deletes are retried on timeouts and 5xx;
    ``insert`` (POST) is not, since a repeat would create a second record, and an
    ``update`` that writes a journal field (``work_notes``, ``comments``) is not,
    since a repeat would append the entry twice. 429 honours ``Retry-After``.
    Multi-page reads should order by a stable field (``order_by``), since an
    unordered query may come back in a different order on each page.
    """

    def __init__(
        self,
        pipeline: OutboundPipeline,
        config: ServiceNowConfig,
        *,
        page_size: int = PAGE_SIZE,
        exclude_reference_link: bool = True,
        retry: RetryPolicy | None = None,
    ):
        if ":" in config.username:
            raise ValueError(
                "a ServiceNow username cannot contain ':' (basic auth separates it from the password with one)"
            )
        self.pipeline = pipeline
        self.config = config
        self.base_url = config.instance_url.rstrip("/")
        self.page_size = max(1, page_size)
        self.exclude_reference_link = exclude_reference_link
        self.retry = retry or RetryPolicy(max_retries=config.max_retries)

    def __repr__(self) -> str:
        return f"ServiceNowClient(instance_url={self.base_url!r}, username={self.config.username!r})"

    # -- plumbing ---------------------------------------------------------------------
    def _headers(self) -> CIMultiDict[str]:
        # Built here rather than with aiohttp.BasicAuth (deprecated in 3.14): the header
        # travels inside the request so that relay transports (send_request) carry it.
        pair = f"{self.config.username}:{self.config.password.get_secret_value()}".encode()
        return CIMultiDict(
            {"Authorization": "Basic " + base64.b64encode(pair).decode("ascii"), "Accept": "application/json"}
        )

    def _url(self, table: str, sys_id: str | None) -> str:
        if not _NAME.match(table or ""):
            raise ValueError(f"not a table name: {table!r}")
        url = f"{self.base_url}{TABLE_API}/{table}"
        if sys_id is not None:
            if not sys_id:
                raise ValueError("an empty sys_id names no record")
            url += "/" + quote(str(sys_id), safe="")
        return url

    def _read_params(self, fields: Iterable[str] | None, display_value: bool | str | None) -> list[tuple[str, str]]:
        params: list[tuple[str, str]] = []
        if fields:
            params.append(("sysparm_fields", ",".join(_field(f) for f in fields)))
        if display_value is not None:
            dv = display_value if isinstance(display_value, str) else ("true" if display_value else "false")
            if dv not in ("true", "false", "all"):
                raise ValueError(f"display_value is True, False or 'all', not {display_value!r}")
            params.append(("sysparm_display_value", dv))
        if self.exclude_reference_link:
            params.append(("sysparm_exclude_reference_link", "true"))
        return params

    async def _send(
        self,
        method: str,
        table: str,
        sys_id: str | None,
        *,
        params: list[tuple[str, str]],
        json: Any = None,
        operation: str,
        idempotent: bool | None = None,
    ) -> OutboundResponse:
        headers = self._headers()
        if json is not None:
            headers["Content-Type"] = "application/json"
        req = OutboundRequest(
            method=method,
            url=self._url(table, sys_id),
            service="servicenow",
            operation=operation,
            headers=headers,
            params=params,
            json=json,
            timeout=self.config.timeout_seconds,
        )
        response = await self.pipeline.request(req, retry=self.retry, idempotent=idempotent)
        if not response.ok:
            raise error_from_response(response, operation)
        return response

    @staticmethod
    def _decode(response: OutboundResponse, operation: str) -> Any:
        try:
            return response.json()
        except ValueError:
            # A hibernating developer instance answers 200 with an HTML page.
            raise ServiceNowError(
                response.status,
                "the response is not JSON (is the instance awake?)",
                _snippet(response.body),
                operation=operation,
            ) from None

    # -- reads -----------------------------------------------------------------------------
    async def get(
        self, table: str, sys_id: str, *, fields: Iterable[str] | None = None, display_value: bool | str | None = None
    ) -> dict[str, Any]:
        """One record; ``ServiceNowNotFound`` when there is none (or an ACL hides it)."""
        op = f"GET {TABLE_API}/{table}/{{sys_id}}"
        response = await self._send("GET", table, sys_id, params=self._read_params(fields, display_value), operation=op)
        return (self._decode(response, op) or {}).get("result") or {}

    def query(
        self,
        table: str,
        query: str | Query | None = None,
        *,
        fields: Iterable[str] | None = None,
        limit: int | None = None,
        order_by: str | Iterable[str] | None = None,
        display_value: bool | str | None = None,
        page_size: int | None = None,
    ) -> QueryResult:
        """Iterate the records matching ``query``, a page (``page_size``) at a time.

        ``query`` is a ``Query`` or an encoded-query string (trusted: build strings
        from outside data with ``Query``). ``order_by`` names fields to sort by, a
        leading ``-`` for descending. ``limit`` caps the records read in total.
        """
        encoded = str(query) if query is not None else ""
        orders = _order_terms(order_by)
        if orders:
            encoded = "^".join([encoded, *orders]) if encoded else "^".join(orders)
        params = self._read_params(fields, display_value)
        if encoded:
            params.insert(0, ("sysparm_query", encoded))
        if limit is not None and limit < 0:
            raise ValueError("limit cannot be negative")
        return QueryResult(self, _checked_table(table), params, limit, max(1, page_size or self.page_size))

    async def list(
        self,
        table: str,
        query: str | Query | None = None,
        *,
        fields: Iterable[str] | None = None,
        limit: int | None = None,
        order_by: str | Iterable[str] | None = None,
        display_value: bool | str | None = None,
        page_size: int | None = None,
    ) -> list[dict[str, Any]]:
        """``query(...)`` collected into a list."""
        return [
            r
            async for r in self.query(
                table,
                query,
                fields=fields,
                limit=limit,
                order_by=order_by,
                display_value=display_value,
                page_size=page_size,
            )
        ]

    async def first(
        self,
        table: str,
        query: str | Query | None = None,
        *,
        fields: Iterable[str] | None = None,
        order_by: str | Iterable[str] | None = None,
        display_value: bool | str | None = None,
    ) -> dict[str, Any] | None:
        """The first matching record, or None."""
        rows = await self.list(table, query, fields=fields, limit=1, order_by=order_by, display_value=display_value)
        return rows[0] if rows else None

    # -- writes ------------------------------------------------------------------------------
    async def insert(
        self, table: str, fields: Mapping[str, Any], *, display_value: bool | str | None = None
    ) -> dict[str, Any]:
        """Create a record; returns it. Not retried after a lost answer (a repeat would duplicate)."""
        op = f"POST {TABLE_API}/{table}"
        response = await self._send(
            "POST",
            table,
            None,
            params=self._read_params(None, display_value),
            json=dict(fields),
            operation=op,
            idempotent=False,
        )
        return (self._decode(response, op) or {}).get("result") or {}

    async def update(
        self,
        table: str,
        sys_id: str,
        fields: Mapping[str, Any],
        *,
        display_value: bool | str | None = None,
        idempotent: bool | None = None,
    ) -> dict[str, Any]:
        """PATCH the given fields; returns the record.

        Retried after a lost answer unless it writes a journal field (or the caller
        says ``idempotent=False``): setting fields twice leaves the record as once.
        """
        if idempotent is None:
            idempotent = not (JOURNAL_FIELDS & set(fields))
        op = f"PATCH {TABLE_API}/{table}/{{sys_id}}"
        response = await self._send(
            "PATCH",
            table,
            sys_id,
            params=self._read_params(None, display_value),
            json=dict(fields),
            operation=op,
            idempotent=idempotent,
        )
        return (self._decode(response, op) or {}).get("result") or {}

    async def delete(self, table: str, sys_id: str, *, missing_ok: bool = False) -> bool:
        """Delete a record; True when deleted. With ``missing_ok`` a 404 returns False
        (a retried delete whose first attempt went through answers 404)."""
        op = f"DELETE {TABLE_API}/{table}/{{sys_id}}"
        try:
            await self._send("DELETE", table, sys_id, params=[], operation=op)
        except ServiceNowNotFound:
            if missing_ok:
                return False
            raise
        return True


def _checked_table(table: str) -> str:
    if not _NAME.match(table or ""):
        raise ValueError(f"not a table name: {table!r}")
    return table


__all__ = [
    "JOURNAL_FIELDS",
    "PAGE_SIZE",
    "TABLE_API",
    "Query",
    "QueryResult",
    "ServiceNowAuthError",
    "ServiceNowClient",
    "ServiceNowError",
    "ServiceNowNotFound",
    "ServiceNowRateLimited",
    "error_from_response",
]
