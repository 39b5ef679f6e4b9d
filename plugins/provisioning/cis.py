"""Configuration items as technical or business services: one at a time, with their whole
dependency map from ``cmdb_rel_ci`` (no depth limit, cycles cut), or in bulk from the
custom services rows; dependencies set with ``POST /service_dependencies/associate``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dutybridge.servicenow import Query
from dutybridge.store.base import Link

from .config import ProvisioningConfig
from .groups import GROUP_FIELDS, provision_group, service_with_webhook
from .objects import PLANNED, ensure, marker, ref
from .run import Outcome, Refused, Run, Tally

#: incident_sync's kind for CIs: pd_id the technical service, state {"service", "name", "group", "source"}.
CI_KIND = "ci"
#: A CI provisioned as a business service (incident sync triggers nothing on those).
BUSINESS_KIND = "ci_business_service"
#: One associated dependency: pd_id "<supporting>:<dependent>", sn_id "<parent sys_id>:<child sys_id>".
DEPENDENCY_KIND = "service_dependency"
CI_FIELDS = ["sys_id", "name", "sys_class_name", "category", "assignment_group"]


async def find_cis(run: Run, refs: list[str]) -> tuple[list[dict], list[str]]:
    found, missing = [], []
    for r in refs:
        row = await run.servicenow.first("cmdb_ci", Query().eq("sys_id", r).or_().eq("name", r), fields=CI_FIELDS)
        (found.append(row) if row else missing.append(r))
    return found, missing


def qualifies(conf: ProvisioningConfig, ci: dict) -> bool:
    """The settings "CI classes" and "CI categories": any class or any category; none set, every CI."""
    if not (conf.ci_classes or conf.ci_categories):
        return True
    return ci.get("sys_class_name") in conf.ci_classes or ci.get("category") in conf.ci_categories


async def relationship_types(run: Run) -> dict[str, str]:
    """sys_id -> name of the cmdb_rel_type rows walked as dependencies."""
    names = list(run.conf.relationship_types)
    rows = await run.servicenow.list("cmdb_rel_type", Query().in_("name", names), fields=["sys_id", "name"])
    return {r["sys_id"]: r["name"] for r in rows}


async def walk(run: Run, roots: list[dict]) -> tuple[dict[str, dict], list[tuple[str, str]], list[str]]:
    """Every qualifying CI reachable from ``roots`` as a child in ``cmdb_rel_ci`` (each once),
    the (parent, child) edges among them, and the CIs left out (not qualifying)."""
    types = await relationship_types(run)
    cis = {c["sys_id"]: c for c in roots}
    edges: list[tuple[str, str]] = []
    skipped: list[str] = []
    frontier = list(cis)
    while frontier:
        rels = []
        for part in _chunks(frontier):
            rels += await run.servicenow.list(
                "cmdb_rel_ci", Query().in_("parent", part), fields=["parent", "child", "type"], order_by="sys_id"
            )
        new_ids = []
        for rel in rels:
            if _ref(rel.get("type")) not in types:
                continue
            parent, child = _ref(rel.get("parent")), _ref(rel.get("child"))
            if child in cis:
                edges.append((parent, child))
            elif child not in new_ids and child not in skipped:
                new_ids.append(child)
                edges.append((parent, child))
        frontier = []
        for part in _chunks(new_ids):
            for row in await run.servicenow.list("cmdb_ci", Query().in_("sys_id", part), fields=CI_FIELDS):
                if qualifies(run.conf, row):
                    cis[row["sys_id"]] = row
                    frontier.append(row["sys_id"])
                else:
                    skipped.append(row["sys_id"])
    edges = list(dict.fromkeys((p, c) for p, c in edges if p in cis and c in cis))
    return cis, edges, skipped


def cut_cycles(nodes: list[str], edges: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(kept, cut): the edges that close a cycle (found depth-first, in order) are cut, as
    PagerDuty refuses a dependency cycle."""
    children: dict[str, list[str]] = {}
    for p, c in edges:
        children.setdefault(p, []).append(c)
    state: dict[str, int] = {}
    cut: set[tuple[str, str]] = set()
    for start in nodes:
        if state.get(start):
            continue
        stack = [(start, iter(children.get(start, [])))]
        state[start] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[node] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                cut.add((node, nxt))
            elif not state.get(nxt):
                state[nxt] = 1
                stack.append((nxt, iter(children.get(nxt, []))))
    return [e for e in edges if e not in cut], [e for e in edges if e in cut]


