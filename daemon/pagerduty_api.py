"""How one call to PagerDuty's REST API v2 is made: the headers (token, Accept, ``From``),
the outbound pipeline, the typed error of a failed answer; ``PagerDutyClient`` builds on it.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

from multidict import CIMultiDict

from .config import PagerDutyConfig
from .http import OutboundPipeline, OutboundRequest, OutboundResponse, RateLimiter, RetryPolicy
from .pagerduty_errors import PagerDutyError, error_from_response
from .pagerduty_paging import PAGE_LIMIT, Paginator, Params, _encode_params

ACCEPT = "application/vnd.pagerduty+json;version=2"

_ID_SEGMENT = re.compile(r"^(?![a-z_]+$)[^/]+$")


def _template(path: str) -> str:
    # "/incidents/PABC123/notes" -> "/incidents/{id}/notes": PagerDuty ids are upper
    # case and digits, while the API's own path words are lower case.
    parts = path.split("?")[0].split("/")
    return "/".join("{id}" if p and _ID_SEGMENT.match(p) else p for p in parts)


def _seg(value: str) -> str:
    """One path segment from outside data: quoted so it cannot change the path."""
    if not value:
        raise ValueError("an empty id cannot name a PagerDuty object")
    return quote(str(value), safe="")


class PagerDutyApi:
    """The plumbing of ``PagerDutyClient``: one client per API key, whose ``limiter``
    paces every request made with the key; generic calls return the decoded JSON body.

    ``get_user`` is here because the ``From`` header of a write may need the default
    user's email.
    """

    def __init__(
        self,
        pipeline: OutboundPipeline,
        config: PagerDutyConfig,
        *,
        limiter: RateLimiter | None = None,
        retry: RetryPolicy | None = None,
    ):
        self.pipeline = pipeline
        self.config = config
        self.base_url = config.api_url.rstrip("/")
        self.limiter = limiter or RateLimiter(config.rate_limit_per_minute)
        self.retry = retry or RetryPolicy(max_retries=config.max_retries)
        self._default_email: str | None = None
        self._email_lock = asyncio.Lock()

    # -- plumbing --------------------------------------------------------------------
    async def from_email(self, acting_email: str | None = None) -> str | None:
        """The ``From`` address for a write: explicit, configured, or the default user's."""
        if acting_email:
            return acting_email
        if self.config.from_email:
            return self.config.from_email
        if not self.config.default_user_id:
            return None
        async with self._email_lock:
            if self._default_email is None:
                user = await self.get_user(self.config.default_user_id)
                self._default_email = str(user.get("email") or "")
        return self._default_email or None

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Params = None,
        json: Any = None,
        acting_email: str | None = None,
        operation: str | None = None,
        idempotent: bool | None = None,
    ) -> OutboundResponse:
        """Send one API call; returns the 2xx response or raises the typed error."""
        method = method.upper()
        headers = CIMultiDict(
            {
                "Authorization": f"Token token={self.config.api_key.get_secret_value()}",
                "Accept": ACCEPT,
                "Content-Type": "application/json",
            }
        )
        if method not in ("GET", "HEAD"):
            email = await self.from_email(acting_email)
            if email:
                headers["From"] = email
        if not path.startswith("/"):
            path = "/" + path
        op = operation or f"{method} {_template(path)}"
        req = OutboundRequest(
            method=method,
            url=self.base_url + path,
            service="pagerduty",
            operation=op,
            headers=headers,
            params=_encode_params(params),
            json=json,
            timeout=self.config.timeout_seconds,
        )
        response = await self.pipeline.request(req, retry=self.retry, idempotent=idempotent, limiter=self.limiter)
        if not response.ok:
            raise error_from_response(response, op)
        return response

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self.request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise PagerDutyError(
                response.status,
                None,
                "the response is not JSON",
                operation=kwargs.get("operation") or f"{method} {_template(path)}",
            ) from None

    async def get(self, path: str, *, params: Params = None, operation: str | None = None) -> Any:
        return await self._call("GET", path, params=params, operation=operation)

    async def post(
        self,
        path: str,
        *,
        params: Params = None,
        json: Any = None,
        acting_email: str | None = None,
        operation: str | None = None,
        idempotent: bool = False,
    ) -> Any:
        return await self._call(
            "POST",
            path,
            params=params,
            json=json,
            acting_email=acting_email,
            operation=operation,
            idempotent=idempotent,
        )

    async def put(
        self,
        path: str,
        *,
        params: Params = None,
        json: Any = None,
        acting_email: str | None = None,
        operation: str | None = None,
    ) -> Any:
        return await self._call("PUT", path, params=params, json=json, acting_email=acting_email, operation=operation)

    async def delete(
        self, path: str, *, params: Params = None, acting_email: str | None = None, operation: str | None = None
    ) -> Any:
        return await self._call("DELETE", path, params=params, acting_email=acting_email, operation=operation)

    def paginate(
        self, path: str, key: str, params: Params = None, *, limit: int = PAGE_LIMIT, operation: str | None = None
    ) -> Paginator:
        """Iterate a classic-paginated collection; see ``Paginator`` for the 10,000 ceiling."""
        return Paginator(self, path, key, params, limit=limit, operation=operation)

    # -- the user a write's From header may need ---------------------------------------
    async def get_user(self, user_id: str, *, include: Iterable[str] | None = None) -> dict[str, Any]:
        body = await self.get(
            f"/users/{_seg(user_id)}", params={"include[]": list(include or [])}, operation="GET /users/{id}"
        )
        return body["user"]
