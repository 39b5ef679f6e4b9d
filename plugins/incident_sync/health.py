"""The poll's health: each part's last outcome ("ok" or why it failed), logged on a
change of state only, and shown through ``report_health`` (``/readyz``, metrics)."""

from __future__ import annotations

from typing import Any

import structlog

log = structlog.get_logger("dutybridge.incident_sync")


class PollHealth:
    """How each part of the poll did on its last run: "ok" or why it failed. A part's
    failure is logged when it starts failing and again when it recovers, not on every
    interval in between; ``report`` is what ``report_health`` shows."""

    def __init__(self) -> None:
        self._state: dict[str, str] = {}
        self._failed_runs: dict[str, int] = {}

    def report(self) -> dict[str, str]:
        return dict(self._state)

    def ok(self, part: str) -> None:
        if self._state.get(part, "ok") != "ok":
            log.info("poll_part_recovered", part=part, failed_runs=self._failed_runs.get(part, 0))
        self._state[part] = "ok"
        self._failed_runs[part] = 0

    def failed(self, part: str, exc: BaseException) -> None:
        reason = (f"{type(exc).__name__}: {exc}".splitlines() or [""])[0][:300]
        if self._state.get(part, "ok") == "ok":
            log.warning(
                "poll_part_failed",
                part=part,
                error=reason,
                effect="the other parts go on; this one is retried every interval",
            )
        self._state[part] = reason
        self._failed_runs[part] = self._failed_runs.get(part, 0) + 1

    def forget(self, keep: set[str]) -> None:
        """Drop parts no longer polled (a table the configuration stopped using)."""
        for part in set(self._state) - keep:
            del self._state[part]
            self._failed_runs.pop(part, None)

    async def run(self, part: str, coro: Any) -> int | None:
        """Await ``coro`` as ``part``: its result, or None when it failed (recorded)."""
        try:
            result = await coro
        except Exception as exc:
            self.failed(part, exc)
            return None
        self.ok(part)
        return result
