"""``dutybridge hooks test FILE --request JSON``: try a hook file on a sample request.

The file is loaded as the daemon loads it and its ``outbound_request`` runs through the
pipeline's own hook step; the request it would send is printed, and nothing is sent.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import IO, Any

from multidict import CIMultiDict

from .http import HookFailed, OutboundPipeline, OutboundRequest, RequestVetoed
from .plugins import PluginError, hook_file_manager

#: Keys of the sample request, and whether each is required.
REQUEST_KEYS = {
    "method": True,
    "url": True,
    "service": True,
    "operation": False,
    "headers": False,
    "params": False,
    "json": False,
    "timeout": False,
}


class SampleError(ValueError):
    """The sample request is not usable; the message names the key."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="hooks_command", metavar="ACTION", required=True)
    p = sub.add_parser(
        "test", help="run a hook file on a sample request and print what would be sent (nothing is sent; ctx is None)"
    )
    p.add_argument("file", type=Path, help="the hook file (*.py)")
    p.add_argument(
        "--request",
        required=True,
        metavar="JSON",
        help='the sample request as JSON, or @PATH of a JSON file: {"method": "POST", '
        '"url": "https://api.pagerduty.com/incidents", "service": "pagerduty", '
        '"operation": "POST /incidents", "headers": {}, "params": [], "json": {}, "timeout": 30}',
    )


def parse_sample(text: str) -> OutboundRequest:
    """An ``OutboundRequest`` from the sample's JSON; SampleError names what is wrong."""
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text()
        except OSError as exc:
            raise SampleError(f"--request: cannot read {text[1:]}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SampleError(f"--request: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise SampleError("--request: expected a JSON object")
    for key in data:
        if key not in REQUEST_KEYS:
            raise SampleError(f"--request: unknown key {key!r} (known: {', '.join(REQUEST_KEYS)})")
    for key, required in REQUEST_KEYS.items():
        if required and not isinstance(data.get(key), str):
            raise SampleError(f"--request.{key}: required, a string")
    headers = data.get("headers") or {}
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise SampleError("--request.headers: expected an object of strings")
    params = data.get("params") or []
    if isinstance(params, dict):
        params = list(params.items())
    if not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in params):
        raise SampleError("--request.params: expected [[name, value], ...] or an object")
    timeout = data.get("timeout", 30.0)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise SampleError("--request.timeout: expected a positive number of seconds")
    return OutboundRequest(
        method=data["method"].upper(),
        url=data["url"],
        service=data["service"],
        operation=data.get("operation") or "",
        headers=CIMultiDict(headers),
        params=[(str(k), str(v)) for k, v in params],
        json=data.get("json"),
        timeout=float(timeout),
    )


def describe(req: OutboundRequest) -> dict[str, Any]:
    out: dict[str, Any] = {
        "method": req.method,
        "url": req.url,
        "service": req.service,
        "operation": req.operation,
        "headers": dict(req.headers.items()),
        "params": [list(p) for p in req.params],
        "json": req.json,
        "timeout": req.timeout,
    }
    if req.data is not None:
        out["body"] = req.data.decode("utf-8", "replace")
    return out


async def run_hook_test(path: Path, sample: str, out: IO[str], err: IO[str]) -> int:
    """0: printed the changed request; 1: the hook vetoed or raised; 2: bad file or sample."""
    try:
        pm = hook_file_manager(path)
        request = parse_sample(sample)
    except (PluginError, SampleError) as exc:
        print(str(exc), file=err)
        return 2
    if not pm.hook.outbound_request.get_hookimpls():
        print(f"{path}: has no outbound_request hook; nothing to run", file=err)
        return 2
    try:
        prepared = await OutboundPipeline(pm).prepare(request)
    except RequestVetoed as exc:
        print(f"vetoed by {exc.hook}: {exc.reason}", file=err)
        return 1
    except HookFailed as exc:
        print(f"the hook failed at {exc.hook}: {type(exc.__cause__).__name__}: {exc.__cause__}", file=err)
        return 1
    json.dump(describe(prepared), out, indent=2, sort_keys=True)
    out.write("\n")
    return 0
