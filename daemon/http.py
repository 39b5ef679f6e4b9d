"""The outbound pipeline's request and response objects.

Every outbound call is an ``OutboundRequest`` that passes the ``outbound_request``
hooks, is sent by a ``send_request`` hook or the default transport, and whose
``OutboundResponse`` passes the ``outbound_response`` hooks.
"""

from __future__ import annotations

import json as _json
from dataclasses import dataclass, field
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy


@dataclass
class OutboundRequest:
    """An outbound HTTP request, mutable by ``outbound_request`` hooks.

    ``service`` is ``"pagerduty"``, ``"servicenow"`` or another name a plugin uses;
    ``operation`` is the API operation in template form (``"PUT /incidents/{id}"``,
    ``"GET /api/now/table/incident"``) so hooks and metrics need not parse URLs.
    ``extra`` carries plugin data along the pipeline (never sent).
    """

    method: str
    url: str
    service: str
    operation: str = ""
    headers: CIMultiDict[str] = field(default_factory=CIMultiDict)
    params: list[tuple[str, str]] = field(default_factory=list)
    json: Any = None
    data: bytes | None = None
    timeout: float = 30.0
    extra: dict[str, Any] = field(default_factory=dict)

    def body_bytes(self) -> bytes | None:
        if self.data is not None:
            return self.data
        if self.json is not None:
            return _json.dumps(self.json).encode()
        return None


@dataclass
class OutboundResponse:
    """What came back: status, headers, raw body, and the seconds it took."""

    status: int
    headers: CIMultiDictProxy[str] | CIMultiDict[str]
    body: bytes
    elapsed: float = 0.0
    url: str = ""

    def json(self) -> Any:
        if not self.body:
            return None
        return _json.loads(self.body)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300
