"""ServiceNow's errors as the client raises them: one typed error per kind of answer,
with the ``message`` and ``detail`` of the Table API's ``{"error": {...}}`` body.
"""

from __future__ import annotations

from .http import ApiError, AuthError, NotFound, OutboundResponse, RateLimited, retry_after_seconds


class ServiceNowError(ApiError):
    """ServiceNow answered with an error: HTTP ``status`` and the ``message`` and
    ``detail`` of ``{"error": {...}, "status": "failure"}``. Never holds the password."""

    def __init__(self, status: int, message: str, detail: str = "", *, operation: str = "", attempts: int = 1):
        self.detail = detail
        where = f" to {operation}" if operation else ""
        text = f"ServiceNow answered {status}{where}: {message}"
        if detail:
            text += f" ({detail})"
        if attempts > 1:
            text += f" after {attempts} attempts"
        super().__init__(text, status=status, message=message, operation=operation, attempts=attempts)


class ServiceNowNotFound(ServiceNowError, NotFound):
    """404: no such record, or an ACL hides it."""


class ServiceNowAuthError(ServiceNowError, AuthError):
    """401 (bad credentials) or 403 (an ACL, business rule or data policy refused)."""


class ServiceNowRateLimited(ServiceNowError, RateLimited):
    """429, still, after the retries the policy allowed (a rate limit rule of the instance).

    ``retry_after`` is the wait the instance asked for in seconds, when it said
    (hourly rules can ask for longer than the pipeline waits in one call).
    """


def error_from_response(response: OutboundResponse, operation: str = "") -> ServiceNowError:
    """The typed error for a non-2xx ServiceNow response."""
    message, detail = "", ""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        message = str(body["error"].get("message") or "")
        detail = str(body["error"].get("detail") or "")
    elif response.body and body is None:
        detail = _snippet(response.body)
    if not message:
        message = {
            401: "User Not Authenticated",
            403: "Forbidden",
            404: "No Record found",
            429: "Too Many Requests",
        }.get(response.status, f"HTTP {response.status}")
    if response.status == 404:
        cls: type[ServiceNowError] = ServiceNowNotFound
    elif response.status in (401, 403):
        cls = ServiceNowAuthError
    elif response.status == 429:
        cls = ServiceNowRateLimited
    else:
        cls = ServiceNowError
    err = cls(response.status, message, detail, operation=operation, attempts=response.attempts)
    if isinstance(err, ServiceNowRateLimited):  # the 429 case above
        err.retry_after = retry_after_seconds(response.headers)
    return err


def _snippet(body: bytes) -> str:
    text = " ".join(body[:300].decode("utf-8", "replace").split())
    return text[:200]
