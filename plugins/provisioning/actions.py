"""Each command's steps, shared by the CLI and the HTTP endpoint: select the ServiceNow
records, confirm licences, provision them concurrently, tell the daemon, summarise."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from typing import Any

from dutybridge.context import Ctx
from dutybridge.http import ApiError, TransportError
from dutybridge.servicenow import Query
from dutybridge.web import Reject

from . import cis, migrate
from .config import plugin_conf
from .groups import find_groups, group_members, links_changed, provision_group
from .run import Outcome, Run
from .users import SN_USER_FIELDS, needs_licence, sn_users, user_outcome

HTTP_ACTIONS = ("groups", "users", "cis", "webhook")


def http_args(what: str, body: dict) -> dict[str, Any]:
    """The endpoint's body as the CLI's arguments; 400 naming the field that is wrong."""
    refs = body.get("refs", [])
    if not isinstance(refs, list) or not all(isinstance(r, str) and r for r in refs):
        raise Reject(400, "bad_request", "refs: expected an array of sys_ids or names")
    args: dict[str, Any] = {
        "refs": refs,
        "all": False,
        "query": "",
        "group": "",
        "ci": "",
        "as_": "technical",
        "with_dependencies": False,
        "custom": False,
        "plan": False,
        "service": "",
        "extension": False,
    }
    for key, kind in (
        ("dry_run", bool),
        ("link_existing", bool),
        ("with_dependencies", bool),
        ("extension", bool),
        ("requested_by", str),
        ("as", str),
        ("service", str),
        ("group", str),
        ("ci", str),
    ):
        value = body.get(key)
        if value is None:
            continue
        if not isinstance(value, kind):
            raise Reject(400, "bad_request", f"{key}: expected a {'boolean' if kind is bool else 'string'}")
        args["as_" if key == "as" else key] = value
    args.setdefault("dry_run", False)
    args.setdefault("link_existing", False)
    args["as_user"] = args.pop("requested_by", "")
    if args["as_"] not in ("technical", "business"):
        raise Reject(400, "bad_request", "as: expected technical or business")
    if what == "webhook" and not (args["service"] and (args["group"] or args["ci"])):
        raise Reject(400, "bad_request", "service and group (or ci): required to provision a webhook")
    if what != "webhook" and not refs:
        raise Reject(400, "bad_request", "refs: name at least one record")
    return args


async def acting_email(run: Run, who: str) -> tuple[str | None, str]:
    """The PagerDuty email of the ServiceNow user doing it (the guide: they must have a
    PagerDuty user), else None (the default user acts) and a note saying so."""
    if not who:
        return None, ""
    users, _ = await sn_users(run, [who])
    if not users:
        return None, f"acting user {who!r} not found in ServiceNow: the default PagerDuty user acts"
    link = await run.store.get_link("user", sn_id=users[0]["sys_id"])
    if link is not None:
        pd = await run.pagerduty.get_user(link.pd_id)
        return str(pd.get("email") or "") or None, ""
    email = str(users[0].get("email") or "")
    found = await run.pagerduty.find_user_by_email(email) if email else None
    if found is None:
        return None, f"acting user {who!r} has no PagerDuty user: the default PagerDuty user acts"
    return str(found.get("email")), ""


async def run_command(run: Run, what: str, args: dict[str, Any], *, confirm: Callable[[int], bool]) -> int:
    email, note = await acting_email(run, args.get("as_user") or "")
    run.acting_email = email
    if note:
        print(note, file=run.err, flush=True)
    handler = COMMANDS[what]
    try:
        code = await handler(run, args, confirm)
    except (ApiError, TransportError) as exc:
        # A read the whole command needs (the selection, a dependency walk) failed:
        # what was done stays done and recorded; the next run continues from there.
        run.record(Outcome(what, "(command)", status="failed", detail=[f"{type(exc).__name__}: {exc}"]))
        code = None
    await links_changed(run)
    return run.finish() if code is None else code


async def provision(ctx: Ctx, what: str, refs: list[str], **options: Any) -> Run:
    """Run one provisioning action in-process (as the endpoint does) and return the run:
    its ``outcomes`` and ``counts()``. ``options`` are the endpoint's body fields."""
    args = http_args(what, {"refs": refs, **options})
    run = Run(
        ctx,
        plugin_conf(ctx),
        dry_run=args["dry_run"],
        link_existing=args["link_existing"],
        out=io.StringIO(),
        err=io.StringIO(),
        interactive=False,
    )
    await run_command(run, what, args, confirm=lambda count: True)
    return run


def _not_found(run: Run, kind: str, refs: list[str]) -> None:
    for r in refs:
        run.record(Outcome(kind, r, status="failed", detail=["not found in ServiceNow"]))


async def _licences(run: Run, users: list[dict], confirm: Callable[[int], bool]) -> bool:
    """Count the users that would be created (asked concurrently, as provisioning is) and
    ask; the lookups are remembered for the provisioning that follows."""
    gate = asyncio.Semaphore(run.conf.concurrency)

    async def one(user: dict) -> bool:
        async with gate:
            return await needs_licence(run, user)

    count = sum(await asyncio.gather(*(one(u) for u in users)))
    return count == 0 or confirm(count)


async def _groups(run: Run, args: dict, confirm: Callable[[int], bool]) -> int | None:
    if not (args["refs"] or args["all"] or args["query"]):
        print("name groups, or pass --all or --query", file=run.err)
        return 2
    groups, missing = await find_groups(run, args["refs"], all_groups=args["all"], query=args["query"] or None)
    _not_found(run, "group", missing)
    if run.conf.provision_members:
        people: dict[str, dict] = {}
        for g in groups:
            for u in await group_members(run, g["sys_id"]):
                people[u["sys_id"]] = u
        if not await _licences(run, list(people.values()), confirm):
            return 2
    await run.each(
        groups,
        lambda g: provision_group(run, g),
        lambda g: Outcome("group", str(g.get("name") or ""), g["sys_id"]),
        "groups",
    )
    return None


async def _users(run: Run, args: dict, confirm: Callable[[int], bool]) -> int | None:
    users: list[dict] = []
    if args["all"]:
        users = await run.servicenow.list(
            "sys_user", Query().eq("active", "true"), fields=SN_USER_FIELDS, order_by="user_name"
        )
    elif args["group"]:
        groups, missing = await find_groups(run, [args["group"]])
        _not_found(run, "group", missing)
        for g in groups:
            users += await group_members(run, g["sys_id"])
    if args["refs"]:
        found, missing = await sn_users(run, args["refs"])
        _not_found(run, "user", missing)
        users += found
    if not (users or run.outcomes):
        print("name users, or pass --group or --all", file=run.err)
        return 2
    users = list({u["sys_id"]: u for u in users}.values())
    if not await _licences(run, users, confirm):
        return 2
    await run.each(
        users,
        lambda u: user_outcome(run, u),
        lambda u: Outcome("user", str(u.get("name") or u.get("user_name") or ""), u["sys_id"]),
        "users",
    )
    return None


COMMANDS = {
    "groups": _groups,
    "users": _users,
    "cis": cis.command,
    "webhook": migrate.webhook_command,
    "migrate-webhooks": migrate.webhooks_command,
    "migrate-from-v7": migrate.from_v7_command,
}
