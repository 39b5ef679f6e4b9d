"""PagerDuty objects made once: each one recorded in the store as it is created, found
again by its record (no call) or, after a kill between create and record, by its name and
the marker in its description; a name taken by someone else's object is refused or linked."""

from __future__ import annotations

from dutybridge.store.base import Link

from .run import Refused, Run

#: Link kind of every PagerDuty object this plugin made or linked: ``pd_id`` the object's
#: id, ``sn_id`` "<type>:<ServiceNow key>", ``state`` {"type", "name", "how"}.
RECORD = "provisioned"
MARKER = "Provisioned by dutybridge from ServiceNow"
PLANNED = "(new)"

#: type -> (collection path, body key)
TYPES = {
    "escalation_policy": ("/escalation_policies", "escalation_policies"),
    "service": ("/services", "services"),
    "business_service": ("/business_services", "business_services"),
    "schedule": ("/schedules", "schedules"),
    "team": ("/teams", "teams"),
}


def marker(table: str, sys_id: str) -> str:
    return f"{MARKER} {table} {sys_id}"


async def recorded(run: Run, otype: str, key: str) -> str | None:
    link = await run.store.get_link(RECORD, sn_id=f"{otype}:{key}")
    return link.pd_id if link is not None else None


async def remember(run: Run, otype: str, key: str, pd_id: str, name: str, how: str) -> None:
    await run.store.put_link(
        Link(kind=RECORD, pd_id=pd_id, sn_id=f"{otype}:{key}", state={"type": otype, "name": name, "how": how})
    )


async def find_named(run: Run, otype: str, name: str) -> dict | None:
    """The object of that type named ``name`` (case-insensitive, as PagerDuty's names are unique)."""
    path, key = TYPES[otype]
    wanted = name.casefold()
    async for obj in run.pagerduty.paginate(path, key, {"query": name}, operation=f"GET {path}"):
        if str(obj.get("name") or "").casefold() == wanted:
            return obj
    return None


async def ensure(run: Run, otype: str, key: str, name: str, body: dict, *, mark: str) -> tuple[str, str]:
    """(id, action) of the object of ``otype`` for ServiceNow ``key``: "kept" (recorded
    before), "adopted" (ours, made by a run that was killed before recording it),
    "linked" (someone else's, with --link-existing), "planned" (dry run) or "created".
    ``body`` is the object to create; ``mark`` goes into its description."""
    known = await recorded(run, otype, key)
    if known is not None:
        return known, "kept"
    existing = await find_named(run, otype, name)
    if existing is not None:
        if mark in str(existing.get("description") or ""):
            how = "adopted"
        elif run.link_existing:
            how = "linked"
        else:
            raise Refused(
                f"a PagerDuty {otype.replace('_', ' ')} named {name!r} already exists ({existing['id']}); "
                "--link-existing links it instead"
            )
        if not run.dry_run:
            await remember(run, otype, key, existing["id"], name, how)
        return existing["id"], how
    if run.dry_run:
        return PLANNED, "planned"
    path, _ = TYPES[otype]
    body = {**body, "name": name, "description": mark}
    created = await run.pagerduty.post(
        path, json={otype: body}, acting_email=run.acting_email, operation=f"POST {path}"
    )
    obj = created[otype]
    await remember(run, otype, key, obj["id"], name, "created")
    return obj["id"], "created"


def ref(otype: str, pd_id: str) -> dict[str, str]:
    return {"id": pd_id, "type": f"{otype}_reference"}
