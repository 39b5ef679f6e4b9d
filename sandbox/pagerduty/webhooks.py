"""Outbound webhooks: V3 (webhook subscriptions) and legacy V2 (extensions), queued per
target and resource, signed, retried and disabled as PagerDuty does it."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiohttp

from .extension_schemas import SERVICENOW_V7, V2_WEBHOOK_SCHEMAS
from .util import iso, iso_ms

if TYPE_CHECKING:  # pragma: no cover
    from .state import PagerDutyState

V3_USER_AGENT = "PagerDuty-Webhook/V3.0"
V2_USER_AGENT = "PagerDuty-Webhook/V2.0"


def sign(body: bytes, secret: str) -> str:
    """The ``X-PagerDuty-Signature`` value for one secret."""
    return "v1=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@dataclass
class Delivery:
    kind: str  # "v3" or "v2"
    target_id: str  # webhook subscription id or extension id
    resource_id: str
    url: str
    headers: dict[str, str]
    body: bytes
    webhook_id: str
    event_type: str
    attempts: int = 0
    extra: dict = field(default_factory=dict)


class WebhookDispatcher:
    """Builds and delivers every webhook the account sends.

    Behaviour follows webhooks/02-Behavior.md, with retry delays compressed:

    * one event per POST; V3 envelope ``{"event": {id, event_type, resource_type,
      occurred_at, agent, client, data}}``, V2 body ``{"messages": [message]}``;
    * V3 is signed ``X-PagerDuty-Signature: v1=<hex HMAC-SHA256(raw body, secret)>``;
      ``X-Webhook-Id`` identifies a webhook and repeats on every retry of it;
    * ordered per (subscription or extension, resource): one queue each, worked by one task;
      a webhook being retried holds back the later ones of its queue;
    * retried on timeout, 5xx, 429 and connection errors (``webhook_retry_base`` * 2^n,
      capped at ``webhook_retry_max_delay``, ``webhook_max_attempts`` in all), dropped on
      any other non-2xx answer;
    * after ``webhook_disable_after`` (3) consecutive dropped webhooks the subscription
      (``delivery_method.temporarily_disabled``) or extension (``temporarily_disabled``) is
      disabled, its queue dropped, and new webhooks for it dropped until it is enabled again.

    Every attempt is recorded in ``state.webhook_deliveries``; webhooks dropped without an
    attempt (target disabled, queue flushed) in ``state.webhook_drops``.
    """

    def __init__(self, state: PagerDutyState):
        self.state = state
        self._queues: dict[tuple[str, str], deque[Delivery]] = {}
        self._workers: dict[tuple[str, str], asyncio.Task] = {}
        self._drops: dict[str, int] = {}
        self._session: aiohttp.ClientSession | None = None

    # ------------------------------------------------------------ lifecycle

    async def start(self, session: aiohttp.ClientSession | None = None) -> None:
        """Called on app startup: owns (or borrows) the one ClientSession and starts pending queues."""
        if self._session is None or self._session.closed:
            self._session = session or aiohttp.ClientSession(auto_decompress=True)
        for key, queue in self._queues.items():
            if queue:
                self._kick(key)

    async def close(self) -> None:
        tasks = list(self._workers.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._workers.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def reset(self) -> None:
        for task in self._workers.values():
            task.cancel()
        self._workers.clear()
        self._queues.clear()
        self._drops.clear()

    def forget(self, target_id: str) -> None:
        """A subscription or extension was deleted: stop and drop its queues."""
        for key in [k for k in self._queues if k[0] == target_id]:
            task = self._workers.pop(key, None)
            if task is not None:
                task.cancel()
            del self._queues[key]
        self._drops.pop(target_id, None)

    def enabled(self, target_id: str) -> None:
        self._drops[target_id] = 0

    @property
    def idle(self) -> bool:
        return not self._workers and not any(self._queues.values())

    async def drain(self, timeout: float = 5.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if self._session is None and any(self._queues.values()):
            raise RuntimeError("webhooks are queued but no app is running to deliver them (start the app first)")
        for key, queue in list(self._queues.items()):
            if queue:
                self._kick(key)  # queued from outside the loop (no running loop to start a worker then)
        while not self.idle:
            if loop.time() >= deadline:
                raise TimeoutError(f"webhooks still pending after {timeout}s: {self.pending_summary()}")
            await asyncio.sleep(0.002)

    def pending_summary(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for (target, _), queue in self._queues.items():
            if queue:
                out[target] = out.get(target, 0) + len(queue)
        return out

    # ------------------------------------------------------------ building

    def incident_event(
        self,
        event_type: str,
        inc: dict,
        actor: dict | None,
        ts: float,
        *,
        data: dict | None,
        v2_event: str | None,
        log_entries: list[dict],
    ) -> None:
        st = self.state
        subs = [
            s
            for s in st.webhook_subscriptions.values()
            if s["active"]
            and event_type in s["events"]
            and self._matches(s["filter"], inc["service"]["id"], inc["teams"])
        ]
        agent = st.ref("user", actor["id"]) if actor else None
        if subs:
            payload = data if data is not None else self.v3_incident(inc)
            self._send_event(subs, event_type, "incident", inc["id"], payload, agent, ts)
        if v2_event:
            for ext in st.extensions.values():
                if (
                    ext["extension_schema"]["id"] in V2_WEBHOOK_SCHEMAS
                    and ext.get("endpoint_url")
                    and any(o["id"] == inc["service"]["id"] for o in ext["extension_objects"])
                ):
                    self._send_v2(ext, v2_event, inc, log_entries, ts)

    def service_event(self, event_type: str, service: dict, ts: float) -> None:
        st = self.state
        subs = [
            s
            for s in st.webhook_subscriptions.values()
            if s["active"] and event_type in s["events"] and self._matches(s["filter"], service["id"], service["teams"])
        ]
        if subs:
            data = {
                "id": service["id"],
                "type": "service",
                "self": service["self"],
                "html_url": service["html_url"],
                "summary": service["summary"],
                "alert_creation": service.get("alert_creation"),
                "teams": list(service["teams"]),
            }
            self._send_event(subs, event_type, "service", service["id"], data, None, ts)

    @staticmethod
    def _matches(flt: dict, service_id: str, teams: list[dict]) -> bool:
        ftype = flt.get("type")
        if ftype == "account_reference":
            return True
        if ftype == "service_reference":
            return flt.get("id") == service_id
        if ftype == "team_reference":
            return any(t["id"] == flt.get("id") for t in teams)
        return False

    def v3_incident(self, inc: dict) -> dict:
        """``event.data`` for incident events (01-Overview.md, "incident" data type)."""
        data = {
            "id": inc["id"],
            "type": "incident",
            "self": inc["self"],
            "html_url": inc["html_url"],
            "number": inc["incident_number"],
            "status": inc["status"],
            "incident_key": inc["incident_key"],
            "created_at": inc["created_at"],
            "title": inc["title"],
            "incident_type": inc["incident_type"],
            "service": inc["service"],
            "assignees": [a["assignee"] for a in inc["assignments"]],
            "escalation_policy": inc["escalation_policy"],
            "teams": inc["teams"],
            "priority": inc["priority"],
            "urgency": inc["urgency"],
            "conference_bridge": inc.get("conference_bridge"),
            "resolve_reason": inc["resolve_reason"],
        }
        if inc.get("reopened_at"):
            data["reopened_at"] = inc["reopened_at"]
        return data

    def _send_event(
        self,
        subs: list[dict],
        event_type: str,
        resource_type: str,
        resource_id: str,
        data: dict,
        agent: dict | None,
        ts: float,
    ) -> None:
        st = self.state
        event = {
            "event": {
                "id": st.ids.new("0", 26),
                "event_type": event_type,
                "resource_type": resource_type,
                "occurred_at": iso_ms(ts),
                "agent": agent,
                "client": {"name": "PagerDuty"} if agent else None,
                "data": data,
            }
        }
        body = _dumps(event)
        for sub in subs:
            self.send_v3_body(sub, event_type, resource_id, body)

    def send_v3(
        self, sub: dict, event_type: str, resource_type: str, resource_id: str, data: dict, agent: dict | None
    ) -> None:
        """One V3 event to one subscription, whatever its filter and events (used by ping)."""
        st = self.state
        event = {
            "event": {
                "id": st.ids.new("0", 26),
                "event_type": event_type,
                "resource_type": resource_type,
                "occurred_at": iso_ms(st.now()),
                "agent": agent,
                "client": None,
                "data": data,
            }
        }
        self.send_v3_body(sub, event_type, resource_id, _dumps(event))

    def send_v3_body(self, sub: dict, event_type: str, resource_id: str, body: bytes) -> None:
        st = self.state
        dm = sub["delivery_method"]
        webhook_id = st.ids.uuid()
        headers = {h["name"]: h["value"] for h in dm.get("custom_headers", [])}
        headers.update(
            {
                "Content-Type": "application/json",
                "User-Agent": V3_USER_AGENT,
                "X-PagerDuty-Signature": sign(body, st.subscription_secret(sub["id"])),
                "X-Webhook-Id": webhook_id,
                "X-Webhook-Subscription": sub["id"],
            }
        )
        delivery = Delivery("v3", sub["id"], resource_id, dm["url"], headers, body, webhook_id, event_type)
        if dm.get("temporarily_disabled"):
            self._record_drop(delivery, "subscription temporarily disabled")
            return
        self._enqueue(delivery)

    def _send_v2(self, ext: dict, event: str, inc: dict, log_entries: list[dict], ts: float) -> None:
        st = self.state
        message_id = st.ids.uuid()
        config = dict(ext.get("config") or {})
        schema = ext["extension_schema"]
        service_full = st.render_service(st.services[inc["service"]["id"]])
        incident = {
            **inc,
            "description": inc["title"],
            "service": {**service_full, "metadata": {}, "privilege": None},
            "privilege": None,
            "impacted_services": [inc["service"]],
            "basic_alert_grouping": None,
            "alert_grouping": None,
            "metadata": {},
            "external_references": [],
            "importance": None,
            "subscriber_requests": [],
            "alerts": [{"alert_key": inc["incident_key"]}],
        }
        message = {
            "event": event,
            "log_entries": log_entries,
            "webhook": {
                "endpoint_url": ext["endpoint_url"],
                "name": ext["name"],
                "description": None,
                "webhook_object": inc["service"],
                "config": {k: v for k, v in config.items() if k != "snow_password"},
                "outbound_integration": {
                    "id": schema["id"],
                    "type": "outbound_integration_reference",
                    "summary": schema["summary"],
                    "self": f"{st.api_url}/outbound_integrations/{schema['id']}",
                    "html_url": None,
                },
                "accounts_addon": None,
                "id": ext["id"],
                "type": "webhook",
                "summary": ext["name"],
                "self": f"{st.api_url}/webhooks/{ext['id']}",
                "html_url": None,
            },
            "incident": incident,
            "id": message_id,
            "created_on": iso(ts),
        }
        body = _dumps({"messages": [message]})
        headers: dict[str, str] = {}
        for h in config.get("headers") or []:
            if isinstance(h, dict) and h.get("name"):
                headers[str(h["name"])] = str(h.get("value", ""))
        if schema["id"] == SERVICENOW_V7 and config.get("snow_user"):
            token = base64.b64encode(f"{config['snow_user']}:{config.get('snow_password', '')}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        headers.update({"Content-Type": "application/json", "User-Agent": V2_USER_AGENT, "X-Webhook-Id": message_id})
        delivery = Delivery("v2", ext["id"], inc["id"], ext["endpoint_url"], headers, body, message_id, event)
        if ext.get("temporarily_disabled"):
            self._record_drop(delivery, "extension temporarily disabled")
            return
        self._enqueue(delivery)

    # ------------------------------------------------------------ delivering

    def _enqueue(self, delivery: Delivery) -> None:
        key = (delivery.target_id, delivery.resource_id)
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
        queue.append(delivery)
        self._kick(key)

    def _kick(self, key: tuple[str, str]) -> None:
        if key in self._workers or self._session is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._workers[key] = loop.create_task(self._work(key))

    async def _work(self, key: tuple[str, str]) -> None:
        try:
            while True:
                queue = self._queues.get(key)
                if not queue:
                    break
                delivery = queue[0]
                outcome = await self._deliver(delivery)
                queue = self._queues.get(key)
                if queue and queue[0] is delivery:
                    queue.popleft()
                if outcome == "delivered":
                    self._drops[delivery.target_id] = 0
                else:
                    self._dropped(delivery)
        finally:
            if self._workers.get(key) is asyncio.current_task():
                del self._workers[key]
            if not self._queues.get(key, True):
                del self._queues[key]

    async def _deliver(self, d: Delivery) -> str:
        st = self.state
        while True:
            if self._target_disabled(d):
                self._record_drop(d, "target disabled while queued")
                return "dropped"
            d.attempts += 1
            status: int | None = None
            error: str | None = None
            try:
                timeout = aiohttp.ClientTimeout(total=st.webhook_timeout)
                async with self._session.post(
                    d.url, data=d.body, headers=d.headers, timeout=timeout, allow_redirects=False
                ) as resp:
                    status = resp.status
                    await resp.read()
            except asyncio.CancelledError:
                raise
            except TimeoutError:
                error = "timeout"
            except aiohttp.ClientError as exc:
                error = f"{type(exc).__name__}: {exc}"
            except OSError as exc:  # pragma: no cover - defensive
                error = f"{type(exc).__name__}: {exc}"
            if status is not None and 200 <= status < 300:
                outcome = "delivered"
            elif error is not None or status >= 500 or status == 429:
                outcome = "retry" if d.attempts < st.webhook_max_attempts else "dropped"
            else:
                outcome = "dropped"
            st.webhook_deliveries.append(
                {
                    "kind": d.kind,
                    "target_id": d.target_id,
                    "resource_id": d.resource_id,
                    "event_type": d.event_type,
                    "webhook_id": d.webhook_id,
                    "url": d.url,
                    "headers": dict(d.headers),
                    "body": d.body,
                    "status": status,
                    "error": error,
                    "attempt": d.attempts,
                    "outcome": outcome,
                    "at": st.now(),
                }
            )
            if outcome != "retry":
                return outcome
            delay = min(st.webhook_retry_max_delay, st.webhook_retry_base * (2 ** (d.attempts - 1)))
            await asyncio.sleep(delay)

    def _target_disabled(self, d: Delivery) -> bool:
        st = self.state
        if d.kind == "v3":
            sub = st.webhook_subscriptions.get(d.target_id)
            return sub is None or bool(sub["delivery_method"].get("temporarily_disabled"))
        ext = st.extensions.get(d.target_id)
        return ext is None or bool(ext.get("temporarily_disabled"))

    def _dropped(self, d: Delivery) -> None:
        st = self.state
        count = self._drops.get(d.target_id, 0) + 1
        self._drops[d.target_id] = count
        if count < st.webhook_disable_after or self._target_disabled(d):
            return
        if d.kind == "v3":
            st.webhook_subscriptions[d.target_id]["delivery_method"]["temporarily_disabled"] = True
        else:
            st.extensions[d.target_id]["temporarily_disabled"] = True
        # "... will be disabled ... and any other webhooks in its queue will be dropped."
        for key, queue in self._queues.items():
            if key[0] != d.target_id:
                continue
            items = list(queue)
            if items and key in self._workers and key != (d.target_id, d.resource_id):
                items = items[1:]  # in flight: its worker records how it ends
            for other in items:
                self._record_drop(other, "target disabled after consecutive drops")
            queue.clear()

    def _record_drop(self, d: Delivery, reason: str) -> None:
        self.state.webhook_drops.append(
            {
                "kind": d.kind,
                "target_id": d.target_id,
                "resource_id": d.resource_id,
                "event_type": d.event_type,
                "webhook_id": d.webhook_id,
                "reason": reason,
            }
        )
