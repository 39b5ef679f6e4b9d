"""The daemon's side of mid_proxy: send a request through a forward proxy, or through relays.

Both reuse the outbound pipeline's pooled session (SOCKS needs a connector of its own);
relays are tried in order, a relay that refuses connections is skipped until it is back.
"""

from __future__ import annotations

import base64
import json
import ssl
import time
from dataclasses import dataclass

import aiohttp
import structlog
from multidict import CIMultiDict
from yarl import URL

from dutybridge.http import OutboundError, OutboundPipeline, OutboundRequest, OutboundResponse, safe_url

from . import envelope as env
from .config import MidProxyConfig

log = structlog.get_logger("dutybridge.mid_proxy")


class RelayRefused(OutboundError):
    """A relay refused the envelope (bad signature, stale, replayed, host not allowed):
    the relay's own answer, not the API's. ``status`` is the relay's HTTP status."""

    def __init__(self, relay: str, status: int, reason: str):
        super().__init__(f"relay {relay} refused the request ({status}): {reason}")
        self.status = status
        self.reason = reason
        self.transient = status in (429, 503)


class ProxyRefused(OutboundError):
    """The SOCKS proxy refused: wrong credentials, or it would not open the tunnel."""

    def __init__(self, proxy: str, reason: str):
        super().__init__(f"SOCKS proxy {proxy} refused the request: {reason}")
        self.reason = reason


def ssl_context(cafile: str) -> ssl.SSLContext | bool:
    """The system's CAs plus ``cafile``'s (True: the system's alone)."""
    if not cafile:
        return True
    context = ssl.create_default_context()
    context.load_verify_locations(cafile)
    return context


class ProxyTransport:
    """Through an HTTP(S) forward proxy: absolute-URI requests for http://, CONNECT for https://."""

    def __init__(self, conf: MidProxyConfig) -> None:
        self.conf = conf
        self.ssl = ssl_context(conf.proxy_ca_file)
        password = conf.proxy_password.get_secret_value() if conf.proxy_password else ""
        # aiohttp.BasicAuth is deprecated; the header is the same thing, spelled out.
        self.auth = (
            "Basic " + base64.b64encode(f"{conf.proxy_username}:{password}".encode()).decode()
            if conf.proxy_username
            else None
        )

    async def send(self, req: OutboundRequest, pipeline: OutboundPipeline) -> OutboundResponse:
        timeout = aiohttp.ClientTimeout(total=req.timeout, sock_connect=self.conf.proxy_connect_timeout)
        proxy_headers = None
        if self.auth is not None:
            if req.url.startswith("https://"):
                proxy_headers = {"Proxy-Authorization": self.auth}  # on the CONNECT
            else:
                # A plain request goes to the proxy itself, so it carries the proxy's credentials.
                req.headers["Proxy-Authorization"] = self.auth
        return await pipeline.send_direct(
            req, proxy=self.conf.proxy_url, proxy_headers=proxy_headers, ssl=self.ssl, timeout=timeout
        )

    async def close(self) -> None:
        return None


class SocksTransport:
    """Through a SOCKS proxy (aiohttp-socks): a connector, so a session, of its own."""

    def __init__(self, conf: MidProxyConfig) -> None:
        self.conf = conf
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        # aiohttp-socks is an optional extra, imported only here; the configuration
        # refused a socks:// URL when it is not installed.
        from aiohttp_socks import ProxyConnector, ProxyType

        url = URL(self.conf.proxy_url)
        if not url.host:  # the configuration refuses such a URL; a config made without validating may not
            raise ProxyRefused(self.conf.proxy_url, "the proxy URL names no host")
        password = self.conf.proxy_password.get_secret_value() if self.conf.proxy_password else None
        connector = ProxyConnector(
            proxy_type=ProxyType.SOCKS4 if url.scheme == "socks4" else ProxyType.SOCKS5,
            host=url.host,
            port=url.port or 1080,
            username=self.conf.proxy_username or None,
            password=password,
            # socks5h://, as curl has it: the proxy resolves the names (it may see DNS we cannot).
            rdns=url.scheme == "socks5h",
            ssl=ssl_context(self.conf.proxy_ca_file),
            limit=100,
        )
        return aiohttp.ClientSession(connector=connector, trust_env=False)

    async def send(self, req: OutboundRequest, pipeline: OutboundPipeline) -> OutboundResponse:
        from aiohttp_socks import ProxyConnectionError, ProxyError, ProxyTimeoutError

        if self._session is None or self._session.closed:
            self._session = self._open()
            pipeline.add_closer(self._session.close)
        started = time.monotonic()
        try:
            async with self._session.request(
                req.method,
                req.url,
                headers=req.headers,
                params=req.params or None,
                data=req.body_bytes(),
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=req.timeout, sock_connect=self.conf.proxy_connect_timeout),
            ) as resp:
                body = await resp.read()
                return OutboundResponse(
                    resp.status, resp.headers, body, elapsed=time.monotonic() - started, url=safe_url(str(resp.url))
                )
        # The SOCKS library's own errors, as the pipeline's retry policy knows them.
        except ProxyTimeoutError as exc:
            raise TimeoutError(f"SOCKS proxy {self.conf.proxy_url}: {exc}") from exc
        except ProxyConnectionError as exc:
            raise aiohttp.ClientOSError(0, f"SOCKS proxy {self.conf.proxy_url}: {exc}") from exc
        except ProxyError as exc:
            raise ProxyRefused(self.conf.proxy_url, str(exc)) from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


