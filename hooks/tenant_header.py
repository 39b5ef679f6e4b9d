"""Add the tenant's name to every outbound call, for a shared egress gateway's routing.

The tenant is read once at load from $DUTYBRIDGE_TENANT (reload to change it)."""

import os

_TENANT = os.environ.get("DUTYBRIDGE_TENANT", "default")


def outbound_request(request, ctx):
    request.headers["X-Tenant"] = _TENANT