async def provision_ci(run: Run, ci: dict, as_: str, *, name: str | None = None) -> Outcome:
    async with run.lock(f"ci:{ci['sys_id']}"):
        return await _provision_ci(run, ci, as_, name or str(ci.get("name") or ci["sys_id"]))


async def _provision_ci(run: Run, ci: dict, as_: str, name: str) -> Outcome:
    sys_id = ci["sys_id"]
    out = Outcome("ci", name, sys_id)
    tally = Tally()
    mark = marker("cmdb_ci", sys_id)
    if as_ == "business":
        bs, action = await ensure(run, "business_service", sys_id, name, {"type": "business_service"}, mark=mark)
        tally.add(action)
        out.pd["business_service"] = bs
        if not run.dry_run:
            await run.store.put_link(Link(kind=BUSINESS_KIND, pd_id=bs, sn_id=sys_id, state={"name": name}))
        out.status = tally.status
        return out
    group_id = _ref(ci.get("assignment_group"))
    ep = ""
    if group_id:
        rows = await run.servicenow.list("sys_user_group", Query().eq("sys_id", group_id), fields=GROUP_FIELDS, limit=1)
        if rows:
            g = await provision_group(run, rows[0])  # the guide: the group first, when not yet provisioned
            if g.status == "failed":
                raise Refused(f"its assignment group {g.name}: {'; '.join(g.detail)}")
            ep = g.pd.get("escalation_policy", "")
            tally.add({"skipped": "kept", "failed": "kept"}.get(g.status, g.status))
    if not ep:
        # The KB: a CI without a group gets an escalation policy of its own name.
        user = run.ctx.config.pagerduty.default_user_id
        if not user:
            raise Refused("the CI has no assignment group and [pagerduty] default_user_id is empty")
        ep, action = await ensure(
            run,
            "escalation_policy",
            f"ci:{sys_id}",
            name,
            {
                "type": "escalation_policy",
                "escalation_rules": [
                    {"escalation_delay_in_minutes": run.conf.escalation_delay_minutes, "targets": [ref("user", user)]}
                ],
            },
            mark=mark,
        )
        tally.add(action)
        out.detail.append("no assignment group: an escalation policy of the CI's name targets the default user")
    service, webhook = await service_with_webhook(run, f"ci:{sys_id}", name, ep, "", mark, tally)
    out.pd.update(service=service, escalation_policy=ep, webhook=webhook)
    if not run.dry_run:
        state = {"service": service, "name": name, "group": group_id, "source": "provisioning", "webhook": webhook}
        old = await run.store.get_link(CI_KIND, sn_id=sys_id)
        if old is None or old.pd_id != service or old.state != state:
            if old is not None and old.pd_id != service:
                await run.store.delete_link(CI_KIND, old.pd_id)
            await run.store.put_link(Link(kind=CI_KIND, pd_id=service, sn_id=sys_id, state=state))
            if run.conf.write_back:
                await run.servicenow.update(
                    "cmdb_ci", sys_id, {run.conf.ci_service_field: service, run.conf.ci_webhook_field: webhook}
                )
            run.links_dirty = True
    out.status = tally.status
    return out


def service_ref(o: Outcome) -> dict[str, str] | None:
    if "business_service" in o.pd:
        return {"id": o.pd["business_service"], "type": "business_service"}
    if "service" in o.pd:
        return {"id": o.pd["service"], "type": "service"}
    return None


