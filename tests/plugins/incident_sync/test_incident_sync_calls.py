"""What one sync costs in calls, and why each call left out is safe to leave out.

A sync reads the incident where it changed and writes the difference; the echo of our
own write, a duplicate or a replay needs no read when the link proves it synced (the
ServiceNow record's ``sys_mod_count``, a V3 webhook's own copy of the incident). These
tests pin the calls of the common flows and put a person's change exactly where a
skipped read would have lost it.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
import structlog

from dutybridge import hookimpl
from dutybridge_plugins.incident_sync import core as core_mod
from dutybridge_plugins.incident_sync import engine as engine_mod
from dutybridge_plugins.incident_sync.engine import SN_SEEN, Engine, own_write, sn_view
from dutybridge_plugins.incident_sync.locks import Locks
from dutybridge_plugins.incident_sync.mapping import Mapping
from dutybridge_plugins.incident_sync.users import LINK_TTL, MISSING_TTL, Users
from tests.plugins.incident_sync.world import ALICE_SN, BOB_SN, CAROL_SN, DAVE_SN, DB_GROUP

WRITES = ("POST", "PUT", "PATCH", "DELETE")


def assignees(world, pd_id: str) -> list[str]:
    return [a["assignee"]["id"] for a in world.pd.incidents[pd_id]["assignments"]]


def only(rows):
    assert len(rows) == 1, rows
    return rows[0]


class Recorder:
    """Every outbound call (first attempts), and hooks run before or after one."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.on = False
        self.before: list = []  # fn(request) -> bool (True: done, remove it)
        self.after: list = []

    @staticmethod
    def _run(hooks: list, request) -> None:
        for fn in list(hooks):
            if fn(request):
                hooks.remove(fn)

    @hookimpl
    def outbound_request(self, request, ctx):
        if request.extra.get("attempt", 1) > 1:
            return
        if self.on:
            self.calls.append((request.service, request.method, request.operation))
        self._run(self.before, request)

    @hookimpl
    def outbound_response(self, request, response, ctx):
        self._run(self.after, request)

    def ops(self) -> list[tuple[str, str]]:
        return [(service, op) for service, _, op in self.calls]

    def writes(self) -> list[tuple[str, str, str]]:
        return [c for c in self.calls if c[1] in WRITES]


@pytest.fixture
async def rec_world(make_world):
    recorder = Recorder()
    # The poll on (as by default), but not due during a test: tests poll themselves.
    # Webhooks are skipped on their own copy of the incident only while it is on.
    world = await make_world(extra_plugins=[recorder], poll_interval_seconds=3600.0)
    # Warm up: one incident each way, so what a process remembers (the caller, user
    # links, priorities) is remembered, as in a daemon that has been running.
    world.pd.create_incident(title="warm-up", service_id="PSVCDB1", from_user="PALICE1")
    open_sn(world, "warm-up")
    await world.settle()
    return world, recorder


def open_sn(world, title: str, user: str = "alice.nguyen") -> dict:
    return world.sn.insert(
        "incident", {"short_description": title, "assignment_group": DB_GROUP, "impact": "1", "urgency": "1"}, user=user
    )


async def handled(world, source: str) -> list:
    return [e for e in await world.store.list_events(limit=1000) if e.source == source and e.status == "done"]


# ---------------------------------------------------------------------------------------
# The calls of one sync
# ---------------------------------------------------------------------------------------


async def test_a_pagerduty_born_sync_reads_once_each_side_and_its_echo_reads_nothing(rec_world):
    world, recorder = rec_world
    bells_before = len(await handled(world, "servicenow"))
    recorder.on = True
    inc = world.pd.create_incident(title="Replica lag", service_id="PSVCDB1", from_user="PALICE1")
    await world.settle()
    recorder.on = False
    assert recorder.ops() == [
        ("pagerduty", "GET /incidents/{id}"),  # the incident, with its first trigger (the body)
        ("servicenow", "GET /api/now/table/incident"),  # born there (sys_id) or opened already (correlation_id)?
        ("servicenow", "POST /api/now/table/incident"),  # open it
        # Its notes: none can come before the trigger; each later one has its own event.
    ]
    only(world.sn_for(inc["id"]))
    # The doorbell of our own insert came and was handled without a call.
    assert len(await handled(world, "servicenow")) == bells_before + 1


