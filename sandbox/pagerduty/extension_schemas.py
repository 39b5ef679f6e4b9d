"""Extension schemas the sandbox offers (``GET /extension_schemas``): the Generic V2
Webhook and ServiceNow (v7), under PagerDuty's own ids."""

from __future__ import annotations

# Ids are PagerDuty's: ``PJFWPEP`` is the Generic V2 Webhook schema (the id in the webhook
# docs and the OpenAPI examples), ``PAKM60Z`` is "ServiceNow (v7)" (the id the Terraform
# provider's acceptance tests read back from PagerDuty).
GENERIC_V2_WEBHOOK = "PJFWPEP"
SERVICENOW_V7 = "PAKM60Z"

_V2_SEND_TYPES = ["trigger", "acknowledge", "resolve", "delegate", "escalate", "unacknowledge", "assign"]

SCHEMAS: list[dict] = [
    {
        "id": GENERIC_V2_WEBHOOK,
        "summary": "Generic V2 Webhook",
        "label": "Generic V2 Webhook",
        "key": "generic_v2_webhook",
        "description": "Send incident events as V2 webhooks (messages array) to an arbitrary URL.",
        "guide_url": "https://developer.pagerduty.com/docs/webhooks/v2-overview/",
        "icon_url": "https://app.pagerduty.com/assets/webhook-icon.png",
        "logo_url": "https://app.pagerduty.com/assets/webhook-logo.png",
        "send_types": list(_V2_SEND_TYPES),
        "url": "",
    },
    {
        "id": SERVICENOW_V7,
        "summary": "ServiceNow (v7)",
        "label": "ServiceNow (v7)",
        "key": "servicenow_v7",
        "description": "Sync incidents with ServiceNow through the PagerDuty ServiceNow application.",
        "guide_url": "https://support.pagerduty.com/main/docs/servicenow-v7-integration-guide",
        "icon_url": "https://app.pagerduty.com/assets/servicenow-icon.png",
        "logo_url": "https://app.pagerduty.com/assets/servicenow-logo.png",
        "send_types": list(_V2_SEND_TYPES),
        "url": "",
    },
]

# Schemas whose extensions receive V2 webhooks (``{"messages": [...]}``).
V2_WEBHOOK_SCHEMAS = frozenset({GENERIC_V2_WEBHOOK, SERVICENOW_V7})
