"""Web helpers for the daemon's routes and plugins' routes: JSON errors, bounded bodies,
credential checks, the request middleware. A public module: plugins use it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import itertools
import json
import os
import re
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import hdrs, web
from multidict import CIMultiDict

from .context import Ctx

log = structlog.get_logger("dutybridge.server")

CTX_KEY: web.AppKey[Ctx] = web.AppKey("dutybridge.ctx", Ctx)
"""Where handlers find ``ctx`` (looked up through ``request.config_dict``, so a sub-app works)."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_REQUEST_ID_BAD = re.compile(r"[^A-Za-z0-9._:\-]")
_REALM = 'realm="dutybridge"'


def ctx_of(request: web.Request) -> Ctx:
    """The running daemon's ``ctx``, found at request time: a reload that swaps
    ``ctx.config`` (secrets, limits) applies to the next request."""
    return request.config_dict[CTX_KEY]


class Reject(Exception):
    """A request refused with ``status``; ``code`` is the metrics label, ``reason`` the answer."""

    def __init__(self, status: int, code: str, reason: str, headers: dict[str, str] | None = None):
        super().__init__(reason)
        self.status = status
        self.code = code
        self.reason = reason
        self.headers = headers or {}


def error_response(status: int, reason: str, headers: Any = None, **extra: Any) -> web.Response:
    """The one shape of every error answer: ``{"error": reason}``."""
    return web.json_response({"error": reason, **extra}, status=status, headers=headers)


def accepted(row_id: int) -> web.Response:
    # What json_response({"status": "accepted", "id": row_id}, status=202) sends, byte for
    # byte, without a json.dumps per webhook.
    return web.Response(
        text=f'{{"status": "accepted", "id": {int(row_id)}}}', status=202, content_type="application/json"
    )


# -- middleware ----------------------------------------------------------------------
# A generated request id: this process's random prefix and a counter, 32 hex digits
# like a uuid4's. Unique (the prefix is fresh per process) and much cheaper than
# reading the OS's random source on every request; it needs to correlate, not be secret.
_REQUEST_ID_PREFIX = os.urandom(8).hex()
_request_counter = itertools.count(1)


def _request_id(value: str | None) -> str:
    if value:
        # Echoed in a header and written to every log line: keep it short and inert.
        clean = _REQUEST_ID_BAD.sub("", value)[:128]
        if clean:
            return clean
    return f"{_REQUEST_ID_PREFIX}{next(_request_counter):016x}"