async def test_a_servicenow_born_sync_reads_once_and_its_echoes_read_nothing(rec_world):
    world, recorder = rec_world
    pd_before, sn_before = len(await handled(world, "pagerduty")), len(await handled(world, "servicenow"))
    recorder.on = True
    rec = open_sn(world, "Login failures")
    await world.settle()
    recorder.on = False
    assert recorder.ops() == [
        ("servicenow", "GET /api/now/table/incident/{sys_id}"),  # the record the doorbell names
        ("pagerduty", "POST /incidents"),  # trigger it
        ("servicenow", "PATCH /api/now/table/incident/{sys_id}"),  # correlation_id: the PagerDuty id
        ("servicenow", "GET /api/now/table/sys_journal_field"),  # work notes made with it
    ]
    only(world.pd_for(rec["sys_id"]))
    # Our trigger's webhook and our correlation write's doorbell came, and cost nothing.
    assert len(await handled(world, "pagerduty")) == pd_before + 1
    assert len(await handled(world, "servicenow")) == sn_before + 2


async def test_an_acknowledgement_each_way_costs_no_read_of_its_echo(rec_world):
    world, recorder = rec_world
    inc = world.pd.create_incident(title="Disk full", service_id="PSVCDB1", from_user="PALICE1")
    sn_born = open_sn(world, "Checkout errors")
    await world.settle()
    sys_id = only(world.sn_for(inc["id"]))["sys_id"]
    pd_of_sn = only(world.pd_for(sn_born["sys_id"]))["id"]
    # Opened to the Database policy's on-call (Alice: the world starts her turn).
    assert assignees(world, pd_of_sn) == ["PALICE1"]

    recorder.on = True
    world.pd.acknowledge(inc["id"], "PALICE1")  # Alice: linked by the warm-up
    await world.settle()
    assert recorder.ops() == [
        ("pagerduty", "GET /incidents/{id}"),
        ("servicenow", "GET /api/now/table/incident/{sys_id}"),
        ("servicenow", "PATCH /api/now/table/incident/{sys_id}"),  # its doorbell: no read
    ]
    assert world.sn.get("incident", sys_id)["state"] == "2"

    # Alice hands hers to Dave, in progress. Two writes, as PagerDuty records them: the
    # reassignment by Alice, then the acknowledgement by Dave (one From header a request).
    recorder.calls.clear()
    world.sn.update("incident", sn_born["sys_id"], {"assigned_to": DAVE_SN, "state": "2"}, user="alice.nguyen")
    await world.settle()
    recorder.on = False
    assert recorder.ops() == [
        ("servicenow", "GET /api/now/table/incident/{sys_id}"),
        ("pagerduty", "GET /incidents/{id}"),
        # Dave is new to this process: his PagerDuty user is found (by email) once.
        ("servicenow", "GET /api/now/table/sys_user/{sys_id}"),
        ("pagerduty", "GET /users"),
        ("pagerduty", "PUT /incidents/{id}"),  # to Dave
        ("pagerduty", "PUT /incidents/{id}"),  # acknowledged by him
        ("servicenow", "GET /api/now/table/sys_journal_field"),
        # The reassignment's webhook carries the incident as it was in between
        # (triggered): read, found synced. The acknowledgement's webhook: no read.
        ("pagerduty", "GET /incidents/{id}"),
    ]
    pd_inc = world.pd.incidents[pd_of_sn]
    assert pd_inc["status"] == "acknowledged"
    assert assignees(world, pd_of_sn) == ["PDAVEP1"]
    assert [a["acknowledger"]["id"] for a in pd_inc["acknowledgements"]] == ["PDAVEP1"]


