"""One mobilizer request, whatever it came by (HTTP API, CLI, another plugin): who acts
(a ServiceNow user holding the role, and who that is in PagerDuty), on which incident,
and the errors an action answers with."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from dutybridge.context import Ctx, NotReady
from dutybridge.http import ApiError, NotFound
from dutybridge.pagerduty import PagerDutyError
from dutybridge.servicenow import Query

from .config import PLUGIN, MobilizerConfig, plugin_conf

if TYPE_CHECKING:  # pragma: no cover
    from dutybridge.pagerduty import PagerDutyClient, Params
    from dutybridge.servicenow import ServiceNowClient
    from dutybridge.store.base import Link, Store

log = structlog.get_logger("dutybridge.response_mobilizer")

SYS_ID = re.compile(r"^[0-9a-f]{32}$")
PD_ID = re.compile(r"^[A-Z0-9]{2,20}$")
SN_NUMBER = re.compile(r"^[A-Z]{2,6}[0-9]{4,12}$")
USER_NAME = re.compile(r"^[^\s^=]{1,100}$")
INCIDENT_KIND = "incident"  # incident_sync's links: pd_id the PagerDuty incident, sn_id the record's sys_id
USER_KIND = "user"  # incident_sync's user links: pd_id the PagerDuty user, sn_id the sys_user sys_id
INCIDENT_TABLES = ("incident", "sn_si_incident")


class ActionError(Exception):
    """An action refused or failed: ``status`` is the HTTP answer, ``reason`` says why."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def bad(field_name: str, why: str) -> ActionError:
    return ActionError(400, f"{field_name}: {why}")


def _pagerduty(ctx: Ctx) -> PagerDutyClient:
    if ctx.pagerduty is None:
        raise NotReady("the PagerDuty client is not built")
    return ctx.pagerduty


def _servicenow(ctx: Ctx) -> ServiceNowClient:
    if ctx.servicenow is None:
        raise NotReady("the ServiceNow client is not built")
    return ctx.servicenow


def _store(ctx: Ctx) -> Store:
    if ctx.store is None:
        raise NotReady("the store is not open")
    return ctx.store


@dataclass
class Incident:
    """The incident acted on: always a PagerDuty incident, and its ServiceNow record when linked."""

    pd_id: str
    table: str = ""
    sys_id: str = ""
    number: str = ""


@dataclass
class Actor:
    """The ServiceNow user acting, and who they are in PagerDuty (``linked``: their own
    PagerDuty user; else the configured default user)."""

    sys_id: str
    user_name: str
    name: str
    pd_user_id: str
    pd_email: str | None
    linked: bool


@dataclass
class Call:
    ctx: Ctx
    conf: MobilizerConfig
    incident: Incident
    actor: Actor | None
    body: dict[str, Any] = field(default_factory=dict)

    @property
    def acting(self) -> Actor:
        """The acting user, whom every POST has (``perform`` finds them)."""
        if self.actor is None:
            raise bad("requested_by", "the acting ServiceNow user (user_name or sys_id) is required")
        return self.actor

    @property
    def pd(self) -> PagerDutyClient:
        return _pagerduty(self.ctx)

    @property
    def sn(self) -> ServiceNowClient:
        return _servicenow(self.ctx)

    @property
    def store(self) -> Store:
        return _store(self.ctx)

    async def pagerduty(
        self,
        method: str,
        path: str,
        what: str,
        *,
        params: Params = None,
        json: Any = None,
        operation: str | None = None,
    ) -> Any:
        """A PagerDuty call as the actor; PagerDuty's refusals become ``ActionError``s that say what failed."""
        pd = _pagerduty(self.ctx)
        email = self.actor.pd_email if self.actor else None
        try:
            if method == "GET":
                return await pd.get(path, params=params, operation=operation)
            if method == "POST":
                return await pd.post(path, params=params, json=json, acting_email=email, operation=operation)
            return await pd.put(path, params=params, json=json, acting_email=email, operation=operation)
        except PagerDutyError as exc:
            raise pagerduty_failure(exc, what) from None

    async def collect(self, path: str, key: str, what: str) -> list[dict]:
        """Every item of a paginated PagerDuty list."""
        try:
            return list(await _pagerduty(self.ctx).paginate(path, key).collect())
        except PagerDutyError as exc:
            raise pagerduty_failure(exc, what) from None


