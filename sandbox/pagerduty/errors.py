"""PagerDuty's error bodies and the exception the sandbox raises to produce them, with the
codes and messages PagerDuty answers (its error-code table, plus ones seen in practice)."""

from __future__ import annotations

from collections.abc import Iterable


class PDError(Exception):
    """An API error: HTTP status, PagerDuty code, message and detail list.

    Shape (14-Errors.md): ``{"error": {"message": str, "code": int, "errors": [str, ...]}}``;
    e.g. the ``From`` header message clients see in practice has code 2016.
    """

    def __init__(self, status: int, code: int, message: str, errors: Iterable[str] | None = None):
        super().__init__(f"{status} {code} {message}")
        self.status = status
        self.code = code
        self.message = message
        self.errors = list(errors) if errors is not None else None

    def body(self) -> dict:
        err: dict = {"message": self.message, "code": self.code}
        if self.errors is not None:
            err["errors"] = self.errors
        return {"error": err}


def invalid(*errors: str, message: str = "Invalid Input Provided") -> PDError:
    """400 / 2001 with the offending fields named in ``errors``."""
    return PDError(400, 2001, message, errors)


def not_found(what: str | None = None) -> PDError:
    """404 / 2100 ``Not Found``, without an ``errors`` list, as PagerDuty answers it.

    ``what`` only makes the exception's text readable in Python tracebacks."""
    err = PDError(404, 2100, "Not Found")
    err.what = what
    return err


def already_resolved() -> PDError:
    return PDError(400, 1001, "Incident Already Resolved", ["Incident Already Resolved"])


def already_acknowledged() -> PDError:
    return PDError(400, 1002, "Incident Already Acknowledged", ["Incident Already Acknowledged"])


def missing_ability(ability: str) -> PDError:
    return PDError(402, 2014, "Missing Account Ability", [f"Account does not have the '{ability}' ability"])


def access_denied(detail: str) -> PDError:
    return PDError(403, 2010, "Access Denied", [detail])


def auth_failed() -> PDError:
    return PDError(401, 2006, "Authentication failed")


def rate_limited() -> PDError:
    return PDError(429, 2020, "Rate Limit Exceeded")


_GENERIC = {
    400: (2001, "Invalid Input Provided"),
    401: (2006, "Authentication failed"),
    402: (2014, "Missing Account Ability"),
    403: (2010, "Access Denied"),
    404: (2100, "Not Found"),
    405: (2015, "Invalid operation"),
    408: (2016, "The request took too long to process"),
    413: (2001, "Invalid Input Provided"),
    429: (2020, "Rate Limit Exceeded"),
}


def pd_error_body(status: int) -> dict:
    """PagerDuty's error body for a bare HTTP status (used by fault injection)."""
    code, message = _GENERIC.get(status, (2000, "An internal error has occurred. PagerDuty team has been notified."))
    return {"error": {"message": message, "code": code}}


__all__ = [
    "PDError",
    "access_denied",
    "already_acknowledged",
    "already_resolved",
    "auth_failed",
    "invalid",
    "missing_ability",
    "not_found",
    "pd_error_body",
    "rate_limited",
]