async def test_taking_an_incident_already_assigned_in_pagerduty_only_acknowledges_it(rec_world):
    world, recorder = rec_world
    sn_born = open_sn(world, "Checkout errors")
    await world.settle()
    pd_of_sn = only(world.pd_for(sn_born["sys_id"]))["id"]
    assert assignees(world, pd_of_sn) == ["PALICE1"]  # the on-call

    recorder.on = True
    world.sn.update("incident", sn_born["sys_id"], {"assigned_to": ALICE_SN, "state": "2"}, user="alice.nguyen")
    await world.settle()
    recorder.on = False
    # She has it in PagerDuty already: no reassignment (it would page her again).
    assert recorder.ops() == [
        ("servicenow", "GET /api/now/table/incident/{sys_id}"),
        ("pagerduty", "GET /incidents/{id}"),
        ("pagerduty", "PUT /incidents/{id}"),  # acknowledged by her
        ("servicenow", "GET /api/now/table/sys_journal_field"),
    ]
    pd_inc = world.pd.incidents[pd_of_sn]
    assert pd_inc["status"] == "acknowledged"
    assert [a["acknowledger"]["id"] for a in pd_inc["acknowledgements"]] == ["PALICE1"]
    assert assignees(world, pd_of_sn) == ["PALICE1"]


async def test_an_acknowledgement_pagerduty_has_made_meanwhile_is_taken_as_done(rec_world):
    world, recorder = rec_world
    sn_born = open_sn(world, "Checkout errors")
    await world.settle()
    pd_id = only(world.pd_for(sn_born["sys_id"]))["id"]

    def alice_acknowledges_first(request) -> bool:
        # Just before our acknowledgement lands, Alice acknowledges in PagerDuty herself:
        # ours is answered 400 "Incident Already Acknowledged" (code 1002).
        if request.service != "pagerduty" or request.method != "PUT":
            return False
        world.pd.acknowledge(pd_id, "PALICE1")
        return True

    recorder.before.append(alice_acknowledges_first)
    recorder.on = True
    world.sn.update("incident", sn_born["sys_id"], {"assigned_to": ALICE_SN, "state": "2"}, user="alice.nguyen")
    await world.settle()
    recorder.on = False
    assert not recorder.before, "the write to PagerDuty did not happen"
    assert recorder.ops() == [
        ("servicenow", "GET /api/now/table/incident/{sys_id}"),
        ("pagerduty", "GET /incidents/{id}"),
        ("pagerduty", "PUT /incidents/{id}"),  # answered: acknowledged already
        ("pagerduty", "GET /incidents/{id}"),  # read as it is, and the sync goes on
        ("servicenow", "GET /api/now/table/sys_journal_field"),
        # Alice's acknowledgement webhook: what was just recorded, so no read.
    ]
    # Handled at the first attempt: the answer is not an error to retry.
    assert [e.attempts for e in await world.store.list_events(limit=1000) if e.source == "servicenow"][-1] == 1
    assert world.pd.incidents[pd_id]["status"] == "acknowledged"
    assert world.sn.get("incident", sn_born["sys_id"])["state"] == "2"


# ---------------------------------------------------------------------------------------
# ServiceNow: the echo of our own write is skipped only when it holds nothing else
# ---------------------------------------------------------------------------------------


async def test_a_change_between_our_read_and_our_write_is_synced_though_its_doorbell_was_lost(rec_world):
    world, recorder = rec_world
    inc = world.pd.create_incident(title="Replica lag", service_id="PSVCDB1", from_user="PALICE1")
    await world.settle()
    sys_id = only(world.sn_for(inc["id"]))["sys_id"]

    def person_writes_first(request) -> bool:
        # Just before our write lands: Bob adds a work note, and its doorbell is lost.
        if request.service != "servicenow" or request.method != "PATCH":
            return False
        bell, world.sn.doorbell = world.sn.doorbell, None
        world.sn.update("incident", sys_id, {"work_notes": "restarting the replica"}, user="bob.smith")
        world.sn.doorbell = bell
        return True

    recorder.before.append(person_writes_first)
    world.pd.acknowledge(inc["id"], "PALICE1")
    await world.settle()
    assert not recorder.before, "the write to ServiceNow did not happen"
    # Our write's version is not the one after the last synced: its doorbell was read,
    # and the note behind it reached PagerDuty.
    assert world.pd_notes(inc["id"]) == ["(from ServiceNow: Bob Smith) restarting the replica"]


