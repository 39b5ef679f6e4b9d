"""The unit of work: an inbound change, durable in the inbox until a plugin has acted on it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

EventStatus = Literal["pending", "claimed", "done", "dead", "ignored"]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


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
