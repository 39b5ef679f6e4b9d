"""custom_headers: extra headers on outbound API requests, one ``name: value`` a line, for
PagerDuty (``pagerduty``) and ServiceNow (``servicenow``) requests.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from pydantic import Field, field_validator

from dutybridge import hookimpl
from dutybridge.config import Section

if TYPE_CHECKING:  # pragma: no cover
    from pydantic import BaseModel

    from dutybridge.context import Ctx
    from dutybridge.http import OutboundRequest

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
#: Headers the pipeline and the clients own: overriding them would break auth or framing.
PROTECTED = {"authorization", "host", "content-length", "content-type", "transfer-encoding", "connection"}


def parse_headers(text: str) -> list[tuple[str, str]]:
    """``"X-A: 1\\nX-B: 2"`` -> ``[("X-A", "1"), ("X-B", "2")]``; ValueError names the line."""
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, value = line.partition(":")
        name, value = name.strip(), value.strip()
        if not sep or not name:
            raise ValueError(f"line {number}: expected 'Name: value', found {line.strip()!r}")
        if not _TOKEN.match(name):
            raise ValueError(f"line {number}: {name!r} is not a valid header name")
        if name.lower() in PROTECTED:
            raise ValueError(f"line {number}: {name} is set by dutybridge and cannot be overridden")
        if "\r" in value or "\n" in value:
            raise ValueError(f"line {number}: a header value cannot contain a line break")
        out.append((name, value))
    return out


# The v7 app's "PagerDuty API requests customization" field, extended to ServiceNow calls.
class CustomHeadersConfig(Section):
    """Custom headers on outbound API requests, one 'Name: value' a line."""

    pagerduty: str = Field("", description="Headers added to every PagerDuty API request, one 'Name: value' a line.")
    servicenow: str = Field("", description="Headers added to every ServiceNow API request, one 'Name: value' a line.")

    @field_validator("pagerduty", "servicenow")
    @classmethod
    def _valid(cls, v: str) -> str:
        parse_headers(v)
        return v


@hookimpl
def register_config_sections() -> dict[str, type[BaseModel]]:
    return {"custom_headers": CustomHeadersConfig}


@hookimpl
def outbound_request(request: OutboundRequest, ctx: Ctx) -> None:
    conf = ctx.plugin_config("custom_headers")
    text = getattr(conf, request.service, None) if request.service in ("pagerduty", "servicenow") else None
    for name, value in parse_headers(text or ""):
        request.headers[name] = value