async def test_a_change_right_after_our_write_is_synced(rec_world):
    world, recorder = rec_world
    inc = world.pd.create_incident(title="Replica lag", service_id="PSVCDB1", from_user="PALICE1")
    await world.settle()
    sys_id = only(world.sn_for(inc["id"]))["sys_id"]

    def person_writes_next(request) -> bool:
        if request.service != "servicenow" or request.method != "PATCH":
            return False
        world.sn.update("incident", sys_id, {"assigned_to": CAROL_SN}, user="bob.smith")
        return True

    recorder.after.append(person_writes_next)
    world.pd.acknowledge(inc["id"], "PALICE1")
    await world.settle()
    assert world.sn.get("incident", sys_id)["assigned_to"] == CAROL_SN
    assert [a["assignee"]["id"] for a in world.pd.incidents[inc["id"]]["assignments"]] == ["PCAROL1"]


def test_own_write_counts_only_a_version_that_holds_nothing_but_ours():
    snap = {"state": "2", "assignment_group": DB_GROUP, "assigned_to": BOB_SN, "priority": "2"}
    written = {**snap, "sys_mod_count": "4", "sys_updated_on": "2030-01-01 00:00:04"}

    def after(seen, record, snapshot=snap):
        st = {"sn": dict(snapshot)}
        if seen is not None:
            st[SN_SEEN] = seen
        own_write(st, record)
        return st.get(SN_SEEN)

    assert after(3, written) == 4  # the next version, as we wrote it
    assert after(2, written) == 2  # someone's change got in between
    assert after(3, {**written, "priority": "1"}) == 3  # a business rule changed a tracked field
    assert after(None, written) is None  # nothing known synced: read as before
    assert after(3, {k: v for k, v in written.items() if k != "sys_mod_count"}) == 3
    assert after(3, {**written, "sys_mod_count": "3"}) == 3  # nothing new: not an advance
    assert sn_view(written)["sys_mod_count"] == "4"


async def test_replayed_and_duplicated_events_write_nothing_and_skip_the_echoes(rec_world):
    world, recorder = rec_world
    inc = world.pd.create_incident(title="Checkout errors", service_id="PSVCDB1", from_user="PALICE1")
    await world.settle()
    world.pd.acknowledge(inc["id"], "PALICE1")
    sn_born = open_sn(world, "Payments down")
    await world.settle()
    world.sn.update("incident", sn_born["sys_id"], {"work_notes": "rolling back"}, user="alice.nguyen")
    await world.settle()
    sys_id = only(world.sn_for(inc["id"]))["sys_id"]
    mods = {s: world.sn.get("incident", s)["sys_mod_count"] for s in (sys_id, sn_born["sys_id"])}
    pd_logs = {i: len(world.pd.incident_log_entries(i)) for i in world.pd.incidents}

    recorder.on = True
    for event in await world.store.list_events(limit=1000):
        await world.store.replay(event.id)
    world.ctx.wake_worker()
    await world.settle()
    recorder.on = False
    assert recorder.writes() == []
    # Doorbells are all at or below what is synced: no ServiceNow record was read.
    assert ("servicenow", "GET /api/now/table/incident/{sys_id}") not in recorder.ops()
    assert {s: world.sn.get("incident", s)["sys_mod_count"] for s in mods} == mods
    assert {i: len(world.pd.incident_log_entries(i)) for i in world.pd.incidents} == pd_logs
    assert world.pd_notes(only(world.pd_for(sn_born["sys_id"]))["id"]) == [
        "(from ServiceNow: Alice Nguyen) rolling back"
    ]


