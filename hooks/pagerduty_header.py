"""Add a header to every PagerDuty API call (e.g. for an egress proxy's routing rules)."""


def outbound_request(request, ctx):
    if request.service == "pagerduty":
        request.headers["X-Acme-Integration"] = "dutybridge"
