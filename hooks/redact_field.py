"""Never send a caller's phone number to ServiceNow: drop it from every write."""

_FIELDS = ("u_caller_phone",)


def outbound_request(request, ctx):
    if (
        request.service == "servicenow"
        and request.method in ("POST", "PUT", "PATCH")
        and isinstance(request.json, dict)
    ):
        for field in _FIELDS:
            request.json.pop(field, None)
