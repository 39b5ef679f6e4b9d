"""Notes each way: PagerDuty notes copied to ServiceNow work notes and back, each
marked so that a copy is never copied back."""

from __future__ import annotations

import re

import structlog

from dutybridge.store.base import Link

from .core import Core
from .links import own_write
from .views import SN_SEEN

log = structlog.get_logger("dutybridge.incident_sync")

FROM_SN_PREFIX = "(from ServiceNow:"
PD_SUFFIX = re.compile(r"\(PagerDuty: .+ on .+\)\s*$", re.S)


async def pd_notes_to_sn(core: Core, link: Link, table: str, st: dict) -> None:
    """Copy PagerDuty notes not seen yet to work notes, saving ``st`` after each."""
    notes = await core.api.pd_notes(link.pd_id)
    seen = set(st.get("pd_notes", []))
    fresh = sorted((n for n in notes if n.get("id") not in seen), key=lambda n: (n.get("created_at") or "", n["id"]))
    if not fresh:
        return
    journal: list[dict] | None = None
    for note in fresh:
        seen.add(note["id"])
        content = note.get("content") or ""
        if content.startswith(FROM_SN_PREFIX) or not content.strip():
            st["pd_notes"] = sorted(seen)
            continue  # mirrored from ServiceNow by us: never back
        who = (note.get("user") or {}).get("summary") or "PagerDuty"
        text = f"{content} (PagerDuty: {who} on {note.get('created_at')})"
        if journal is None:
            journal = await core.api.sn_journal(link.sn_id)
        if not any(j.get("value") == text for j in journal):
            own_write(st, await core.api.sn_update(table, link.sn_id, {"work_notes": text}))
            log.info("pd_note_copied_to_work_note", pd_incident=link.pd_id, note=note["id"])
        st["pd_notes"] = sorted(seen)
        link = await core.links.save(link, st)
    if st != link.state:
        await core.links.save(link, st)


async def sn_notes_to_pd(core: Core, link: Link, st: dict, *, synced: int | None = None) -> None:
    """Copy new work notes to PagerDuty notes (when notes sync), then save ``st``;
    ``synced``: the record's version read before, now synced whole (``SN_SEEN``)."""
    fresh: list[dict] = []
    seen: set[str] = set()
    if core.conf.sync_work_notes:
        journal = await core.api.sn_journal(link.sn_id)
        seen = set(st.get("sn_notes", []))
        fresh = [j for j in journal if j["sys_id"] not in seen]
    integration = core.ctx.config.servicenow.username
    pd_notes: list[dict] | None = None
    for entry in fresh:
        seen.add(entry["sys_id"])
        value = entry.get("value") or ""
        if entry.get("sys_created_by") == integration or PD_SUFFIX.search(value) or not value.strip():
            st["sn_notes"] = sorted(seen)
            continue  # our own write, or a PagerDuty note mirrored here: never back
        name = await core.users.display_name(entry.get("sys_created_by"))
        content = f"{FROM_SN_PREFIX} {name}) {value}"
        if pd_notes is None:
            pd_notes = await core.api.pd_notes(link.pd_id)
        existing = next((n for n in pd_notes if n.get("content") == content), None)
        if existing is None:
            sender = await core.users.from_for_user_name(entry.get("sys_created_by"))
            note = await core.api.pd_add_note(link.pd_id, content, sender)
            log.info("work_note_copied_to_pd_note", pd_incident=link.pd_id, note=note.get("id"))
        else:
            note = existing
        pd_seen = set(st.get("pd_notes", []))
        if note.get("id"):
            pd_seen.add(note["id"])
        st["pd_notes"] = sorted(pd_seen)
        st["sn_notes"] = sorted(seen)
        link = await core.links.save(link, st)
    if synced is not None and synced > st.get(SN_SEEN, -1):
        st[SN_SEEN] = synced
    if st != link.state:
        await core.links.save(link, st)