async def test_a_doorbell_below_what_is_synced_is_skipped_but_a_newer_one_is_read(rec_world):
    world, recorder = rec_world
    rec = open_sn(world, "Queue backlog")
    await world.settle()
    link = only([lk for lk in await world.links() if lk.sn_id == rec["sys_id"]])
    seen = link.state[SN_SEEN]
    assert str(seen) == world.sn.get("incident", rec["sys_id"])["sys_mod_count"]
    engine = world.engine
    recorder.on = True
    assert await engine.servicenow_changed("incident", rec["sys_id"], mod_count=str(seen))
    assert recorder.calls == []
    assert await engine.servicenow_changed("incident", rec["sys_id"], mod_count=str(seen + 1))
    assert ("servicenow", "GET /api/now/table/incident/{sys_id}") in recorder.ops()
    recorder.calls.clear()
    assert await engine.servicenow_changed("incident", rec["sys_id"])  # no count (an older rule): read
    assert ("servicenow", "GET /api/now/table/incident/{sys_id}") in recorder.ops()


# ---------------------------------------------------------------------------------------
# PagerDuty: a webhook whose own copy of the incident is what was synced needs no read
# ---------------------------------------------------------------------------------------


async def test_a_pagerduty_change_right_after_our_write_is_synced(rec_world):
    world, recorder = rec_world
    rec = open_sn(world, "Payments API 500s")
    await world.settle()
    pd_id = only(world.pd_for(rec["sys_id"]))["id"]

    def person_reassigns(request) -> bool:
        # Right after our acknowledgement: Carol takes it over in PagerDuty.
        if request.service != "pagerduty" or request.method != "PUT":
            return False
        body = (request.json or {}).get("incident") or {}
        if body.get("status") != "acknowledged":
            return False
        world.pd.reassign(pd_id, ["PCAROL1"], "PCAROL1")
        return True

    recorder.after.append(person_reassigns)
    world.sn.update("incident", rec["sys_id"], {"assigned_to": BOB_SN, "state": "2"}, user="bob.smith")
    await world.settle()
    assert not recorder.after
    assert world.sn.get("incident", rec["sys_id"])["assigned_to"] == CAROL_SN


async def test_an_urgency_change_behind_our_write_is_found_by_the_poll(rec_world):
    # An urgency change sends no webhook. The echo of our write, skipped, would not have
    # seen it either had it come a moment later: the poll's sweep is what finds it.
    world, recorder = rec_world
    await world.poll()  # the first pass sets the watermarks
    inc = world.pd.create_incident(title="Slow queries", service_id="PSVCDB1", from_user="PALICE1")
    await world.settle()
    sys_id = only(world.sn_for(inc["id"]))["sys_id"]
    assert world.sn.get("incident", sys_id)["priority"] == "2"  # high urgency

    def person_lowers_urgency(request) -> bool:
        if request.service != "pagerduty" or request.method != "PUT":
            return False
        assert ((request.json or {}).get("incident") or {}).get("status") == "acknowledged"
        world.pd.set_urgency(inc["id"], "low", "PALICE1")
        return True

    recorder.after.append(person_lowers_urgency)
    world.sn.update("incident", sys_id, {"state": "2"}, user="alice.nguyen")  # acknowledged by its assignee
    await world.settle()
    assert not recorder.after
    await world.poll()
    await world.settle()
    assert world.sn.get("incident", sys_id)["priority"] == "4"  # low urgency
    assert world.pd.incidents[inc["id"]]["status"] == "acknowledged"


# ---------------------------------------------------------------------------------------
# Before a link: one lookup, and no duplicate
# ---------------------------------------------------------------------------------------


async def test_an_incident_born_in_servicenow_but_not_linked_is_linked_not_opened_again(make_world):
    world = await make_world(doorbell=False)
    rec = open_sn(world, "Born there")
    # As if its trigger handler stopped after the trigger: PagerDuty has it, no link does.
    inc = world.pd.create_incident(
        title="Born there", service_id="PSVCDB1", from_user="PALICE1", incident_key=rec["sys_id"]
    )
    await world.settle()
    link = only(await world.links())
    assert (link.pd_id, link.sn_id, link.state["origin"]) == (inc["id"], rec["sys_id"], "sn")
    assert len(world.sn_incidents()) == 1


