"""Tag every ServiceNow call with a correlation id, so ServiceNow's transaction log
can be matched with dutybridge's. Retries of one call carry the same id."""

import uuid


def outbound_request(request, ctx):
    if request.service != "servicenow":
        return
    # request.extra travels with the call across retries; headers are rebuilt per attempt.
    correlation = request.extra.setdefault("correlation_id", uuid.uuid4().hex)
    request.headers["X-Correlation-Id"] = correlation
