"""What passes the outbound pipeline: the request hooks may change, the response they
see, and the errors a call ends with (typed per API by the clients).
"""

from __future__ import annotations

import json as _json
import traceback
from dataclasses import dataclass, field
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy

from . import hooks as _hooks_module
from .redact import safe_url

_HOOKS_FILE = _hooks_module.__file__


@dataclass(repr=False)
class OutboundRequest:
    """An outbound HTTP request, mutable by ``outbound_request`` hooks.

    ``service`` is ``"pagerduty"``, ``"servicenow"`` or another name a plugin uses;
    ``operation`` is the API operation in template form (``"PUT /incidents/{id}"``,
    ``"GET /api/now/table/incident"``) so hooks and metrics need not parse URLs.
    ``extra`` carries plugin data along the pipeline (never sent); the pipeline
    sets ``extra["attempt"]`` (1 for the first try). ``repr`` shows no header, body,
    query value or URL credentials, because those may hold secrets.
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

    def __repr__(self) -> str:
        names = sorted({k for k, _ in self.params})
        return (
            f"OutboundRequest(method={self.method!r}, url={safe_url(self.url)!r}, "
            f"service={self.service!r}, operation={self.operation!r}, params={names!r}, "
            f"timeout={self.timeout!r})"
        )

    def body_bytes(self) -> bytes | None:
        if self.data is not None:
            return self.data
        if self.json is not None:
            return _json.dumps(self.json).encode()
        return None


@dataclass
class OutboundResponse:
    """What came back: status, headers, raw body, and the seconds it took.

    ``attempts`` is how many tries the pipeline made to get this response.
    """

    status: int
    headers: CIMultiDictProxy[str] | CIMultiDict[str]
    body: bytes = field(repr=False)
    elapsed: float = 0.0
    url: str = ""
    attempts: int = 1

    def json(self) -> Any:
        if not self.body:
            return None
        return _json.loads(self.body)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


# -- errors -----------------------------------------------------------------------


class OutboundError(Exception):
    """An outbound call failed. ``transient`` says whether trying later may succeed.

    The API clients raise subclasses carrying the API's own error message
    (``PagerDutyError``, ``ServiceNowError``); the pipeline raises ``TransportError``
    when no response came back at all. Messages never contain credentials.
    """

    transient: bool = False
    status: int | None = None


class ApiError(OutboundError):
    """The API answered with an error status: ``status``, its ``message``, the
    ``operation`` and how many ``attempts`` were made. ``transient`` for 429 and 5xx.

    The clients raise subclasses (``PagerDutyError``, ``ServiceNowError``) that are
    also ``NotFound``, ``AuthError`` or ``RateLimited`` where the status says so, so a
    plugin can catch ``NotFound`` whichever API it called.
    """

    def __init__(self, text: str, *, status: int, message: str, operation: str = "", attempts: int = 1):
        super().__init__(text)
        self.status = status
        self.message = message
        self.operation = operation
        self.attempts = attempts
        self.transient = status == 429 or status >= 500


class NotFound(ApiError):
    """404: the object does not exist (or the credentials may not see it)."""


class AuthError(ApiError):
    """401 or 403: the credentials are wrong, or lack access to this object."""


class RateLimited(ApiError):
    """429, still, after the retries the policy allowed; ``retry_after`` is the wait
    the API asked for, in seconds, when it said."""

    retry_after: float | None = None


class TransportError(OutboundError):
    """No response after the allowed attempts: connection failure or timeout."""

    transient = True

    def __init__(self, message: str, *, service: str = "", operation: str = "", attempts: int = 1):
        super().__init__(message)
        self.service = service
        self.operation = operation
        self.attempts = attempts


class OutboundTimeout(TransportError):
    """The request timed out (on every attempt allowed)."""


class OutboundConnectionError(TransportError):
    """The connection failed or was reset (on every attempt allowed)."""


class RequestVetoed(OutboundError):
    """Raised by a hook (``outbound_request`` or ``send_request``) to stop a request.

    ``raise RequestVetoed("notes matching 'password' are not sent")``: the request is
    not sent, and the call fails with the hook's message (and where the hook is), not
    retried by the pipeline. ``hook`` is ``FILE:LINE`` of the raise, set by the pipeline.
    """

    transient = False

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason
        self.hook = ""


class HookFailed(OutboundError):
    """A hook raised an unexpected exception: the request fails (the exception is the
    ``__cause__``), and is logged with the hook's file and line. ``transient``: the
    caller's own retry (the worker's event backoff) tries again, since an operator can
    fix the hook file and reload in the meantime."""

    transient = True

    def __init__(self, message: str, *, hook: str, hook_name: str):
        super().__init__(message)
        self.hook = hook
        self.hook_name = hook_name


def hook_origin(exc: BaseException) -> str:
    """``FILE:LINE`` in the hook implementation where ``exc`` was raised (or that made
    the call which raised it): the innermost frame in the implementation's own file."""
    frames = traceback.extract_tb(exc.__traceback__)
    # The first frame after the core's hook caller is the implementation itself.
    last_core = max((i for i, f in enumerate(frames) if f.filename == _HOOKS_FILE), default=-1)
    inside = frames[last_core + 1 :] or frames
    if not inside:
        return "<unknown>"
    own = [f for f in inside if f.filename == inside[0].filename]
    return f"{own[-1].filename}:{own[-1].lineno}"
