"""The worker: ordering per resource, concurrency across, retries, dead letters, stop."""

from __future__ import annotations

import asyncio
import itertools
from collections import defaultdict
from datetime import timedelta

import pytest
import structlog
from structlog.testing import capture_logs

from dutybridge import hookimpl
from dutybridge.app import purge_old_events
from dutybridge.context import Ctx
from dutybridge.events import Event
from dutybridge.plugins import make_test_pm
from dutybridge.store.sqlite import SQLiteStore
from dutybridge.worker import Worker, describe_error
from tests.support.clocks import FakeClock

_ids = itertools.count(1)


class FixedRng:
    """``uniform(a, b)`` at a fixed fraction of the way from a to b."""

    def __init__(self, fraction: float) -> None:
        self.fraction = fraction

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.fraction


class Metrics:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def event_processed(self, source, type):
        self.calls.append(("processed", source, type))

    def event_failed(self, source, type):
        self.calls.append(("failed", source, type))

    def event_dead(self, source, type):
        self.calls.append(("dead", source, type))

    def handle_seconds(self, source, type, seconds):
        assert seconds >= 0
        self.calls.append(("seconds", source, type))


class FakeConfig:
    def secrets(self) -> list[str]:
        return ["s3cr3t-token"]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def store(clock):
    s = SQLiteStore(":memory:", clock=clock)
    await s.open()
    yield s
    await s.close()


@pytest.fixture
async def make_worker(store, clock):
    """Builds workers on the test's store and clock; stops them all, even when the test fails."""
    workers: list[Worker] = []

    def make(*plugins, **kw) -> Worker:
        pm = make_test_pm(*plugins)
        options = dict(
            concurrency=4,
            max_attempts=3,
            retry_base=2.0,
            retry_max=60.0,
            lease_seconds=30.0,
            owner=f"test-worker-{len(workers)}",
            rng=FixedRng(1.0),
            clock=clock,
            poll_interval=0.05,
        )
        options.update(kw)
        ctx = options.pop("ctx", None) or Ctx(config=FakeConfig(), pm=pm, store=store)
        worker = Worker(store, pm, ctx, **options)
        workers.append(worker)
        return worker

    yield make
    for worker in workers:
        await worker.stop(timeout=1)


def ev(resource: str = "r:A", type: str = "incident.triggered", **payload) -> Event:
    return Event(source="pagerduty", type=type, event_id=f"e{next(_ids)}", resource=resource, payload=payload)


async def until(predicate, timeout: float = 5.0) -> None:
    """Wait for an async predicate; fail after ``timeout`` (a safety net, never a measure)."""
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.005)


def status_is(store, id, status):
    async def check():
        return (await store.get_event(id)).status == status

    return check


def waiting_after(store, id, attempts):
    """The event failed its ``attempts``-th attempt and waits for a retry."""

    async def check():
        got = await store.get_event(id)
        return got.status == "pending" and got.attempts == attempts and got.last_error is not None

    return check


def counts_are(store, **expected):
    async def check():
        counts = await store.counts()
        return all(counts[k] == v for k, v in expected.items())

    return check


class Recorder:
    """Records the order events arrive in and how many of one resource run at once."""

    def __init__(self, result=True) -> None:
        self.seen: dict[str, list[int]] = defaultdict(list)
        self.active: dict[str, int] = defaultdict(int)
        self.max_active_per_resource = 0
        self.result = result

    @hookimpl
    async def handle_event(self, event, ctx):
        self.active[event.resource] += 1
        self.max_active_per_resource = max(self.max_active_per_resource, self.active[event.resource])
        try:
            for _ in range(3):
                await asyncio.sleep(0)  # let others interleave if the worker allowed it
            self.seen[event.resource].append(event.payload.get("n"))
            return self.result
        finally:
            self.active[event.resource] -= 1


# -- dispatch --------------------------------------------------------------------


async def test_events_of_one_resource_arrive_in_order(store, make_worker):
    plugin = Recorder()
    for n in range(6):
        for resource in ("r:A", "r:B", "r:C"):
            await store.add_event(ev(resource, n=n))
    await make_worker(plugin).start()
    await until(counts_are(store, done=18))
    assert dict(plugin.seen) == {r: list(range(6)) for r in ("r:A", "r:B", "r:C")}
    assert plugin.max_active_per_resource == 1