async def associate(run: Run, edges: list[tuple[str, str]], by_ci: dict[str, Outcome], names: dict[str, str]) -> None:
    """Each (parent, child) edge as "child supports parent", recorded; one outcome each."""
    todo: list[tuple[tuple[str, str], dict, dict]] = []
    for parent, child in edges:
        p, c = by_ci.get(parent), by_ci.get(child)
        label = f"{names.get(parent, parent)} -> {names.get(child, child)}"
        if p is None or c is None or p.status == "failed" or c.status == "failed":
            run.record(
                Outcome(
                    "dependency", label, f"{parent}:{child}", "failed", ["a service of the pair was not provisioned"]
                )
            )
            continue
        dep, sup = service_ref(p), service_ref(c)
        if dep is None or sup is None or PLANNED in (dep["id"], sup["id"]):
            run.record(Outcome("dependency", label, f"{parent}:{child}", "planned"))
            continue
        if await run.store.get_link(DEPENDENCY_KIND, pd_id=f"{sup['id']}:{dep['id']}") is not None:
            run.record(Outcome("dependency", label, f"{parent}:{child}", "skipped"))
            continue
        if run.dry_run:
            run.record(Outcome("dependency", label, f"{parent}:{child}", "planned"))
            continue
        todo.append(((parent, child), sup, dep))
    # PagerDuty takes up to 100 relationships a call.
    for i in range(0, len(todo), 100):
        batch = todo[i : i + 100]
        await run.pagerduty.post(
            "/service_dependencies/associate",
            json={"relationships": [{"supporting_service": sup, "dependent_service": dep} for _, sup, dep in batch]},
            acting_email=run.acting_email,
            operation="POST /service_dependencies/associate",
        )
        for (parent, child), sup, dep in batch:
            await run.store.put_link(
                Link(kind=DEPENDENCY_KIND, pd_id=f"{sup['id']}:{dep['id']}", sn_id=f"{parent}:{child}", state={})
            )
            run.record(
                Outcome(
                    "dependency",
                    f"{names.get(parent, parent)} -> {names.get(child, child)}",
                    f"{parent}:{child}",
                    "created",
                    pd={"supporting": sup["id"], "dependent": dep["id"]},
                )
            )


async def command(run: Run, args: dict, confirm: Callable[[int], bool]) -> int | None:
    if args.get("custom"):
        return await custom(run, plan=bool(args.get("plan")))
    if not args["refs"]:
        print("name CIs, or pass --custom", file=run.err)
        return 2
    roots, missing = await find_cis(run, args["refs"])
    for r in missing:
        run.record(Outcome("ci", r, status="failed", detail=["not found in ServiceNow"]))
    as_of = {c["sys_id"]: args["as_"] for c in roots}
    cis = {c["sys_id"]: c for c in roots}
    edges: list[tuple[str, str]] = []
    if args.get("with_dependencies"):
        cis, edges, skipped = await walk(run, roots)
        for sid in skipped:
            run.record(Outcome("ci", sid, sid, "skipped", ["not in the configured CI classes or categories"]))
    edges, cut = cut_cycles(list(cis), edges)
    names = {sid: str(c.get("name") or sid) for sid, c in cis.items()}
    for p, c in cut:
        run.record(
            Outcome(
                "dependency",
                f"{names[p]} -> {names[c]}",
                f"{p}:{c}",
                "skipped",
                ["closes a cycle in cmdb_rel_ci: PagerDuty refuses dependency cycles"],
            )
        )
    # Dependencies are technical services; the CIs named are what --as says.
    outcomes = await run.each(
        list(cis.values()),
        lambda c: provision_ci(run, c, as_of.get(c["sys_id"], "technical")),
        lambda c: Outcome("ci", str(c.get("name") or ""), c["sys_id"]),
        "cis",
    )
    await associate(run, edges, {o.sn_id: o for o in outcomes}, names)
    return None


