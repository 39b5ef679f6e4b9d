"""ServiceNow users into PagerDuty: matched by email first (linked, never duplicated),
else created with their phones as contact methods and high-urgency notification rules."""

from __future__ import annotations

from typing import Any

import phonenumbers

from dutybridge.servicenow import Query
from dutybridge.store.base import Link

from .objects import MARKER, PLANNED
from .run import Outcome, Refused, Run, Tally

#: incident_sync's kind for users (plugins/incident_sync/mapping.py): pd_id the PagerDuty
#: user, sn_id the sys_user sys_id, state {"email"}.
USER_KIND = "user"
SN_USER_FIELDS = [
    "sys_id",
    "user_name",
    "name",
    "first_name",
    "last_name",
    "email",
    "phone",
    "mobile_phone",
    "title",
    "time_zone",
    "active",
]
#: ServiceNow field -> (contact method type, label), in the order they are added.
PHONES = (
    ("phone", "phone_contact_method", "Business phone"),
    ("mobile_phone", "phone_contact_method", "Mobile phone"),
    ("mobile_phone", "sms_contact_method", "Mobile phone"),
)


def display_name(user: dict) -> str:
    name = str(user.get("name") or "").strip()
    if not name:
        name = " ".join(str(user.get(k) or "").strip() for k in ("first_name", "last_name")).strip()
    return name or str(user.get("user_name") or user.get("sys_id") or "")


def parse_phone(raw: str, region: str) -> tuple[int, str] | str:
    """(country code, national number) of ``raw`` in E.164 terms, or why it cannot be used."""
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException as exc:
        return f"{raw!r} is not a phone number ({exc})"
    # A number parsed without error has a country code; phonenumbers types it as optional.
    if number.country_code is None or not phonenumbers.is_valid_number(number):
        return f"{raw!r} is not a valid number (region {region} when written without a country code)"
    return number.country_code, str(number.national_number)


async def sn_users(run: Run, refs: list[str]) -> tuple[list[dict], list[str]]:
    """The sys_user records named by sys_id, user_name or email; and the refs not found."""
    found: list[dict] = []
    missing: list[str] = []
    for r in refs:
        q = Query().eq("sys_id", r).or_().eq("user_name", r).or_().eq("email", r)
        row = await run.servicenow.first("sys_user", q, fields=SN_USER_FIELDS)
        (found.append(row) if row else missing.append(r))
    return found, missing


async def group_members(run: Run, group_id: str) -> list[dict]:
    rows = await run.servicenow.list(
        "sys_user_grmember", Query().eq("group", group_id), fields=["user"], order_by="sys_id"
    )
    ids = [_ref(r.get("user")) for r in rows if _ref(r.get("user"))]
    if not ids:
        return []
    return await run.servicenow.list("sys_user", Query().in_("sys_id", ids), fields=SN_USER_FIELDS, order_by="name")


async def linked_user(run: Run, sys_id: str) -> str | None:
    link = await run.store.get_link(USER_KIND, sn_id=sys_id)
    return link.pd_id if link is not None else None


async def needs_licence(run: Run, user: dict) -> bool:
    """Whether provisioning ``user`` would create a PagerDuty user (it has no match)."""
    if await linked_user(run, user["sys_id"]):
        return False
    email = str(user.get("email") or "").strip()
    return bool(email) and await run.user_by_email(email) is None


async def provision_user(run: Run, user: dict) -> tuple[str, str, list[str]]:
    """(PagerDuty user id, action, problems) for ServiceNow ``user``; serialised per user."""
    async with run.lock(f"user:{user['sys_id']}"):
        return await _provision_user(run, user)


