"""``dutybridge check``: the guide's three connection tests, plus checks from plugins."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .context import Ctx

#: PagerDuty base roles at or above Manager (``user`` is shown as "Manager" in the UI).
MANAGER_OR_HIGHER = ("owner", "admin", "user")


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    detail: str


@dataclass(frozen=True)
class Check:
    name: str
    func: Callable[[Ctx], Awaitable[CheckResult]]


def _status(exc: Exception) -> str:
    status = getattr(exc, "status", None)
    return f"HTTP {status}: {exc}" if status else f"{type(exc).__name__}: {exc}"


async def pagerduty_connection(ctx: Ctx) -> CheckResult:
    try:
        await ctx.pagerduty.get("/abilities")
    except Exception as exc:
        return CheckResult(False, _status(exc))
    return CheckResult(True, "the PagerDuty API key works (HTTP 200)")


async def _servicenow_user(ctx: Ctx) -> dict:
    username = ctx.config.servicenow.username
    rows = await ctx.servicenow.list(
        "sys_user", f"user_name={username}", fields=["sys_id", "user_name", "email"], limit=1
    )
    if not rows:
        raise LookupError(f"the Table API answered, but sys_user has no user_name={username!r} visible to it")
    return rows[0]


async def servicenow_authentication(ctx: Ctx) -> CheckResult:
    try:
        user = await _servicenow_user(ctx)
    except Exception as exc:
        return CheckResult(False, _status(exc))
    return CheckResult(True, f"ServiceNow user {user.get('user_name')} can read the Table API (HTTP 200)")


async def default_user_settings(ctx: Ctx) -> CheckResult:
    user_id = ctx.config.pagerduty.default_user_id
    if not user_id:
        return CheckResult(False, "pagerduty.default_user_id is not set")
    try:
        body = await ctx.pagerduty.get(f"/users/{user_id}")
    except Exception as exc:
        return CheckResult(False, f"default user {user_id}: {_status(exc)}")
    user = body.get("user", body)
    role, email = user.get("role"), (user.get("email") or "")
    if role not in MANAGER_OR_HIGHER:
        return CheckResult(
            False,
            f"default user {user_id} has base role {role!r}; it needs Manager or higher ({', '.join(MANAGER_OR_HIGHER)})",
        )
    try:
        sn_user = await _servicenow_user(ctx)
    except Exception as exc:
        return CheckResult(False, f"cannot compare emails: ServiceNow user lookup failed: {_status(exc)}")
    sn_email = sn_user.get("email") or ""
    if sn_email.lower() != email.lower():
        return CheckResult(
            False, f"default user's email {email!r} does not match the ServiceNow integration user's email {sn_email!r}"
        )
    return CheckResult(
        True,
        f"default user {user.get('name', user_id)} ({email}) has role {role} and matches the ServiceNow integration user (HTTP 200)",
    )


# The guide's "Test REST API Connection", "Test ServiceNow User Authentication" and "Test
# Default User Settings", each answered as success with the HTTP status or the reason it failed.
BUILTIN_CHECKS = (
    Check("Test REST API Connection", pagerduty_connection),
    Check("Test ServiceNow User Authentication", servicenow_authentication),
    Check("Test Default User Settings", default_user_settings),
)
