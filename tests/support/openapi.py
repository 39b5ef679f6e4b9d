"""Validate PagerDuty REST requests and responses against PagerDuty's OpenAPI file.

    from tests.support.openapi import validate_request, validate_response

    validate_request("PUT", "/incidents/PABC123", {}, headers, body)
    validate_response("GET", "/incidents", {"statuses[]": ["triggered"]}, 200, headers, body)

Both raise ``AssertionError`` listing every problem (a JSON path and the reason) and
return ``None`` when the message matches the operation in the vendored subset of
PagerDuty's file, ``tests/support/reference/pagerduty-openapi/openapiv3.json`` (made by
``scripts/vendor_openapi.py``; source and version in the README beside it). Arguments:

* ``method``: HTTP method, any case.
* ``path``: the API path, e.g. ``/incidents/PABC123`` (a full ``https://api.pagerduty.com/...``
  URL or a trailing ``?query`` is accepted too).
* ``query``: a mapping (values may be lists for repeated ``statuses[]``-style
  parameters), a list of ``(name, value)`` pairs, a query string, or ``None``.
* ``status``: the response's HTTP status.
* ``headers``: a mapping of header names to values (case-insensitive); for requests it
  must include ``Authorization`` and, where the operation requires it, ``From``.
* ``body``: ``bytes``/``str`` (the raw JSON) or an already-parsed ``dict``/``list``;
  ``None`` or ``b""`` for no body.

The file is loaded once per process (about a second) and shared. Where PagerDuty's file
contradicts itself, the validator applies these allowances, and nothing else:

1. the document itself is not validated (a parameter has a string default on an
   integer schema);
2. every ``readOnly`` flag is removed, because reference objects
   (``{"id", "type": "service_reference"}``) mark ``id``/``type`` read-only although
   requests must send them (pagerduty-notes.md);
3. ``AcknowledgeLogEntry`` allows ``type: "acknowledge_log_entry"``: it is ``allOf``
   ``LogEntry`` (whose ``type`` enum has ``acknowledge_log_entry``) and a second schema
   whose enum has only ``acknowledgement_log_entry``, so nothing could validate; PagerDuty
   sends ``acknowledge_log_entry`` (V2 webhook examples);
4. a log entry's ``Channel`` is ``anyOf`` its variants instead of ``oneOf``: the five
   variants (API, email, web trigger, website, Nagios) differ only in optional
   properties, so every channel PagerDuty sends (``{"type": "website"}`` in the V2
   examples) matches several and ``oneOf`` would reject it;
5. ``GET /incident_workflows/{id}`` documents only a 201 ("created" for a read); a 200
   with the same body is accepted too;
6. ``Incident.priority``, ``Incident.resolved_at`` and ``Incident.resolve_reason`` may be
   ``null``: the file's own Incident examples answer ``"resolved_at": null`` and
   ``"resolve_reason": null``, ``resolved_at`` is documented as "`null` if the incident is
   not resolved", and an incident without a priority has ``"priority": null``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tests.support.reference import OPENAPI_PATH

__all__ = ["SPEC_PATH", "load_spec", "openapi", "validate_request", "validate_response"]

SPEC_PATH = OPENAPI_PATH
_HOST = "https://api.pagerduty.com"


def _strip_read_only(node: Any) -> None:
    if isinstance(node, dict):
        node.pop("readOnly", None)
        for value in node.values():
            _strip_read_only(value)
    elif isinstance(node, list):
        for value in node:
            _strip_read_only(value)


def _allowances(spec: dict) -> None:
    schemas = spec["components"]["schemas"]
    ack = schemas["AcknowledgeLogEntry"]["allOf"][1]["properties"]["type"]
    ack["enum"] = sorted(set(ack["enum"]) | {"acknowledge_log_entry"})
    workflow_get = spec["paths"]["/incident_workflows/{id}"]["get"]["responses"]
    if "200" not in workflow_get and "201" in workflow_get:
        workflow_get["200"] = workflow_get["201"]
    channel = schemas["Channel"]
    channel["anyOf"] = channel.pop("oneOf")
    incident_props = schemas["Incident"]["allOf"][1]["properties"]
    for name in ("priority", "resolved_at", "resolve_reason"):
        incident_props[name] = _or_null(incident_props[name])
    # IncidentBody.details is typed as an object, but the file's own createIncident
    # example and the Incident Creation API page send a string (what the API takes):
    # accept both rather than reject what PagerDuty documents.
    body = schemas["IncidentBody"]["properties"]["details"]
    schemas["IncidentBody"]["properties"]["details"] = {
        "anyOf": [body, {"type": "string"}],
        "description": body.get("description", ""),
    }


def _or_null(schema: dict) -> dict:
    """``schema`` or ``null`` (``nullable`` beside an ``allOf``/``$ref`` would not let null through)."""
    return {"anyOf": [schema, {"nullable": True, "enum": [None]}]}


@cache
def load_spec(path: str | Path = SPEC_PATH) -> dict:
    """The OpenAPI document with the allowances above applied (a fresh copy is not made: do not mutate)."""
    with open(path, "rb") as fh:
        spec = json.load(fh)
    _strip_read_only(spec)
    _allowances(spec)
    return spec


@cache
def openapi(path: str | Path = SPEC_PATH):
    """The cached ``openapi_core.OpenAPI`` object for the file."""
    from openapi_core import Config, OpenAPI

    return OpenAPI.from_dict(copy.deepcopy(load_spec(path)), config=Config(spec_validator_cls=None))


# ------------------------------------------------------------------ helpers


def _split(path: str, query: Any) -> tuple[str, list[tuple[str, str]]]:
    pairs: list[tuple[str, str]] = []
    parts = urlsplit(path)
    if parts.query:
        pairs.extend(parse_qsl(parts.query, keep_blank_values=True))
    path = parts.path or "/"
    if query is None:
        pass
    elif isinstance(query, str):
        pairs.extend(parse_qsl(query.lstrip("?"), keep_blank_values=True))
    elif isinstance(query, Mapping):
        getall = getattr(query, "getall", None)
        for key in query.keys() if getall is None else dict.fromkeys(query.keys()):
            values = getall(key) if getall is not None else query[key]
            if isinstance(values, (list, tuple)):
                pairs.extend((key, _qs(v)) for v in values)
            else:
                pairs.append((key, _qs(values)))
    else:
        pairs.extend((k, _qs(v)) for k, v in query)
    return path, pairs


def _qs(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _raw(body: Any) -> bytes:
    if body is None:
        return b""
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode("utf-8")
    return json.dumps(body).encode("utf-8")


def _headers(headers: Mapping[str, str] | Iterable[tuple[str, str]] | None) -> dict[str, str]:
    if headers is None:
        return {}
    items = headers.items() if hasattr(headers, "items") else headers
    return {str(k): str(v) for k, v in items}


def _content_type(headers: dict[str, str], default: str = "application/json") -> str:
    for key, value in headers.items():
        if key.lower() == "content-type":
            return value.split(";")[0].strip()
    return default


def _cut(text: str, n: int = 240) -> str:
    return text if len(text) <= n else text[:n] + "..."


def _describe(errors: list[Exception]) -> list[str]:
    lines: list[str] = []

    def walk(exc: BaseException, depth: int) -> None:
        schema_errors = list(getattr(exc, "schema_errors", []) or [])
        if schema_errors:
            for se in schema_errors:
                where = "/".join(str(p) for p in getattr(se, "absolute_path", getattr(se, "path", []))) or "<root>"
                lines.append(f"{'  ' * depth}- at {where}: {_cut(getattr(se, 'message', str(se)))}")
                for ctx in (getattr(se, "context", None) or [])[:8]:
                    cwhere = "/".join(str(p) for p in ctx.absolute_path) or "<root>"
                    lines.append(f"{'  ' * (depth + 1)}. at {cwhere}: {_cut(ctx.message)}")
            return
        lines.append(f"{'  ' * depth}- {type(exc).__name__}: {_cut(str(exc))}")
        cause = exc.__cause__ or exc.__context__
        if cause is not None and depth < 4 and getattr(cause, "schema_errors", None):
            walk(cause, depth + 1)

    for err in errors:
        walk(err, 0)
    return lines


def _mock_request(method: str, path: str, query: Any, headers: Any = None, body: Any = None):
    from openapi_core.testing import MockRequest

    clean_path, pairs = _split(path, query)
    if clean_path.startswith(_HOST):
        clean_path = clean_path[len(_HOST) :]
    hdrs = _headers(headers)
    return MockRequest(
        _HOST, method.lower(), clean_path, args=pairs, headers=hdrs, data=_raw(body), content_type=_content_type(hdrs)
    ), clean_path


# --------------------------------------------------------------- public API


def validate_request(method: str, path: str, query: Any = None, headers: Any = None, body: Any = None) -> None:
    """Assert a request a PagerDuty client is about to send matches the operation's parameters, security and body."""
    request, clean = _mock_request(method, path, query, headers, body)
    errors = list(openapi().iter_request_errors(request))
    if errors:
        raise AssertionError(
            f"{method.upper()} {clean}: request does not match PagerDuty's OpenAPI description:\n"
            + "\n".join(_describe(errors))
        )


def validate_response(method: str, path: str, query: Any, status: int, headers: Any, body: Any) -> None:
    """Assert a response (status, content type, body) matches what the operation documents."""
    from openapi_core.testing import MockResponse

    request, clean = _mock_request(method, path, query)
    hdrs = _headers(headers)
    response = MockResponse(_raw(body), status_code=status, headers=hdrs, content_type=_content_type(hdrs))
    errors = list(openapi().iter_response_errors(request, response))
    if errors:
        snippet = _raw(body)[:600].decode("utf-8", "replace")
        raise AssertionError(
            f"{method.upper()} {clean} -> {status}: response does not match PagerDuty's OpenAPI description:\n"
            + "\n".join(_describe(errors))
            + f"\nbody: {snippet}"
        )