def pagerduty_failure(exc: PagerDutyError, what: str) -> ActionError:
    if exc.status == 402:
        detail = "; ".join(exc.errors) or exc.message
        return ActionError(
            402,
            f"the PagerDuty account lacks the ability to {what} ({detail}): it is part of a "
            "PagerDuty plan or add-on the account does not have",
        )
    if isinstance(exc, NotFound):
        return ActionError(404, f"cannot {what}: PagerDuty answered 404 ({exc.message})")
    if exc.status in (400, 403):
        return ActionError(exc.status if exc.status == 403 else 400, f"cannot {what}: {exc}")
    return ActionError(502, f"cannot {what}: {exc}")


def setting_off(setting: str, what: str) -> ActionError:
    return ActionError(403, f"{what} is disabled: set plugins.{PLUGIN}.{setting} = true to enable it")


# -- the incident ------------------------------------------------------------------------
async def find_incident(ctx: Ctx, ref: str) -> Incident:
    """The incident ``ref`` names: a ServiceNow number (INC0010001), a record's sys_id, or a
    PagerDuty incident id. ``ActionError(404)`` when there is none, or it is not linked."""
    ref = ref.strip()
    store = _store(ctx)
    if SYS_ID.match(ref):
        link = await store.get_link(INCIDENT_KIND, sn_id=ref)
        if link is None:
            raise ActionError(404, f"no PagerDuty incident is linked to the ServiceNow record {ref}")
        return await _from_link(ctx, link)
    if SN_NUMBER.match(ref):
        for table in INCIDENT_TABLES:
            try:
                rec = await _servicenow(ctx).first(table, Query().eq("number", ref), fields=["sys_id", "number"])
            except ApiError:
                if table == "incident":
                    raise
                continue  # an instance without Security Incident Response has no sn_si_incident
            if rec:
                link = await store.get_link(INCIDENT_KIND, sn_id=rec["sys_id"])
                if link is None:
                    raise ActionError(404, f"ServiceNow {ref} is not linked to a PagerDuty incident")
                return await _from_link(ctx, link, number=ref)
        if not PD_ID.match(ref):
            raise ActionError(404, f"no ServiceNow incident {ref}")
    if PD_ID.match(ref):
        link = await store.get_link(INCIDENT_KIND, pd_id=ref)
        if link is not None:
            return await _from_link(ctx, link)
        try:
            await _pagerduty(ctx).get_incident(ref)
        except NotFound:
            raise ActionError(404, f"no incident {ref} in ServiceNow or PagerDuty") from None
        except PagerDutyError as exc:
            raise pagerduty_failure(exc, f"read PagerDuty incident {ref}") from None
        return Incident(pd_id=ref)
    raise ActionError(404, f"{ref!r} is neither a ServiceNow number or sys_id nor a PagerDuty incident id")


async def _from_link(ctx: Ctx, link: Link, number: str = "") -> Incident:
    st = link.state or {}
    table = str(st.get("table") or "incident")
    if not number:
        try:
            rec = await _servicenow(ctx).get(table, link.sn_id, fields=["number"])
        except NotFound:
            rec = {}
        number = str(rec.get("number") or "")
    return Incident(pd_id=link.pd_id, table=table, sys_id=link.sn_id, number=number)


# -- the acting user ---------------------------------------------------------------------
async def find_actor(ctx: Ctx, conf: MobilizerConfig, ref: Any) -> Actor:
    """The ServiceNow user ``ref`` (user_name or sys_id) after checking they hold the role."""
    if not isinstance(ref, str) or not ref.strip():
        raise bad("requested_by", "the acting ServiceNow user (user_name or sys_id) is required")
    ref = ref.strip()
    if not (SYS_ID.match(ref) or USER_NAME.match(ref)):
        raise bad("requested_by", f"{ref!r} is not a ServiceNow user_name or sys_id")
    fields = ["sys_id", "user_name", "name", "email", "active"]
    sn = _servicenow(ctx)
    try:
        if SYS_ID.match(ref):
            try:
                user = await sn.get("sys_user", ref, fields=fields)
            except NotFound:
                user = None
        else:
            user = await sn.first("sys_user", Query().eq("user_name", ref), fields=fields)
    except ApiError as exc:
        raise ActionError(502, f"cannot read the ServiceNow user {ref}: {exc}") from None
    if not user:
        raise bad("requested_by", f"no ServiceNow user {ref!r}")
    if str(user.get("active", "true")) == "false":
        raise ActionError(403, f"ServiceNow user {user['user_name']} is not active")
    if conf.role and not await holds_role(ctx, user["sys_id"], conf.role):
        raise ActionError(403, f"ServiceNow user {user['user_name']} does not hold the role {conf.role}")
    pd_user, email, linked = await pagerduty_user(ctx, user)
    return Actor(
        sys_id=user["sys_id"],
        user_name=user.get("user_name", ""),
        name=user.get("name", ""),
        pd_user_id=pd_user,
        pd_email=email,
        linked=linked,
    )


