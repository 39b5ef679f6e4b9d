"""Keep notes that look like credentials out of both systems.

A PagerDuty note matching the pattern is vetoed (the event fails with this file's
message and shows in `dutybridge events list`); a matching ServiceNow work note or
comment is removed from the write, the rest of which goes through."""

import re

from dutybridge.http import RequestVetoed

_PATTERN = re.compile(r"(?i)\b(password|passwd|secret|api[_ -]?key)\s*[:=]")
_SERVICENOW_FIELDS = ("work_notes", "comments")


def outbound_request(request, ctx):
    body = request.json if isinstance(request.json, dict) else None
    if body is None:
        return
    if request.service == "pagerduty" and request.operation == "POST /incidents/{id}/notes":
        content = (body.get("note") or {}).get("content") or ""
        if _PATTERN.search(content):
            raise RequestVetoed("the note looks like it holds a credential; not sent to PagerDuty")
    elif request.service == "servicenow" and request.method in ("POST", "PUT", "PATCH"):
        for field in _SERVICENOW_FIELDS:
            if isinstance(body.get(field), str) and _PATTERN.search(body[field]):
                del body[field]
