"""The Store contract: every store implementation must pass these (add it to STORES)."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta, timezone

import pytest

from dutybridge.events import Event
from dutybridge.store.base import Link, LinkConflictError, Store
from dutybridge.store.postgres import PostgresStore
from dutybridge.store.sqlite import SQLiteStore
from tests.support import postgres
from tests.support.clocks import FakeClock

STORES = ["sqlite", "postgresql"]
_ids = itertools.count(1)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=STORES)
async def store_factory(request, tmp_path, clock):
    """Builds unopened stores on one database: a second one is the process restarted."""
    if request.param == "sqlite":
        path = tmp_path / "dutybridge.db"
        yield lambda: SQLiteStore(path, clock=clock)
        return
    base, schema = postgres.server_url(), postgres.new_schema()
    url = postgres.with_schema(base, schema)
    try:
        yield lambda: PostgresStore(url, clock=clock)
    finally:
        await postgres.drop_schema(base, schema)


@pytest.fixture
async def store(store_factory):
    s = store_factory()
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def ev(
    resource: str = "pagerduty:incident:P1",
    *,
    source: str = "pagerduty",
    event_id: str | None = None,
    type: str = "incident.triggered",
    payload: dict | None = None,
    received_at: datetime | None = None,
) -> Event:
    kw = {} if received_at is None else {"received_at": received_at}
    return Event(
        source=source,
        type=type,
        event_id=event_id or f"ev-{next(_ids)}",
        resource=resource,
        payload=payload if payload is not None else {"n": 1},
        **kw,
    )


async def ids(store: Store, owner: str = "w1", limit: int = 10, lease: float = 30) -> list[int]:
    return [e.id for e in await store.claim(owner, limit, lease)]


# -- lifecycle -------------------------------------------------------------------


async def test_open_twice_close_twice_and_ping(store_factory):
    s = store_factory()
    await s.open()
    await s.open()
    assert await s.ping()
    assert await s.schema_version() >= 1
    await s.close()
    await s.close()
    assert not await s.ping()


async def test_async_with_opens_and_closes(store_factory):
    async with store_factory() as s:
        assert await s.ping()
    assert not await s.ping()


async def test_use_before_open_is_a_clear_error(store_factory):
    with pytest.raises(RuntimeError, match="not open"):
        await store_factory().get_event(1)


# -- inbox -----------------------------------------------------------------------


async def test_add_event_round_trips_every_field(store, clock):
    received = datetime(2026, 1, 1, 11, 59, 30, 123456, tzinfo=UTC)
    e = ev(payload={"event": {"id": "Q1", "summary": "Disk ☃ full", "n": [1, 2.5, None, True]}}, received_at=received)
    stored = await store.add_event(e)
    assert stored is not None and stored.id > 0
    got = await store.get_event(stored.id)
    assert got == stored
    assert (got.source, got.type, got.event_id, got.resource) == (e.source, e.type, e.event_id, e.resource)
    assert got.payload == e.payload
    assert got.received_at == received
    assert got.status == "pending" and got.attempts == 0 and got.owner is None
    assert got.updated_at == clock.now


async def test_received_at_in_another_zone_is_stored_as_the_same_instant(store):
    cet = timezone(timedelta(hours=1))
    stored = await store.add_event(ev(received_at=datetime(2026, 1, 1, 13, 0, tzinfo=cet)))
    assert (await store.get_event(stored.id)).received_at == datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


async def test_duplicate_is_not_stored(store):
    first = await store.add_event(ev(event_id="dup", payload={"v": 1}))
    assert first is not None
    assert await store.add_event(ev(event_id="dup", payload={"v": 2})) is None
    assert (await store.counts())["pending"] == 1
    assert (await store.get_event(first.id)).payload == {"v": 1}
    # The id is unique per source only.
    assert await store.add_event(ev(event_id="dup", source="servicenow")) is not None


async def test_duplicate_of_a_handled_event_is_still_a_duplicate(store):
    first = await store.add_event(ev(event_id="once"))
    await store.claim("w1", 1, 30)
    await store.complete(first.id)
    assert await store.add_event(ev(event_id="once")) is None
    assert (await store.get_event(first.id)).status == "done"


async def test_claim_sets_owner_lease_and_attempts(store, clock):
    stored = await store.add_event(ev())
    [claimed] = await store.claim("worker-a", 5, 30)
    assert claimed.id == stored.id
    assert claimed.status == "claimed"
    assert claimed.attempts == 1
    assert claimed.owner == "worker-a"
    assert claimed.lease_expires_at == clock.now + timedelta(seconds=30)
    assert await store.get_event(stored.id) == claimed
    assert await store.claim("worker-b", 5, 30) == []


async def test_claim_takes_one_event_per_resource_in_order(store):
    a = [await store.add_event(ev("r:A")) for _ in range(3)]
    assert await ids(store) == [a[0].id]
    assert await ids(store) == []
    await store.complete(a[0].id)
    assert await ids(store) == [a[1].id]
    await store.complete(a[1].id, "ignored")
    assert await ids(store) == [a[2].id]


async def test_claim_serves_resources_in_parallel_oldest_first(store):
    a1 = await store.add_event(ev("r:A"))
    b1 = await store.add_event(ev("r:B"))
    await store.add_event(ev("r:A"))
    c1 = await store.add_event(ev("r:C"))
    assert await ids(store) == [a1.id, b1.id, c1.id]


async def test_claim_respects_limit(store):
    added = [await store.add_event(ev(f"r:{i}")) for i in range(5)]
    assert await ids(store, limit=2) == [added[0].id, added[1].id]
    assert await ids(store, limit=10) == [e.id for e in added[2:]]
    assert await store.claim("w1", 0, 30) == []


async def test_earlier_event_waiting_for_retry_blocks_later_ones(store, clock):
    first = await store.add_event(ev("r:A"))
    second = await store.add_event(ev("r:A"))
    other = await store.add_event(ev("r:B"))
    assert await ids(store, limit=1) == [first.id]
    await store.fail(first.id, "RuntimeError: boom", clock.now + timedelta(seconds=10))
    # The first is not due yet and the second must not overtake it.
    assert await ids(store) == [other.id]
    clock.advance(9)
    assert await ids(store) == []
    clock.advance(1)
    [again] = await store.claim("w1", 10, 30)
    assert again.id == first.id and again.attempts == 2
    assert again.next_attempt_at is None
    await store.complete(first.id)
    assert await ids(store) == [second.id]


@pytest.mark.parametrize("outcome", ["dead", "done", "ignored"])
async def test_finished_earlier_event_does_not_block(store, outcome):
    first = await store.add_event(ev("r:A"))
    second = await store.add_event(ev("r:A"))
    await store.claim("w1", 1, 30)
    if outcome == "dead":
        await store.fail(first.id, "boom", None)
    else:
        await store.complete(first.id, outcome)
    assert await ids(store) == [second.id]


async def test_replayed_older_event_waits_for_the_one_in_flight(store):
    first = await store.add_event(ev("r:A"))
    second = await store.add_event(ev("r:A"))
    await store.claim("w1", 1, 30)
    await store.fail(first.id, "boom", None)
    assert await ids(store) == [second.id]
    assert await store.replay(first.id)
    # Never two events of one resource claimed at once...
    assert await ids(store) == []
    await store.complete(second.id)
    # ...and the replayed one runs once the resource is free.
    assert await ids(store) == [first.id]


async def test_expired_lease_is_claimed_again(store, clock):
    first = await store.add_event(ev("r:A"))
    await store.add_event(ev("r:A"))
    assert await ids(store, owner="dead-worker", lease=30) == [first.id]
    clock.advance(29)
    assert await ids(store, owner="w2") == []
    clock.advance(1)
    [taken] = await store.claim("w2", 10, 30)
    # Only the expired one: its successor still waits behind it.
    assert taken.id == first.id
    assert taken.owner == "w2" and taken.attempts == 2
    assert taken.lease_expires_at == clock.now + timedelta(seconds=30)


async def test_release_claims_of_one_owner_or_all(store):
    a = await store.add_event(ev("r:A"))
    b = await store.add_event(ev("r:B"))
    c = await store.add_event(ev("r:C"))
    await store.claim("w1", 1, 30)
    await store.claim("w2", 2, 30)
    assert await store.release_claims("w1") == 1
    released = await store.get_event(a.id)
    assert released.status == "pending" and released.owner is None and released.lease_expires_at is None
    # An interrupted attempt still counts.
    assert released.attempts == 1
    assert (await store.get_event(b.id)).owner == "w2"
    assert await store.release_claims() == 2
    assert (await store.get_event(c.id)).status == "pending"
    assert await store.release_claims() == 0
    assert await ids(store) == [a.id, b.id, c.id]


async def test_fail_with_retry_at_and_dead(store, clock):
    e = await store.add_event(ev())
    await store.claim("w1", 1, 30)
    retry_at = clock.now + timedelta(seconds=4)
    await store.fail(e.id, "ConnectionError: refused", retry_at)
    got = await store.get_event(e.id)
    assert (got.status, got.next_attempt_at, got.last_error, got.owner) == (
        "pending",
        retry_at,
        "ConnectionError: refused",
        None,
    )
    clock.advance(4)
    await store.claim("w1", 1, 30)
    await store.fail(e.id, "ConnectionError: refused again", None)
    got = await store.get_event(e.id)
    assert (got.status, got.attempts, got.last_error, got.next_attempt_at) == (
        "dead",
        2,
        "ConnectionError: refused again",
        None,
    )
    assert await store.claim("w1", 1, 30) == []


async def test_complete_and_fail_leave_unclaimed_events_alone(store):
    e = await store.add_event(ev())
    await store.complete(e.id)
    await store.fail(e.id, "late", None)
    assert (await store.get_event(e.id)).status == "pending"
    await store.complete(123456)  # no such event: nothing to do


async def test_complete_rejects_other_statuses(store):
    e = await store.add_event(ev())
    await store.claim("w1", 1, 30)
    with pytest.raises(ValueError, match="done"):
        await store.complete(e.id, "dead")


async def test_naive_datetimes_are_refused(store):
    e = await store.add_event(ev())
    await store.claim("w1", 1, 30)
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.fail(e.id, "x", datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.purge_done(datetime(2026, 1, 1))


async def test_replay_one(store):
    e = await store.add_event(ev())
    assert not await store.replay(e.id)  # pending: nothing to replay
    await store.claim("w1", 1, 30)
    assert not await store.replay(e.id)  # claimed: in flight
    await store.fail(e.id, "boom", None)
    assert await store.replay(e.id)
    got = await store.get_event(e.id)
    assert (got.status, got.attempts, got.next_attempt_at) == ("pending", 0, None)
    assert not await store.replay(999_999)
    await store.claim("w1", 1, 30)
    await store.complete(e.id, "ignored")
    assert await store.replay(e.id)


async def test_replay_dead_and_purge_dead(store):
    dead = []
    for i in range(3):
        e = await store.add_event(ev(f"r:{i}"))
        dead.append(e)
    done = await store.add_event(ev("r:done"))
    await store.claim("w1", 10, 30)
    for e in dead:
        await store.fail(e.id, "boom", None)
    await store.complete(done.id)
    assert await store.replay_dead() == 3
    assert {(await store.get_event(e.id)).status for e in dead} == {"pending"}
    assert await store.replay_dead() == 0
    await store.claim("w1", 10, 30)
    for e in dead[:2]:
        await store.fail(e.id, "boom", None)
    assert await store.purge_dead() == 2
    assert await store.get_event(dead[0].id) is None
    assert (await store.get_event(done.id)).status == "done"
    assert await store.purge_dead() == 0


async def test_counts_has_every_status(store):
    assert await store.counts() == {"pending": 0, "claimed": 0, "done": 0, "dead": 0, "ignored": 0}
    for i in range(5):
        await store.add_event(ev(f"r:{i}"))
    a, b, c, _d = (e.id for e in await store.claim("w1", 4, 30))
    await store.complete(a)
    await store.complete(b, "ignored")
    await store.fail(c, "boom", None)
    assert await store.counts() == {"pending": 1, "claimed": 1, "done": 1, "dead": 1, "ignored": 1}


async def test_list_events_newest_first_with_filters(store):
    p1 = await store.add_event(ev("r:1", source="pagerduty"))
    s1 = await store.add_event(ev("r:2", source="servicenow"))
    p2 = await store.add_event(ev("r:3", source="pagerduty"))
    assert [e.id for e in await store.list_events()] == [p2.id, s1.id, p1.id]
    assert [e.id for e in await store.list_events(limit=2)] == [p2.id, s1.id]
    assert [e.id for e in await store.list_events(source="pagerduty")] == [p2.id, p1.id]
    await store.claim("w1", 1, 30)
    await store.fail(p1.id, "boom", None)
    assert [e.id for e in await store.list_events(status="dead")] == [p1.id]
    assert await store.list_events(status="done") == []
    with pytest.raises(ValueError, match="unknown event status"):
        await store.list_events(status="bogus")


async def test_purge_done_deletes_only_old_handled_events(store, clock):
    events = {name: await store.add_event(ev(f"r:{name}")) for name in ("done", "ignored", "dead", "pending")}
    await store.claim("w1", 3, 30)
    await store.complete(events["done"].id)
    await store.complete(events["ignored"].id, "ignored")
    await store.fail(events["dead"].id, "boom", None)
    clock.advance(86400 * 15)
    recent = await store.add_event(ev("r:recent"))
    await store.claim("w1", 10, 30)
    await store.complete(recent.id)
    assert await store.purge_done(clock.now - timedelta(days=14)) == 2
    assert await store.get_event(events["done"].id) is None
    assert await store.get_event(events["ignored"].id) is None
    assert (await store.get_event(events["dead"].id)).status == "dead"
    assert await store.get_event(events["pending"].id) is not None
    assert await store.get_event(recent.id) is not None


async def test_ids_are_not_reused_after_a_purge(store):
    e = await store.add_event(ev())
    await store.claim("w1", 1, 30)
    await store.fail(e.id, "boom", None)
    await store.purge_dead()
    assert (await store.add_event(ev())).id > e.id


async def test_concurrent_callers_on_one_store(store):
    added = await asyncio.gather(*(store.add_event(ev(f"r:{i % 7}")) for i in range(60)))
    assert len({e.id for e in added}) == 60
    batches = await asyncio.gather(*(store.claim(f"w{i}", 5, 30) for i in range(6)))
    claimed = [e for batch in batches for e in batch]
    assert len(claimed) == 7  # one per resource, each claimed once
    assert len({e.resource for e in claimed}) == 7


async def test_cancelled_caller_leaves_the_store_usable(store):
    for yields in range(6):
        task = asyncio.create_task(store.add_event(ev("r:cancel")))
        for _ in range(yields):
            await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert await store.add_event(ev("r:after")) is not None
    assert await store.ping()


# -- durability ------------------------------------------------------------------


async def test_events_survive_a_restart_and_claims_are_released(store_factory):
    first = store_factory()
    await first.open()
    a = await first.add_event(ev("r:A", payload={"keep": "me"}))
    b = await first.add_event(ev("r:B"))
    await first.claim("old-process", 1, 300)
    await first.close()  # the process "died": a is claimed and never completed

    second = store_factory()
    await second.open()
    try:
        assert (await second.get_event(a.id)).owner == "old-process"
        # The single-instance start-up releases every claim...
        assert await second.release_claims() == 1
        # ...so the interrupted event runs again, with its attempt counted.
        again, other = await second.claim("new-process", 10, 300)
        assert (again.id, other.id) == (a.id, b.id)
        assert again.attempts == 2 and again.payload == {"keep": "me"}
    finally:
        await second.close()


# -- links -----------------------------------------------------------------------


async def test_put_and_get_link_by_either_id(store, clock):
    put = await store.put_link(Link("incident", "PD1", "SN1", state={"status": "triggered"}))
    assert put.created_at == clock.now and put.updated_at == clock.now
    by_pd = await store.get_link("incident", pd_id="PD1")
    by_sn = await store.get_link("incident", sn_id="SN1")
    assert by_pd == by_sn == put
    assert by_pd.state == {"status": "triggered"} and by_pd.status == "linked"
    assert await store.get_link("user", pd_id="PD1") is None
    assert await store.get_link("incident", pd_id="PD2") is None


async def test_get_link_needs_exactly_one_id(store):
    with pytest.raises(ValueError):
        await store.get_link("incident")
    with pytest.raises(ValueError):
        await store.get_link("incident", pd_id="a", sn_id="b")


async def test_put_link_replaces_and_keeps_created_at(store, clock):
    first = await store.put_link(Link("incident", "PD1", "SN1"))
    clock.advance(60)
    second = await store.put_link(Link("incident", "PD1", "SN2", state={"v": 2}))
    assert second.created_at == first.created_at and second.updated_at == clock.now
    assert second.sn_id == "SN2"
    assert await store.get_link("incident", sn_id="SN1") is None
    assert len(await store.list_links("incident")) == 1


async def test_sn_id_is_unique_among_linked_links(store):
    await store.put_link(Link("incident", "PD1", "SN1"))
    with pytest.raises(LinkConflictError, match="PD1"):
        await store.put_link(Link("incident", "PD2", "SN1"))
    # The same pair in another kind is fine.
    await store.put_link(Link("user", "PD2", "SN1"))
    # Unlink the first, and SN1 may be linked again; the old one stays as history.
    await store.update_link_state("incident", "PD1", {}, status="unlinked")
    await store.put_link(Link("incident", "PD2", "SN1"))
    assert (await store.get_link("incident", sn_id="SN1")).pd_id == "PD2"
    # Relinking the old one now conflicts.
    with pytest.raises(LinkConflictError):
        await store.update_link_state("incident", "PD1", {}, status="linked")


async def test_unlinked_links_are_found_only_when_asked(store):
    await store.put_link(Link("incident", "PD1", "SN1", status="unlinked"))
    assert await store.get_link("incident", pd_id="PD1") is None
    assert await store.get_link("incident", sn_id="SN1") is None
    assert (await store.get_link("incident", pd_id="PD1", include_unlinked=True)).status == "unlinked"
    assert (await store.get_link("incident", sn_id="SN1", include_unlinked=True)).pd_id == "PD1"
    assert await store.list_links() == []
    assert len(await store.list_links(include_unlinked=True)) == 1
    # The live link wins over history with the same sn_id.
    await store.put_link(Link("incident", "PD2", "SN1"))
    assert (await store.get_link("incident", sn_id="SN1", include_unlinked=True)).pd_id == "PD2"


async def test_update_link_state(store, clock):
    await store.put_link(Link("incident", "PD1", "SN1", state={"a": 1}))
    clock.advance(5)
    await store.update_link_state("incident", "PD1", {"b": [2, 3]})
    got = await store.get_link("incident", pd_id="PD1")
    assert got.state == {"b": [2, 3]} and got.status == "linked" and got.updated_at == clock.now
    await store.update_link_state("incident", "PD1", {"c": 1}, status="unlinked")
    assert (await store.get_link("incident", pd_id="PD1", include_unlinked=True)).status == "unlinked"
    with pytest.raises(LookupError):
        await store.update_link_state("incident", "missing", {})
    with pytest.raises(ValueError):
        await store.update_link_state("incident", "PD1", {}, status="broken")


async def test_list_and_delete_links(store):
    await store.put_link(Link("incident", "PD1", "SN1"))
    await store.put_link(Link("user", "PU1", "SU1"))
    await store.put_link(Link("incident", "PD2", "SN2"))
    assert [link.pd_id for link in await store.list_links()] == ["PD1", "PU1", "PD2"]
    assert [link.pd_id for link in await store.list_links("incident")] == ["PD1", "PD2"]
    assert await store.delete_link("incident", "PD1")
    assert not await store.delete_link("incident", "PD1")
    assert await store.get_link("incident", sn_id="SN1") is None


async def test_links_survive_a_restart(store_factory):
    async with store_factory() as s:
        await s.put_link(Link("group_service", "PSVC", "grp-1", state={"name": "DB"}))
    async with store_factory() as s:
        assert (await s.get_link("group_service", sn_id="grp-1")).state == {"name": "DB"}


# -- watermarks ------------------------------------------------------------------


async def test_watermarks(store_factory):
    async with store_factory() as s:
        assert await s.get_watermark("pd.incidents") is None
        await s.set_watermark("pd.incidents", "2026-01-01T00:00:00Z")
        await s.set_watermark("pd.incidents", "2026-01-02T00:00:00Z")
        await s.set_watermark("sn.incident", "x")
        assert await s.get_watermark("pd.incidents") == "2026-01-02T00:00:00Z"
    async with store_factory() as s:
        assert await s.get_watermark("sn.incident") == "x"


async def test_one_leader_at_a_time_until_it_resigns(store_factory):
    a, b = store_factory(), store_factory()
    async with a, b:
        assert await a.leader("scheduler") is None
        assert await a.take_leadership("scheduler", "host-a", 30)
        assert not await b.take_leadership("scheduler", "host-b", 30)
        assert await a.take_leadership("scheduler", "host-a", 30)  # a renewal
        assert await b.leader("scheduler") == "host-a"
        await b.resign_leadership("scheduler", "host-b")  # not b's to give up
        assert await b.leader("scheduler") == "host-a"
        await a.resign_leadership("scheduler", "host-a")
        assert await b.take_leadership("scheduler", "host-b", 30)
        assert await a.leader("scheduler") == "host-b"


async def test_renew_extends_only_the_owners_claims(store, clock):
    first = await store.add_event(ev("r:1"))
    await store.add_event(ev("r:2"))
    mine = [e.id for e in await store.claim("w1", 1, 30)]
    assert mine == [first.id]
    theirs = [e.id for e in await store.claim("w2", 1, 30)]
    clock.advance(25)
    assert await store.renew([*mine, *theirs], "w1", 30) == mine
    clock.advance(10)  # w2's lease ran out, w1's was renewed
    assert await ids(store, "w3") == theirs
