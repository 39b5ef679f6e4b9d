"""Delivers the business rule stand-in's posts: one queue, one task, in order.

A post that fails with a connection error, a timeout or a 5xx is retried after a
short backoff (the rule's outbound REST message is retried the same way, only
slower); a 4xx is recorded and dropped. Later posts wait behind a retrying one, so
the receiver sees changes in the order they were made.
"""

from __future__ import annotations

import asyncio
import base64
from typing import TYPE_CHECKING, Any

import aiohttp

if TYPE_CHECKING:
    from .state import DoorbellConfig, ServiceNowState


class DoorbellWorker:
    def __init__(self, state: ServiceNowState, session: aiohttp.ClientSession):
        self.state = state
        self.session = session

    async def run(self) -> None:
        state = self.state
        signal = asyncio.Event()
        state._bell_signal = signal
        state._bell_attached = True
        try:
            while True:
                if not state._bell_queue:
                    state._bell_busy = False
                    state._bell_idle()
                    signal.clear()
                    await signal.wait()
                    continue
                state._bell_busy = True
                config, payload = state._bell_queue[0]
                await self._deliver(config, payload)
                if state._bell_queue and state._bell_queue[0][1] is payload:
                    state._bell_queue.popleft()
        finally:
            state._bell_busy = False
            state._bell_attached = False
            state._bell_signal = None
            waiters, state._bell_waiters = state._bell_waiters, []
            for future in waiters:
                if not future.done():
                    future.set_exception(
                        RuntimeError("the ServiceNow sandbox app stopped before its doorbells were delivered")
                    )

    async def _deliver(self, config: DoorbellConfig, payload: dict[str, str]) -> None:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if config.token is not None:
            headers["Authorization"] = f"Bearer {config.token}"
        elif config.basic is not None:
            user, password = config.basic
            headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        timeout = aiohttp.ClientTimeout(total=config.timeout)
        for attempt in range(1, config.max_attempts + 1):
            status: int | None = None
            error: str | None = None
            try:
                async with self.session.post(config.url, json=payload, headers=headers, timeout=timeout) as response:
                    status = response.status
                    await response.read()
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            delivered = status is not None and 200 <= status < 300
            retry = not delivered and (status is None or status >= 500) and attempt < config.max_attempts
            self._record(config, payload, attempt, status, error, delivered, given_up=not delivered and not retry)
            if not retry:
                return
            await asyncio.sleep(config.backoff[min(attempt - 1, len(config.backoff) - 1)])

    def _record(
        self,
        config: DoorbellConfig,
        payload: dict[str, str],
        attempt: int,
        status: int | None,
        error: str | None,
        delivered: bool,
        given_up: bool,
    ) -> None:
        entry: dict[str, Any] = dict(payload)
        entry.update(
            url=config.url, attempt=attempt, status=status, error=error, delivered=delivered, given_up=given_up
        )
        self.state.doorbell_deliveries.append(entry)


def doorbell_context(state: ServiceNowState):
    """An aiohttp cleanup context: the session and the task live as long as the app."""

    async def context(app: Any):
        if state._bell_attached:
            raise RuntimeError("another running app already delivers this ServiceNowState's doorbells")
        session = aiohttp.ClientSession()
        task = asyncio.create_task(DoorbellWorker(state, session).run(), name="servicenow-doorbell")
        try:
            yield
        finally:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            await session.close()

    return context