async def test_many_incidents_opened_for_one_pagerduty_incident_link_the_oldest(make_world):
    world = await make_world(webhooks=False, doorbell=False)
    inc = world.pd.create_incident(title="Storm", service_id="PSVCDB1", from_user="PALICE1")
    made = [
        world.sn.insert(
            "incident",
            {
                "short_description": f"Storm {i}",
                "correlation_id": inc["id"],
                "correlation_display": "PagerDuty",
                "assignment_group": DB_GROUP,
            },
            user="admin",
        )
        for i in range(engine_mod.LOOKUP_LIMIT + 5)
    ]
    assert await world.engine.pagerduty_changed(inc["id"])
    link = only(await world.links())
    assert link.sn_id == made[0]["sys_id"]  # the oldest (the clock moves a second per write)
    assert len(world.sn_incidents()) == len(made)


# ---------------------------------------------------------------------------------------
# Concurrency: unrelated incidents never wait for each other
# ---------------------------------------------------------------------------------------


async def test_unrelated_incidents_on_one_service_sync_side_by_side(rec_world):
    world, recorder = rec_world
    release = asyncio.Event()
    held: list[str] = []

    async def hold(request) -> None:
        if (
            request.service == "servicenow"
            and request.method == "POST"
            and (request.json or {}).get("short_description") == "held"
        ):
            held.append("held")
            await release.wait()

    class Holder:
        @hookimpl
        async def outbound_request(self, request, ctx):
            await hold(request)

    world.ctx.pm.register(Holder())
    try:
        slow = world.pd.create_incident(title="held", service_id="PSVCDB1", from_user="PALICE1")
        await world.wait_for(lambda: held, what="the first insert to be held")
        fast = world.pd.create_incident(title="not held", service_id="PSVCDB1", from_user="PALICE1")
        sn_born = open_sn(world, "also not held")
        await world.wait_for(lambda: world.sn_for(fast["id"]), what="the second incident, while the first waits")
        await world.wait_for(lambda: world.pd_for(sn_born["sys_id"]), what="the ServiceNow one, while the first waits")
        assert not world.sn_for(slow["id"])
    finally:
        release.set()
    await world.settle()
    only(world.sn_for(slow["id"]))


# ---------------------------------------------------------------------------------------
# Locks, loading and lookups kept in memory
# ---------------------------------------------------------------------------------------


def bare_engine() -> Engine:
    return Engine(SimpleNamespace(store=None))


async def test_a_read_before_the_lock_is_kept_only_while_nobody_held_it():
    locks = Locks()
    mark = locks.seq
    assert locks.untouched_since(("pd:PA",), mark)
    async with locks.locked("pd:PA", "sn:" + "a" * 32):
        pass
    assert not locks.untouched_since(("pd:PA",), mark)
    assert not locks.untouched_since(("sn:" + "a" * 32,), mark)
    assert locks.untouched_since(("pd:PB",), mark)
    assert locks.untouched_since(("pd:PA",), locks.seq)

    # A reader that waited behind a holder reads again; one that did not, does not.
    reads: list[str] = []

    async def get_link():
        reads.append("read")
        return None

    async def run(link, fresh):
        return fresh

    mark = locks.seq
    assert await locks.under_link_lock(("pd:PC",), get_link, run, mark, None) is True
    assert reads == []
    holding = asyncio.Event()
    go = asyncio.Event()

    async def holder():
        async with locks.locked("pd:PC"):
            holding.set()
            await go.wait()

    task = asyncio.create_task(holder())
    await holding.wait()
    mark = locks.seq
    waiter = asyncio.create_task(locks.under_link_lock(("pd:PC",), get_link, run, mark, None))
    await asyncio.sleep(0)
    go.set()
    assert await waiter is False
    assert reads == ["read"]
    await task
    assert not locks._locks  # nothing left behind


