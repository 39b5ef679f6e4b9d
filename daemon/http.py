"""The outbound pipeline: every call to PagerDuty, ServiceNow or another API passes here, through
the outbound hooks, with retries, ``Retry-After`` and proactive rate limiting done once.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import aiohttp
import structlog
from multidict import CIMultiDict
from yarl import URL

from . import __version__
from .hooks import Hooks, hooks_of
from .logging import enabled as log_enabled
from .outbound import (
    ApiError,
    AuthError,
    HookFailed,
    NotFound,
    OutboundConnectionError,
    OutboundError,
    OutboundRequest,
    OutboundResponse,
    OutboundTimeout,
    RateLimited,
    RequestVetoed,
    TransportError,
    hook_origin,
)

# Retries and rate limits live in ratelimit.py; re-exported here, where callers look.
from .ratelimit import Limiter, RateLimiter, RetryPolicy, retry_after_seconds
from .redact import safe_url

if TYPE_CHECKING:  # pragma: no cover
    import pluggy

    from .context import Ctx


#: Methods whose repetition leaves the server as one execution would (RFC 9110 9.2.2).
#: POST and PATCH are not: a caller that knows better passes ``idempotent=True``.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})

#: Response headers worth a log line; no other header (request or response) is logged,
#: so credentials and hook-added secrets never reach the logs.
LOGGER = "dutybridge.http"
LOGGED_RESPONSE_HEADERS = ("retry-after", "ratelimit-remaining", "ratelimit-reset", "x-ratelimit-reset")


# -- the pipeline --------------------------------------------------------------------


def _copy_request(req: OutboundRequest) -> OutboundRequest:
    # Each attempt runs the hooks on a fresh copy, so a hook that appends a header
    # or a parameter does it once per attempt, never twice on one request.
    return replace(
        req,
        headers=CIMultiDict(req.headers),
        params=list(req.params),
        json=copy.deepcopy(req.json),
        extra=dict(req.extra),
    )


class OutboundPipeline:
    """One aiohttp session and the hook pipeline every outbound request passes.

    ``start()`` opens the session and ``close()`` closes it (or use ``async with``).
    ``ctx`` may be set after construction (``pipeline.ctx = ctx``), since the ctx
    holds the pipeline. ``metrics`` is any object with ``outbound(service, host,
    status, seconds)``; when None, ``ctx.metrics`` is used if there is one.
    ``sleep``, ``rng`` and ``wallclock`` are injectable for tests.

    Every outbound call is an ``OutboundRequest`` that passes the ``outbound_request``
    hooks, is sent by a ``send_request`` hook or the default transport, and whose
    ``OutboundResponse`` passes the ``outbound_response`` hooks. Retries (429, 5xx,
    timeouts), ``Retry-After`` and proactive rate limiting live here, once.
    """

    def __init__(
        self,
        hooks: Hooks | pluggy.PluginManager,
        ctx: Ctx | None = None,
        *,
        metrics: Any = None,
        logger: Any = None,
        default_retry: RetryPolicy | None = None,
        user_agent: str | None = None,
        trust_env: bool = False,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        rng: Callable[[], float] = random.random,
        wallclock: Callable[[], float] = time.time,
    ):
        self.hooks = hooks_of(hooks)
        self.ctx = ctx
        self.metrics = metrics
        self.log = logger if logger is not None else structlog.get_logger(LOGGER)
        self._log_name = LOGGER if logger is None else None
        self.default_retry = default_retry or RetryPolicy()
        self.user_agent = user_agent or f"dutybridge/{__version__}"
        # Off by default: a proxy is a transport choice made in config (a send_request
        # plugin), not something an inherited HTTPS_PROXY should switch on silently.
        self.trust_env = trust_env
        self._sleep = sleep
        self._rng = rng
        self._wallclock = wallclock
        self._session: aiohttp.ClientSession | None = None
        self._closers: list[Callable[[], Awaitable[Any]]] = []

    # lifecycle
    async def start(self) -> None:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers={"User-Agent": self.user_agent},
                trust_env=self.trust_env,
                raise_for_status=False,
            )

    async def close(self) -> None:
        closers, self._closers = self._closers, []
        for closer in closers:
            try:
                await closer()
            except Exception:
                self.log.exception("outbound_closer_failed")
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    def add_closer(self, closer: Callable[[], Awaitable[Any]]) -> None:
        """Have ``close()`` await ``closer()`` first: for what a ``send_request`` plugin
        opens beside the pipeline's session (a SOCKS connector's session), so that it
        lives exactly as long as the pipeline, in the daemon and in a one-off command."""
        self._closers.append(closer)

    async def __aenter__(self) -> OutboundPipeline:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def session(self) -> aiohttp.ClientSession | None:
        return self._session

    # the call
    async def request(
        self,
        request: OutboundRequest,
        *,
        retry: RetryPolicy | None = None,
        idempotent: bool | None = None,
        limiter: Limiter | None = None,
    ) -> OutboundResponse:
        """Send ``request`` through the hooks and a transport, retrying per ``retry``.

        Returns the response whatever its status (the last one when retries ran
        out); raises ``OutboundTimeout`` / ``OutboundConnectionError`` when no
        response came back. ``idempotent`` defaults from the method (see
        ``RetryPolicy``). ``limiter`` (``acquire()`` / ``observe(response)``) is
        consulted before and after every attempt. A hook that raises fails the
        call unretried: ``RequestVetoed`` as it is, with the hook's place added;
        any other exception as ``HookFailed``, logged with the hook's file and line.
        """
        policy = retry or self.default_retry
        if idempotent is None:
            idempotent = request.method.upper() in IDEMPOTENT_METHODS
        attempt = 0
        while True:
            attempt += 1
            if limiter is not None:
                await limiter.acquire()
            req = await self.prepare(request, attempt)
            started = time.monotonic()
            try:
                response = await self._transport(req)
            except TimeoutError as exc:
                elapsed = time.monotonic() - started
                self._record(req, "timeout", elapsed, attempt)
                if attempt <= policy.max_retries and idempotent:
                    await self._wait(req, attempt, policy.backoff(attempt, self._rng), "timeout")
                    continue
                why = "" if idempotent else " (not retried: the request is not idempotent)"
                raise OutboundTimeout(
                    f"{req.service} {req.operation or req.method}: no answer within {req.timeout:g}s "
                    f"after {attempt} attempt(s){why}",
                    service=req.service,
                    operation=req.operation,
                    attempts=attempt,
                ) from exc
            except aiohttp.ClientError as exc:
                elapsed = time.monotonic() - started
                self._record(req, "error", elapsed, attempt, error=type(exc).__name__)
                unsent = isinstance(exc, aiohttp.ClientConnectorError) and not isinstance(exc, aiohttp.ClientSSLError)
                retryable = unsent or (
                    idempotent
                    and isinstance(
                        exc, (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError)
                    )
                )
                if attempt <= policy.max_retries and retryable:
                    await self._wait(req, attempt, policy.backoff(attempt, self._rng), type(exc).__name__)
                    continue
                raise OutboundConnectionError(
                    f"{req.service} {req.operation or req.method}: {type(exc).__name__}: {_exc_text(exc)} "
                    f"after {attempt} attempt(s)",
                    service=req.service,
                    operation=req.operation,
                    attempts=attempt,
                ) from exc

            response.attempts = attempt
            if not response.elapsed:
                response.elapsed = time.monotonic() - started
            self._record(req, str(response.status), response.elapsed, attempt, response=response)
            if limiter is not None:
                limiter.observe(response)
            await self._guarded(
                "outbound_response", req, self.hooks.outbound_response(request=req, response=response, ctx=self.ctx)
            )

            if response.ok or not policy.retries_status(response.status, idempotent):
                return response
            if attempt > policy.max_retries:
                self.log.warning(
                    "outbound_retries_exhausted",
                    service=req.service,
                    operation=req.operation,
                    method=req.method,
                    url=safe_url(req.url),
                    status=response.status,
                    attempts=attempt,
                )
                return response
            asked = retry_after_seconds(response.headers, self._wallclock) if response.status in (429, 503) else None
            if asked is not None and asked > policy.max_wait:
                self.log.warning(
                    "outbound_retry_after_too_long",
                    detail="giving up",
                    service=req.service,
                    operation=req.operation,
                    status=response.status,
                    retry_after=asked,
                    max_wait=policy.max_wait,
                )
                return response
            wait = asked if asked is not None else policy.backoff(attempt, self._rng)
            await self._wait(req, attempt, wait, f"HTTP {response.status}")

    async def prepare(self, request: OutboundRequest, attempt: int = 1) -> OutboundRequest:
        """What attempt ``attempt`` of ``request`` sends: a copy, changed by the
        ``outbound_request`` hooks (``dutybridge hooks test`` shows it, sending nothing)."""
        req = _copy_request(request)
        req.extra["attempt"] = attempt
        await self._guarded("outbound_request", req, self.hooks.outbound_request(request=req, ctx=self.ctx))
        if req.json is not None and req.data is None and "Content-Type" not in req.headers:
            req.headers["Content-Type"] = "application/json"
        return req

    async def _transport(self, req: OutboundRequest) -> OutboundResponse:
        # One deadline covers a relay/proxy hook as well as the direct transport.
        async with asyncio.timeout(req.timeout):
            response = await self._guarded("send_request", req, self.hooks.send_request(request=req, ctx=self.ctx))
            if response is None:
                response = await self.send_direct(req)
        return response

    async def _guarded(self, hook_name: str, req: OutboundRequest, call: Awaitable[Any]) -> Any:
        """Await a hook call; a hook's exception becomes the request's failure, never the
        caller's crash. Transport failures (timeouts, aiohttp errors) and the API errors
        a transport hook raises pass through as they are, for the retry policy."""
        try:
            return await call
        except RequestVetoed as exc:
            exc.hook = hook_origin(exc)
            exc.args = (f"{req.service} {req.operation or req.method}: vetoed by hook {exc.hook}: {exc.reason}",)
            self.log.warning(
                "outbound_vetoed",
                service=req.service,
                operation=req.operation,
                hook=exc.hook,
                hook_name=hook_name,
                reason=exc.reason,
            )
            raise
        except (TimeoutError, aiohttp.ClientError, OutboundError) as exc:
            if hook_name == "send_request":
                raise
            raise self._hook_failed(hook_name, req, exc) from exc
        except Exception as exc:
            raise self._hook_failed(hook_name, req, exc) from exc

    def _hook_failed(self, hook_name: str, req: OutboundRequest, exc: BaseException) -> HookFailed:
        where = hook_origin(exc)
        self.log.error(
            "outbound_hook_failed",
            service=req.service,
            operation=req.operation,
            hook=where,
            hook_name=hook_name,
            error=f"{type(exc).__name__}: {_exc_text(exc)}",
        )
        return HookFailed(
            f"{req.service} {req.operation or req.method}: hook {hook_name} at {where} "
            f"raised {type(exc).__name__}: {_exc_text(exc)}",
            hook=where,
            hook_name=hook_name,
        )

    async def send_direct(self, req: OutboundRequest, **options: Any) -> OutboundResponse:
        """Send ``req`` as it is through the pipeline's session (no hooks, no retry).

        For ``send_request`` plugins that change only how the bytes travel: ``options``
        go to ``aiohttp.ClientSession.request`` (``proxy=``, ``proxy_headers=``, ``ssl=``,
        ``timeout=``), so such a request shares the pipeline's connection pool.
        """
        if self._session is None or self._session.closed:
            raise RuntimeError(
                "the outbound pipeline is not started: await pipeline.start() "
                "(or use it as an async context manager) before sending"
            )
        started = time.monotonic()
        options.setdefault("timeout", aiohttp.ClientTimeout(total=req.timeout))
        async with self._session.request(
            req.method,
            req.url,
            headers=req.headers,
            params=req.params or None,
            data=req.body_bytes(),
            # Redirects are not followed: an API answering 3xx is misconfigured, and
            # following it could change the method or send credentials elsewhere.
            allow_redirects=False,
            **options,
        ) as resp:
            body = await resp.read()
            return OutboundResponse(
                status=resp.status,
                headers=resp.headers,
                body=body,
                elapsed=time.monotonic() - started,
                url=safe_url(str(resp.url)),
            )

    async def _wait(self, req: OutboundRequest, attempt: int, seconds: float, reason: str) -> None:
        self.log.info(
            "outbound_retry",
            service=req.service,
            operation=req.operation,
            method=req.method,
            url=safe_url(req.url),
            attempt=attempt,
            reason=reason,
            wait_seconds=round(seconds, 3),
        )
        await self._sleep(seconds)

    def _record(
        self,
        req: OutboundRequest,
        status: str,
        elapsed: float,
        attempt: int,
        *,
        response: OutboundResponse | None = None,
        error: str | None = None,
    ) -> None:
        # A logger given by the caller is its own to filter; ours is skipped at info,
        # where this line is dropped anyway (safe_url alone is ~10 us a call).
        if self._log_name is None or log_enabled(self._log_name, logging.DEBUG):
            fields: dict[str, Any] = {
                "service": req.service,
                "operation": req.operation,
                "method": req.method,
                "url": safe_url(req.url),
                "status": status,
                "elapsed_ms": round(elapsed * 1000, 1),
                "attempt": attempt,
            }
            if error:
                fields["error"] = error
            if response is not None:
                for name in LOGGED_RESPONSE_HEADERS:
                    value = response.headers.get(name)
                    if value is not None:
                        fields[name.replace("-", "_")] = value
            self.log.debug("outbound_attempt", **fields)
        metrics = self.metrics if self.metrics is not None else getattr(self.ctx, "metrics", None)
        if metrics is not None:
            try:
                host = URL(req.url).host or ""
            except (ValueError, TypeError):
                host = ""
            metrics.outbound(req.service, host, status, elapsed)


def _exc_text(exc: BaseException) -> str:
    # aiohttp's connection errors name host and port, never headers; keep it short.
    text = str(exc)
    return text if len(text) <= 200 else text[:197] + "..."


__all__ = [
    "IDEMPOTENT_METHODS",
    "ApiError",
    "AuthError",
    "HookFailed",
    "Limiter",
    "NotFound",
    "OutboundConnectionError",
    "OutboundError",
    "OutboundPipeline",
    "OutboundRequest",
    "OutboundResponse",
    "OutboundTimeout",
    "RateLimited",
    "RateLimiter",
    "RequestVetoed",
    "RetryPolicy",
    "TransportError",
    "hook_origin",
    "retry_after_seconds",
    "safe_url",
]
