"""The daemon's HTTP face, wired: webhook receivers, probes and metrics, and the
request middleware every route (plugins' too) passes.
"""

from __future__ import annotations

from aiohttp import web

from . import probes
from .receivers import pagerduty, servicenow
from .web import BUDGET_KEY, BodyBudget, guarded, request_middleware


def add_routes(app: web.Application, *, prefix: str = "") -> None:
    """Add the receivers, probes and metrics to ``app``, and the request middleware.

    ``app[dutybridge.web.CTX_KEY]`` (or a parent app's) must hold the running ``Ctx``
    before the first request. The middleware applies to the whole app, so plugin
    routes get request ids and JSON errors too; call this before the app starts
    (middlewares freeze then).
    """
    app.middlewares.append(request_middleware)
    app[BUDGET_KEY] = BodyBudget()
    app.router.add_post(f"{prefix}/webhooks/pagerduty", guarded("pagerduty", pagerduty.pagerduty_v3))
    app.router.add_post(f"{prefix}/webhooks/pagerduty/v2", guarded("pagerduty_v2", pagerduty.pagerduty_v2))
    app.router.add_post(f"{prefix}/webhooks/servicenow", guarded("servicenow", servicenow.servicenow))
    app.router.add_get(f"{prefix}/healthz", probes.healthz)
    app.router.add_get(f"{prefix}/readyz", probes.readyz)
    app.router.add_get(f"{prefix}/metrics", probes.metrics)