async def holds_role(ctx: Ctx, user_sys_id: str, role: str) -> bool:
    """Whether ``sys_user_has_role`` gives the user ``role`` (directly or inherited)."""
    try:
        row = await _servicenow(ctx).first(
            "sys_user_has_role",
            Query().eq("user", user_sys_id).eq("role.name", role).eq("state", "active"),
            fields=["sys_id"],
        )
    except ApiError as exc:
        raise ActionError(
            502,
            f"cannot check the role {role} in sys_user_has_role (the integration user needs read access to it): {exc}",
        ) from None
    return row is not None


async def pagerduty_user(ctx: Ctx, user: dict) -> tuple[str, str | None, bool]:
    """(PagerDuty user id, From email, linked): the user's own account when a user link or
    their email finds one, else the configured default user."""
    link = await _store(ctx).get_link(USER_KIND, sn_id=user["sys_id"])
    if link is not None:
        email = (link.state or {}).get("email") or user.get("email")
        return link.pd_id, str(email) if email else None, True
    email = str(user.get("email") or "")
    if email:
        try:
            found = await _pagerduty(ctx).find_user_by_email(email)
        except PagerDutyError as exc:
            raise pagerduty_failure(exc, f"look up the PagerDuty user of {email}") from None
        if found:
            return found["id"], found.get("email") or email, True
    default = ctx.config.pagerduty.default_user_id
    if not default:
        raise ActionError(
            403,
            f"ServiceNow user {user.get('user_name')} has no PagerDuty account and "
            "pagerduty.default_user_id is not set",
        )
    return default, await _pagerduty(ctx).from_email(None), False


#: What an action does with a call: returns the JSON answer.
Handler = Callable[[Call], Awaitable[dict[str, Any]]]


@dataclass
class Action:
    """One mobilizer action: ``name`` is its URL segment (``/api/v1/incidents/{ref}/{name}``)
    and CLI name; ``setting`` the config flag that enables it (None: always on);
    ``post``/``get`` its handlers (a GET needs no acting user); ``summary`` what it does."""

    name: str
    summary: str
    post: Handler | None = None
    get: Handler | None = None
    setting: str | None = None
    what: str = ""  # what it does, for "... is disabled"


async def perform(ctx: Ctx, action: Action, method: str, ref: str, body: dict[str, Any]) -> dict[str, Any]:
    """Check the setting, the acting user and the incident, then run ``action``."""
    conf = plugin_conf(ctx)
    handler = action.post if method == "POST" else action.get
    if handler is None:
        raise ActionError(405, f"{action.name} does not answer {method}")
    if action.setting and not getattr(conf, action.setting, False):
        raise setting_off(action.setting, action.what or action.name)
    actor = await find_actor(ctx, conf, body.get("requested_by")) if method == "POST" else None
    incident = await find_incident(ctx, ref)
    result = await handler(Call(ctx, conf, incident, actor, body))
    if actor is not None:
        log.info(
            "mobilizer_action",
            action=action.name,
            pd_incident=incident.pd_id,
            sn_number=incident.number or None,
            requested_by=actor.user_name,
            as_pd_user=actor.pd_user_id,
            own_account=actor.linked,
        )
    return {
        "action": action.name,
        "incident": {
            "pagerduty": incident.pd_id,
            "servicenow": incident.number or None,
            "sys_id": incident.sys_id or None,
        },
        **(
            {
                "acted_as": {
                    "servicenow": actor.user_name,
                    "pagerduty_user": actor.pd_user_id,
                    "own_pagerduty_account": actor.linked,
                }
            }
            if actor
            else {}
        ),
        **result,
    }