async def test_a_key_forgotten_from_the_release_memory_counts_as_held():
    locks = Locks()
    mark = locks.seq
    async with locks.locked("pd:OLD"):
        pass
    for i in range(10_001):
        locks.released_now(f"pd:K{i}")
    assert "pd:OLD" not in locks._released
    assert not locks.untouched_since(("pd:OLD",), mark)
    assert not locks.untouched_since(("pd:NEVER",), mark)  # unknown since then: not trusted
    assert locks.untouched_since(("pd:NEVER",), locks.seq)


async def test_locks_of_several_keys_never_deadlock():
    locks = Locks()
    order: list[str] = []

    async def take(keys, name):
        async with locks.locked(*keys):
            order.append(name)
            await asyncio.sleep(0)

    takers = [
        take(keys, name)
        for _ in range(5)
        for keys, name in ((("pd:A", "sn:B"), "ab"), (("sn:B", "pd:A"), "ba"), (("pd:A",), "a"), (("sn:B",), "b"))
    ]
    await asyncio.wait_for(asyncio.gather(*takers), timeout=5)
    assert len(order) == 20 and not locks._locks


async def test_events_arriving_together_load_the_links_once(monkeypatch):
    loads: list[int] = []
    gate = asyncio.Event()

    async def fake_load(ctx, api, conf, *, write=True):
        loads.append(1)
        await gate.wait()
        return Mapping()

    monkeypatch.setattr(core_mod, "load_mapping", fake_load)
    monkeypatch.setattr(Engine, "conf", property(lambda self: SimpleNamespace()))
    engine = bare_engine()
    waiting = [asyncio.create_task(engine.ensure_loaded()) for _ in range(8)]
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(*waiting)
    assert len(loads) == 1
    await engine.ensure_loaded()
    assert len(loads) == 1

    # A reload while loading: what was being read may be the old links, so read again.
    gate.clear()
    engine.stale()
    waiting = [asyncio.create_task(engine.ensure_loaded()) for _ in range(8)]
    await asyncio.sleep(0)
    engine.stale()
    gate.set()
    await asyncio.gather(*waiting)
    assert len(loads) == 3
    await engine.ensure_loaded()
    assert len(loads) == 3


class FakeApi:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.sn_users: list[dict] = []
        self.pd_users: dict[str, dict] = {}

    async def sn_query(self, table, query, fields=None, *, limit=None, order_by=None):
        self.calls.append(f"sn_query {query}")
        return [
            u
            for u in self.sn_users
            if f"email={u['email']}" in str(query) or f"user_name={u['user_name']}" in str(query)
        ]

    async def sn_get(self, table, sys_id, fields=None):
        self.calls.append(f"sn_get {sys_id}")
        return next((u for u in self.sn_users if u["sys_id"] == sys_id), None)

    async def pd_user_by_email(self, email):
        self.calls.append(f"pd_user_by_email {email}")
        return next((u for u in self.pd_users.values() if u["email"] == email), None)

    async def pd_user(self, uid):
        self.calls.append(f"pd_user {uid}")
        return self.pd_users.get(uid)

    async def pd_create_user(self, name, email, role):
        self.calls.append(f"pd_create_user {email}")
        user = {"id": "PNEW001", "email": email, "name": name}
        self.pd_users[user["id"]] = user
        return user


class FakeStore:
    def __init__(self) -> None:
        self.links: list = []
        self.reads = 0

    async def get_link(self, kind, *, pd_id=None, sn_id=None):
        self.reads += 1
        return next((lk for lk in self.links if (pd_id and lk.pd_id == pd_id) or (sn_id and lk.sn_id == sn_id)), None)

    async def put_link(self, link):
        self.links.append(link)
        return link


def users_with(api: FakeApi, store: FakeStore, clock: list[float]) -> Users:
    conf = SimpleNamespace(v7_fields=False, create_missing_users=False, new_user_role="limited_user")
    engine = SimpleNamespace(api=api, conf=conf, ctx=SimpleNamespace(store=store))
    return Users(engine, clock=lambda: clock[0])


