"""A V3 webhook subscription per provisioned service, its secret kept in the store where
the PagerDuty receiver reads it (no restart, no config edit)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dutybridge.store.base import Link

from .objects import PLANNED
from .run import Refused, Run

if TYPE_CHECKING:  # pragma: no cover
    from dutybridge.context import Ctx

#: Read by the core's PagerDuty receiver (daemon/receivers/pagerduty.py, STORED_SECRET_KIND).
SECRET_KIND = "pd_webhook_secret"
WEBHOOK_PATH = "/webhooks/pagerduty"
DESCRIPTION = "dutybridge: incident sync with ServiceNow"


def webhook_url(ctx: Ctx) -> str:
    base = ctx.config.daemon.public_url.rstrip("/")
    if not base:
        raise Refused("daemon.public_url is not set: the webhook would have nowhere to go")
    return base + WEBHOOK_PATH


async def subscription_of(run: Run, service_id: str) -> str | None:
    link = await run.store.get_link(SECRET_KIND, sn_id=f"service:{service_id}")
    return link.pd_id if link is not None else None


async def ensure_subscription(run: Run, service_id: str) -> tuple[str, str]:
    """(subscription id, action) of the webhook subscription of ``service_id``.

    One PagerDuty shows its secret only in the answer to the create: a subscription of ours
    whose secret never reached the store (a kill in between) is deleted and made again.
    """
    known = await subscription_of(run, service_id)
    if known is not None:
        return known, "kept"
    url = webhook_url(run.ctx)
    if service_id == PLANNED:
        return PLANNED, "planned"
    existing = [
        s
        async for s in run.pagerduty.paginate(
            "/webhook_subscriptions",
            "webhook_subscriptions",
            {"filter_type": "service", "filter_id": service_id},
            operation="GET /webhook_subscriptions",
        )
    ]
    for sub in existing:
        if (sub.get("delivery_method") or {}).get("url") != url:
            continue
        if sub.get("description") == DESCRIPTION:
            if run.dry_run:
                return sub["id"], "planned"
            await run.pagerduty.delete(
                f"/webhook_subscriptions/{sub['id']}",
                acting_email=run.acting_email,
                operation="DELETE /webhook_subscriptions/{id}",
            )
            continue
        # Someone else's subscription to this daemon: its secret is theirs to configure.
        return sub["id"], "linked"
    if run.dry_run:
        return PLANNED, "planned"
    body = {
        "webhook_subscription": {
            "type": "webhook_subscription",
            "delivery_method": {"type": "http_delivery_method", "url": url},
            "description": DESCRIPTION,
            "events": list(run.conf.webhook_events),
            "filter": {"type": "service_reference", "id": service_id},
        }
    }
    created = await run.pagerduty.post(
        "/webhook_subscriptions", json=body, acting_email=run.acting_email, operation="POST /webhook_subscriptions"
    )
    sub = created["webhook_subscription"]
    secret = (sub.get("delivery_method") or {}).get("secret")
    if not secret:
        raise Refused(f"PagerDuty returned no secret for webhook subscription {sub['id']}")
    await run.store.put_link(
        Link(
            kind=SECRET_KIND,
            pd_id=sub["id"],
            sn_id=f"service:{service_id}",
            state={"secret": secret, "service": service_id, "url": url},
        )
    )
    return sub["id"], "created"
