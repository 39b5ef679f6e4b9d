"""Prometheus metrics of one daemon: events through the inbox, webhook rejects, outbound calls."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

# Webhook handling and outbound API calls live between a few ms and PagerDuty's 5 s
# delivery timeout; API calls may take up to the client timeout (30 s by default).
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

INBOX_STATUSES = ("pending", "claimed", "done", "dead", "ignored")


class Metrics:
    """The daemon's counters, gauges and histograms, rendered by ``GET /metrics``.

    Label values must stay few: ``type`` is an event type (the receiver only stores
    known ones), ``reason`` a short fixed code, ``host`` an API host, never a URL.

    Each ``Metrics`` owns its own ``CollectorRegistry``, so tests, reloads and several
    apps in one process never collide on the global registry.
    """

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, namespace: str = "dutybridge") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r, ns = self.registry, namespace
        ev = ("source", "type")
        self._received = Counter("events_received", "Events stored in the inbox.", ev, namespace=ns, registry=r)
        self._duplicate = Counter(
            "events_duplicate", "Inbound events dropped as duplicates of a stored one.", ev, namespace=ns, registry=r
        )
        self._processed = Counter(
            "events_processed", "Events a plugin acted on successfully.", ev, namespace=ns, registry=r
        )
        self._failed = Counter(
            "events_failed", "Failed handling attempts (each retry counts).", ev, namespace=ns, registry=r
        )
        self._dead = Counter("events_dead", "Events moved to the dead-letter list.", ev, namespace=ns, registry=r)
        self._ignored = Counter(
            "events_ignored",
            "Events no plugin acted on, or webhooks of an unknown type or pings.",
            ev,
            namespace=ns,
            registry=r,
        )
        self._rejected = Counter(
            "webhook_rejected",
            "Webhook requests answered with an error, by route and reason.",
            ("route", "reason"),
            namespace=ns,
            registry=r,
        )
        self._inbox = Gauge(
            "inbox_events",
            "Events in the inbox per status, read from the store at scrape time.",
            ("status",),
            namespace=ns,
            registry=r,
        )
        self._leader = Gauge(
            "scheduler_leader",
            "1 on the instance whose scheduler runs the jobs (the elected leader, PostgreSQL store), 0 on the others; by instance.",
            ("instance",),
            namespace=ns,
            registry=r,
        )
        self._store_up = Gauge(
            "store_up",
            "1 when the store answered the last scrape and its last write succeeded, else 0.",
            namespace=ns,
            registry=r,
        )
        self._connections = Gauge(
            "connections_open", "Client connections open on the webhook server.", namespace=ns, registry=r
        )
        self._connections_closed = Counter(
            "connections_closed_by_server",
            "Client connections the server closed for a limit: header_timeout, evicted (at max_connections), over_cap.",
            ("reason",),
            namespace=ns,
            registry=r,
        )
        self._body_in_flight = Gauge(
            "body_bytes_in_flight",
            "Request body bytes being read now, over all requests (bounded by daemon.max_body_bytes_in_flight).",
            namespace=ns,
            registry=r,
        )
        self._body_refused = Counter(
            "body_budget_refused",
            "Requests answered 503 because daemon.max_body_bytes_in_flight was reached.",
            namespace=ns,
            registry=r,
        )
        self._outbound = Counter(
            "outbound_requests",
            "Outbound API requests by service, host and HTTP status ('error' when no response).",
            ("service", "host", "status"),
            namespace=ns,
            registry=r,
        )
        self._outbound_seconds = Histogram(
            "outbound_request_seconds",
            "Outbound API request latency.",
            ("service", "host"),
            namespace=ns,
            registry=r,
            buckets=_LATENCY_BUCKETS,
        )
        self._plugin_health = Gauge(
            "plugin_health",
            "1 when a plugin's part (a poll, ...) works, 0 while it fails; from report_health at scrape time.",
            ("plugin", "part"),
            namespace=ns,
            registry=r,
        )
        self._handle_seconds = Histogram(
            "handle_seconds",
            "Time to handle one event (all plugin hooks).",
            ev,
            namespace=ns,
            registry=r,
            buckets=_LATENCY_BUCKETS,
        )
        # (metric, *label values) -> child. labels() converts, validates and takes a lock
        # on every call (a few us on each webhook); a child, once made, never changes.
        self._children: dict[tuple[object, ...], Any] = {}

    def _child(self, metric: Any, *values: str) -> Any:
        key = (metric, *values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    # -- events ------------------------------------------------------------------
    def event_received(self, source: str, type: str) -> None:
        self._child(self._received, source, type).inc()

    def event_duplicate(self, source: str, type: str) -> None:
        self._child(self._duplicate, source, type).inc()

    def event_processed(self, source: str, type: str) -> None:
        self._child(self._processed, source, type).inc()

    def event_failed(self, source: str, type: str) -> None:
        self._child(self._failed, source, type).inc()

    def event_dead(self, source: str, type: str) -> None:
        self._child(self._dead, source, type).inc()

    def event_ignored(self, source: str, type: str) -> None:
        self._child(self._ignored, source, type).inc()

    def handle_seconds(self, source: str, type: str, seconds: float) -> None:
        self._child(self._handle_seconds, source, type).observe(seconds)

    # -- webhooks ----------------------------------------------------------------
    def webhook_rejected(self, route: str, reason: str) -> None:
        self._child(self._rejected, route, reason).inc()

    # -- connections and bodies ---------------------------------------------------
    def set_connections(self, count: int) -> None:
        self._connections.set(count)

    def connection_closed(self, reason: str) -> None:
        self._child(self._connections_closed, reason).inc()

    def set_body_in_flight(self, size: int) -> None:
        self._body_in_flight.set(size)

    def body_refused(self) -> None:
        self._body_refused.inc()

    # -- inbox -------------------------------------------------------------------
    def set_scheduler_leader(self, election: Any) -> None:
        self._leader.labels(election.holder).set(1 if election.leading else 0)

    def set_inbox(self, counts: Mapping[str, int] | None, writable: bool = True) -> None:
        """Set the inbox gauge from ``store.counts()``; None when the store did not answer.
        ``writable``: the store's last write succeeded (a full disk still reads)."""
        if counts is None:
            self._store_up.set(0)
            return
        self._store_up.set(1 if writable else 0)
        for status in {*INBOX_STATUSES, *counts}:
            self._inbox.labels(status).set(counts.get(status, 0))

    # -- plugins -----------------------------------------------------------------
    def set_plugin_health(self, health: Mapping[str, Mapping[str, str]]) -> None:
        """Set the plugin health gauge from ``Hooks.report_health`` ({plugin: {part: state}})."""
        for plugin, parts in health.items():
            for part, state in parts.items():
                self._plugin_health.labels(plugin, part).set(1 if state == "ok" else 0)

    # -- outbound ----------------------------------------------------------------
    def outbound(self, service: str, host: str, status: int | str | None, seconds: float) -> None:
        """One outbound request; ``status`` None (or "error") when no response came back."""
        self._child(self._outbound, service, host, "error" if status is None else str(status)).inc()
        self._child(self._outbound_seconds, service, host).observe(seconds)

    # -- exposition --------------------------------------------------------------
    def render(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self.registry)
