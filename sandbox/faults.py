"""Fault injection for the sandbox: 5xx answers, latency, hangs, resets, 429 bursts.

A spec is a list of rules, each optionally scoped to a method and a path glob:

    seed=7; error_rate=0.1; latency_ms=20
    POST /incidents*: timeout_rate=0.5
    GET /api/now/table/*: reset_rate=0.2, burst429_rate=0.05, burst429_len=3

Rules separated by ";" or newlines. A rule without a scope applies to every route;
a scoped rule's keys override the global ones for the routes it matches (the last
matching rule wins per key). Decisions come from one ``random.Random(seed)``, so a
run is repeatable for the same sequence of requests.
"""

from __future__ import annotations

import asyncio
import fnmatch
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

from aiohttp import web

KEYS = {
    "error_rate": float,  # fraction of requests answered 500/502/503
    "latency_ms": float,  # added to every matching request
    "timeout_rate": float,  # fraction never answered (held for hang_seconds)
    "hang_seconds": float,
    "reset_rate": float,  # fraction whose connection is closed with no answer
    "burst429_rate": float,  # chance that a request starts a burst of 429s
    "burst429_len": int,  # how many consecutive requests a burst answers 429
}


class FaultSpecError(ValueError):
    """A fault spec could not be parsed; the message says which part and why."""


@dataclass(frozen=True)
class FaultSettings:
    error_rate: float = 0.0
    latency_ms: float = 0.0
    timeout_rate: float = 0.0
    hang_seconds: float = 60.0
    reset_rate: float = 0.0
    burst429_rate: float = 0.0
    burst429_len: int = 3


@dataclass(frozen=True)
class FaultRule:
    method: str | None  # None: any method
    pattern: str  # fnmatch glob on the request path
    settings: dict[str, float | int]

    def matches(self, method: str, path: str) -> bool:
        if self.method and self.method != method.upper():
            return False
        return fnmatch.fnmatchcase(path, self.pattern)


def _parse_pairs(text: str, where: str) -> dict[str, float | int]:
    out: dict[str, float | int] = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in pair:
            raise FaultSpecError(f"{where}: expected key=value, found {pair!r}")
        key, value = (s.strip() for s in pair.split("=", 1))
        if key == "seed":
            out["seed"] = int(value)
            continue
        if key not in KEYS:
            raise FaultSpecError(f"{where}: unknown key {key!r} (known: seed, {', '.join(KEYS)})")
        try:
            number = KEYS[key](value.removesuffix("ms") if key == "latency_ms" else value)
        except ValueError:
            raise FaultSpecError(f"{where}: {key} expects a {KEYS[key].__name__}, found {value!r}") from None
        if key.endswith("_rate") and not 0.0 <= number <= 1.0:
            raise FaultSpecError(f"{where}: {key} is a fraction between 0 and 1, found {value}")
        if number < 0:
            raise FaultSpecError(f"{where}: {key} must not be negative, found {value}")
        out[key] = number
    return out


@dataclass
class FaultInjector:
    """Decides, per request, whether and how to misbehave."""

    rules: list[FaultRule] = field(default_factory=list)
    seed: int = 0
    _bursts: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.injected: dict[str, int] = {"error": 0, "timeout": 0, "reset": 0, "429": 0, "latency": 0}

    @classmethod
    def parse(cls, spec: str | list[str] | None) -> FaultInjector:
        if not spec:
            return cls()
        text = ";".join(spec) if isinstance(spec, list) else spec
        rules, seed = [], 0
        for i, part in enumerate(filter(None, (p.strip() for p in text.replace("\n", ";").split(";"))), 1):
            where = f"fault rule {i} ({part!r})"
            method, pattern, body = None, "*", part
            head, sep, rest = part.partition(":")
            if sep and "=" not in head:
                scope = head.split()
                if len(scope) == 2:
                    method, pattern = scope[0].upper(), scope[1]
                elif len(scope) == 1:
                    pattern = scope[0]
                else:
                    raise FaultSpecError(f"{where}: scope must be 'PATH' or 'METHOD PATH'")
                body = rest
            pairs = _parse_pairs(body, where)
            if "seed" in pairs:
                seed = int(pairs.pop("seed"))
            if pairs:
                rules.append(FaultRule(method, pattern, pairs))
        return cls(rules=rules, seed=seed)

    def settings_for(self, method: str, path: str) -> FaultSettings:
        merged: dict[str, float | int] = {}
        for rule in self.rules:
            if rule.matches(method, path):
                merged.update(rule.settings)
        return replace(FaultSettings(), **merged) if merged else FaultSettings()

    @property
    def active(self) -> bool:
        return bool(self.rules)

    def reset(self) -> None:
        self.rng = random.Random(self.seed)
        self._bursts.clear()
        for k in self.injected:
            self.injected[k] = 0


ErrorBody = Callable[[int], dict]


def faults_middleware(get_injector: Callable[[], FaultInjector], error_body: ErrorBody):
    """An aiohttp middleware applying the current injector to every request.

    ``get_injector`` is called per request so a test can swap faults at run time;
    ``error_body(status)`` builds the side's own error body (PagerDuty's or
    ServiceNow's) for injected 5xx and 429 answers.
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
        injector = get_injector()
        if not injector.active:
            return await handler(request)
        s = injector.settings_for(request.method, request.path)
        rng = injector.rng
        if s.latency_ms:
            injector.injected["latency"] += 1
            await asyncio.sleep(s.latency_ms / 1000)
        if s.timeout_rate and rng.random() < s.timeout_rate:
            injector.injected["timeout"] += 1
            await asyncio.sleep(s.hang_seconds)
            raise web.HTTPGatewayTimeout()
        if s.reset_rate and rng.random() < s.reset_rate:
            injector.injected["reset"] += 1
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError()
        remaining = injector._bursts.get("*", 0)
        if remaining == 0 and s.burst429_rate and rng.random() < s.burst429_rate:
            remaining = s.burst429_len
        if remaining > 0:
            injector._bursts["*"] = remaining - 1
            injector.injected["429"] += 1
            return web.json_response(error_body(429), status=429, headers={"Retry-After": "1"})
        if s.error_rate and rng.random() < s.error_rate:
            injector.injected["error"] += 1
            status = rng.choice((500, 502, 503))
            return web.json_response(error_body(status), status=status)
        return await handler(request)

    return middleware


__all__ = ["FaultInjector", "FaultRule", "FaultSettings", "FaultSpecError", "faults_middleware"]
