"""Metrics: own registry per instance, every method lands in the exposition."""

from __future__ import annotations

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from dutybridge.metrics import Metrics


def samples(metrics: Metrics) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_each_instance_has_its_own_registry():
    a, b = Metrics(), Metrics()
    a.event_received("pagerduty", "incident.triggered")
    assert a.registry is not b.registry
    assert (
        samples(a)[("dutybridge_events_received_total", (("source", "pagerduty"), ("type", "incident.triggered")))] == 1
    )
    assert "dutybridge_events_received_total{" not in b.render().decode()
    assert (
        REGISTRY.get_sample_value(
            "dutybridge_events_received_total", {"source": "pagerduty", "type": "incident.triggered"}
        )
        is None
    )


def test_event_counters():
    m = Metrics()
    ev = (("source", "servicenow"), ("type", "incident.update"))
    m.event_received("servicenow", "incident.update")
    m.event_received("servicenow", "incident.update")
    m.event_duplicate("servicenow", "incident.update")
    m.event_processed("servicenow", "incident.update")
    m.event_failed("servicenow", "incident.update")
    m.event_failed("servicenow", "incident.update")
    m.event_dead("servicenow", "incident.update")
    m.event_ignored("pagerduty", "pagey.ping")
    s = samples(m)
    assert s[("dutybridge_events_received_total", ev)] == 2
    assert s[("dutybridge_events_duplicate_total", ev)] == 1
    assert s[("dutybridge_events_processed_total", ev)] == 1
    assert s[("dutybridge_events_failed_total", ev)] == 2
    assert s[("dutybridge_events_dead_total", ev)] == 1
    assert s[("dutybridge_events_ignored_total", (("source", "pagerduty"), ("type", "pagey.ping")))] == 1


def test_webhook_rejects():
    m = Metrics()
    m.webhook_rejected("pagerduty", "bad_signature")
    assert samples(m)[("dutybridge_webhook_rejected_total", (("reason", "bad_signature"), ("route", "pagerduty")))] == 1


def test_inbox_gauge_every_status_and_store_down():
    m = Metrics()
    m.set_inbox({"pending": 3, "dead": 1, "claimed": 0, "done": 10, "ignored": 2})
    s = samples(m)
    assert s[("dutybridge_inbox_events", (("status", "pending"),))] == 3
    assert s[("dutybridge_inbox_events", (("status", "done"),))] == 10
    assert s[("dutybridge_store_up", ())] == 1
    m.set_inbox({"pending": 0})
    s = samples(m)
    assert s[("dutybridge_inbox_events", (("status", "dead"),))] == 0
    m.set_inbox(None)
    assert samples(m)[("dutybridge_store_up", ())] == 0


def test_outbound_and_latency_histograms():
    m = Metrics()
    m.outbound("pagerduty", "api.pagerduty.com", 201, 0.12)
    m.outbound("pagerduty", "api.pagerduty.com", 429, 0.03)
    m.outbound("servicenow", "acme.service-now.com", None, 30.0)
    m.handle_seconds("pagerduty", "incident.triggered", 0.2)
    s = samples(m)
    pd = (("host", "api.pagerduty.com"), ("service", "pagerduty"))
    assert s[("dutybridge_outbound_requests_total", (*pd, ("status", "201")))] == 1
    assert (
        s[
            (
                "dutybridge_outbound_requests_total",
                (("host", "acme.service-now.com"), ("service", "servicenow"), ("status", "error")),
            )
        ]
        == 1
    )
    assert s[("dutybridge_outbound_request_seconds_count", pd)] == 2
    assert s[("dutybridge_outbound_request_seconds_bucket", (pd[0], ("le", "0.25"), pd[1]))] == 2
    assert s[("dutybridge_handle_seconds_sum", (("source", "pagerduty"), ("type", "incident.triggered")))] == 0.2


def test_content_type_is_prometheus_text():
    assert Metrics.content_type.startswith("text/plain")
    assert b"# HELP dutybridge_events_received_total" in Metrics().render()
