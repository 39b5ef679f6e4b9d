"""V3 webhook subscriptions: where and for which events the account sends signed webhooks,
and the ``/webhook_subscriptions`` routes (enable, ping)."""

from __future__ import annotations

import secrets
from typing import Any

from aiohttp import web

from .api import json_response, no_content, state_of
from .crud import Resource, crud_routes
from .errors import invalid


class WebhookSubscriptionOps:
    """Mixin for :class:`PagerDutyState`: webhook subscriptions and their secrets."""

    V3_EVENT_TYPES = frozenset(
        {
            "incident.acknowledged",
            "incident.annotated",
            "incident.conference_bridge.updated",
            "incident.custom_field_values.updated",
            "incident.delegated",
            "incident.escalated",
            "incident.incident_type.changed",
            "incident.priority_updated",
            "incident.reassigned",
            "incident.reopened",
            "incident.resolved",
            "incident.responder.added",
            "incident.responder.replied",
            "incident.role.assigned",
            "incident.service_updated",
            "incident.status_update_published",
            "incident.task.completed",
            "incident.task.created",
            "incident.task.updated",
            "incident.triggered",
            "incident.unacknowledged",
            "incident.action_invocation.created",
            "incident.action_invocation.terminated",
            "incident.action_invocation.updated",
            "incident.workflow.started",
            "incident.workflow.completed",
            "service.created",
            "service.custom_field_values.updated",
            "service.deleted",
            "service.updated",
        }
    )

    def _validate_filter(self, flt: Any, errors: list[str]) -> None:
        if not isinstance(flt, dict) or flt.get("type") not in (
            "account_reference",
            "service_reference",
            "team_reference",
        ):
            errors.append("filter.type must be account_reference, service_reference or team_reference")
            return
        if flt["type"] == "service_reference" and flt.get("id") not in self.services:
            errors.append("filter.id: service not found")
        if flt["type"] == "team_reference" and flt.get("id") not in self.teams:
            errors.append("filter.id: team not found")

    def _validate_events(self, events: Any, errors: list[str]) -> None:
        if not isinstance(events, list) or not events:
            errors.append("events must be a non-empty array")
            return
        unknown = [e for e in events if e not in self.V3_EVENT_TYPES]
        if unknown:
            errors.append(f"events: unknown event types {', '.join(map(str, unknown))}")

    def create_webhook_subscription(self, data: dict, secret: str | None = None) -> dict:
        errors: list[str] = []
        if data.get("type") != "webhook_subscription":
            errors.append("type must be 'webhook_subscription'")
        dm = data.get("delivery_method")
        if not isinstance(dm, dict) or dm.get("type") != "http_delivery_method":
            errors.append("delivery_method.type must be 'http_delivery_method'")
        elif not isinstance(dm.get("url"), str) or not dm["url"].startswith(("http://", "https://")):
            errors.append("delivery_method.url is invalid")
        else:
            headers = dm.get("custom_headers") or []
            names = [h.get("name") for h in headers if isinstance(h, dict)]
            if len(names) != len(headers) or any(not isinstance(n, str) or not n for n in names):
                errors.append("delivery_method.custom_headers must be objects with name and value")
            elif len({n.lower() for n in names}) != len(names):
                errors.append("delivery_method.custom_headers names must be unique")
        self._validate_events(data.get("events"), errors)
        self._validate_filter(data.get("filter"), errors)
        if errors:
            raise invalid(*errors)
        wid = self._claim_id(data.get("id"))
        secret = secret or secrets.token_urlsafe(24)
        self._subscription_secrets[wid] = secret
        flt = {"type": data["filter"]["type"]}
        if data["filter"].get("id"):
            flt["id"] = data["filter"]["id"]
        sub = {
            "id": wid,
            "type": "webhook_subscription",
            "active": bool(data.get("active", True)),
            "delivery_method": {
                "id": self.ids.new(),
                "secret": None,
                "temporarily_disabled": False,
                "type": "http_delivery_method",
                "url": dm["url"],
                "custom_headers": [
                    {"name": h["name"], "value": str(h.get("value", ""))} for h in dm.get("custom_headers") or []
                ],
            },
            "description": data.get("description", ""),
            "events": list(dict.fromkeys(data["events"])),
            "filter": flt,
        }
        self.webhook_subscriptions[wid] = sub
        return sub

    def subscription_secret(self, wid: str) -> str:
        return self._subscription_secrets[wid]

    def render_webhook_subscription(self, sub: dict, with_secret: bool = False) -> dict:
        dm = dict(sub["delivery_method"])
        if with_secret:
            dm["secret"] = self._subscription_secrets[sub["id"]]
        else:
            # "The header values are redacted in GET requests" (webhooks 01-Overview.md).
            dm["custom_headers"] = [{"name": h["name"], "value": "<redacted>"} for h in dm["custom_headers"]]
        return {**sub, "delivery_method": dm}

    def update_webhook_subscription(self, wid: str, data: dict) -> dict:
        sub = self._get(self.webhook_subscriptions, wid, "Webhook Subscription")
        errors: list[str] = []
        if "events" in data:
            self._validate_events(data["events"], errors)
        if "filter" in data:
            self._validate_filter(data["filter"], errors)
        if "active" in data and not isinstance(data["active"], bool):
            errors.append("active must be a boolean")
        if errors:
            raise invalid(*errors)
        if "description" in data:
            sub["description"] = data["description"]
        if "events" in data:
            sub["events"] = list(dict.fromkeys(data["events"]))
        if "filter" in data:
            sub["filter"] = {k: v for k, v in data["filter"].items() if k in ("id", "type")}
        if "active" in data:
            sub["active"] = data["active"]
        return sub

    def delete_webhook_subscription(self, wid: str) -> None:
        self._get(self.webhook_subscriptions, wid, "Webhook Subscription")
        del self.webhook_subscriptions[wid]
        self._subscription_secrets.pop(wid, None)
        self.dispatcher.forget(wid)

    def enable_webhook_subscription(self, wid: str) -> dict:
        sub = self._get(self.webhook_subscriptions, wid, "Webhook Subscription")
        sub["delivery_method"]["temporarily_disabled"] = False
        self.dispatcher.enabled(wid)
        return sub

    def ping_webhook_subscription(self, wid: str) -> None:
        sub = self._get(self.webhook_subscriptions, wid, "Webhook Subscription")
        self.dispatcher.send_v3(
            sub, "pagey.ping", "pagey", "pagey", {"message": "Hello from your friend Pagey!", "type": "ping"}, None
        )


