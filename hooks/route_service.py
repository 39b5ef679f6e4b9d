"""Open one PagerDuty service's incidents on another service, by rewriting the body.

$DUTYBRIDGE_ROUTE_SERVICES maps service ids, "PFROM=PTO,PFROM2=PTO2" (read at load);
e.g. while a team moves to a new service, without touching the group mappings."""

import os


def _routes(text: str) -> dict:
    routes = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        source, sep, target = pair.partition("=")
        if not sep or not source.strip() or not target.strip():
            raise ValueError(f"DUTYBRIDGE_ROUTE_SERVICES: expected FROM=TO, found {pair!r}")
        routes[source.strip()] = target.strip()
    return routes


_ROUTES = _routes(os.environ.get("DUTYBRIDGE_ROUTE_SERVICES", ""))


def outbound_request(request, ctx):
    if request.service != "pagerduty" or request.operation != "POST /incidents":
        return
    service = ((request.json or {}).get("incident") or {}).get("service") or {}
    target = _ROUTES.get(service.get("id"))
    if target:
        service["id"] = target