async def _provision_user(run: Run, user: dict) -> tuple[str, str, list[str]]:
    sys_id = user["sys_id"]
    known = await linked_user(run, sys_id)
    if known is not None:
        return known, "kept", []
    email = str(user.get("email") or "").strip()
    if not email:
        raise Refused("the ServiceNow user has no email: PagerDuty users are matched and created by email")
    existing = await run.user_by_email(email)
    if existing is not None:
        if run.dry_run:
            return existing["id"], "linked", []
        problems: list[str] = []
        how = "linked"
        if MARKER in str(existing.get("description") or ""):
            # Ours, from a run killed before it was linked: finish its contact methods.
            problems = await _contact_methods(run, existing["id"], user)
            how = "adopted"
        await _link(run, existing["id"], user)
        return existing["id"], how, problems
    if run.dry_run:
        return PLANNED, "planned", [f"would create {display_name(user)} <{email}> as {run.conf.user_role} (a licence)"]
    body: dict[str, Any] = {
        "type": "user",
        "name": display_name(user),
        "email": email,
        "role": run.conf.user_role,
        "time_zone": str(user.get("time_zone") or "") or run.conf.time_zone,
        "description": f"{MARKER} sys_user {sys_id}",
    }
    if user.get("title"):
        body["job_title"] = str(user["title"])[:100]
    created = (
        await run.pagerduty.post("/users", json={"user": body}, acting_email=run.acting_email, operation="POST /users")
    )["user"]
    run.user_created(email, created)
    problems = await _contact_methods(run, created["id"], user, fresh=True)
    await _link(run, created["id"], user)
    return created["id"], "created", problems


async def _contact_methods(run: Run, pd_id: str, user: dict, *, fresh: bool = False) -> list[str]:
    """Phone and SMS contact methods from ``phone``/``mobile_phone``, each with an immediate
    high-urgency notification rule; the numbers that cannot be parsed, as problems.
    ``fresh``: the user was just created, so has none of them yet (no need to read)."""
    problems: list[str] = []
    have: set[tuple[Any, str]] = (
        set()
        if fresh
        else {
            (cm.get("type"), str(cm.get("address")))
            async for cm in run.pagerduty.paginate(
                f"/users/{pd_id}/contact_methods", "contact_methods", operation="GET /users/{id}/contact_methods"
            )
        }
    )
    for field_name, ctype, label in PHONES:
        raw = str(user.get(field_name) or "").strip()
        if not raw:
            continue
        parsed = parse_phone(raw, run.conf.default_region)
        if isinstance(parsed, str):
            if ctype == "phone_contact_method":  # once per number, not again for its SMS
                problems.append(f"{field_name} {parsed}: not sent")
            continue
        country, national = parsed
        if (ctype, national) in have:
            continue
        have.add((ctype, national))
        cm = (
            await run.pagerduty.post(
                f"/users/{pd_id}/contact_methods",
                json={"contact_method": {"type": ctype, "label": label, "address": national, "country_code": country}},
                acting_email=run.acting_email,
                operation="POST /users/{id}/contact_methods",
            )
        )["contact_method"]
        await run.pagerduty.post(
            f"/users/{pd_id}/notification_rules",
            json={
                "notification_rule": {
                    "type": "assignment_notification_rule",
                    "start_delay_in_minutes": 0,
                    "urgency": "high",
                    "contact_method": {"id": cm["id"], "type": f"{ctype}_reference"},
                }
            },
            acting_email=run.acting_email,
            operation="POST /users/{id}/notification_rules",
        )
    return problems


async def _link(run: Run, pd_id: str, user: dict) -> None:
    await run.store.put_link(
        Link(
            kind=USER_KIND,
            pd_id=pd_id,
            sn_id=user["sys_id"],
            state={"email": str(user.get("email") or "").strip().lower()},
        )
    )
    if run.conf.write_back:
        await run.servicenow.update("sys_user", user["sys_id"], {run.conf.user_field: pd_id})


async def user_outcome(run: Run, user: dict) -> Outcome:
    tally = Tally()
    pd_id, action, problems = await provision_user(run, user)
    tally.add(action)
    return Outcome(
        "user", display_name(user), user["sys_id"], tally.status, problems, {"user": pd_id} if pd_id != PLANNED else {}
    )


def _ref(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("value") or "")
    return str(value or "")