async def test_a_user_found_nowhere_is_asked_again_only_after_a_while():
    api, store, clock = FakeApi(), FakeStore(), [1000.0]
    api.sn_users = [{"sys_id": "s" * 32, "user_name": "dana", "email": "dana@acme.example", "name": "Dana"}]
    users = users_with(api, store, clock)
    assert await users.pd_for_sn("s" * 32) is None
    assert await users.pd_for_sn("s" * 32) is None
    assert api.calls.count("pd_user_by_email dana@acme.example") == 1
    assert await users.sn_user_by_email("nobody@acme.example") is None
    assert await users.sn_user_by_email("Nobody@acme.example") is None
    assert sum(c.startswith("sn_query") and "nobody" in c.lower() for c in api.calls) == 1
    assert await users.sn_user("t" * 32) is None and await users.sn_user("t" * 32) is None
    assert api.calls.count("sn_get " + "t" * 32) == 1

    clock[0] += MISSING_TTL + 1  # Dana got a PagerDuty account meanwhile
    api.pd_users["PDANA01"] = {"id": "PDANA01", "email": "dana@acme.example"}
    assert await users.pd_for_sn("s" * 32) == "PDANA01"
    assert api.calls.count("pd_user_by_email dana@acme.example") == 2
    # Found: linked in the store, and the link is remembered for a while.
    reads = store.reads
    assert await users.pd_for_sn("s" * 32) == "PDANA01"
    assert await users.sn_for_pd("PDANA01") == "s" * 32
    assert store.reads == reads
    clock[0] += LINK_TTL + 1
    assert await users.pd_for_sn("s" * 32) == "PDANA01"
    assert store.reads == reads + 1


async def test_creating_a_missing_user_is_not_stopped_by_a_remembered_miss():
    api, store, clock = FakeApi(), FakeStore(), [0.0]
    api.sn_users = [{"sys_id": "s" * 32, "user_name": "erin", "email": "erin@acme.example", "name": "Erin"}]
    users = users_with(api, store, clock)
    assert await users.pd_for_sn("s" * 32) is None
    assert await users.pd_for_sn("s" * 32, create=True) == "PNEW001"
    assert "pd_create_user erin@acme.example" in api.calls


async def test_a_reload_forgets_what_was_looked_up(world):
    engine = world.engine
    engine.users._found_nobody("pd_email", "x@acme.example")
    engine._caller = "c" * 32
    engine._group_names["g" * 32] = "Gone"
    with structlog.testing.capture_logs():
        await engine.refresh()
    assert not engine.users._missing and engine._caller is None and not engine._group_names


@pytest.mark.parametrize("annotations", [True, False])
async def test_a_note_made_before_the_incident_is_opened_reaches_servicenow(make_world, annotations):
    # Opening on the trigger's own webhook leaves notes to their own events: the
    # annotation webhook when subscribed, else the poll's annotate log entry.
    events = None if annotations else ["incident.triggered", "incident.acknowledged", "incident.resolved"]
    world = await make_world(events=events, poll_interval_seconds=3600.0)
    await world.poll()  # the first pass sets the watermarks
    inc = world.pd.create_incident(title="Cache stampede", service_id="PSVCDB1", from_user="PALICE1")
    world.pd.add_note(inc["id"], "PALICE1", "warming the cache")  # before the daemon sees the trigger
    await world.settle()
    sys_id = only(world.sn_for(inc["id"]))["sys_id"]
    if not annotations:
        await world.poll()
        await world.settle()
    notes = world.work_notes(sys_id)
    assert len(notes) == 1 and notes[0].startswith("warming the cache (PagerDuty: Alice Nguyen on ")


async def test_with_the_poll_off_opening_reads_the_notes(make_world):
    world = await make_world(events=["incident.triggered"])  # poll off, no annotation webhooks
    inc = world.pd.create_incident(title="Cache stampede", service_id="PSVCDB1", from_user="PALICE1")
    world.pd.add_note(inc["id"], "PALICE1", "warming the cache")
    await world.settle()
    sys_id = only(world.sn_for(inc["id"]))["sys_id"]
    assert [n.split(" (PagerDuty:")[0] for n in world.work_notes(sys_id)] == ["warming the cache"]
