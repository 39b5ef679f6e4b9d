"""`dutybridge relay --config RELAY.toml`: the agent that makes the daemon's calls from its network.

It verifies each envelope (signature, freshness, nonce, allowed host), makes the call
through one pooled session, and answers the status, headers and body, signed.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl
import sys
import time
import tomllib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import structlog
from aiohttp import web
from pydantic import ValidationError

from dutybridge.config import format_validation_error

from . import envelope as env
from .config import RelayConfig

if TYPE_CHECKING:  # pragma: no cover
    from dutybridge.context import Ctx

log = structlog.get_logger("dutybridge.mid_proxy.relay")

VIA = "1.1 dutybridge-relay"


class RelayConfigError(Exception):
    """RELAY.toml is missing or invalid; the message has one line per problem."""


def load_relay_config(path: Path) -> RelayConfig:
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise RelayConfigError(f"{path}: file not found") from None
    except OSError as exc:
        raise RelayConfigError(f"{path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise RelayConfigError(f"{path}: not valid TOML: {exc}") from None
    unknown = sorted(set(raw) - {"relay"})
    if unknown or not isinstance(raw.get("relay"), dict):
        raise RelayConfigError(
            f"{path}: expected one [relay] table" + (f"; unknown: {', '.join(unknown)}" if unknown else "")
        )
    try:
        return RelayConfig.model_validate(raw["relay"], context={"base_dir": path.resolve().parent})
    except ValidationError as exc:
        lines = format_validation_error("relay", exc, {"relay.secret"}, RelayConfig)
        raise RelayConfigError("\n".join(f"{path}: {line}" for line in lines)) from None


def _ssl_context(cafile: str) -> ssl.SSLContext | bool:
    if not cafile:
        return True
    context = ssl.create_default_context()
    context.load_verify_locations(cafile)
    return context


class RelayAgent:
    """The relay's state: its configuration, the nonce cache and the upstream session."""

    def __init__(self, config: RelayConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.secret = config.secret.get_secret_value().encode()
        self.nonces = env.NonceCache(window=2 * config.max_skew_seconds)
        self._clock = clock
        self.session: aiohttp.ClientSession | None = None

    async def _session_ctx(self, app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(
            limit=self.config.connection_limit, ssl=_ssl_context(self.config.upstream_ca_file)
        )
        self.session = aiohttp.ClientSession(connector=connector, trust_env=False, auto_decompress=True)
        yield
        await self.session.close()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_body_bytes)
        app.router.add_post(env.EXECUTE_PATH, self.execute)
        app.router.add_get(env.HEALTH_PATH, self.health)
        app.cleanup_ctx.append(self._session_ctx)
        return app

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    def _refuse(self, status: int, reason: str, **fields: Any) -> web.Response:
        log.warning("relay_refused", status=status, reason=reason, **fields)
        return web.json_response({"error": reason}, status=status)

    async def execute(self, request: web.Request) -> web.Response:
        peer = request.remote
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._refuse(413, "the envelope is too large", peer=peer)
        if not env.verify(self.secret, body, request.headers.get(env.SIGNATURE_HEADER)):
            return self._refuse(401, "bad signature", peer=peer)
        try:
            envelope = env.parse_request(body)
        except env.EnvelopeError as exc:
            return self._refuse(exc.status, exc.reason, peer=peer)
        skew = self._clock() - envelope["ts"]
        if abs(skew) > self.config.max_skew_seconds:
            return self._refuse(
                401,
                f"stale envelope: its timestamp is {skew:+.0f}s from the relay's clock "
                f"(allowed: {self.config.max_skew_seconds:g}s)",
                peer=peer,
            )
        if not self.nonces.add(envelope["nonce"]):
            return self._refuse(409, "replayed envelope: this nonce was already used", peer=peer)
        if not env.host_allowed(envelope["url"], self.config.allowed_hosts):
            return self._refuse(
                403, "host not allowed by this relay's allowed_hosts", peer=peer, url=_safe(envelope["url"])
            )
        return await self._forward(envelope)

    async def _forward(self, envelope: dict[str, Any]) -> web.Response:
        if self.session is None:
            return web.json_response({"error": "the relay is not started"}, status=503)
        headers = [(k, v) for k, v in envelope["headers"] if k.lower() not in env.HOP_HEADERS]
        headers.append(("Via", VIA))
        started = time.monotonic()
        fields = {"method": envelope["method"], "url": _safe(envelope["url"]), "ecc": envelope["ecc"]}
        try:
            async with self.session.request(
                envelope["method"],
                envelope["url"],
                headers=headers,
                params=envelope["params"] or None,
                data=envelope["body"],
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=envelope["timeout"]),
            ) as resp:
                data = await resp.read()
                status, resp_headers = resp.status, list(resp.headers.items())
        except TimeoutError:
            log.warning("relay_upstream_timeout", **fields)
            return web.json_response({"error": f"no answer within {envelope['timeout']:g}s"}, status=504)
        except aiohttp.ClientConnectorError as exc:
            log.warning("relay_upstream_unreachable", error=type(exc).__name__, **fields)
            return web.json_response({"error": f"cannot connect: {type(exc).__name__}", "sent": False}, status=502)
        except aiohttp.ClientError as exc:
            log.warning("relay_upstream_failed", error=type(exc).__name__, **fields)
            return web.json_response({"error": f"failed: {type(exc).__name__}", "sent": True}, status=502)
        elapsed = time.monotonic() - started
        # Content-Encoding is gone: the body was decompressed above.
        resp_headers = [(k, v) for k, v in resp_headers if k.lower() != "content-encoding"]
        answer = env.answer_envelope(envelope["nonce"], status, resp_headers, data, elapsed)
        log.info("relay_request", status=status, elapsed_ms=round(elapsed * 1000, 1), **fields)
        return web.Response(
            body=answer, content_type="application/json", headers={env.SIGNATURE_HEADER: env.sign(self.secret, answer)}
        )


def _safe(url: str) -> str:
    # Hosts and paths only: query strings may carry tokens.
    return url.split("?", 1)[0]


def configure_logging() -> None:
    """JSON lines on stdout at info, as the daemon writes under systemd (the relay is its
    own process; it has no daemon configuration to take a format from)."""
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(20),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )


async def serve(config: RelayConfig, *, announce: Callable[..., object] = print) -> None:
    """Run the relay until SIGTERM or SIGINT."""
    agent = RelayAgent(config)
    runner = web.AppRunner(agent.app(), access_log=None, handle_signals=False)
    await runner.setup()
    tls = None
    if config.tls_cert_file:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(config.tls_cert_file, config.tls_key_file or None)
    site = web.TCPSite(runner, config.listen_host, config.listen_port, ssl_context=tls)
    await site.start()
    port = runner.addresses[0][1] if runner.addresses else config.listen_port
    scheme = "https" if tls else "http"
    announce(f"relay listening on {scheme}://{config.listen_host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


async def relay_command(args: argparse.Namespace, ctx: Ctx | None) -> int:
    """The standalone ``dutybridge relay`` command (no daemon configuration; ctx is None)."""
    if not getattr(args, "config", None):
        print(
            "dutybridge relay: --config RELAY.toml is required (a [relay] table: listen_port, "
            "secret, allowed_hosts; see plugins/mid_proxy/README.md)",
            file=sys.stderr,
        )
        return 2
    try:
        config = load_relay_config(Path(args.config))
    except RelayConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    if config.tls_cert_file and not config.tls_key_file:
        print(f"{args.config}: relay.tls_key_file: required with tls_cert_file", file=sys.stderr)
        return 2
    configure_logging()
    await serve(config)
    return 0