async def test_resources_are_handled_concurrently(store, make_worker):
    barrier = asyncio.Barrier(3)

    class Meet:
        @hookimpl
        async def handle_event(self, event, ctx):
            # Completes only when three handlers wait here at the same time.
            async with asyncio.timeout(5):
                await barrier.wait()
            return True

    ids = [(await store.add_event(ev(f"r:{i}"))).id for i in range(3)]
    await make_worker(Meet(), concurrency=3).start()
    await until(counts_are(store, done=3))
    assert [(await store.get_event(i)).attempts for i in ids] == [1, 1, 1]


async def test_concurrency_is_capped_and_one_resource_waits(store, make_worker):
    gate = asyncio.Event()
    running: list[str] = []

    class Gated:
        @hookimpl
        async def handle_event(self, event, ctx):
            running.append(event.resource)
            if event.payload.get("block"):
                await gate.wait()
            return True

    a1 = await store.add_event(ev("r:A", block=True))
    a2 = await store.add_event(ev("r:A"))
    b1 = await store.add_event(ev("r:B", block=True))
    c1 = await store.add_event(ev("r:C", block=True))
    worker = make_worker(Gated(), concurrency=2)
    await worker.start()
    await until(lambda: _true(len(running) == 2))
    assert (await store.get_event(c1.id)).status == "pending"  # no free slot
    assert (await store.get_event(a2.id)).status == "pending"  # behind a1
    gate.set()
    await until(counts_are(store, done=4))
    assert running.index("r:C") > 1
    assert [r for r in running if r == "r:A"] == ["r:A", "r:A"]
    assert (await store.get_event(b1.id)).attempts == 1


async def _true(value: bool) -> bool:
    return value


async def test_a_busy_resource_does_not_hold_up_others(store, make_worker):
    gate = asyncio.Event()

    class Gated:
        @hookimpl
        async def handle_event(self, event, ctx):
            if event.resource == "r:A" and event.payload.get("first"):
                await gate.wait()
            return True

    a1 = await store.add_event(ev("r:A", first=True))
    a2 = await store.add_event(ev("r:A"))
    worker = make_worker(Gated())
    await worker.start()
    await until(status_is(store, a1.id, "claimed"))
    b1 = await store.add_event(ev("r:B"))
    worker.wake()
    await until(status_is(store, b1.id, "done"))
    # The worker has claimed since a2 was stored, and left it behind a1.
    assert (await store.get_event(a2.id)).status == "pending"
    gate.set()
    await until(status_is(store, a2.id, "done"))


async def test_wake_dispatches_at_once(store, make_worker):
    worker = make_worker(Recorder(), poll_interval=3600)
    await worker.start()
    stored = await store.add_event(ev(n=1))
    worker.wake()
    await until(status_is(store, stored.id, "done"))


async def test_log_context_is_bound_while_handling(store, make_worker):
    seen = {}

    class Peek:
        @hookimpl
        def handle_event(self, event, ctx):  # a sync implementation works too
            seen.update(structlog.contextvars.get_contextvars())
            return True

    stored = await store.add_event(ev("pagerduty:incident:P1", type="incident.acknowledged"))
    await make_worker(Peek()).start()
    await until(status_is(store, stored.id, "done"))
    assert seen == {
        "event_id": stored.event_id,
        "inbox_id": stored.id,
        "source": "pagerduty",
        "type": "incident.acknowledged",
        "resource": "pagerduty:incident:P1",
    }
    assert "event_id" not in structlog.contextvars.get_contextvars()


async def test_ignored_when_no_plugin_acts(store, make_worker):
    metrics = Metrics()

    class Shrug:
        @hookimpl
        async def handle_event(self, event, ctx):
            return None

    first = await store.add_event(ev("r:A"))
    second = await store.add_event(ev("r:B"))
    with capture_logs() as logs:
        await make_worker(Shrug(), Recorder(result=False), metrics=metrics).start()
        await until(counts_are(store, ignored=2))
    assert (await store.get_event(first.id)).status == "ignored"
    assert (await store.get_event(second.id)).status == "ignored"
    assert ("processed", "pagerduty", "incident.triggered") in metrics.calls
    assert [e["event"] for e in logs if e["event"].startswith("event_")] == ["event_ignored"] * 2


async def test_ignored_without_any_plugin(store, make_worker):
    stored = await store.add_event(ev())
    await make_worker().start()
    await until(status_is(store, stored.id, "ignored"))


