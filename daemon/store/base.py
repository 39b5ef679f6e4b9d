"""The store's contract: inbox, dead letters, links and watermarks.
Every method is a coroutine and each is one transaction.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..events import Event, EventStatus, StoredEvent


@dataclass(frozen=True)
class Link:
    """One object in PagerDuty linked to one object in ServiceNow.

    ``kind`` names the pair (``"incident"``, ``"group_service"``, ``"user"``, ...);
    ``state`` is the last state synced across this link, kept so that an echo of our
    own write can be recognised and dropped; ``status`` is ``"linked"`` or
    ``"unlinked"`` (kept for history, never matched by lookups unless asked).
    """

    kind: str
    pd_id: str
    sn_id: str
    state: dict[str, Any] = field(default_factory=dict)
    status: str = "linked"
    created_at: datetime | None = None
    updated_at: datetime | None = None


class LinkConflictError(ValueError):
    """``put_link`` would link a ServiceNow id that is already linked to another PagerDuty id."""


class Store(abc.ABC):
    """Durable state shared by the receiver, the worker, the CLI and the plugins.

    Usable as ``async with store:`` (open, then close). Timestamps passed in must be
    timezone-aware.

    SQLite (one instance) and PostgreSQL (several, ``shared``) implement it; the same
    tests run on both. The coordination methods at the end have in-process defaults,
    right for a store one process uses; a shared store overrides them.
    """

    #: True when several daemon instances may use the store at once (PostgreSQL): a
    #: claim left by a dead instance is then recovered by lease expiry only, never by
    #: ``release_claims()`` at start-up, which would take live instances' claims.
    shared: bool = False

    async def __aenter__(self) -> Store:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- lifecycle ---------------------------------------------------------------
    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and apply pending schema migrations (idempotent)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections; safe to call twice."""

    @abc.abstractmethod
    async def ping(self) -> bool:
        """True when the store answers a trivial query (readiness)."""

    @abc.abstractmethod
    async def schema_version(self) -> int:
        """The highest migration applied."""

    # -- inbox -------------------------------------------------------------------
    @abc.abstractmethod
    async def add_event(self, event: Event) -> StoredEvent | None:
        """Store ``event`` durably (committed on return).

        Returns the stored event, or None when an event with the same
        ``(source, event_id)`` is already stored (a duplicate: nothing written).
        """

    @abc.abstractmethod
    async def claim(self, owner: str, limit: int, lease_seconds: float) -> list[StoredEvent]:
        """Claim up to ``limit`` events that are due, for ``owner``, for ``lease_seconds``.

        Due: status ``pending`` with ``next_attempt_at`` unset or past, or ``claimed``
        with an expired lease (its owner died). Ordering: an event is never claimed while
        an earlier event (lower id) of the same ``resource`` is pending or claimed, nor
        while another event of its resource is claimed with a live lease (a replayed
        older event waits for the one in flight), and at most one event per resource is
        returned. Claimed events get status ``claimed``, ``owner``, ``lease_expires_at``
        and ``attempts`` incremented; oldest first. Its cost does not grow with the
        number of events stored, pending or handled.
        """

    async def complete_and_claim(
        self,
        completions: Sequence[tuple[int, EventStatus]],
        owner: str,
        limit: int,
        lease_seconds: float,
    ) -> list[StoredEvent]:
        """``complete()`` each ``(event_id, status)``, then ``claim()``: what a busy worker does.

        A store does both in one transaction (a round trip, and a commit, for a batch);
        an event's successor is never claimed before that event's completion is committed.
        """
        for event_id, status in completions:
            await self.complete(event_id, status)
        return await self.claim(owner, limit, lease_seconds) if limit > 0 else []

    @abc.abstractmethod
    async def renew(self, event_ids: Sequence[int], owner: str, lease_seconds: float) -> list[int]:
        """Extend the leases of ``owner``'s claimed events to ``lease_seconds`` from now.

        Returns the ids renewed: an id missing is no longer ``owner``'s (completed, or its
        lease ran out and another worker claimed it).
        """

    @abc.abstractmethod
    async def release_claims(self, owner: str | None = None) -> int:
        """Return claimed events (of ``owner``, or all) to pending; the count.

        A single-instance store calls this at start-up so that an event claimed when
        the process died is claimed again. ``attempts`` is kept: an interrupted attempt
        counts, so an event that kills the process every time still ends up dead.
        """

    @abc.abstractmethod
    async def complete(self, event_id: int, status: EventStatus = "done") -> None:
        """Mark a claimed event ``done`` (or ``ignored``: no plugin acted on it).

        No effect on an event that is no longer claimed (released or replayed meanwhile).
        """

    @abc.abstractmethod
    async def fail(self, event_id: int, error: str, retry_at: datetime | None) -> None:
        """Record a failed attempt: pending again at ``retry_at``, or ``dead`` when None.

        No effect on an event that is no longer claimed.
        """

    @abc.abstractmethod
    async def get_event(self, event_id: int) -> StoredEvent | None: ...

    @abc.abstractmethod
    async def list_events(
        self, status: EventStatus | None = None, limit: int = 50, source: str | None = None
    ) -> list[StoredEvent]:
        """Newest first."""

    @abc.abstractmethod
    async def replay(self, event_id: int) -> bool:
        """Make one event (dead, done or ignored) pending again with attempts reset; False if none."""

    @abc.abstractmethod
    async def replay_dead(self) -> int:
        """Make every dead event pending again; the count."""

    @abc.abstractmethod
    async def purge_dead(self) -> int:
        """Delete every dead event; the count."""

    @abc.abstractmethod
    async def counts(self) -> dict[str, int]:
        """Events per status, every status present (0 when none)."""

    @abc.abstractmethod
    async def purge_done(self, older_than: datetime) -> int:
        """Delete done/ignored events last updated before ``older_than`` (retention); the count."""

    # -- links -------------------------------------------------------------------
    @abc.abstractmethod
    async def put_link(self, link: Link) -> Link:
        """Insert or replace the link of ``(kind, pd_id)``; the link as stored.

        ``(kind, sn_id)`` is unique among linked links: linking a ServiceNow id already
        linked to another PagerDuty id raises ``LinkConflictError`` (unlink it first).
        ``created_at`` survives a replace.
        """

    @abc.abstractmethod
    async def get_link(
        self,
        kind: str,
        *,
        pd_id: str | None = None,
        sn_id: str | None = None,
        include_unlinked: bool = False,
    ) -> Link | None:
        """The link of ``kind`` with that PagerDuty or ServiceNow id (exactly one given)."""

    @abc.abstractmethod
    async def update_link_state(self, kind: str, pd_id: str, state: dict[str, Any], status: str | None = None) -> None:
        """Replace the link's synced state (and status when given); ``LookupError`` if none."""

    @abc.abstractmethod
    async def list_links(self, kind: str | None = None, include_unlinked: bool = False) -> list[Link]: ...

    @abc.abstractmethod
    async def delete_link(self, kind: str, pd_id: str) -> bool: ...

    # -- watermarks --------------------------------------------------------------
    @abc.abstractmethod
    async def get_watermark(self, name: str) -> str | None: ...

    @abc.abstractmethod
    async def set_watermark(self, name: str, value: str) -> None: ...

    # -- coordination --------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def lock(self, key: str) -> AsyncIterator[None]:
        """Hold ``key`` against every other holder of it using this store (not re-entrant).

        In-process here; a shared store holds it across instances as well.
        """
        locks: dict[str, tuple[asyncio.Lock, int]] = self.__dict__.setdefault("_key_locks", {})
        lock, users = locks.get(key, (asyncio.Lock(), 0))
        locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = locks[key]
            if users <= 1:
                del locks[key]
            else:
                locks[key] = (lock, users - 1)

    async def take_leadership(self, name: str, holder: str, seconds: float) -> bool:
        """Become (or stay) the leader of ``name`` for ``seconds``; True if ``holder`` leads.

        Granted when nobody leads, the leader's term ran out, or ``holder`` leads already
        (a renewal). This default is for a store of one process, which always leads.
        """
        self.__dict__.setdefault("_leaders", {})[name] = holder
        return True

    async def resign_leadership(self, name: str, holder: str) -> None:
        """Give up ``name`` at once if ``holder`` leads it, so another may take it over."""
        leaders: dict[str, str] = self.__dict__.setdefault("_leaders", {})
        if leaders.get(name) == holder:
            del leaders[name]

    async def leader(self, name: str) -> str | None:
        """Who leads ``name`` now, if anyone."""
        leaders: dict[str, str] = self.__dict__.setdefault("_leaders", {})
        return leaders.get(name)
