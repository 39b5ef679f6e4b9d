"""One provisioning run: the work done concurrently, each object's outcome, and what the
operator sees (a progress bar on a terminal, JSON lines otherwise, a summary table)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, ClassVar, TypeVar

import structlog
from tqdm import tqdm  # type: ignore[import-untyped]  # no stubs installed (types-tqdm is not a dependency)

from dutybridge.context import Ctx, NotReady
from dutybridge.http import ApiError, TransportError

if TYPE_CHECKING:  # pragma: no cover
    from dutybridge.pagerduty import PagerDutyClient
    from dutybridge.servicenow import ServiceNowClient
    from dutybridge.store.base import Store

    from .config import ProvisioningConfig

log = structlog.get_logger("dutybridge.provisioning")

T = TypeVar("T")

STATUSES = ("created", "linked", "skipped", "planned", "failed")


class Refused(Exception):
    """An object that cannot be provisioned as asked (a name taken, no email, ...): the
    reason goes into the summary; other objects go on."""


@dataclass
class Outcome:
    kind: str  # "group", "user", "ci", "webhook", "dependency", ...
    name: str
    sn_id: str = ""
    status: str = "skipped"
    detail: list[str] = field(default_factory=list)
    pd: dict[str, str] = field(default_factory=dict)  # what it maps to: {"service": "P..."}

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "sn_id": self.sn_id,
            "status": self.status,
            "detail": "; ".join(self.detail),
            "pagerduty": self.pd,
        }


class Tally:
    """What one object's steps did: the strongest action wins (created > linked > skipped)."""

    ORDER: ClassVar[dict[str, int]] = {"kept": 0, "skipped": 0, "linked": 1, "adopted": 2, "planned": 3, "created": 4}

    def __init__(self) -> None:
        self.best = "kept"

    def add(self, action: str) -> str:
        if self.ORDER.get(action, 0) > self.ORDER[self.best]:
            self.best = action
        return action

    @property
    def status(self) -> str:
        return {"kept": "skipped", "adopted": "created"}.get(self.best, self.best)


class Run:
    """Shared by every object of one command: options, locks, outcomes and output."""

    def __init__(
        self,
        ctx: Ctx,
        conf: ProvisioningConfig,
        *,
        dry_run: bool = False,
        link_existing: bool = False,
        acting_email: str | None = None,
        out: IO[str] | None = None,
        err: IO[str] | None = None,
        interactive: bool | None = None,
    ) -> None:
        self.ctx = ctx
        self.conf = conf
        self.dry_run = dry_run
        self.link_existing = link_existing or conf.link_existing
        self.acting_email = acting_email
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.interactive = self.out.isatty() if interactive is None else interactive
        self.outcomes: list[Outcome] = []
        self._locks: dict[str, asyncio.Lock] = {}
        self._bar: Any = None
        #: Set when group/CI links changed: the running daemon is told once, at the end.
        self.links_dirty = False
        self._by_email: dict[str, dict | None] = {}

    @property
    def pagerduty(self) -> PagerDutyClient:
        if self.ctx.pagerduty is None:
            raise NotReady("the PagerDuty client is not built")
        return self.ctx.pagerduty

    @property
    def servicenow(self) -> ServiceNowClient:
        if self.ctx.servicenow is None:
            raise NotReady("the ServiceNow client is not built")
        return self.ctx.servicenow

    @property
    def store(self) -> Store:
        if self.ctx.store is None:
            raise NotReady("the store is not open")
        return self.ctx.store

    def lock(self, key: str) -> asyncio.Lock:
        """One lock per object key: two groups sharing a manager create that user once."""
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    async def user_by_email(self, email: str) -> dict | None:
        """The PagerDuty user with this email, looked up once per run (the licence count
        and the provisioning that follows it ask the same question)."""
        key = email.strip().casefold()
        if key not in self._by_email:
            self._by_email[key] = await self.pagerduty.find_user_by_email(email)
        return self._by_email[key]

    def user_created(self, email: str, user: dict) -> None:
        self._by_email[email.strip().casefold()] = user

    # -- output --------------------------------------------------------------------
    def record(self, outcome: Outcome) -> Outcome:
        self.outcomes.append(outcome)
        log.info(
            "provisioned",
            kind=outcome.kind,
            name=outcome.name,
            sn_id=outcome.sn_id,
            status=outcome.status,
            detail="; ".join(outcome.detail) or None,
            **{f"pd_{k}": v for k, v in outcome.pd.items()},
        )
        if self._bar is not None:
            self._bar.update(1)
        elif not self.interactive:
            print(json.dumps(outcome.as_dict(), sort_keys=True), file=self.out, flush=True)
        return outcome

    def counts(self) -> Counter:
        return Counter(o.status for o in self.outcomes)

    @property
    def failed(self) -> bool:
        return any(o.status == "failed" for o in self.outcomes)

    def summary(self) -> str:
        """The table printed at the end: one row per object type, then each failure's reason."""
        kinds = list(dict.fromkeys(o.kind for o in self.outcomes))
        rows = [["", *STATUSES]]
        for kind in kinds:
            c = Counter(o.status for o in self.outcomes if o.kind == kind)
            rows.append([kind, *(str(c.get(s, 0)) for s in STATUSES)])
        total = self.counts()
        rows.append(["total", *(str(total.get(s, 0)) for s in STATUSES)])
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [
            "  ".join(
                cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths, strict=False))
            )
            for r in rows
        ]
        lines.insert(1, "  ".join("-" * w for w in widths))
        notes = [o for o in self.outcomes if o.detail and o.status in ("failed", "planned")]
        if notes:
            lines.append("")
            for o in notes:
                lines.append(
                    f"{o.status}: {o.kind} {o.name}{f' ({o.sn_id})' if o.sn_id else ''}: {'; '.join(o.detail)}"
                )
        if self.dry_run:
            lines.append("dry run: nothing was written to PagerDuty, ServiceNow or the store")
        return "\n".join(lines)

    def finish(self) -> int:
        """Print the summary; the exit code (1 when anything failed)."""
        if self.interactive:
            print(self.summary(), file=self.out, flush=True)
        else:
            print(
                json.dumps({"summary": {s: self.counts().get(s, 0) for s in STATUSES}, "dry_run": self.dry_run}),
                file=self.out,
                flush=True,
            )
            print(self.summary(), file=self.err, flush=True)
        return 1 if self.failed else 0

    # -- concurrency -----------------------------------------------------------------
    async def each(
        self, items: Iterable[T], work: Callable[[T], Awaitable[Outcome]], describe: Callable[[T], Outcome], label: str
    ) -> list[Outcome]:
        """``work`` on every item, ``conf.concurrency`` at a time (the rate limiter paces
        the requests); an error becomes that item's failed outcome."""
        items = list(items)
        gate = asyncio.Semaphore(self.conf.concurrency)
        bar = None
        if self.interactive and items:
            bar = self._bar = tqdm(total=len(items), desc=label, unit="obj", file=self.err, leave=False)

        async def one(item: T) -> Outcome:
            async with gate:
                try:
                    return self.record(await work(item))
                except Refused as exc:
                    o = describe(item)
                    o.status, o.detail = "failed", [*o.detail, str(exc)]
                    return self.record(o)
                except (ApiError, TransportError) as exc:
                    o = describe(item)
                    o.status, o.detail = "failed", [*o.detail, f"{type(exc).__name__}: {exc}"]
                    return self.record(o)

        try:
            return list(await asyncio.gather(*(one(i) for i in items)))
        finally:
            if bar is not None:
                bar.close()
                self._bar = None
