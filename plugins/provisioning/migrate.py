"""The webhook of an existing service (the guide's "Provision Webhook"), V2 extensions
replaced by V3 subscriptions (with a record to roll back), and the v7 app's links imported."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from dutybridge.http import NotFound
from dutybridge.servicenow import Query
from dutybridge.store.base import Link, LinkConflictError

from .cis import CI_FIELDS, CI_KIND, find_cis
from .groups import GROUP_FIELDS, GROUP_KIND, find_groups
from .run import Outcome, Refused, Run
from .users import USER_KIND
from .webhooks import SECRET_KIND, ensure_subscription

#: One V2 extension replaced by ``migrate webhooks``: pd_id the extension id, state
#: {"extension": its body, "service", "subscription"}, read by ``--rollback``.
MIGRATED_KIND = "migrated_extension"
#: Extension schemas that send V2 webhooks: Generic V2 Webhook and ServiceNow (v7).
V2_SCHEMAS = frozenset({"PJFWPEP", "PAKM60Z"})
SERVICENOW_V7_SCHEMA = "PAKM60Z"
V2_PATH = "/webhooks/pagerduty/v2"


async def _link_service(run: Run, kind: str, sn_id: str, name: str, service: dict, extra: dict) -> None:
    state = {"service": service["id"], "name": name, "source": "provisioning", **extra}
    if kind == GROUP_KIND:
        state["escalation_policy"] = (service.get("escalation_policy") or {}).get("id")
    old = await run.store.get_link(kind, sn_id=sn_id)
    if old is not None and old.pd_id != service["id"]:
        await run.store.delete_link(kind, old.pd_id)
    await run.store.put_link(Link(kind=kind, pd_id=service["id"], sn_id=sn_id, state=state))
    run.links_dirty = True


def _v2_url(run: Run) -> str:
    sn = run.ctx.config.servicenow
    password = sn.doorbell_password.get_secret_value() if sn.doorbell_password is not None else ""
    if not (sn.doorbell_username and password):
        raise Refused("an extension needs [servicenow] doorbell_username and doorbell_password (basic auth in its URL)")
    base = run.ctx.config.daemon.public_url.rstrip("/")
    if not base:
        raise Refused("daemon.public_url is not set")
    parts = urlsplit(base + V2_PATH)
    netloc = f"{quote(sn.doorbell_username, safe='')}:{quote(password, safe='')}@{parts.netloc}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


async def webhook_command(run: Run, args: dict, confirm: Callable[[int], bool]) -> int | None:
    kind = GROUP_KIND if args.get("group") else CI_KIND
    ref: str = args.get("group") or args.get("ci") or ""
    if kind == GROUP_KIND:
        found, _ = await find_groups(run, [ref])
    else:
        found, _ = await find_cis(run, [ref])
    out = Outcome("webhook", ref)
    if not found:
        out.status, out.detail = (
            "failed",
            [f"{'group' if kind == GROUP_KIND else 'CI'} {ref!r} not found in ServiceNow"],
        )
        run.record(out)
        return None
    rec = found[0]
    out.name, out.sn_id = str(rec.get("name") or ref), rec["sys_id"]
    try:
        service = await run.pagerduty.get_service(args["service"])
    except NotFound:
        out.status, out.detail = "failed", [f"PagerDuty service {args['service']} not found"]
        run.record(out)
        return None
    out.pd["service"] = service["id"]
    try:
        if args.get("extension"):
            out.status = await _extension(run, service, out)
        else:
            webhook, action = await ensure_subscription(run, service["id"])
            out.pd["webhook"] = webhook
            out.status = {"kept": "skipped", "adopted": "created"}.get(action, action)
    except Refused as exc:
        out.status, out.detail = "failed", [str(exc)]
        run.record(out)
        return None
    if not run.dry_run:
        await _link_service(run, kind, rec["sys_id"], out.name, service, {"webhook": out.pd.get("webhook")})
        if out.status == "skipped" and (await run.store.get_link(kind, sn_id=rec["sys_id"])) is None:
            out.status = "linked"
    run.record(out)
    return None


async def _extension(run: Run, service: dict, out: Outcome) -> str:
    url = _v2_url(run)
    for ext in await _extensions_of(run, service["id"]):
        if (ext.get("extension_schema") or {}).get("id") == SERVICENOW_V7_SCHEMA and ext.get("endpoint_url") == url:
            out.pd["extension"] = ext["id"]
            return "skipped"
    if run.dry_run:
        return "planned"
    created = await run.pagerduty.post(
        "/extensions",
        json={
            "extension": {
                "type": "extension",
                "name": "dutybridge (ServiceNow v7)",
                "endpoint_url": url,
                "extension_schema": {"id": SERVICENOW_V7_SCHEMA, "type": "extension_schema_reference"},
                "extension_objects": [{"id": service["id"], "type": "service_reference"}],
            }
        },
        acting_email=run.acting_email,
        operation="POST /extensions",
    )
    out.pd["extension"] = created["extension"]["id"]
    return "created"


async def _extensions_of(run: Run, service_id: str) -> list[dict]:
    return [
        e
        async for e in run.pagerduty.paginate(
            "/extensions", "extensions", {"extension_object_id": service_id}, operation="GET /extensions"
        )
    ]


async def webhooks_command(run: Run, args: dict, confirm: Callable[[int], bool]) -> int | None:
    if args.get("rollback"):
        await _rollback(run)
        return None
    services: dict[str, str] = {}
    for kind in (GROUP_KIND, CI_KIND):
        for link in await run.store.list_links(kind):
            svc = (link.state or {}).get("service")
            if svc:
                services.setdefault(svc, str((link.state or {}).get("name") or svc))

    async def migrate_one(item: tuple[str, str]) -> Outcome:
        service_id, name = item
        out = Outcome("webhook", name, service_id, pd={"service": service_id})
        v2 = [
            e
            for e in await _extensions_of(run, service_id)
            if (e.get("extension_schema") or {}).get("id") in V2_SCHEMAS
        ]
        if not v2:
            out.status, out.detail = "skipped", ["no V2 extension"]
            return out
        webhook, _action = await ensure_subscription(run, service_id)
        out.pd["webhook"] = webhook
        if run.dry_run:
            out.status, out.detail = "planned", [f"would replace {len(v2)} V2 extension(s)"]
            return out
        for ext in v2:
            await run.store.put_link(
                Link(
                    kind=MIGRATED_KIND,
                    pd_id=ext["id"],
                    sn_id=f"{service_id}:{ext['id']}",
                    state={"extension": ext, "service": service_id, "subscription": webhook},
                )
            )
            await run.pagerduty.delete(
                f"/extensions/{ext['id']}", acting_email=run.acting_email, operation="DELETE /extensions/{id}"
            )
        out.status, out.detail = "created", [f"replaced {len(v2)} V2 extension(s)"]
        return out

    await run.each(sorted(services.items()), migrate_one, lambda i: Outcome("webhook", i[1], i[0]), "services")
    return None


async def _rollback(run: Run) -> None:
    for link in await run.store.list_links(MIGRATED_KIND):
        ext, out = link.state["extension"], Outcome("extension", link.state["extension"].get("name", ""), link.pd_id)
        if run.dry_run:
            out.status = "planned"
            run.record(out)
            continue
        body = {k: ext[k] for k in ("type", "name", "endpoint_url", "extension_objects", "config") if k in ext}
        body["extension_schema"] = {"id": ext["extension_schema"]["id"], "type": "extension_schema_reference"}
        created = await run.pagerduty.post(
            "/extensions", json={"extension": body}, acting_email=run.acting_email, operation="POST /extensions"
        )
        sub = link.state.get("subscription")
        if sub:
            try:
                await run.pagerduty.delete(
                    f"/webhook_subscriptions/{sub}",
                    acting_email=run.acting_email,
                    operation="DELETE /webhook_subscriptions/{id}",
                )
            except NotFound:
                pass  # deleted by hand already
            await run.store.delete_link(SECRET_KIND, sub)
        await run.store.delete_link(MIGRATED_KIND, link.pd_id)
        out.status, out.pd = "created", {"extension": created["extension"]["id"]}
        run.record(out)


async def from_v7_command(run: Run, args: dict, confirm: Callable[[int], bool]) -> int | None:
    """Every x_pd_integration_* value becomes the store's link (kinds incident sync reads)."""
    conf = run.conf
    gs, ge, gw = conf.group_service_field, conf.group_escalation_field, conf.group_webhook_field
    groups = await run.servicenow.list(
        "sys_user_group",
        Query().is_not_empty(gs).or_().is_not_empty(ge),
        fields=[*GROUP_FIELDS, gs, ge, gw],
        order_by="name",
    )
    for g in groups:
        service, ep = str(g.get(gs) or "").strip(), str(g.get(ge) or "").strip()
        state = {
            "service": service or None,
            "escalation_policy": ep or None,
            "name": g.get("name", ""),
            "source": "v7",
            "webhook": str(g.get(gw) or "") or None,
        }
        await _import(run, "group", GROUP_KIND, g["sys_id"], str(g.get("name") or ""), service or ep, state)
    cs = conf.ci_service_field
    for c in await run.servicenow.list("cmdb_ci", Query().is_not_empty(cs), fields=[*CI_FIELDS, cs], order_by="name"):
        service = str(c.get(cs) or "").strip()
        state = {
            "service": service,
            "name": c.get("name", ""),
            "source": "v7",
            "group": _ref(c.get("assignment_group")),
        }
        await _import(run, "ci", CI_KIND, c["sys_id"], str(c.get("name") or ""), service, state)
    uf = conf.user_field
    for u in await run.servicenow.list(
        "sys_user", Query().is_not_empty(uf), fields=["sys_id", "name", "email", uf], order_by="name"
    ):
        await _import(
            run,
            "user",
            USER_KIND,
            u["sys_id"],
            str(u.get("name") or ""),
            str(u.get(uf) or "").strip(),
            {"email": str(u.get("email") or "").strip().lower()},
        )
    return None


async def _import(run: Run, label: str, kind: str, sn_id: str, name: str, pd_id: str, state: dict) -> None:
    out = Outcome(label, name, sn_id, pd={kind: pd_id})
    old = await run.store.get_link(kind, sn_id=sn_id)
    if old is not None and old.pd_id == pd_id:
        out.status = "skipped"
    elif run.dry_run:
        out.status = "planned"
    else:
        try:
            if old is not None:
                await run.store.delete_link(kind, old.pd_id)
            await run.store.put_link(Link(kind=kind, pd_id=pd_id, sn_id=sn_id, state=state))
            out.status = "linked"
            run.links_dirty = True
        except LinkConflictError as exc:
            out.status, out.detail = "failed", [str(exc)]
    run.record(out)


def _ref(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("value") or "")
    return str(value or "")
