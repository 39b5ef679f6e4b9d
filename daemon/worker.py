"""The worker: claims events from the inbox and hands each to the ``handle_event`` hooks."""

from __future__ import annotations

import asyncio
import functools
import os
import random
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import pluggy
import structlog

from .context import Ctx
from .events import EventStatus, StoredEvent, utcnow
from .hooks import Hooks, hooks_of
from .logging import scrub, secret_forms
from .redact import hide_credentials
from .store.base import Store

log = structlog.get_logger("dutybridge.worker")

MAX_ERROR_CHARS = 2000
CANCEL_GRACE_SECONDS = 5.0


def describe_error(exc: BaseException, secrets: Sequence[str] = ()) -> str:
    """``Type: message``, with known secrets and URL credentials masked, shortened."""
    text = f"{type(exc).__qualname__}: {exc}" if str(exc) else type(exc).__qualname__
    # Longest first, so a secret containing another is masked whole; every form a
    # secret travels in (base64 in a Basic header, URL-encoded), and any credential
    # after Basic/Bearer/Token, known or not (scrub: the logs' own redaction).
    for secret in sorted(secret_forms(s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, "**********")
    text = scrub(text)
    text = hide_credentials(text[: MAX_ERROR_CHARS * 2])
    if len(text) > MAX_ERROR_CHARS:
        text = text[: MAX_ERROR_CHARS - 3] + "..."
    return text


class Worker:
    """Dispatches inbox events to plugins until stopped.

    ``owner`` names this worker in claims (default: host, pid and a random suffix).
    ``metrics`` is any object with some of ``event_processed``, ``event_failed``,
    ``event_dead``, ``handle_seconds`` (each ``(source, type[, seconds])``).
    ``rng`` (``uniform(a, b)``) and ``clock`` (aware ``datetime``) are for tests.

    Events of one resource run one at a time and in order; different resources run
    concurrently, up to ``concurrency``. A failure is retried with exponential backoff
    and jitter; after ``max_attempts`` the event is a dead letter.
    """

    def __init__(
        self,
        store: Store,
        pm: Hooks | pluggy.PluginManager,
        ctx: Ctx,
        *,
        concurrency: int,
        max_attempts: int,
        retry_base: float,
        retry_max: float,
        lease_seconds: float,
        owner: str | None = None,
        metrics: Any = None,
        rng: Any = None,
        clock: Callable[[], datetime] | None = None,
        poll_interval: float = 0.5,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.store = store
        self.hooks = hooks_of(pm)
        self.ctx = ctx
        self.concurrency = concurrency
        self.max_attempts = max_attempts
        self.retry_base = retry_base
        self.retry_max = retry_max
        self.lease_seconds = lease_seconds
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.metrics = metrics
        self.rng = rng or random.Random()
        self.clock = clock or utcnow
        self.poll_interval = poll_interval

        self._wakeup = asyncio.Event()
        self._stopping = False
        self._loop_task: asyncio.Task[None] | None = None
        self._inflight: dict[int, asyncio.Task[None]] = {}  # by event row id
        self._busy: set[str] = set()  # resources with a handler running or a result unrecorded
        self._queued: dict[str, list[StoredEvent]] = {}  # claimed while their resource was busy
        # Results of handled events not yet recorded, by row id: the next claim records
        # them in its transaction, first. Their resources stay busy until then.
        self._results: dict[int, tuple[StoredEvent, EventStatus]] = {}
        self._next_retry: datetime | None = None
        # The running handlers' deadlines, by event row id: a renewed lease moves its
        # handler's deadline with it (shared stores only).
        self._deadlines: dict[int, asyncio.Timeout] = {}
        self._renew_task: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._loop_task is not None and not self._loop_task.done()

    async def start(self) -> None:
        """Start claiming. On a store that only this process uses, first return the
        claims a previous process left behind when it died."""
        if self._loop_task is not None:
            raise RuntimeError("worker already started")
        if not getattr(self.store, "shared", False):
            released = await self.store.release_claims()
            if released:
                log.warning(
                    "worker_released_stale_claims",
                    count=released,
                    reason="claimed when the previous process stopped; they will run again",
                )
        self._stopping = False
        self._loop_task = asyncio.create_task(self._run(), name=f"worker {self.owner}")
        if getattr(self.store, "shared", False):
            self._renew_task = asyncio.create_task(self._renew_leases(), name=f"worker {self.owner} leases")
        log.info("worker_started", owner=self.owner, concurrency=self.concurrency)

    def wake(self) -> None:
        """Look for due events now (the receiver calls this after storing one)."""
        self._wakeup.set()

    async def stop(self, timeout: float, cancel_grace: float = CANCEL_GRACE_SECONDS) -> None:
        """Stop claiming and give in-flight handlers ``timeout`` seconds to finish.

        Handlers still running then are cancelled (and given ``cancel_grace`` seconds to
        end) and their events released: pending again, to run after the restart
        (handlers are idempotent by contract).
        """
        if self._loop_task is None:
            return
        self._stopping = True
        self._wakeup.set()
        loop_task, self._loop_task = self._loop_task, None
        renew_task, self._renew_task = self._renew_task, None
        try:
            await loop_task
        except Exception:  # already logged by _run
            pass
        pending = [t for t in self._inflight.values() if not t.done()]
        if pending:
            log.info("worker_draining", in_flight=len(pending), timeout=timeout)
            _, pending_set = await asyncio.wait(pending, timeout=timeout)
            pending = list(pending_set)
        if pending:
            log.warning(
                "worker_stop_timeout",
                cancelled=len(pending),
                reason="handlers did not finish in time; their events run again after restart",
            )
            for task in pending:
                task.cancel()
            # Bounded: a handler that swallows the cancellation must not hang shutdown.
            _, stuck = await asyncio.wait(pending, timeout=cancel_grace)
            if stuck:
                log.error("worker_handlers_ignore_cancel", count=len(stuck))
        if renew_task is not None:
            # Kept until the handlers are done: a slow one draining keeps its lease.
            renew_task.cancel()
            await asyncio.wait({renew_task})
        # Also covers events claimed but queued behind a busy resource.
        self._queued.clear()
        # Handled events must not be released and run again: record their results first.
        try:
            await self._record_results(limit=0)
        except Exception as exc:
            log.error("event_result_not_recorded", count=len(self._results), error=describe_error(exc), exc_info=exc)
        try:
            released = await self.store.release_claims(self.owner)
        except Exception as exc:
            log.error("worker_release_failed", error=describe_error(exc))
        else:
            if released:
                log.info("worker_released_claims", count=released)
        log.info("worker_stopped", owner=self.owner)

    # -- the loop ----------------------------------------------------------------
    async def _run(self) -> None:
        while not self._stopping:
            self._wakeup.clear()
            try:
                await self._fill()
                wait = self._wait_seconds()
            except Exception as exc:
                log.error("worker_claim_failed", error=describe_error(exc), exc_info=exc)
                wait = self.poll_interval
            if self._stopping:
                break
            # Woken by wake(), by a finishing handler (its resource's next event may
            # now be due, and a slot is free), or at the next poll / known retry time.
            try:
                async with asyncio.timeout(wait):
                    await self._wakeup.wait()
            except TimeoutError:
                pass

    async def _renew_leases(self) -> None:
        """On a shared store, renew the running handlers' leases every third of a lease.

        Another instance takes an event over only once its lease has run out, so a
        handler longer than ``lease_seconds`` keeps its event while this process lives;
        its deadline moves with each renewal, so it still never outlives its lease when
        renewals fail (the store unreachable).
        """
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            ids = list(self._deadlines)
            if not ids:
                continue
            try:
                renewed = await self.store.renew(ids, self.owner, self.lease_seconds)
            except Exception as exc:
                log.warning("worker_lease_renewal_failed", count=len(ids), error=describe_error(exc))
                continue
            until = loop.time() + self.lease_seconds
            for event_id in renewed:
                deadline = self._deadlines.get(event_id)
                if deadline is not None:
                    deadline.reschedule(until)
            lost = set(ids) - set(renewed)
            if lost:
                log.warning(
                    "worker_lease_lost",
                    inbox_ids=sorted(lost),
                    reason="no longer claimed by this worker; its handler runs on until its deadline",
                )

    def _wait_seconds(self) -> float:
        wait = self.poll_interval
        if self._next_retry is not None:
            until = (self._next_retry - self.clock()).total_seconds()
            if until <= 0:
                self._next_retry = None
            else:
                wait = min(wait, until)
        return max(wait, 0.01)

    async def _fill(self) -> None:
        """Record the results waiting, and claim as many events as there are free slots."""
        free = self.concurrency - len(self._inflight)
        if free <= 0 and not self._results:
            return
        events = await self._record_results(limit=max(free, 0))
        for ev in events:
            if self._stopping:
                break  # released by stop()
            if ev.id in self._inflight:
                # Our own handler outlived its lease and we claimed it again: the
                # claim only renewed the lease.
                continue
            if ev.resource in self._busy:
                # The store allows one claimed event per resource; guard anyway.
                self._queued.setdefault(ev.resource, []).append(ev)
                continue
            self._spawn(ev)

    async def _record_results(self, limit: int) -> list[StoredEvent]:
        """One store transaction: the waiting results recorded, then up to ``limit`` claimed.

        On an error the results stay waiting, for the next claim (or stop) to record.
        """
        results = list(self._results.values())
        events = await self.store.complete_and_claim(
            [(ev.id, status) for ev, status in results], self.owner, limit, self.lease_seconds
        )
        for ev, _ in results:
            del self._results[ev.id]
            self._free_resource(ev.resource)
        return events

    def _spawn(self, ev: StoredEvent) -> None:
        self._busy.add(ev.resource)
        task = asyncio.create_task(self._dispatch(ev), name=f"event {ev.id}")
        self._inflight[ev.id] = task
        task.add_done_callback(functools.partial(self._finished, ev))

    def _finished(self, ev: StoredEvent, task: asyncio.Task[None]) -> None:
        exc = None if task.cancelled() else task.exception()
        if exc is not None:
            log.error("worker_dispatch_crashed", inbox_id=ev.id, error=describe_error(exc), exc_info=exc)
        self._inflight.pop(ev.id, None)
        if ev.id not in self._results:
            self._free_resource(ev.resource)
        # A slot is free, and a result may wait to be recorded (its successor to be claimed).
        self._wakeup.set()

    def _free_resource(self, resource: str) -> None:
        self._busy.discard(resource)
        queue = self._queued.get(resource)
        if queue and not self._stopping:
            nxt = queue.pop(0)
            if not queue:
                del self._queued[resource]
            self._spawn(nxt)

    # -- one event ---------------------------------------------------------------
    async def _dispatch(self, ev: StoredEvent) -> None:
        # Tokens rather than bound_contextvars(): the same binding at a third of the cost
        # (as daemon/web.py's middleware does), once per event.
        tokens = structlog.contextvars.bind_contextvars(
            event_id=ev.event_id, inbox_id=ev.id, source=ev.source, type=ev.type, resource=ev.resource
        )
        try:
            await self._handle(ev)
        finally:
            structlog.contextvars.reset_contextvars(**tokens)

    async def _handle(self, ev: StoredEvent) -> None:
        if ev.attempts > self.max_attempts:
            await self._dead(ev, self._over_limit(ev), None)
            return
        started = time.perf_counter()
        # A handler never outlives its lease, so no other instance takes the event
        # over while it still runs here; on a shared store renewals extend both.
        deadline = asyncio.timeout(self.lease_seconds)
        try:
            async with deadline:
                self._deadlines[ev.id] = deadline
                try:
                    results = await self.hooks.handle_event(event=ev, ctx=self.ctx)
                finally:
                    self._deadlines.pop(ev.id, None)
        except Exception as exc:
            note = None
            if deadline.expired():
                note = f"handler still running after lease_seconds={self.lease_seconds:g}"
            await self._failed(ev, exc, started, note=note)
            return
        elapsed = time.perf_counter() - started
        status: EventStatus = "done" if any(results) else "ignored"
        # Recorded by the worker's next claim, with the other results of the moment,
        # before that claim: so before this resource's next event can be claimed.
        self._results[ev.id] = (ev, status)
        self._metric("event_processed", ev.source, ev.type)
        self._metric("handle_seconds", ev.source, ev.type, elapsed)
        if status == "done":
            log.info("event_done", attempt=ev.attempts, seconds=round(elapsed, 3))
        else:
            log.info("event_ignored", attempt=ev.attempts, reason="no plugin acted on it")

    def _over_limit(self, ev: StoredEvent) -> str:
        """Why an event claimed past ``max_attempts`` is dead, keeping its last real error.

        A failure at the last allowed attempt makes the event dead, so the earlier claims
        got this far only by ending without a result (the process stopped or died) or
        under a higher ``max_attempts``. The store keeps the last error, not a count of
        failures, so each claim is made only where the counts prove it.
        """
        tried, limit = ev.attempts - 1, self.max_attempts
        if not ev.last_error:
            # No failure ever recorded: every attempt was interrupted.
            return f"gave up after {tried} attempts without a result (the daemon stopped while handling it)"
        if tried > limit:
            # Attempts beyond the limit went on without this check ending them.
            return (
                f"attempts ({tried}) exceed max_attempts ({limit}) after a configuration "
                f"change; last error: {ev.last_error}"
            )
        return (
            f"gave up after {tried} attempts; the last one recorded no result (the daemon "
            f"stopped while handling it, or max_attempts was lowered to {limit}); "
            f"last error: {ev.last_error}"
        )

    async def _failed(self, ev: StoredEvent, exc: BaseException, started: float, note: str | None = None) -> None:
        elapsed = time.perf_counter() - started
        self._metric("event_failed", ev.source, ev.type)
        self._metric("handle_seconds", ev.source, ev.type, elapsed)
        error = describe_error(exc, self._secrets())
        if note:
            error = f"{note}: {error}" if str(exc) else note
        if ev.attempts >= self.max_attempts:
            await self._dead(ev, error, exc)
            return
        delay = self.backoff(ev.attempts)
        retry_at = self.clock() + timedelta(seconds=delay)
        await self._record(self.store.fail(ev.id, error, retry_at))
        if self._next_retry is None or retry_at < self._next_retry:
            self._next_retry = retry_at
        log.warning(
            "event_retry", attempt=ev.attempts, max_attempts=self.max_attempts, retry_in=round(delay, 3), error=error
        )

    async def _dead(self, ev: StoredEvent, error: str, exc: BaseException | None) -> None:
        await self._record(self.store.fail(ev.id, error, None))
        self._metric("event_dead", ev.source, ev.type)
        log.error(
            "event_dead",
            attempt=ev.attempts,
            max_attempts=self.max_attempts,
            error=error,
            hint=f"dutybridge events show {ev.id}; dutybridge events replay {ev.id}",
            exc_info=exc if exc is not None else False,
        )

    def backoff(self, attempts: int) -> float:
        """Seconds before the next attempt after ``attempts`` failed ones.

        Exponential, capped, with equal jitter: half the delay is kept, so retries
        never bunch near zero, the other half spreads instances apart.
        """
        ceiling = min(self.retry_max, self.retry_base * 2 ** max(attempts - 1, 0))
        return ceiling / 2 + self.rng.uniform(0, ceiling / 2)

    async def _record(self, op: Any) -> None:
        # Failing to record a result leaves the event claimed: it runs again after
        # its lease expires or the restart releases it (handlers are idempotent).
        try:
            await op
        except Exception as exc:
            log.error("event_result_not_recorded", error=describe_error(exc), exc_info=exc)

    def _secrets(self) -> list[str]:
        config = getattr(self.ctx, "config", None)
        secrets = getattr(config, "secrets", None)
        if secrets is None:
            return []
        try:
            return list(secrets())
        except Exception:
            return []

    def _metric(self, name: str, *args: Any) -> None:
        fn = getattr(self.metrics, name, None) if self.metrics is not None else None
        if fn is None:
            return
        try:
            fn(*args)
        except Exception as exc:  # metrics must never stop dispatch
            log.debug("metrics_failed", metric=name, error=describe_error(exc))
