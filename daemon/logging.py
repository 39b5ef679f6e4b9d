"""structlog, configured once: JSON lines for journald, colour on a terminal, secrets redacted.

Standard-library loggers (aiohttp, APScheduler) go through the same processors, so
every line has the same shape and the same redaction.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Iterable

import structlog

REDACTED = "[REDACTED]"
#: Keys whose values are never rendered, whatever they hold.
SENSITIVE_KEYS = frozenset({
    "authorization", "password", "passwd", "secret", "secrets", "token", "api_key",
    "apikey", "x-pagerduty-signature", "webhook_secret", "doorbell_token", "cookie",
    "set-cookie", "proxy-authorization",
})

_secrets: tuple[str, ...] = ()
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def set_secrets(values: Iterable[str]) -> None:
    """Values to scrub from every log line (the configured secrets); replaces the old set."""
    global _secrets
    # Longest first, so a secret containing another is scrubbed whole. Very short
    # values would redact ordinary words; four characters is the floor.
    _secrets = tuple(sorted({v for v in values if v and len(v) >= 4}, key=len, reverse=True))


def scrub(text: str) -> str:
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def _scrub_value(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if depth > 4:
        return value
    if isinstance(value, dict):
        return {k: (REDACTED if isinstance(k, str) and k.lower() in SENSITIVE_KEYS else _scrub_value(v, depth + 1))
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_scrub_value(v, depth + 1) for v in value)
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    return scrub(repr(value)) if _secrets else value


def redact(_logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: drop sensitive keys and scrub secret values everywhere."""
    for key in list(event_dict):
        if key.lower() in SENSITIVE_KEYS:
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _scrub_value(event_dict[key])
    return event_dict


def _scrub_rendered(_logger: Any, _name: str, event_dict: Any) -> Any:
    # Last line of defence: a secret inside a formatted traceback or a repr.
    if isinstance(event_dict, str):
        return scrub(event_dict)
    return event_dict


def configure(level: str = "info", fmt: str = "auto", stream=None) -> None:
    """Configure structlog and the standard library's root logger (idempotent)."""
    stream = stream or sys.stdout
    if fmt == "auto":
        fmt = "console" if getattr(stream, "isatty", lambda: False)() else "json"
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.stdlib.ExtraAdder(),
    ]
    if fmt == "json":
        renderer: Any = structlog.processors.JSONRenderer()
        # Never render a traceback's local variables: they hold API keys and passwords.
        final = [structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(show_locals=False))]
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=getattr(stream, "isatty", lambda: False)(),
            exception_formatter=structlog.dev.plain_traceback)
        final = []
    structlog.configure(
        processors=[structlog.stdlib.filter_by_level, *shared,
                    structlog.processors.StackInfoRenderer(),
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    *final, redact, renderer, _scrub_rendered],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.set_name("dutybridge")
    root = logging.getLogger()
    # One handler, ours: a reconfiguration (tests, reload) must not double every line.
    for old in list(root.handlers):
        if old.get_name() == "dutybridge":
            root.removeHandler(old)
    root.addHandler(handler)
    set_level(level)
    # aiohttp's access log repeats what our request logging says, at info; keep it quieter.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("apscheduler.executors").setLevel(logging.WARNING)
    logging.captureWarnings(True)


def set_level(level: str) -> None:
    logging.getLogger().setLevel(LEVELS[level])


def adjust_level(level: str, verbose: int = 0, quiet: int = 0) -> str:
    """Apply -v/-q to a configured level name."""
    order = ["debug", "info", "warning", "error"]
    idx = order.index(level) - verbose + quiet
    return order[max(0, min(len(order) - 1, idx))]