@web.middleware
async def request_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Bind a request id to the logs, echo it, and turn every error into JSON.

    Covers aiohttp's own 404/405/413 as well as a handler's crash (500, logged with the
    traceback, answered without it).
    """
    request_id = _request_id(request.headers.get("X-Request-Id"))
    # Tokens rather than bound_contextvars(): the same, at a third of the cost. The reset
    # matters: a keep-alive connection serves its requests one after another in one task.
    tokens = structlog.contextvars.bind_contextvars(request_id=request_id)
    try:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400 or exc.content_type == "application/json":
                # Redirects, and errors a plugin route already shaped as JSON, pass as they are.
                exc.headers["X-Request-Id"] = request_id
                raise
            headers = CIMultiDict(exc.headers)
            for name in (hdrs.CONTENT_TYPE, hdrs.CONTENT_LENGTH):
                headers.popall(name, None)
            reason = (exc.reason or "error").lower()
            if exc.text and exc.text != f"{exc.status}: {exc.reason}":
                reason = exc.text  # a route's own words, e.g. HTTPBadRequest(text="...")
            if isinstance(exc, web.HTTPMethodNotAllowed):
                reason = f"method {exc.method} not allowed (allowed: {', '.join(sorted(exc.allowed_methods))})"
            elif isinstance(exc, web.HTTPNotFound):
                reason = f"not found: {request.path}"
            response = error_response(exc.status, reason, headers=headers)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("request_failed", method=request.method, path=request.path)
            response = error_response(500, "internal error")
        if not response.prepared:
            response.headers["X-Request-Id"] = request_id
        return response
    finally:
        structlog.contextvars.reset_contextvars(**tokens)


# -- reading and checking requests -----------------------------------------------------
def _too_large(limit: int) -> Reject:
    return Reject(413, "too_large", f"body larger than {limit} bytes", headers={"Connection": "close"})


async def read_body(request: web.Request, limit: int) -> bytes:
    """The raw body, or Reject(413) having read at most ``limit`` + 1 bytes.

    Content-Length is checked first; a chunked body is counted as it streams. What the
    client still sends after a 413 is discarded by aiohttp (bounded lingering), never
    buffered, and the connection is closed.
    """
    length = request.content_length
    if length is not None and length > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    # With a Content-Length the parser passes exactly that many bytes: once they are
    # here, no read for the end of the stream is needed. Chunked: read to the end.
    while size != length:
        chunk = await request.content.read(limit + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
    return b"".join(chunks)


def parse_json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        # ValueError covers bad UTF-8 too; the decoder's message names the position only.
        raise Reject(400, "bad_json", "body: not valid JSON") from None
    if not isinstance(data, dict):
        raise Reject(400, "bad_json", "body: expected a JSON object")
    return data


def parse_json_object_text(body: bytes) -> tuple[dict[str, Any], str | None]:
    """``parse_json_object``, and the body as text when it is plain UTF-8 (else None:
    UTF-16 or UTF-32, a byte order mark, lone surrogates), so it can be stored as sent."""
    try:
        text = body.decode("utf-8")
        data = json.loads(text)
    except (ValueError, RecursionError):
        # json.loads(bytes) takes what the text path refuses (other encodings, a BOM).
        return parse_json_object(body), None
    if not isinstance(data, dict):
        raise Reject(400, "bad_json", "body: expected a JSON object")
    return data, text


def with_key(text: str | None, doc: dict[str, Any], key: str, value: Any) -> str | None:
    """JSON text that ``json.loads`` reads as ``{**doc, key: value}`` (same keys, same
    order), made from ``text``, the JSON ``doc`` was read from, without encoding ``doc``
    again. None when ``text`` is None.

    The key goes in last; if the sender already used it, JSON's last-one-wins keeps its
    place and takes the new value, as a dict does.
    """
    if text is None:
        return None
    head = text.rstrip()
    if not head.endswith("}"):
        return None
    return f"{head[:-1]}{',' if doc else ''}{json.dumps(key)}:{json.dumps(value)}}}"


def check_credentials(header: str | None, *, token: str = "", username: str = "", password: str = "") -> bool:
    """True when ``Authorization`` carries the bearer ``token`` or basic ``username``/``password``.

    An empty ``token`` (or username/password) disables that scheme.
    """
    if not header:
        return False
    scheme, _, credentials = header.strip().partition(" ")
    scheme, credentials = scheme.lower(), credentials.strip()
    if scheme == "bearer" and token:
        return hmac.compare_digest(credentials.encode("utf-8", "replace"), token.encode("utf-8"))
    if scheme == "basic" and username and password:
        try:
            decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            return False
        user, sep, pw = decoded.partition(":")
        user_ok = hmac.compare_digest(user.encode("utf-8"), username.encode("utf-8"))
        pw_ok = hmac.compare_digest(pw.encode("utf-8"), password.encode("utf-8"))
        return bool(sep) and user_ok and pw_ok
    return False


def challenge(token: bool, basic: bool) -> dict[str, str]:
    schemes = ([f"Bearer {_REALM}"] if token else []) + ([f'Basic {_REALM}, charset="UTF-8"'] if basic else [])
    return {"WWW-Authenticate": ", ".join(schemes)}


def secret_value(value: Any) -> str:
    return value.get_secret_value() if value is not None else ""


def doorbell_auth(request: web.Request, sn_config: Any) -> None:
    """Authenticate a request with the doorbell credentials of ``[servicenow]`` (``sn_config``).

    Raises ``Reject`` 503 when no doorbell credential is configured, 401 with a
    challenge naming the configured schemes when the ``Authorization`` header is wrong.
    """
    token = secret_value(sn_config.doorbell_token)
    username, password = sn_config.doorbell_username, secret_value(sn_config.doorbell_password)
    basic = bool(username and password)
    if not (token or basic):
        raise Reject(
            503,
            "not_configured",
            "no doorbell credential is configured ([servicenow] doorbell_token, or doorbell_username and doorbell_password)",
        )
    if not check_credentials(
        request.headers.get(hdrs.AUTHORIZATION),
        token=token,
        username=username if basic else "",
        password=password if basic else "",
    ):
        raise Reject(401, "unauthorized", "missing or wrong credentials", headers=challenge(bool(token), basic))


def require_string(
    obj: dict[str, Any], key: str, path: str, pattern: re.Pattern[str] | None = None, what: str = "a non-empty string"
) -> str:
    value = obj.get(key)
    if value is None:
        raise Reject(400, "bad_envelope", f"{path}: required field is missing")
    if not isinstance(value, str) or not value or (pattern is not None and not pattern.fullmatch(value)):
        raise Reject(400, "bad_envelope", f"{path}: expected {what}")
    return value


def require_object(obj: dict[str, Any], key: str, path: str) -> dict[str, Any]:
    value = obj.get(key)
    if value is None:
        raise Reject(400, "bad_envelope", f"{path}: required field is missing")
    if not isinstance(value, dict):
        raise Reject(400, "bad_envelope", f"{path}: expected an object")
    return value


def guarded(route: str, handler: Handler) -> Handler:
    """Answer a ``Reject`` as JSON, count it, and log it (never headers or secrets)."""

    async def guarded_handler(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except Reject as rej:
            ctx = request.config_dict.get(CTX_KEY)
            if ctx is not None and ctx.metrics is not None:
                ctx.metrics.webhook_rejected(route, rej.code)
            level = log.error if rej.status >= 500 else log.warning
            level("webhook rejected", route=route, status=rej.status, reason=rej.code, detail=rej.reason)
            response = error_response(rej.status, rej.reason, headers=rej.headers)
            if rej.status == 413:
                response.force_close()
            return response

    return guarded_handler
