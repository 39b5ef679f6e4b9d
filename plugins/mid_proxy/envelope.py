"""The relay protocol: a request envelope and its answer, JSON signed with HMAC-SHA256.

The signature covers the exact body bytes; the body carries a timestamp and a nonce, so
the relay refuses stale and replayed envelopes, and the answer repeats the nonce.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from yarl import URL

VERSION = 1
SIGNATURE_HEADER = "X-Dutybridge-Signature"
EXECUTE_PATH = "/v1/execute"
HEALTH_PATH = "/health"
#: Hop-by-hop and framing headers: each side's HTTP client sets its own.
HOP_HEADERS = frozenset(
    {
        "connection",
        "content-length",
        "transfer-encoding",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "proxy-connection",
    }
)


class EnvelopeError(ValueError):
    """An envelope or answer is refused; ``status`` is the HTTP status the relay answers."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def sign(secret: bytes, body: bytes) -> str:
    return "v1=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(secret: bytes, body: bytes, signature: str | None) -> bool:
    return bool(signature) and hmac.compare_digest(sign(secret, body), signature or "")


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


def _unb64(text: Any, what: str) -> bytes | None:
    if text is None:
        return None
    if not isinstance(text, str):
        raise EnvelopeError(400, f"{what}: expected base64 text")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise EnvelopeError(400, f"{what}: not valid base64") from None


def request_envelope(
    *,
    method: str,
    url: str,
    headers: list[tuple[str, str]],
    params: list[tuple[str, str]],
    body: bytes | None,
    timeout: float,
    ecc: dict[str, str],
    now: float | None = None,
    nonce: str | None = None,
) -> tuple[dict[str, Any], bytes]:
    """(envelope, its JSON bytes) for one request; a fresh nonce unless given."""
    envelope = {
        "v": VERSION,
        "nonce": nonce or secrets.token_hex(16),
        "ts": time.time() if now is None else now,
        "method": method,
        "url": url,
        "headers": [list(h) for h in headers if h[0].lower() not in HOP_HEADERS],
        "params": [list(p) for p in params],
        "body": _b64(body),
        "timeout": timeout,
        "ecc": dict(ecc),
    }
    return envelope, json.dumps(envelope, separators=(",", ":")).encode()


def parse_request(body: bytes) -> dict[str, Any]:
    """The checked envelope (``body`` decoded to bytes); EnvelopeError(400) names the field."""
    try:
        env = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise EnvelopeError(400, "the envelope is not JSON") from None
    if not isinstance(env, dict) or env.get("v") != VERSION:
        raise EnvelopeError(400, f"expected an envelope of version {VERSION}")
    for key, kind in (
        ("nonce", str),
        ("method", str),
        ("url", str),
        ("ts", (int, float)),
        ("timeout", (int, float)),
        ("headers", list),
        ("params", list),
        ("ecc", dict),
    ):
        if not isinstance(env.get(key), kind) or isinstance(env.get(key), bool):
            raise EnvelopeError(400, f"envelope.{key}: missing or of the wrong type")
    for key in ("headers", "params"):
        if not all(isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in env[key]):
            raise EnvelopeError(400, f"envelope.{key}: expected [[name, value], ...]")
    if not 0 < env["timeout"] <= 600:
        raise EnvelopeError(400, "envelope.timeout: expected 0 < seconds <= 600")
    env["body"] = _unb64(env.get("body"), "envelope.body")
    return env


def answer_envelope(nonce: str, status: int, headers: list[tuple[str, str]], body: bytes, elapsed: float) -> bytes:
    return json.dumps(
        {
            "v": VERSION,
            "nonce": nonce,
            "status": status,
            "headers": [[k, v] for k, v in headers if k.lower() not in HOP_HEADERS],
            "body": _b64(body),
            "elapsed": elapsed,
        },
        separators=(",", ":"),
    ).encode()


def parse_answer(body: bytes, nonce: str) -> dict[str, Any]:
    """The relay's answer to the envelope ``nonce``; EnvelopeError(502) if it is not one."""
    try:
        answer = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise EnvelopeError(502, "the relay's answer is not JSON") from None
    if not isinstance(answer, dict) or answer.get("nonce") != nonce:
        raise EnvelopeError(502, "the relay's answer is not for this request")
    if not isinstance(answer.get("status"), int) or not isinstance(answer.get("headers"), list):
        raise EnvelopeError(502, "the relay's answer lacks status or headers")
    answer["body"] = _unb64(answer.get("body"), "answer.body") or b""
    return answer


class NonceCache:
    """Nonces seen within the freshness window: a second envelope with one is a replay.

    Entries older than the window are dropped as new ones come (an envelope that old is
    refused as stale anyway), so memory is bounded by the request rate times the window.
    """

    def __init__(self, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self._clock = clock
        self._seen: OrderedDict[str, float] = OrderedDict()

    def add(self, nonce: str) -> bool:
        """True when ``nonce`` is new (and now remembered); False for a replay."""
        now = self._clock()
        while self._seen:
            oldest, at = next(iter(self._seen.items()))
            if now - at <= self.window:
                break
            del self._seen[oldest]
        if nonce in self._seen:
            return False
        self._seen[nonce] = now
        return True

    def __len__(self) -> int:
        return len(self._seen)


def host_allowed(url: str, allowed: list[str]) -> bool:
    """Whether ``url``'s host is in ``allowed`` (HOST, HOST:PORT, *.DOMAIN)."""
    try:
        u = URL(url)
    except (ValueError, TypeError):
        return False
    if u.scheme not in ("http", "https") or not u.host:
        return False
    host = u.host.lower().rstrip(".")
    for entry in allowed:
        name, _, port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
        if port and (not port.isdigit() or int(port) != u.port):
            continue
        if name.startswith("*."):
            if host.endswith(name[1:]) and host != name[2:]:
                return True
        elif host == name:
            return True
    return False