@dataclass
class Relay:
    url: str
    up: bool = True
    error: str = ""


class RelayTransport:
    """Through ``dutybridge relay`` agents: a signed envelope to the first relay that is up."""

    def __init__(self, conf: MidProxyConfig) -> None:
        self.conf = conf
        self.secret = conf.relay_secret.get_secret_value().encode() if conf.relay_secret else b""
        self.ssl = ssl_context(conf.relay_ca_file)
        self.relays = [Relay(url) for url in conf.relay_urls]

    def order(self) -> list[Relay]:
        """Relays that are up, in the configured order, then the others (they may be back)."""
        return [r for r in self.relays if r.up] + [r for r in self.relays if not r.up]

    def _down(self, relay: Relay, error: str) -> None:
        if relay.up:
            log.warning("relay_down", relay=relay.url, error=error)
        relay.up, relay.error = False, error

    def _up(self, relay: Relay) -> None:
        if not relay.up:
            log.info("relay_up", relay=relay.url)
        relay.up, relay.error = True, ""

    async def send(self, req: OutboundRequest, pipeline: OutboundPipeline) -> OutboundResponse:
        session = _session_of(pipeline)
        envelope, body = env.request_envelope(
            method=req.method,
            url=req.url,
            headers=list(req.headers.items()),
            params=req.params,
            body=req.body_bytes(),
            timeout=req.timeout,
            ecc=self.conf.ecc_parameters,
        )
        headers = {env.SIGNATURE_HEADER: env.sign(self.secret, body), "Content-Type": "application/json"}
        failure: aiohttp.ClientConnectorError | None = None
        for relay in self.order():
            started = time.monotonic()
            try:
                async with session.post(
                    relay.url + env.EXECUTE_PATH,
                    data=body,
                    headers=headers,
                    ssl=self.ssl,
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=req.timeout),
                ) as resp:
                    status, data = resp.status, await resp.read()
                    signature = resp.headers.get(env.SIGNATURE_HEADER)
            except aiohttp.ClientConnectorError as exc:
                # Nothing reached this relay: the next one may take the same envelope.
                self._down(relay, f"{type(exc).__name__}: {exc}")
                failure = exc
                continue
            self._up(relay)
            return self._answer(relay, req, envelope["nonce"], status, data, signature, time.monotonic() - started)
        if failure is None:
            raise RuntimeError("mid_proxy: no relay is configured")
        raise failure

    def _answer(
        self,
        relay: Relay,
        req: OutboundRequest,
        nonce: str,
        status: int,
        data: bytes,
        signature: str | None,
        elapsed: float,
    ) -> OutboundResponse:
        if status == 504:
            raise TimeoutError(f"relay {relay.url}: the API did not answer within {req.timeout:g}s")
        if status == 502:
            raise aiohttp.ClientOSError(0, f"relay {relay.url}: {_error_of(data)}")
        if status != 200:
            raise RelayRefused(relay.url, status, _error_of(data))
        if not env.verify(self.secret, data, signature):
            raise RelayRefused(relay.url, 502, "its answer is not signed with the shared secret")
        try:
            answer = env.parse_answer(data, nonce)
        except env.EnvelopeError as exc:
            raise RelayRefused(relay.url, exc.status, exc.reason) from None
        return OutboundResponse(
            answer["status"],
            CIMultiDict((k, v) for k, v in answer["headers"]),
            answer["body"],
            elapsed=elapsed,
            url=safe_url(req.url),
        )

    async def check(self, pipeline: OutboundPipeline) -> list[Relay]:
        """Ask every relay's /health; mark each up or down. Returns the relays."""
        session = _session_of(pipeline)
        for relay in self.relays:
            try:
                async with session.get(
                    relay.url + env.HEALTH_PATH, ssl=self.ssl, timeout=aiohttp.ClientTimeout(total=5)
                ) as resp:
                    await resp.read()
                if resp.status == 200:
                    self._up(relay)
                else:
                    self._down(relay, f"/health answered {resp.status}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                self._down(relay, f"{type(exc).__name__}: {exc}")
        return self.relays

    async def close(self) -> None:
        return None


def _session_of(pipeline: OutboundPipeline) -> aiohttp.ClientSession:
    session = pipeline.session
    if session is None or session.closed:
        raise RuntimeError("the outbound pipeline is not started")
    return session


def _error_of(data: bytes) -> str:
    try:
        return str(json.loads(data).get("error") or "no reason given")
    except (ValueError, AttributeError, UnicodeDecodeError):
        return "no reason given"


Transport = ProxyTransport | SocksTransport | RelayTransport


def make_transport(conf: MidProxyConfig) -> Transport:
    if conf.mode == "relay":
        return RelayTransport(conf)
    if conf.proxy_url.startswith("socks"):
        return SocksTransport(conf)
    return ProxyTransport(conf)
