"""The unit of work: an inbound change, durable in the inbox until a plugin has acted on it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any, Literal

EventStatus = Literal["pending", "claimed", "done", "dead", "ignored"]


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Event:
    """An inbound event as the receiver builds it, before it is stored.

    ``event_id`` is unique per ``source`` (PagerDuty's event id, ServiceNow's
    table:sys_id:sys_updated_on, a poll job's own key): a second event with the same
    pair is a duplicate and is not stored again. ``resource`` is the ordering key:
    events with the same resource are handled strictly in the order received.
    """

    source: str  # "pagerduty", "servicenow", or a plugin's own name
    type: str  # e.g. "incident.triggered", "servicenow.incident.updated"
    event_id: str
    resource: str  # e.g. "pagerduty:incident:PABC123", "servicenow:incident:<sys_id>"
    payload: dict[str, Any]
    received_at: datetime = field(default_factory=utcnow)

    def payload_json(self) -> str:
        return json.dumps(self.payload, separators=(",", ":"), sort_keys=True)

    @cached_property
    def pagerduty(self) -> PagerDutyChange | None:
        """What a PagerDuty webhook says, the same for V3 and V2; None for other sources."""
        return pagerduty_change(self)

    @cached_property
    def servicenow(self) -> ServiceNowChange | None:
        """Which ServiceNow record a doorbell (or a poll) says changed; None for other events."""
        return servicenow_change(self)


class EncodedEvent(Event):
    """An ``Event`` that comes with its payload's JSON text, as a receiver parsed it.

    The store writes ``payload_text`` instead of encoding the payload again, and the
    ``StoredEvent`` it returns holds this very ``payload`` instead of a copy decoded
    from what it wrote. So ``payload`` must be what ``json.loads(payload_text)``
    returns, and its producer hands it over: nobody changes it afterwards.

    ``payload_text`` is no dataclass field: an event derived with
    ``dataclasses.replace`` has none, and its payload is encoded anew.
    """

    def __init__(self, *, payload_text: str | None = None, **fields: Any) -> None:
        super().__init__(**fields)
        object.__setattr__(self, "_payload_text", payload_text)

    @property
    def payload_text(self) -> str | None:
        return self.__dict__.get("_payload_text")

    def payload_json(self) -> str:
        text = self.payload_text
        return text if text is not None else super().payload_json()


@dataclass(frozen=True)
class StoredEvent(Event):
    """An event as the store holds it: its row id, status and delivery history."""

    id: int = 0
    status: EventStatus = "pending"
    attempts: int = 0
    next_attempt_at: datetime | None = None
    last_error: str | None = None
    updated_at: datetime | None = None
    owner: str | None = None  # the worker holding the claim, while claimed
    lease_expires_at: datetime | None = None  # when another worker may take it over


# -- one normalised view per source ----------------------------------------------------

#: V2 extension webhook types (webhooks/09-V2-Overview.md) and the V3 type each became.
PAGERDUTY_V2_TO_V3: dict[str, str] = {
    "incident.trigger": "incident.triggered",
    "incident.acknowledge": "incident.acknowledged",
    "incident.unacknowledge": "incident.unacknowledged",
    "incident.resolve": "incident.resolved",
    "incident.assign": "incident.reassigned",
    "incident.escalate": "incident.escalated",
    "incident.delegate": "incident.delegated",
    "incident.annotate": "incident.annotated",
}


def normalise_pagerduty_type(event_type: str) -> str:
    """The V3 name of a PagerDuty event type (V2 names are mapped, V3 names kept)."""
    return PAGERDUTY_V2_TO_V3.get(event_type, event_type)


@dataclass(frozen=True)
class PagerDutyChange:
    """A PagerDuty webhook's meaning, whichever webhook version carried it.

    ``type`` is the V3 event type (``incident.triggered``...), ``resource_type``
    ``incident`` or ``service``, ``id`` the incident's (or service's) id, ``data`` the
    V3 ``event.data`` (for a V2 message: its ``incident`` object), ``agent`` who did
    it when PagerDuty said, ``occurred_at`` when (may be None).
    """

    type: str
    resource_type: str
    id: str
    data: dict[str, Any]
    agent: dict[str, Any] | None
    occurred_at: str | None
    webhook_version: int


def pagerduty_change(event: Event) -> PagerDutyChange | None:
    if event.source != "pagerduty":
        return None
    _, _, rest = event.resource.partition(":")
    resource_type, _, subject = rest.partition(":")
    payload = event.payload
    message = payload.get("message")
    if isinstance(message, dict):  # a V2 extension webhook
        entries = message.get("log_entries") or []
        first = entries[0] if entries and isinstance(entries[0], dict) else {}
        agent = first.get("agent") if isinstance(first.get("agent"), dict) else None
        data = message.get("incident") if isinstance(message.get("incident"), dict) else {}
        return PagerDutyChange(
            type=normalise_pagerduty_type(event.type),
            resource_type=resource_type or "incident",
            id=subject,
            data=data,
            agent=agent,
            occurred_at=message.get("created_on"),
            webhook_version=2,
        )
    envelope = payload.get("event") if isinstance(payload.get("event"), dict) else {}
    data = envelope.get("data") if isinstance(envelope.get("data"), dict) else {}
    agent = envelope.get("agent") if isinstance(envelope.get("agent"), dict) else None
    return PagerDutyChange(
        type=normalise_pagerduty_type(event.type),
        resource_type=resource_type,
        id=subject,
        data=data,
        agent=agent,
        occurred_at=envelope.get("occurred_at"),
        webhook_version=3,
    )


@dataclass(frozen=True)
class ServiceNowChange:
    """A ServiceNow record that changed: ``table``, ``sys_id``, ``operation`` and, when
    the doorbell sent them, ``sys_updated_on`` and ``sys_mod_count``."""

    table: str
    sys_id: str
    operation: str
    sys_updated_on: str | None
    sys_mod_count: str | None


def servicenow_change(event: Event) -> ServiceNowChange | None:
    if not event.resource.startswith("servicenow:"):
        return None
    _, table, sys_id = (event.resource.split(":", 2) + ["", ""])[:3]
    payload = event.payload
    return ServiceNowChange(
        table=str(payload.get("table") or table),
        sys_id=str(payload.get("sys_id") or sys_id),
        operation=str(payload.get("operation") or "update"),
        sys_updated_on=payload.get("sys_updated_on"),
        sys_mod_count=payload.get("sys_mod_count"),
    )
