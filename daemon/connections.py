"""What the webhook server allows one client and all of them: header and keep-alive
timeouts, a cap on open connections, quiet logs for client faults and accept errors.
"""

from __future__ import annotations

import asyncio
import resource
import socket
import time
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import hdrs, web
from aiohttp.http_exceptions import HttpProcessingError

from .web import error_response

log = structlog.get_logger("dutybridge.server")

#: File descriptors kept for everything but client connections: the store, outbound
#: sessions, logs, the listening socket, aiosqlite's thread.
FD_RESERVE = 64
#: A client fault or an accept error is logged at most once per this many seconds,
#: with the count of the ones not logged in between.
LOG_EVERY_SECONDS = 60.0


class Throttled:
    """Log an event the first time, then at most once per ``every`` seconds with the
    number suppressed in between: a flood of one fault is one line a minute."""

    def __init__(self, every: float = LOG_EVERY_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self.clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def __call__(self, level: str, event: str, **kw: Any) -> None:
        now = self.clock()
        last = self._last.get(event)
        if last is not None and now - last < self.every:
            self._suppressed[event] = self._suppressed.get(event, 0) + 1
            return
        self._last[event] = now
        suppressed = self._suppressed.pop(event, 0)
        if suppressed:
            kw["suppressed_since_last"] = suppressed
        getattr(log, level)(event, **kw)


throttled = Throttled()


class ServerLogger:
    """Takes the place of aiohttp's ``aiohttp.server`` logger in the request handler.

    A malformed request (``BadHttpMessage``, ``LineTooLong``, a body that does not
    decode) or a client gone mid-answer
    is the client's fault: one warning line, throttled, no traceback. Anything else is
    ours and keeps its traceback.
    """

    def debug(self, *args: Any, **kw: Any) -> None:
        pass

    def warning(self, msg: str, *args: Any, **kw: Any) -> None:
        log.warning("http_server_warning", detail=(msg % args if args else msg)[:300])

    def exception(self, msg: str, *args: Any, exc_info: Any = None, **kw: Any) -> None:
        exc = exc_info if isinstance(exc_info, BaseException) else None
        if isinstance(exc, (HttpProcessingError, web.RequestPayloadError, ConnectionError)):
            throttled(
                "warning",
                "bad_http_request",
                error=f"{type(exc).__name__}: {exc}"[:300],
                remote=str(args[0]) if args else None,
            )
            return
        log.error(
            "http_server_error", detail=(msg % args if args else msg)[:300], exc_info=exc if exc is not None else True
        )

    error = exception


def runner_kwargs(daemon: Any) -> dict[str, Any]:
    """``web.AppRunner`` keyword arguments for ``[daemon]``'s limits."""
    # After an early answer (413, 408, 503) aiohttp reads and drops what the client still
    # sends, for lingering_time, so that it can read the answer: a client that pauses
    # longer than body_timeout is as gone there as while its body was read.
    # auto_decompress off: no sender of ours compresses, and aiohttp's decoder hung now
    # and then on a truncated deflate body (the fuzz found it); read_body refuses an
    # encoded body with 415 instead.
    return {
        "keepalive_timeout": daemon.keepalive_timeout_seconds,
        "logger": ServerLogger(),
        "lingering_time": min(10.0, daemon.body_timeout_seconds),
        "auto_decompress": False,
    }


def connection_cap(wanted: int) -> int:
    """``wanted``, raising the soft file limit towards it; lower when the hard limit
    leaves too few descriptors (then said once, at start)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = wanted + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < need:
        usable = max(1, soft - FD_RESERVE)
        log.warning(
            "max_connections_above_file_limit",
            max_connections=wanted,
            used=usable,
            file_limit=soft,
            fix="raise LimitNOFILE= in the unit (or ulimit -n), or lower daemon.max_connections",
        )
        return usable
    return wanted


class _Conn(asyncio.Protocol):
    """One client connection: aiohttp's handler inside, our timers around it."""

    def __init__(self, guard: ConnectionGuard, inner: Any) -> None:
        self.guard = guard
        self.inner = inner
        self.transport: asyncio.Transport | None = None
        self.state = "headers"  # headers -> busy -> idle -> headers ...
        self.last_active = guard.loop.time()
        self._timer: asyncio.TimerHandle | None = None

    # -- what the transport calls ------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if not self.guard.opened(self):
            return
        self.inner.connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        self.last_active = self.guard.loop.time()
        if self.state == "idle":
            # A keep-alive connection starts its next request: its headers get the same time.
            self.state = "headers"
            self._arm()
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        self.guard.closed(self)
        if self.guard.handled(self):
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    # -- our side ----------------------------------------------------------------
    def _arm(self) -> None:
        self._disarm()
        timeout = self.guard.limits().header_timeout_seconds
        self._timer = self.guard.loop.call_later(timeout, self._header_timeout)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _header_timeout(self) -> None:
        self._timer = None
        if self.state == "headers":
            self.guard.count("header_timeout")
            throttled(
                "info", "client_header_timeout", timeout=self.guard.limits().header_timeout_seconds, peer=self.peer()
            )
            self.close()

    def request_started(self) -> None:
        self.state = "busy"
        self._disarm()

    def request_finished(self) -> None:
        self.state = "idle"
        self.last_active = self.guard.loop.time()

    def peer(self) -> str | None:
        info = self.transport.get_extra_info("peername") if self.transport is not None else None
        return f"{info[0]}:{info[1]}" if isinstance(info, tuple) and len(info) >= 2 else None

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            # abort(), not close(): nothing of ours is waiting to be written, and a client
            # that does not read would hold a close() open.
            self.transport.abort()


class ConnectionGuard:
    """Every open client connection of one server: the cap, the timers, the counts.

    ``limits()`` gives the current ``[daemon]`` section (a reload applies to the next
    timer); ``cap`` is fixed at start (file descriptors are).
    """

    def __init__(self, server: web.Server, limits: Callable[[], Any], *, metrics: Any = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.server = server
        self.limits = limits
        self.metrics = metrics
        self.cap = connection_cap(limits().max_connections)
        self._conns: dict[Any, _Conn] = {}  # aiohttp's handler -> its connection
        self._refused: set[_Conn] = set()
        factory, handler = server.request_factory, server.request_handler

        def request_factory(message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> Any:
            conn = self._conns.get(protocol)
            if conn is not None:
                conn.request_started()
            return factory(message, payload, protocol, writer, task)

        async def request_handler(request: web.BaseRequest) -> web.StreamResponse:
            try:
                expect = request.headers.get(hdrs.EXPECT)
                if expect is not None and expect.lower() != "100-continue":
                    # Answered here: aiohttp's own 417 quotes the header and fails (a 500)
                    # on bytes that are not UTF-8.
                    return error_response(
                        417,
                        "unsupported Expect header (only 100-continue is understood)",
                        headers={"Connection": "close"},
                    )
                return await handler(request)
            finally:
                conn = self._conns.get(request.protocol)
                if conn is not None:
                    conn.request_finished()

        # The handler reads both when a connection is made: set them before listening.
        server.request_factory = request_factory
        server.request_handler = request_handler

    def protocol(self) -> _Conn:
        """The listening socket's protocol factory."""
        return _Conn(self, self.server())

    @property
    def open(self) -> int:
        return len(self._conns)

    def count(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.connection_closed(reason)

    def opened(self, conn: _Conn) -> bool:
        """Admit ``conn``: at the cap, the longest-idle connection makes room; when every
        one is busy with a request, the newcomer is closed at once."""
        if len(self._conns) >= self.cap:
            idle = [c for c in self._conns.values() if c.state != "busy"]
            if idle:
                oldest = min(idle, key=lambda c: c.last_active)
                self.count("evicted")
                throttled(
                    "warning",
                    "connection_evicted",
                    reason="at max_connections; the longest idle one closed",
                    max_connections=self.cap,
                )
                oldest.close()
                # Its connection_lost comes later: free its place now.
                self._conns.pop(oldest.inner, None)
            else:
                self.count("over_cap")
                throttled(
                    "warning",
                    "connection_refused",
                    reason="max_connections busy with requests",
                    max_connections=self.cap,
                )
                self._refused.add(conn)
                conn.close()
                return False
        self._conns[conn.inner] = conn
        self._gauge()
        return True

    def handled(self, conn: _Conn) -> bool:
        """Whether aiohttp's handler saw ``conn`` (a refused one never did)."""
        if conn in self._refused:
            self._refused.discard(conn)
            return False
        return True

    def closed(self, conn: _Conn) -> None:
        if self._conns.get(conn.inner) is conn:
            del self._conns[conn.inner]
        self._gauge()

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.set_connections(len(self._conns))


class GuardedSite(web.TCPSite):
    """``web.TCPSite`` whose connections pass through a ``ConnectionGuard``."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, guard: ConnectionGuard) -> None:
        super().__init__(runner, host, port)
        self.guard = guard

    async def start(self) -> None:
        # As TCPSite.start, with the guard's protocol factory in place of the server.
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self.guard.protocol,
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
        self._bound_port = self._server.sockets[0].getsockname()[1] if self._server.sockets else self._port


def quiet_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """Out of file descriptors, asyncio logs each failed accept with a traceback; log it
    throttled, one line, and leave every other loop error to the handler before."""
    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message", ""))
        if message.startswith("socket.accept() out of system resource"):
            exc = context.get("exception")
            throttled(
                "warning",
                "accept_failed",
                error=f"{type(exc).__name__}: {exc}" if exc else message,
                fix="raise LimitNOFILE= or lower daemon.max_connections",
            )
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


class GuardedSockSite(web.SockSite):
    """``web.SockSite`` (a socket bound before the app started) whose connections pass
    through a ``ConnectionGuard``."""

    def __init__(self, runner: web.BaseRunner, sock: socket.socket, guard: ConnectionGuard) -> None:
        super().__init__(runner, sock)
        self.guard = guard

    async def start(self) -> None:
        # As SockSite.start, with the guard's protocol factory in place of the server.
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self.guard.protocol, sock=self._sock, backlog=self._backlog)


async def start_sites(runner: web.AppRunner, ctx: Any, sockets: list[socket.socket]) -> list[GuardedSockSite]:
    """Serve on ``sockets`` (bound and listening) with the limits of ``ctx.config.daemon``;
    one guard, so the connection cap counts every address together."""
    loop = asyncio.get_running_loop()
    quiet_accept_errors(loop)
    if runner.server is None:
        raise RuntimeError("the runner is not set up")
    guard = ConnectionGuard(runner.server, lambda: ctx.config.daemon, metrics=ctx.metrics)
    sites = []
    for sock in sockets:
        site = GuardedSockSite(runner, sock, guard)
        await site.start()
        sites.append(site)
    return sites


async def start_site(runner: web.AppRunner, ctx: Any, host: str, port: int) -> GuardedSite:
    """Listen on ``host:port`` with the limits of ``ctx.config.daemon``."""
    loop = asyncio.get_running_loop()
    quiet_accept_errors(loop)
    if runner.server is None:
        raise RuntimeError("the runner is not set up")
    guard = ConnectionGuard(runner.server, lambda: ctx.config.daemon, metrics=ctx.metrics)
    site = GuardedSite(runner, host, port, guard)
    await site.start()
    return site
