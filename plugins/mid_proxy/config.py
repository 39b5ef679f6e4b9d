"""mid_proxy's two configurations: the daemon's ``[plugins.mid_proxy]`` and the relay's RELAY.toml.

Both validate as every dutybridge section does: strict, no unknown keys, errors naming the key.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from yarl import URL

from dutybridge.config import Secret, Section

PROXY_SCHEMES = ("http", "https", "socks4", "socks5", "socks5h")
SOCKS_HINT = "pip install 'dutybridge[socks]' (aiohttp-socks)"


def socks_available() -> bool:
    return importlib.util.find_spec("aiohttp_socks") is not None


def _file(value: str, info: ValidationInfo) -> str:
    """An existing file; a relative path is taken from the configuration file's folder."""
    if not value:
        return value
    path = Path(value)
    if not path.is_absolute():
        context = info.context if isinstance(info.context, dict) else {}
        path = Path(context.get("base_dir") or Path.cwd()) / path
    if not path.is_file():
        raise ValueError(f"file {path} not found")
    return str(path)


def _http_url(value: str) -> str:
    try:
        url = URL(value)
    except (ValueError, TypeError):
        raise ValueError(f"not a URL: {value!r}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"expected an http:// or https:// URL, found {value!r}")
    return value.rstrip("/")


class MidProxyConfig(Section):
    """MID-server-style transport: chosen requests go through a forward proxy or a relay agent."""

    mode: Literal["proxy", "relay"] = Field(
        "proxy",
        description="proxy: through an HTTP(S) or SOCKS forward proxy; relay: through `dutybridge relay` agents inside the other network.",
    )
    targets: list[str] = Field(
        default_factory=list,
        description="Which requests take this way: service names (pagerduty, servicenow, or another plugin's) and URL prefixes (https://...). Empty: every request.",
    )
    proxy_url: str = Field(
        "",
        description="The forward proxy: http://HOST:PORT, https://HOST:PORT, or socks5://HOST:PORT (SOCKS needs "
        + SOCKS_HINT
        + ").",
    )
    proxy_username: str = Field("", description="User for the proxy's basic authentication; empty for none.")
    proxy_password: Secret | None = Field(None, description="The proxy user's password. Use env:NAME or file:PATH.")
    proxy_ca_file: str = Field(
        "",
        description="PEM bundle trusted, beside the system's CAs, for the https:// proxy's certificate (and for the targets' certificates a TLS-inspecting proxy re-signs).",
    )
    proxy_connect_timeout: float = Field(
        10.0, gt=0, description="Seconds to connect to the proxy; the request's own timeout bounds the whole call."
    )
    relay_urls: list[str] = Field(
        default_factory=list,
        description="Relays in order of preference, e.g. https://relay.corp.example:8443; when one is down the next is used.",
    )
    relay_secret: Secret | None = Field(
        None, description="The HMAC secret shared with the relays (their relay.secret). Use env:NAME or file:PATH."
    )
    relay_ca_file: str = Field(
        "", description="PEM bundle trusted, beside the system's CAs, for the relays' certificates."
    )
    relay_health_seconds: float = Field(
        15.0,
        gt=0,
        description="How often each relay's /health is asked; a relay that is down is tried last until it answers again.",
    )
    ecc_parameters: dict[str, str] = Field(
        default_factory=dict,
        description="Free-form parameters sent with every relayed request (the v7 app's 'ECC parameters'); the relay logs them, so no secrets here.",
    )

    @field_validator("targets")
    @classmethod
    def _targets(cls, v: list[str]) -> list[str]:
        for target in v:
            if not target or ("://" in target and not target.startswith(("http://", "https://"))):
                raise ValueError(f"{target!r}: a target is a service name or an http(s):// URL prefix")
        return v

    @field_validator("proxy_url")
    @classmethod
    def _proxy_url(cls, v: str, info: ValidationInfo) -> str:
        if not v:
            if info.data.get("mode") == "proxy":
                raise ValueError("mode is proxy: set the proxy's URL, as in http://proxy.corp.example:3128")
            return v
        try:
            url = URL(v)
        except (ValueError, TypeError):
            raise ValueError(f"not a URL: {v!r}") from None
        if url.scheme not in PROXY_SCHEMES or not url.host:
            raise ValueError(f"expected {', '.join(s + '://HOST:PORT' for s in PROXY_SCHEMES)}, found {v!r}")
        if url.user or url.password:
            raise ValueError("put the proxy's credentials in proxy_username and proxy_password, not in the URL")
        if url.scheme.startswith("socks") and not socks_available():
            raise ValueError(f"a {url.scheme}:// proxy needs aiohttp-socks, which is not installed: {SOCKS_HINT}")
        return v

    @field_validator("proxy_ca_file", "relay_ca_file")
    @classmethod
    def _ca(cls, v: str, info: ValidationInfo) -> str:
        return _file(v, info)

    @field_validator("relay_urls")
    @classmethod
    def _relays(cls, v: list[str], info: ValidationInfo) -> list[str]:
        if info.data.get("mode") == "relay" and not v:
            raise ValueError('mode is relay: list at least one relay, as in ["https://relay.corp.example:8443"]')
        return [_http_url(u) for u in v]

    @field_validator("relay_secret")
    @classmethod
    def _secret(cls, v: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if info.data.get("mode") == "relay":
            if v is None:
                raise ValueError("mode is relay: set the secret shared with the relays (env:NAME or file:PATH)")
            if len(v.get_secret_value()) < 16:
                raise ValueError("the relay secret is too short: use 16 characters or more")
        return v


class RelayConfig(Section):
    """`dutybridge relay`: the agent that makes the daemon's requests from inside another network."""

    listen_host: str = Field("127.0.0.1", description="Address to listen on.")
    listen_port: int = Field(
        8443, ge=0, le=65535, description="Port to listen on (0 picks a free one, printed at start)."
    )
    secret: Secret = Field(
        description="The HMAC secret shared with the daemon (plugins.mid_proxy.relay_secret). Use env:NAME or file:PATH."
    )
    allowed_hosts: list[str] = Field(
        description="Hosts the relay may call: api.pagerduty.com, *.service-now.com (any subdomain), or HOST:PORT. Any other is refused."
    )
    max_skew_seconds: float = Field(
        30.0,
        gt=0,
        description="How old (or how far ahead) a request's timestamp may be; older ones are refused as stale.",
    )
    max_body_bytes: int = Field(10_485_760, ge=1024, description="Largest envelope accepted.")
    tls_cert_file: str = Field(
        "",
        description="PEM certificate chain to serve HTTPS; empty serves plain HTTP (only behind a TLS-terminating proxy or on loopback).",
    )
    tls_key_file: str = Field("", description="The certificate's private key.")
    upstream_ca_file: str = Field(
        "", description="PEM bundle trusted, beside the system's CAs, for the upstream APIs' certificates."
    )
    connection_limit: int = Field(100, ge=1, description="Upstream connections open at once (pooled and reused).")

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError('list at least one host, as in ["api.pagerduty.com", "*.service-now.com"]')
        for host in v:
            name = host.removeprefix("*.")
            if not name or "/" in host or "*" in name or " " in host:
                raise ValueError(f"{host!r}: expected HOST, HOST:PORT or *.DOMAIN")
        return [h.lower() for h in v]

    @field_validator("secret")
    @classmethod
    def _secret(cls, v: SecretStr) -> SecretStr:
        if len(v.get_secret_value()) < 16:
            raise ValueError("the relay secret is too short: use 16 characters or more")
        return v

    @field_validator("tls_cert_file", "tls_key_file", "upstream_ca_file")
    @classmethod
    def _files(cls, v: str, info: ValidationInfo) -> str:
        return _file(v, info)