# ------------------------------------------------------------------- routes

routes = web.RouteTableDef()


def _matching(request: web.Request, st, subs: list[dict]) -> list[dict]:
    ftype = request.query.get("filter_type")
    if ftype:
        subs = [s for s in subs if s["filter"]["type"] == f"{ftype}_reference"]
    fid = request.query.get("filter_id")
    if fid:
        subs = [s for s in subs if s["filter"].get("id") == fid]
    return subs


crud_routes(
    routes,
    Resource(
        "/webhook_subscriptions/{id}",
        "webhook_subscription",
        "webhook_subscriptions",
        get=lambda st, wid: st._get(st.webhook_subscriptions, wid, "Webhook Subscription"),
        items=lambda st: st.webhook_subscriptions.values(),
        create=WebhookSubscriptionOps.create_webhook_subscription,
        update=WebhookSubscriptionOps.update_webhook_subscription,
        delete=WebhookSubscriptionOps.delete_webhook_subscription,
        render=lambda st, sub, include: st.render_webhook_subscription(sub),
        # The secret is shown once, to whoever created the subscription.
        show_created=lambda st, sub, include: st.render_webhook_subscription(sub, with_secret=True),
        select=_matching,
        order=None,
        created_status=200,
    ),
)


@routes.post("/webhook_subscriptions/{id}/enable")
async def enable_webhook_subscription(request):
    st = state_of(request)
    sub = st.enable_webhook_subscription(request.match_info["id"])
    return json_response({"webhook_subscription": st.render_webhook_subscription(sub)})


@routes.post("/webhook_subscriptions/{id}/ping")
async def ping_webhook_subscription(request):
    state_of(request).ping_webhook_subscription(request.match_info["id"])
    return no_content(202)
