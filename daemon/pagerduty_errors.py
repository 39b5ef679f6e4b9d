"""PagerDuty's errors as the client raises them: one typed error per kind of answer,
with PagerDuty's own code, message and details, and the codes callers branch on.
"""

from __future__ import annotations

from .http import ApiError, AuthError, NotFound, OutboundResponse, RateLimited, retry_after_seconds

# PagerDuty error codes callers branch on (14-Errors.md).
ALREADY_RESOLVED = 1001
ALREADY_ACKNOWLEDGED = 1002
ALREADY_MERGED = 1019
RATE_LIMIT_EXCEEDED = 2020


class PagerDutyError(ApiError):
    """PagerDuty answered with an error: HTTP ``status``, PagerDuty's ``code``,
    ``message`` and ``errors`` (details) from ``{"error": {...}}``.

    Branch on ``code`` for PagerDuty's conditions, e.g. ``err.code ==
    ALREADY_RESOLVED`` (1001) or ``ALREADY_ACKNOWLEDGED`` (1002). ``transient`` is true
    for 429 and 5xx (worth trying again later). The message never holds the API key.
    """

    def __init__(
        self,
        status: int,
        code: int | None,
        message: str,
        errors: list[str] | None = None,
        *,
        operation: str = "",
        attempts: int = 1,
    ):
        self.code = code
        self.errors = list(errors or [])
        where = f" to {operation}" if operation else ""
        text = f"PagerDuty answered {status}{where}: {message}"
        if code is not None:
            text += f" (code {code})"
        if self.errors:
            text += ": " + "; ".join(self.errors)
        if attempts > 1:
            text += f" after {attempts} attempts"
        super().__init__(text, status=status, message=message, operation=operation, attempts=attempts)


class PagerDutyNotFound(PagerDutyError, NotFound):
    """404: the object does not exist (or the key may not see it)."""


class PagerDutyAuthError(PagerDutyError, AuthError):
    """401 or 403: the API key is wrong, or lacks access to this object."""


class PagerDutyRateLimited(PagerDutyError, RateLimited):
    """429, still, after the retries the policy allowed; ``retry_after`` is the
    wait PagerDuty asked for (``ratelimit-reset``), in seconds, when it said."""


def error_from_response(response: OutboundResponse, operation: str = "") -> PagerDutyError:
    """The typed error for a non-2xx PagerDuty response."""
    code: int | None = None
    errors: list[str] = []
    message = ""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        message = str(err.get("message") or "")
        raw_code = err.get("code")
        code = int(raw_code) if isinstance(raw_code, (int, str)) and str(raw_code).isdigit() else None
        raw_errors = err.get("errors") or []
        errors = [str(e) for e in raw_errors] if isinstance(raw_errors, list) else [str(raw_errors)]
    if not message:
        message = {401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 429: "Rate Limit Exceeded"}.get(
            response.status, f"HTTP {response.status}"
        )
    if response.status == 404:
        cls: type[PagerDutyError] = PagerDutyNotFound
    elif response.status in (401, 403):
        cls = PagerDutyAuthError
    elif response.status == 429:
        cls = PagerDutyRateLimited
    else:
        cls = PagerDutyError
    err = cls(response.status, code, message, errors, operation=operation, attempts=response.attempts)
    if isinstance(err, PagerDutyRateLimited):  # the 429 case above
        err.retry_after = retry_after_seconds(response.headers)
    return err
