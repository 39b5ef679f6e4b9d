"""The links between incidents and the snapshot each keeps of what was last synced:
creating and saving them, and proving from it that a change needs no read."""

from __future__ import annotations

import collections
import copy
from typing import Any

import structlog

from dutybridge.store.base import Link, LinkConflictError

from .views import KIND, SN_SEEN, TRACK_SN, mod_count_of, pd_view, sn_view

log = structlog.get_logger("dutybridge.incident_sync")


def own_write(st: dict, written: dict | None) -> None:
    """After our own write to the ServiceNow record: when it made the version right after
    the last one fully synced (``SN_SEEN``), and the record as written agrees with the
    snapshot in every tracked field, that version holds nothing but our write, so its
    doorbell (our echo) needs no read. Otherwise (a person's change got in between, a
    business rule changed a tracked field, no mod count) the echo is read as before."""
    seen, mod = st.get(SN_SEEN), mod_count_of(written)
    if seen is None or mod is None or mod != seen + 1:
        return
    snap, view = st.get("sn") or {}, sn_view(written or {})
    if all(str(snap.get(k) or "") == view[k] for k in TRACK_SN):
        st[SN_SEEN] = mod


def link_key(link: Link) -> str:
    """The lock key of a linked incident: the side it was born on names it."""
    return f"sn:{link.sn_id}" if (link.state or {}).get("origin") == "sn" else f"pd:{link.pd_id}"


def sn_change_synced(link: Link, mod_count: str | None) -> bool:
    """Whether the change a doorbell (or poll event) names is synced already: its
    sys_mod_count is at most ``SN_SEEN``, the version up to which every change was read
    and synced (a record read, then its work notes) or was our own write (``own_write``).
    Each later change rings with its own count, so skipping this one loses nothing,
    and the echo of our own write costs no read. Without a count: read, as before."""
    if mod_count is None or not str(mod_count).isdigit():
        return False
    seen = (link.state or {}).get(SN_SEEN)
    return isinstance(seen, int) and int(mod_count) <= seen


def pd_id_of(conf: Any, table: str, rec: dict) -> str | None:
    """The PagerDuty incident a ServiceNow record names (correlation_id, or the v7 field)."""
    if rec.get("correlation_display") == "PagerDuty" and rec.get("correlation_id"):
        return str(rec["correlation_id"])
    if conf.v7_fields and table == "incident" and rec.get(conf.v7_incident_field):
        return str(rec[conf.v7_incident_field])
    return None


class Links:
    """The store's links of this plugin, and what is remembered of them between events."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        # sys_id -> SN_SEEN as last saved: "changes up to this version are synced" stays
        # true, so a doorbell at or below it needs not even the link (bounded, oldest out).
        self._sn_seen: collections.OrderedDict[str, int] = collections.OrderedDict()

    @property
    def store(self) -> Any:
        return self.ctx.store

    def known_synced(self, sys_id: str, mod_count: str | None) -> bool:
        """Whether the version ``mod_count`` of record ``sys_id`` is synced, by memory alone."""
        return mod_count is not None and str(mod_count).isdigit() and int(mod_count) <= self._sn_seen.get(sys_id, -1)

    def remember_seen(self, sn_id: str, state: dict) -> None:
        seen = state.get(SN_SEEN)
        if isinstance(seen, int) and seen > self._sn_seen.get(sn_id, -1):
            self._sn_seen[sn_id] = seen
            self._sn_seen.move_to_end(sn_id)
            while len(self._sn_seen) > 50_000:
                self._sn_seen.popitem(last=False)

    async def save(self, link: Link, state: dict, status: str | None = None) -> Link:
        """Store ``state`` (and ``status``) as the link's; the link as saved."""
        await self.store.update_link_state(KIND, link.pd_id, state, status=status)
        self.remember_seen(link.sn_id, state)
        # A copy: callers go on changing ``state`` and compare it with what was saved.
        return Link(
            kind=KIND,
            pd_id=link.pd_id,
            sn_id=link.sn_id,
            state=copy.deepcopy(state),
            status=status or link.status,
            created_at=link.created_at,
        )

    async def new_link(
        self,
        inc: dict,
        table: str,
        rec: dict,
        *,
        origin: str,
        pd_snapshot: dict | None = None,
        sn_snapshot: dict | None = None,
        sn_notes: list[str] | None = None,
        sn_seen: int | None = None,
    ) -> Link:
        """Link ``inc`` to ``rec``, each side's snapshot as read unless given;
        ``LinkConflictError`` when the record is linked to another incident already."""
        state: dict[str, Any] = {
            "table": table,
            "origin": origin,
            "pd": pd_view(inc) if pd_snapshot is None else pd_snapshot,
            "sn": sn_view(rec) if sn_snapshot is None else sn_snapshot,
            "pd_notes": [],
            "sn_notes": sn_notes or [],
            "moves": [],
        }
        if sn_seen is not None:
            state[SN_SEEN] = sn_seen
        try:
            link = await self.store.put_link(Link(kind=KIND, pd_id=inc["id"], sn_id=rec["sys_id"], state=state))
            self.remember_seen(link.sn_id, state)
            return link
        except LinkConflictError:
            existing = await self.store.get_link(KIND, sn_id=rec["sys_id"])
            log.warning(
                "sn_incident_already_linked",
                reason="linked to another PagerDuty incident; not linking a second",
                sn_sys_id=rec["sys_id"],
                pd_incident=inc["id"],
                linked_to=existing.pd_id if existing else None,
            )
            raise