async def custom(run: Run, *, plan: bool) -> int | None:
    """The custom services rows: each CI of ``table`` a service named by ``name_column``;
    with a relationship, the related table's CIs too and the cmdb_rel_ci pairs between them.
    A child without a parent is an error (the guide); parents without children are fine."""
    rows = run.conf.custom_services
    if not rows:
        print("no [[plugins.provisioning.custom_services]] rows in the configuration", file=run.err)
        return 2
    wanted: dict[str, tuple[dict, str, str]] = {}  # sys_id -> (ci, type, name)
    edges: list[tuple[str, str]] = []
    for row in rows:
        main = await _table_cis(run, row.table, row.name_column)
        for ci in main:
            wanted.setdefault(ci["sys_id"], (ci, row.type, str(ci.get(row.name_column) or ci["sys_id"])))
        if not row.relationship:
            continue
        related = await _table_cis(run, row.related_table, row.related_name_column)
        rel_ids = {c["sys_id"] for c in related}
        main_ids = {c["sys_id"] for c in main}
        parents, children = (main_ids, rel_ids) if row.relationship == "consumed_by" else (rel_ids, main_ids)
        pairs = []
        for part in _chunks(sorted(parents)):
            for rel in await run.servicenow.list(
                "cmdb_rel_ci", Query().in_("parent", part), fields=["parent", "child"]
            ):
                p, c = _ref(rel.get("parent")), _ref(rel.get("child"))
                if c in children:
                    pairs.append((p, c))
        with_parent = {c for _, c in pairs}
        child_rows = related if row.relationship == "consumed_by" else main
        child_type, child_col = (
            (row.related_type, row.related_name_column)
            if row.relationship == "consumed_by"
            else (row.type, row.name_column)
        )
        for ci in child_rows:
            label = str(ci.get(child_col) or ci["sys_id"])
            if ci["sys_id"] not in with_parent:
                wanted.pop(ci["sys_id"], None)
                run.record(Outcome("ci", label, ci["sys_id"], "failed", ["child CI without a parent: not provisioned"]))
            else:
                wanted.setdefault(ci["sys_id"], (ci, child_type, label))
        edges += pairs
    edges = [e for e in dict.fromkeys(edges) if e[0] in wanted and e[1] in wanted]
    edges, cut = cut_cycles(list(wanted), edges)
    names = {sid: v[2] for sid, v in wanted.items()}
    for p, c in cut:
        run.record(Outcome("dependency", f"{names[p]} -> {names[c]}", f"{p}:{c}", "skipped", ["closes a cycle"]))
    if plan:
        for sid, (_ci, kind, name) in wanted.items():
            run.record(Outcome("ci", name, sid, "planned", [f"{kind} service"]))
        for p, c in edges:
            run.record(
                Outcome(
                    "dependency",
                    f"{names[p]} -> {names[c]}",
                    f"{p}:{c}",
                    "planned",
                    [f"{names[c]} supports {names[p]}"],
                )
            )
        return None
    outcomes = await run.each(
        list(wanted.items()),
        lambda item: provision_ci(run, item[1][0], item[1][1], name=item[1][2]),
        lambda item: Outcome("ci", item[1][2], item[0]),
        "cis",
    )
    await associate(run, edges, {o.sn_id: o for o in outcomes}, names)
    return None


async def _table_cis(run: Run, table: str, column: str) -> list[dict]:
    fields = list(dict.fromkeys([*CI_FIELDS, column]))
    return await run.servicenow.list(table, None, fields=fields, order_by="sys_id")


def _chunks(ids: list[str], size: int = 30) -> list[list[str]]:
    # ServiceNow echoes the query in its Link header (next, prev, first, last): 30
    # sys_ids keep that header under the 8 KiB a client reads of one header line.
    return [ids[i : i + size] for i in range(0, len(ids), size)]


def _ref(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("value") or "")
    return str(value or "")
