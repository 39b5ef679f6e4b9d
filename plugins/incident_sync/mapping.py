"""Which ServiceNow group or CI goes with which PagerDuty service and escalation policy,
merged from the config, the v7 app's fields and the store's links (see ``Mapping``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import structlog

from dutybridge.store.base import Link, LinkConflictError

from .api import Q

log = structlog.get_logger("dutybridge.incident_sync")

SYS_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class Target:
    """One ServiceNow group or CI and what it maps to in PagerDuty."""

    kind: str  # "group" or "ci"
    sys_id: str
    name: str = ""
    service: str = ""
    escalation_policy: str = ""
    source: str = "config"
    group: str = ""  # a CI's assignment group, when known


@dataclass
class Mapping:
    """The merged view of which ServiceNow group or CI goes with which PagerDuty objects.

    Incident sync reads these links, it does not invent them. Three sources, in order of
    precedence: static ``links`` in the config, the v7 app's ``x_pd_integration_*`` fields
    (when ``v7_fields`` is on), and the store's ``group``/``ci`` links that provisioning
    writes. The merged view lives in memory (it is small and read on every event) and what
    config and v7 fields say is written to the store too, so other plugins and
    ``dutybridge check`` see one picture.

    Store format (shared with provisioning): kind ``group``, ``sn_id`` the group's sys_id,
    ``pd_id`` its PagerDuty service id (or its escalation policy id when it has no service),
    ``state = {"service", "escalation_policy", "name", "source"}``; kind ``ci`` likewise with
    ``pd_id`` the service id; kind ``user``, ``pd_id`` the PagerDuty user id and ``sn_id`` the
    sys_user sys_id, ``state = {"email"}``.
    """

    groups: list[Target] = field(default_factory=list)
    cis: list[Target] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    # -- lookups ---------------------------------------------------------------
    def group(self, sys_id: str | None) -> Target | None:
        if not sys_id:
            return None
        return next((g for g in self.groups if g.sys_id == sys_id), None)

    def ci(self, sys_id: str | None) -> Target | None:
        if not sys_id:
            return None
        return next((c for c in self.cis if c.sys_id == sys_id), None)

    def services(self) -> set[str]:
        return {t.service for t in [*self.groups, *self.cis] if t.service}

    def is_mapped_incident(self, service_id: str | None, ep_id: str | None) -> bool:
        """Whether a PagerDuty incident on this service / policy belongs to a mapped group or CI."""
        return bool(
            (service_id and service_id in self.services())
            or (ep_id and any(g.escalation_policy == ep_id for g in self.groups))
        )

    def group_for_pagerduty(self, service_id: str | None, ep_id: str | None, current: str | None) -> Target | None:
        """The group a PagerDuty incident on ``service_id``/``ep_id`` belongs to.

        The current group wins whenever it maps to that escalation policy: several
        groups sharing one policy must not be swapped for each other on every webhook
        (the v7 app's feedback loop with reassigning automation).
        """
        now = self.group(current)
        if now is not None and ep_id and now.escalation_policy == ep_id:
            return now
        by_ep = [g for g in self.groups if ep_id and g.escalation_policy == ep_id]
        for g in by_ep:
            if service_id and g.service == service_id:
                return g
        if by_ep:
            return by_ep[0]
        if now is not None and service_id and now.service == service_id and not now.escalation_policy:
            return now
        by_service = [g for g in self.groups if service_id and g.service == service_id]
        if by_service:
            return by_service[0]
        ci = next((c for c in self.cis if service_id and c.service == service_id and c.group), None)
        if ci is not None:
            return self.group(ci.group) or Target("group", ci.group)
        return None

    def ci_for_service(self, service_id: str | None) -> Target | None:
        return next((c for c in self.cis if service_id and c.service == service_id), None)

    def service_for(self, mode: str, group_id: str | None, ci_id: str | None) -> str:
        """The service a ServiceNow incident triggers on, per mapping mode ('' when none)."""
        g = self.group(group_id)
        if mode == "cis_and_assignment_groups":
            c = self.ci(ci_id)
            if c is not None and c.service:
                return c.service
        return g.service if g is not None else ""


async def _resolve(ctx: Any, api: Any, table: str, ref: str) -> tuple[str, str] | None:
    """(sys_id, name) of a group or CI given by sys_id or name."""
    if SYS_ID.match(ref):
        row = await api.sn_get(table, ref, ["sys_id", "name"])
        return (row["sys_id"], row.get("name", "")) if row else None
    rows = await api.sn_query(table, Q().eq("name", ref), ["sys_id", "name"], limit=2, order_by="sys_id")
    if len(rows) > 1:
        log.warning("ambiguous_name", reason="several records have this name; using the first", table=table, name=ref)
    return (rows[0]["sys_id"], rows[0].get("name", "")) if rows else None


async def load_mapping(ctx: Any, api: Any, conf: Any, *, write: bool = True) -> Mapping:
    """Build the merged view from config, v7 fields and the store; write back what is new
    (unless ``write`` is false, as for ``dutybridge check``)."""
    m = Mapping()
    seen_groups: set[str] = set()
    seen_cis: set[str] = set()

    for i, spec in enumerate(conf.links):
        table = "sys_user_group" if spec.group else "cmdb_ci"
        ref = spec.group or spec.ci
        found = await _resolve(ctx, api, table, ref)
        if found is None:
            m.problems.append(f"plugins.incident_sync.links[{i}]: no {table} record named or with sys_id {ref!r}")
            continue
        sys_id, name = found
        if spec.group:
            if sys_id in seen_groups:
                continue
            seen_groups.add(sys_id)
            m.groups.append(Target("group", sys_id, name, spec.service, spec.escalation_policy, "config"))
        else:
            if sys_id in seen_cis:
                continue
            seen_cis.add(sys_id)
            m.cis.append(Target("ci", sys_id, name, spec.service, "", "config"))

    if conf.v7_fields:
        await _load_v7(api, conf, m, seen_groups, seen_cis)

    store = ctx.store
    if store is not None:
        for link in await store.list_links("group"):
            if link.sn_id in seen_groups:
                continue
            seen_groups.add(link.sn_id)
            st = link.state or {}
            service = st.get("service") or ("" if st.get("escalation_policy") == link.pd_id else link.pd_id)
            m.groups.append(
                Target(
                    "group",
                    link.sn_id,
                    st.get("name", ""),
                    service or "",
                    st.get("escalation_policy") or "",
                    st.get("source") or "store",
                )
            )
        for link in await store.list_links("ci"):
            if link.sn_id in seen_cis:
                continue
            seen_cis.add(link.sn_id)
            st = link.state or {}
            m.cis.append(
                Target(
                    "ci",
                    link.sn_id,
                    st.get("name", ""),
                    st.get("service") or link.pd_id,
                    "",
                    st.get("source") or "store",
                    st.get("group", ""),
                )
            )
        if write:
            await _write_back(store, m)

    if conf.mapping_mode == "cis_and_assignment_groups":
        for c in m.cis:
            if not c.group:
                row = await api.sn_get("cmdb_ci", c.sys_id, ["assignment_group"])
                c.group = _ref(row.get("assignment_group")) if row else ""
    return m


async def _load_v7(api: Any, conf: Any, m: Mapping, seen_groups: set[str], seen_cis: set[str]) -> None:
    svc, esc = conf.v7_group_service_field, conf.v7_group_escalation_field
    try:
        rows = await api.sn_query(
            "sys_user_group",
            Q().is_not_empty(svc).or_().is_not_empty(esc),
            ["sys_id", "name", svc, esc],
            order_by=["name", "sys_id"],
        )
    except Exception as exc:
        m.problems.append(f"v7 fields: cannot read sys_user_group.{svc}/{esc}: {exc}")
        rows = []
    for row in rows:
        service, ep = (row.get(svc) or "").strip(), (row.get(esc) or "").strip()
        if row["sys_id"] in seen_groups or not (service or ep):
            continue
        seen_groups.add(row["sys_id"])
        m.groups.append(Target("group", row["sys_id"], row.get("name", ""), service, ep, "v7"))
    cisvc = conf.v7_ci_service_field
    try:
        rows = await api.sn_query(
            "cmdb_ci",
            Q().is_not_empty(cisvc),
            ["sys_id", "name", cisvc, "assignment_group"],
            order_by=["name", "sys_id"],
        )
    except Exception as exc:
        m.problems.append(f"v7 fields: cannot read cmdb_ci.{cisvc}: {exc}")
        rows = []
    for row in rows:
        service = (row.get(cisvc) or "").strip()
        if row["sys_id"] in seen_cis or not service:
            continue
        seen_cis.add(row["sys_id"])
        m.cis.append(
            Target("ci", row["sys_id"], row.get("name", ""), service, "", "v7", _ref(row.get("assignment_group")))
        )


async def _write_back(store: Any, m: Mapping) -> None:
    existing = {(lk.kind, lk.sn_id): lk for lk in [*await store.list_links("group"), *await store.list_links("ci")]}
    for t in [*m.groups, *m.cis]:
        if t.source not in ("config", "v7"):
            continue
        pd_id = t.service or t.escalation_policy
        state = {
            "service": t.service or None,
            "escalation_policy": t.escalation_policy or None,
            "name": t.name,
            "source": t.source,
        }
        if t.kind == "ci" and t.group:
            state["group"] = t.group
        old = existing.get((t.kind, t.sys_id))
        if old is not None and old.pd_id == pd_id and old.state == state:
            continue
        holder = await store.get_link(t.kind, pd_id=pd_id)
        if holder is not None and holder.sn_id != t.sys_id:
            # The store keeps one group per PagerDuty id (put_link replaces by pd_id);
            # a second group on the same id still routes from memory, unstored.
            log.info(
                "link_kept_in_memory_only",
                kind=t.kind,
                sn_id=t.sys_id,
                pd_id=pd_id,
                reason=f"{holder.sn_id} already holds {pd_id} in the store",
            )
            continue
        try:
            if old is not None and old.pd_id != pd_id:
                await store.delete_link(t.kind, old.pd_id)
            await store.put_link(Link(kind=t.kind, pd_id=pd_id, sn_id=t.sys_id, state=state))
        except LinkConflictError as exc:
            log.info("link_kept_in_memory_only", kind=t.kind, sn_id=t.sys_id, pd_id=pd_id, reason=str(exc))


def _ref(value: Any) -> str:
    """A reference field's sys_id, whether the API gave a string or {"value", "link"}."""
    if isinstance(value, dict):
        return str(value.get("value") or "")
    return str(value or "")