async def test_done_when_any_plugin_acts(store, make_worker):
    metrics = Metrics()
    stored = await store.add_event(ev(n=1))
    with capture_logs() as logs:
        await make_worker(Recorder(result=None), Recorder(result={"synced": 1}), metrics=metrics).start()
        await until(status_is(store, stored.id, "done"))
    assert sorted(metrics.calls) == [
        ("processed", "pagerduty", "incident.triggered"),
        ("seconds", "pagerduty", "incident.triggered"),
    ]
    [done] = [e for e in logs if e["event"] == "event_done"]
    assert done["log_level"] == "info"


# -- failures --------------------------------------------------------------------


class Flaky:
    """Fails the first ``failures`` attempts at each event of resource r:A."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: dict[int, int] = defaultdict(int)

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    @hookimpl
    async def handle_event(self, event, ctx):
        self.calls[event.id] += 1
        if event.resource == "r:A" and self.calls[event.id] <= self.failures:
            raise ConnectionError(f"refused by https://admin:s3cr3t-token@sn.example/api (call {self.calls[event.id]})")
        return True


async def test_failure_is_retried_with_backoff(store, make_worker, clock):
    plugin = Flaky(failures=2)
    stored = await store.add_event(ev())
    worker = make_worker(plugin, max_attempts=5)
    with capture_logs() as logs:
        await worker.start()
        await until(waiting_after(store, stored.id, 1))
        got = await store.get_event(stored.id)
        assert got.next_attempt_at == clock.now + timedelta(seconds=2)
        assert got.last_error.startswith("ConnectionError: refused by https://***@sn.example/api")
        assert "s3cr3t" not in got.last_error

        clock.advance(1.9)
        other = await store.add_event(ev("r:other"))
        worker.wake()
        await until(status_is(store, other.id, "done"))
        assert plugin.calls[stored.id] == 1  # not due yet

        clock.advance(0.1)
        worker.wake()
        await until(waiting_after(store, stored.id, 2))
        assert (await store.get_event(stored.id)).next_attempt_at == clock.now + timedelta(seconds=4)

        clock.advance(4)
        worker.wake()
        await until(status_is(store, stored.id, "done"))
    got = await store.get_event(stored.id)
    assert got.attempts == 3
    retries = [e for e in logs if e["event"] == "event_retry"]
    assert [(e["log_level"], e["attempt"], e["retry_in"]) for e in retries] == [
        ("warning", 1, 2.0),
        ("warning", 2, 4.0),
    ]
    assert all("s3cr3t" not in e["error"] for e in retries)


async def test_dead_after_max_attempts(store, make_worker, clock):
    metrics = Metrics()
    plugin = Flaky(failures=100)
    stored = await store.add_event(ev())
    later = await store.add_event(ev())
    worker = make_worker(plugin, max_attempts=2, metrics=metrics)
    with capture_logs() as logs:
        await worker.start()
        await until(waiting_after(store, stored.id, 1))
        clock.advance(2)
        worker.wake()
        await until(status_is(store, stored.id, "dead"))
        # A dead letter no longer holds its resource: the next event runs.
        await until(waiting_after(store, later.id, 1))
    got = await store.get_event(stored.id)
    assert got.attempts == 2 and got.next_attempt_at is None
    assert "call 2" in got.last_error and "s3cr3t" not in got.last_error
    assert metrics.calls.count(("failed", "pagerduty", "incident.triggered")) == 3
    assert metrics.calls.count(("dead", "pagerduty", "incident.triggered")) == 1
    [dead] = [e for e in logs if e["event"] == "event_dead"]
    assert (dead["log_level"], dead["attempt"]) == ("error", 2)
    assert f"events replay {stored.id}" in dead["hint"]


def test_backoff_doubles_up_to_the_cap_with_equal_jitter(store):
    def worker(fraction, rng=None):
        return Worker(
            store,
            make_test_pm(),
            None,
            concurrency=1,
            max_attempts=10,
            retry_base=2,
            retry_max=10,
            lease_seconds=30,
            rng=rng or FixedRng(fraction),
        )

    assert [worker(1.0).backoff(n) for n in range(1, 6)] == [2, 4, 8, 10, 10]
    assert [worker(0.0).backoff(n) for n in range(1, 6)] == [1, 2, 4, 5, 5]
    import random

    real = worker(0, rng=random.Random(7))
    for n in range(1, 8):
        ceiling = min(10, 2 * 2 ** (n - 1))
        assert ceiling / 2 <= real.backoff(n) <= ceiling


async def test_a_handler_running_past_its_lease_is_a_failed_attempt(store, make_worker):
    class Hang:
        @hookimpl
        async def handle_event(self, event, ctx):
            await asyncio.Event().wait()

    stored = await store.add_event(ev())
    await make_worker(Hang(), lease_seconds=0.05).start()
    await until(waiting_after(store, stored.id, 1))
    got = await store.get_event(stored.id)
    assert got.last_error == "handler still running after lease_seconds=0.05" and got.attempts == 1


async def test_an_event_that_never_gets_a_result_ends_dead(store, make_worker):
    # Each claim counts an attempt; a process that dies every time never records one.
    stored = await store.add_event(ev())
    for _ in range(3):
        await store.claim("dying-process", 1, 30)
        await store.release_claims()
    plugin = Recorder()
    await make_worker(plugin, max_attempts=3).start()
    await until(status_is(store, stored.id, "dead"))
    assert "without a result" in (await store.get_event(stored.id)).last_error
    assert plugin.seen == {}


async def test_store_errors_do_not_stop_the_worker(store, make_worker):
    calls = 0
    real = store.complete_and_claim

    async def complete_and_claim(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("disk I/O error")
        return await real(*args, **kwargs)

    store.complete_and_claim = complete_and_claim
    stored = await store.add_event(ev(n=1))
    with capture_logs() as logs:
        await make_worker(Recorder()).start()
        await until(status_is(store, stored.id, "done"))
    assert any(e["event"] == "worker_claim_failed" for e in logs)


async def test_results_that_failed_to_be_recorded_are_recorded_later_and_nothing_runs_twice(store, make_worker):
    plugin = Recorder()
    real = store.complete_and_claim
    failures = 0

    async def complete_and_claim(completions, *args, **kwargs):
        nonlocal failures
        if completions and failures < 2:
            failures += 1
            raise OSError("disk I/O error")
        return await real(completions, *args, **kwargs)

    store.complete_and_claim = complete_and_claim
    for n in range(4):
        await store.add_event(ev("r:A", n=n))
        await store.add_event(ev("r:B", n=n))
    await make_worker(plugin).start()
    await until(counts_are(store, done=8))
    assert failures == 2
    assert dict(plugin.seen) == {"r:A": [0, 1, 2, 3], "r:B": [0, 1, 2, 3]}


async def test_a_backlog_is_recorded_in_batches_and_stop_loses_no_result(store, make_worker):
    plugin = Recorder()
    calls: list[int] = []
    real = store.complete_and_claim

    async def complete_and_claim(completions, *args, **kwargs):
        calls.append(len(completions))
        return await real(completions, *args, **kwargs)

    store.complete_and_claim = complete_and_claim
    for n in range(40):
        await store.add_event(ev(f"r:{n}", n=n))
    worker = make_worker(plugin, concurrency=8)
    await worker.start()
    await until(lambda: _true(sum(len(v) for v in plugin.seen.values()) >= 20))
    await worker.stop(timeout=5)
    handled = sum(len(v) for v in plugin.seen.values())
    # Every handled event is recorded, even those handled as the worker stopped; the
    # others are pending again, and none was handled twice.
    assert await store.counts() == {"pending": 40 - handled, "claimed": 0, "done": handled, "dead": 0, "ignored": 0}
    assert all(len(v) == 1 for v in plugin.seen.values())
    # Several results per transaction: fewer store calls than events.
    assert max(calls) > 1 and len(calls) < handled

    again = Recorder()
    await make_worker(again).start()
    await until(counts_are(store, done=40))
    assert not set(again.seen) & set(plugin.seen)


def test_describe_error_masks_secrets_and_credentials():
    exc = RuntimeError("token s3cr3t-token-long at https://user:pw@host/x and s3cr3t-token\n" + "x" * 5000)
    text = describe_error(exc, ["s3cr3t-token", "s3cr3t-token-long", ""])
    assert text.startswith("RuntimeError: token ********** at https://***@host/x and **********")
    assert "s3cr3t" not in text and "pw" not in text
    assert len(text) <= 2000 and text.endswith("...")
    assert describe_error(TimeoutError()) == "TimeoutError"


# -- start and stop --------------------------------------------------------------


async def test_start_takes_back_claims_of_a_dead_process(store, make_worker):
    stored = await store.add_event(ev(n=1))
    await store.claim("previous-process", 1, 300)
    await make_worker(Recorder()).start()
    await until(status_is(store, stored.id, "done"))


async def test_start_leaves_claims_alone_on_a_shared_store(store, make_worker):
    stored = await store.add_event(ev(n=1))
    await store.claim("other-instance", 1, 300)
    store.shared = True
    worker = make_worker(Recorder())
    await worker.start()
    other = await store.add_event(ev("r:B", n=2))
    worker.wake()
    await until(status_is(store, other.id, "done"))
    assert (await store.get_event(stored.id)).owner == "other-instance"


async def test_stop_waits_for_in_flight_handlers(store, make_worker):
    gate = asyncio.Event()
    entered = asyncio.Event()

    class Slow:
        @hookimpl
        async def handle_event(self, event, ctx):
            entered.set()
            await gate.wait()
            return True

    stored = await store.add_event(ev())
    worker = make_worker(Slow())
    await worker.start()
    await entered.wait()
    stopping = asyncio.create_task(worker.stop(timeout=5))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not stopping.done()
    late = await store.add_event(ev("r:late"))
    worker.wake()
    gate.set()
    await stopping
    assert (await store.get_event(stored.id)).status == "done"
    assert (await store.get_event(late.id)).status == "pending"  # not claimed while stopping
    assert not worker.running


async def test_stop_timeout_cancels_and_the_event_runs_after_restart(store, make_worker):
    cancelled = asyncio.Event()
    entered = asyncio.Event()

    class Stuck:
        @hookimpl
        async def handle_event(self, event, ctx):
            entered.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise

    stored = await store.add_event(ev(n=1))
    worker = make_worker(Stuck())
    await worker.start()
    await entered.wait()
    with capture_logs() as logs:
        await worker.stop(timeout=0.05)
    assert cancelled.is_set()
    got = await store.get_event(stored.id)
    assert (got.status, got.owner, got.last_error) == ("pending", None, None)
    assert any(e["event"] == "worker_stop_timeout" for e in logs)

    plugin = Recorder()
    await make_worker(plugin).start()  # the restarted daemon
    await until(status_is(store, stored.id, "done"))
    assert plugin.seen == {"r:A": [1]}
    assert (await store.get_event(stored.id)).attempts == 2


async def test_stop_before_start_and_twice(store, make_worker):
    worker = make_worker(Recorder())
    await worker.stop(timeout=1)
    await worker.start()
    with pytest.raises(RuntimeError):
        await worker.start()
    await worker.stop(timeout=1)
    await worker.stop(timeout=1)


# -- housekeeping ----------------------------------------------------------------


async def test_purge_old(store, make_worker, clock):
    stored = await store.add_event(ev(n=1))
    worker = make_worker(Recorder())
    await worker.start()
    await until(status_is(store, stored.id, "done"))
    assert await purge_old_events(store, 14, clock) == 0
    clock.advance(86400 * 15)
    assert await purge_old_events(store, 0, clock) == 0  # 0 keeps everything
    assert await purge_old_events(store, 14, clock) == 1
    assert await store.get_event(stored.id) is None


async def fail_times(store, clock, id, times: int, error: str) -> None:
    """What a previous process left: ``times`` attempts, each failed with ``error``."""
    for _ in range(times):
        [claimed] = await store.claim("previous-process", 1, 30)
        assert claimed.id == id
        await store.fail(id, error, clock.now)


async def test_lowering_max_attempts_keeps_the_last_real_error(store, clock, make_worker):
    stored = await store.add_event(ev())
    await fail_times(store, clock, stored.id, 6, "ApiError: PagerDuty answered 503")
    plugin = Recorder()
    await make_worker(plugin, max_attempts=2).start()
    await until(status_is(store, stored.id, "dead"))
    assert not plugin.seen
    error = (await store.get_event(stored.id)).last_error
    assert error == (
        "attempts (6) exceed max_attempts (2) after a configuration change; "
        "last error: ApiError: PagerDuty answered 503"
    )


async def test_an_interrupted_last_attempt_after_failures_names_both_causes(store, clock, make_worker):
    stored = await store.add_event(ev())
    await fail_times(store, clock, stored.id, 2, "ApiError: ServiceNow answered 500")
    await store.claim("previous-process", 1, 30)  # the third attempt: stopped mid-way
    await store.release_claims()
    plugin = Recorder()
    await make_worker(plugin, max_attempts=3).start()
    await until(status_is(store, stored.id, "dead"))
    error = (await store.get_event(stored.id)).last_error
    assert error.startswith("gave up after 3 attempts; the last one recorded no result")
    assert error.endswith("last error: ApiError: ServiceNow answered 500")
    assert not plugin.seen  # the handler does not run a fourth time
