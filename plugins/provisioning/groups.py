"""ServiceNow assignment groups into PagerDuty: escalation policy (schedule, team), and in
"assignment groups" mode a service with its webhook subscription; the links are recorded
under the kinds incident sync reads, so the group's incidents sync at once."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from dutybridge.events import Event
from dutybridge.servicenow import Query
from dutybridge.store.base import Link, LinkConflictError

from .objects import PLANNED, ensure, find_named, marker, recorded, ref, remember
from .run import Outcome, Refused, Run, Tally
from .users import SN_USER_FIELDS, group_members, linked_user, provision_user
from .webhooks import ensure_subscription

#: incident_sync's kind for groups (plugins/incident_sync/mapping.py): pd_id the service
#: (or the escalation policy without one), state {"service", "escalation_policy", "name", "source"}.
GROUP_KIND = "group"
GROUP_FIELDS = ["sys_id", "name", "manager", "description", "active"]
#: Event incident sync reloads its links on (see plugins/incident_sync/engine.py).
LINKS_CHANGED = "links.changed"


async def find_groups(
    run: Run,
    refs: list[str],
    *,
    all_groups: bool = False,
    query: str | None = None,
) -> tuple[list[dict], list[str]]:
    """The groups named (sys_id or name), or all active ones, or those of an encoded query."""
    sn = run.servicenow
    if all_groups:
        return await sn.list("sys_user_group", Query().eq("active", "true"), fields=GROUP_FIELDS, order_by="name"), []
    if query:
        return await sn.list("sys_user_group", query, fields=GROUP_FIELDS, order_by="name"), []
    found: list[dict] = []
    missing: list[str] = []
    for r in refs:
        row = await sn.first("sys_user_group", Query().eq("sys_id", r).or_().eq("name", r), fields=GROUP_FIELDS)
        (found.append(row) if row else missing.append(r))
    return found, missing


async def manager_of(run: Run, group: dict) -> dict | None:
    mid = _ref(group.get("manager"))
    if not mid:
        return None
    rows = await run.servicenow.list("sys_user", Query().eq("sys_id", mid), fields=SN_USER_FIELDS, limit=1)
    return rows[0] if rows else None


async def pd_user_for(run: Run, user: dict, tally: Tally, notes: list[str]) -> str | None:
    """The PagerDuty user of ServiceNow ``user``: linked, matched by email, or (when
    provisioning members) created."""
    if run.conf.provision_members:
        pd_id, action, problems = await provision_user(run, user)
        tally.add(action if action in ("created", "planned") else "kept")
        notes += [f"{user.get('name')}: {p}" for p in problems]
        return pd_id
    known = await linked_user(run, user["sys_id"])
    if known:
        return known
    email = str(user.get("email") or "").strip()
    found = await run.user_by_email(email) if email else None
    if found is None:
        return None
    if not run.dry_run:
        try:
            await run.store.put_link(
                Link(kind="user", pd_id=found["id"], sn_id=user["sys_id"], state={"email": email.lower()})
            )
        except LinkConflictError:
            pass  # linked meanwhile (another group, the same manager)
    return found["id"]


async def provision_group(run: Run, group: dict) -> Outcome:
    async with run.lock(f"group:{group['sys_id']}"):
        return await _provision_group(run, group)


async def _provision_group(run: Run, group: dict) -> Outcome:
    conf, sys_id, name = run.conf, group["sys_id"], str(group.get("name") or group["sys_id"])
    out = Outcome("group", name, sys_id)
    tally = Tally()
    mark = marker("sys_user_group", sys_id)

    manager = await manager_of(run, group)
    manager_pd = await pd_user_for(run, manager, tally, out.detail) if manager else None
    if manager is None:
        out.detail.append("the group has no manager: the escalation policy targets the default user")
    elif manager_pd is None:
        out.detail.append(f"manager {manager.get('name')} has no PagerDuty user: the default user is targeted")
    members: list[str] = []
    if conf.provision_members:
        for user in await group_members(run, sys_id):
            try:
                pd_id = await pd_user_for(run, user, tally, out.detail)
            except Refused as exc:  # one member without an email does not stop the group
                out.detail.append(f"member {user.get('name')}: {exc}")
                continue
            if pd_id and pd_id not in members and pd_id != manager_pd:
                members.append(pd_id)

    team = await _team(run, sys_id, name, mark, manager_pd, members, tally, out)
    schedule = ""
    if conf.create_schedule:
        people = [p for p in [manager_pd, *members] if p] or [_default_user(run)]
        schedule, action = await ensure(
            run, "schedule", sys_id, f"{name} on-call", _schedule_body(run, people), mark=mark
        )
        tally.add(action)
        out.pd["schedule"] = schedule
    target = ref("schedule", schedule) if schedule else ref("user", manager_pd or _default_user(run))
    ep_body: dict[str, Any] = {
        "type": "escalation_policy",
        "escalation_rules": [{"escalation_delay_in_minutes": conf.escalation_delay_minutes, "targets": [target]}],
    }
    if team:
        ep_body["teams"] = [ref("team", team)]
    ep, action = await ensure(run, "escalation_policy", sys_id, name, ep_body, mark=mark)
    tally.add(action)
    out.pd["escalation_policy"] = ep

    service = webhook = ""
    if conf.mapping_mode == "assignment_groups":
        service, webhook = await service_with_webhook(run, sys_id, name, ep, team, mark, tally)
        out.pd["service"], out.pd["webhook"] = service, webhook
    out.status = tally.status
    if not run.dry_run:
        await record_group(run, sys_id, name, service, ep, schedule, team, webhook)
    return out


async def service_with_webhook(
    run: Run, key: str, name: str, ep: str, team: str, mark: str, tally: Tally
) -> tuple[str, str]:
    body: dict[str, Any] = {"type": "service", "escalation_policy": ref("escalation_policy", ep)}
    if team:
        body["teams"] = [ref("team", team)]
    service, action = await ensure(run, "service", key, name, body, mark=mark)
    tally.add(action)
    webhook, action = await ensure_subscription(run, service)
    tally.add(action)
    return service, webhook


async def _team(
    run: Run, sys_id: str, name: str, mark: str, manager: str | None, members: list[str], tally: Tally, out: Outcome
) -> str:
    conf = run.conf
    if not (conf.use_teams or conf.create_team):
        return ""
    if conf.create_team:
        team, action = await ensure(run, "team", sys_id, name, {"type": "team"}, mark=mark)
        tally.add(action)
        if action in ("created", "adopted") and not run.dry_run:
            for pd_id, role in [(manager, "manager"), *((m, "responder") for m in members)]:
                if pd_id and pd_id != PLANNED:
                    await run.pagerduty.put(
                        f"/teams/{team}/users/{pd_id}",
                        json={"role": role},
                        acting_email=run.acting_email,
                        operation="PUT /teams/{id}/users/{user_id}",
                    )
        out.pd["team"] = team
        return team
    linked = await recorded(run, "team", sys_id)
    if linked is None:
        found = await find_named(run, "team", name)
        if found is None:
            out.detail.append(f"no PagerDuty team named {name!r} (create_team makes one)")
            return ""
        linked = found["id"]
        if not run.dry_run:
            await remember(run, "team", sys_id, linked, name, "linked")
    out.pd["team"] = linked
    return linked


def _schedule_body(run: Run, people: list[str]) -> dict:
    start = datetime.now(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "type": "schedule",
        "time_zone": run.conf.time_zone,
        "schedule_layers": [
            {
                "name": "Layer 1",
                "start": start,
                "rotation_virtual_start": start,
                "rotation_turn_length_seconds": run.conf.rotation_days * 86400,
                "users": [{"user": ref("user", p)} for p in people],
            }
        ],
    }


def _default_user(run: Run) -> str:
    user = run.ctx.config.pagerduty.default_user_id
    if not user:
        raise Refused("no PagerDuty user to target: the group has none and [pagerduty] default_user_id is empty")
    return user


async def record_group(
    run: Run, sys_id: str, name: str, service: str, ep: str, schedule: str, team: str, webhook: str
) -> None:
    """The group link incident sync reads, then the v7 fields, then a nudge to reload."""
    store = run.store
    pd_id = service or ep
    state = {
        "service": service or None,
        "escalation_policy": ep,
        "name": name,
        "source": "provisioning",
        "schedule": schedule or None,
        "team": team or None,
        "webhook": webhook or None,
    }
    old = await store.get_link(GROUP_KIND, sn_id=sys_id)
    if old is not None and old.pd_id == pd_id and old.state == state:
        return
    if old is not None and old.pd_id != pd_id:
        await store.delete_link(GROUP_KIND, old.pd_id)
    await store.put_link(Link(kind=GROUP_KIND, pd_id=pd_id, sn_id=sys_id, state=state))
    conf = run.conf
    if conf.write_back:
        fields = {conf.group_escalation_field: ep}
        for key, value in (
            (conf.group_service_field, service),
            (conf.group_webhook_field, webhook),
            (conf.group_schedule_field, schedule),
            (conf.group_team_field, team),
        ):
            if value:
                fields[key] = value
        await run.servicenow.update("sys_user_group", sys_id, fields)
    run.links_dirty = True


async def links_changed(run: Run) -> None:
    """Tell the running daemon (through the durable inbox) that the run changed links:
    incident sync reads them again, so provisioned groups sync without a restart."""
    if run.links_dirty and not run.dry_run:
        await run.ctx.enqueue(
            Event(
                source="provisioning",
                type=LINKS_CHANGED,
                event_id=uuid.uuid4().hex,
                resource="provisioning:links",
                payload={},
            )
        )
        run.links_dirty = False


def _ref(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("value") or "")
    return str(value or "")
