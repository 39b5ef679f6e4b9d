"""custom_headers: configured headers on every outbound request of a target.

Targets are ``pagerduty``, ``servicenow`` and URL prefixes (the v7 app's "PagerDuty API
requests customization"); values may be ``env:``/``file:`` secret references.
"""

from __future__ import annotations

import re
from typing import cast

from pydantic import BaseModel, Field, PrivateAttr, SecretStr, ValidationInfo, field_validator, model_validator

from dutybridge import hookimpl
from dutybridge.config import Section, resolve_secret
from dutybridge.context import Ctx, NotReady
from dutybridge.http import OutboundRequest

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
#: Headers the pipeline and the clients own: overriding them breaks auth or framing,
#: so each must be named in ``allow_reserved`` to be set here.
RESERVED = {
    "authorization": "Authorization",
    "host": "Host",
    "content-length": "Content-Length",
    "transfer-encoding": "Transfer-Encoding",
    "connection": "Connection",
}

Headers = str | dict[str, str]


def parse_headers(text: str) -> list[tuple[str, str]]:
    """``"X-A: 1\\nX-B: 2"`` -> ``[("X-A", "1"), ("X-B", "2")]``; ValueError names the line."""
    return [(name, value) for _, name, value in _lines(text)]


def _lines(text: str) -> list[tuple[str, str, str]]:
    """(where, name, value) per header line; ``where`` is ``"line N: "`` for messages."""
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, value = line.partition(":")
        name, value = name.strip(), value.strip()
        if not sep or not name:
            raise ValueError(f"line {number}: expected 'Name: value', found {line.strip()!r}")
        try:
            _check(name, value)
        except ValueError as exc:
            raise ValueError(f"line {number}: {exc}") from None
        out.append((f"line {number}: ", name, value))
    return out


def _check(name: str, value: str) -> None:
    if not _TOKEN.match(name):
        raise ValueError(f"{name!r} is not a valid header name")
    if any(c in value for c in "\r\n\0"):
        raise ValueError(f"header {name}: a value cannot contain a line break or NUL")


def _pairs(value: Headers) -> list[tuple[str, str, str]]:
    if isinstance(value, str):
        return _lines(value)
    for name, item in value.items():
        _check(name, item)
    return [("", name, item) for name, item in value.items()]


def _resolve(value: Headers, info: ValidationInfo, allowed: set[str]) -> list[tuple[str, SecretStr]]:
    """Checked (name, value) pairs with secret references read; ValueError says why not."""
    out: list[tuple[str, SecretStr]] = []
    seen: set[str] = set()
    for where, name, raw in _pairs(value):
        low = name.lower()
        if low in RESERVED and low not in allowed:
            raise ValueError(
                f"{where}header {name} is reserved (dutybridge sets it); to override it anyway, "
                f"add {RESERVED[low]!r} to allow_reserved"
            )
        if low in seen:
            raise ValueError(f"{where}header {name} is given twice")
        seen.add(low)
        try:
            resolved = resolve_secret(raw, info)
        except ValueError as exc:
            raise ValueError(f"{where}header {name}: {exc}") from None
        _check(name, resolved)
        out.append((name, SecretStr(resolved)))
    return out


def _allowed(info: ValidationInfo) -> set[str]:
    return {n.lower() for n in info.data.get("allow_reserved", [])}


class CustomHeadersConfig(Section):
    """Custom headers on outbound requests, per target: 'Name: value' lines or a table."""

    allow_reserved: list[str] = Field(
        default_factory=list,
        description="Reserved headers (Authorization, Host, Content-Length, Transfer-Encoding, Connection) these settings may set anyway, by name; by default setting one is an error.",
    )
    pagerduty: Headers = Field(
        "",
        description="Headers on every PagerDuty API request: 'Name: value' one a line, or a table {X-Team = \"sre\"}. A value may be env:NAME or file:PATH.",
    )
    servicenow: Headers = Field("", description="Headers on every ServiceNow API request, in the same forms.")
    urls: dict[str, Headers] = Field(
        default_factory=dict,
        description='Headers on every request whose URL starts with a prefix, whatever the service: {"https://hooks.example.com/" = "X-Key: env:HOOKS_KEY"}. Applied after the service\'s; the longest prefix last.',
    )

    _headers: dict[str, list[tuple[str, SecretStr]]] = PrivateAttr(default_factory=dict)

    @field_validator("allow_reserved")
    @classmethod
    def _reserved_names(cls, v: list[str]) -> list[str]:
        for name in v:
            if name.lower() not in RESERVED:
                raise ValueError(f"{name!r} is not a reserved header (reserved: {', '.join(RESERVED.values())})")
        return v

    @field_validator("pagerduty", "servicenow")
    @classmethod
    def _valid(cls, v: Headers, info: ValidationInfo) -> Headers:
        _resolve(v, info, _allowed(info))
        return v

    @field_validator("urls")
    @classmethod
    def _valid_urls(cls, v: dict[str, Headers], info: ValidationInfo) -> dict[str, Headers]:
        for prefix, headers in v.items():
            if not prefix.startswith(("http://", "https://")):
                raise ValueError(f"{prefix!r}: a prefix is an http:// or https:// URL")
            try:
                _resolve(headers, info, _allowed(info))
            except ValueError as exc:
                raise ValueError(f"{prefix!r}: {exc}") from None
        return v

    @model_validator(mode="after")
    def _resolved(self, info: ValidationInfo) -> CustomHeadersConfig:
        # Kept privately as SecretStr: Config.secrets() reads them, for log redaction.
        allowed = {n.lower() for n in self.allow_reserved}
        headers = {
            "pagerduty": _resolve(self.pagerduty, info, allowed),
            "servicenow": _resolve(self.servicenow, info, allowed),
        }
        for prefix in sorted(self.urls, key=len):
            headers["url:" + prefix] = _resolve(self.urls[prefix], info, allowed)
        self._headers = headers
        return self

    def headers_for(self, service: str, url: str) -> list[tuple[str, str]]:
        """The (name, value) pairs for a request, in the order they apply."""
        out = (
            [(n, v.get_secret_value()) for n, v in self._headers.get(service, [])]
            if service in ("pagerduty", "servicenow")
            else []
        )
        for key, pairs in self._headers.items():
            if key.startswith("url:") and url.startswith(key[4:]):
                out += [(n, v.get_secret_value()) for n, v in pairs]
        return out


@hookimpl
def register_config_sections() -> dict[str, type[BaseModel]]:
    return {"custom_headers": CustomHeadersConfig}


@hookimpl
def outbound_request(request: OutboundRequest, ctx: Ctx | None) -> None:
    if ctx is None:  # a pipeline made without the daemon's ctx: there is no configuration to read
        raise NotReady("custom_headers needs the daemon's configuration")
    # The section under "custom_headers" is the model this plugin registered for it; ctx cannot say so.
    conf = cast("CustomHeadersConfig", ctx.plugin_config("custom_headers"))
    for name, value in conf.headers_for(request.service, request.url):
        request.headers[name] = value
