"""structlog, configured once: JSON lines for journald, colour on a terminal, secrets redacted.

structlog loggers render natively (no stdlib LogRecord, no formatter) and write to the
stream of the one stdlib handler, under its lock; standard-library loggers (aiohttp,
APScheduler) go through that handler's ProcessorFormatter with the same processors, so
every line has the same shape and the same redaction. The level is the root logger's,
read at each call, so ``set_level`` (SIGHUP) applies to both at once.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
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
#: A structlog method name's level (``exception`` logs at error, as in the stdlib).
_METHOD_LEVELS = {
    "debug": logging.DEBUG, "info": logging.INFO, "msg": logging.INFO,
    "warning": logging.WARNING, "warn": logging.WARNING,
    "error": logging.ERROR, "exception": logging.ERROR,
    "critical": logging.CRITICAL, "fatal": logging.CRITICAL,
}
_HANDLER_NAME = "dutybridge"
_root = logging.getLogger()
#: The handler structlog's lines go to (the stdlib's own, so both share stream and lock).
_handler: logging.Handler | None = None


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


_PLAIN = frozenset({int, float, bool, type(None)})


def redact(_logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: drop sensitive keys and scrub secret values everywhere."""
    for key, value in event_dict.items():
        # Replacing values (never adding or removing keys) is safe while iterating.
        if key.lower() in SENSITIVE_KEYS:
            event_dict[key] = REDACTED
        elif type(value) is str:
            if _secrets:
                event_dict[key] = scrub(value)
        elif type(value) not in _PLAIN:
            event_dict[key] = _scrub_value(value)
    return event_dict


def _scrub_rendered(_logger: Any, _name: str, event_dict: Any) -> Any:
    # Last line of defence: a secret inside a formatted traceback or a repr.
    if isinstance(event_dict, str):
        return scrub(event_dict)
    return event_dict


def _json_default(value: Any) -> Any:
    # What structlog's JSONRenderer falls back to: __structlog__(), else the repr.
    try:
        return value.__structlog__()
    except AttributeError:
        return repr(value)


_json_encoder = json.JSONEncoder(default=_json_default)


def render_json(_logger: Any, _name: str, event_dict: dict[str, Any]) -> str:
    """structlog's JSONRenderer with one encoder made once: ``json.dumps(..., default=...)``
    builds a new encoder per line."""
    return _json_encoder.encode(event_dict)


def filter_by_level(_logger: Any, method_name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: drop a line below the root logger's level (or ``logging.disable``).

    Read at each call, so a level changed at run time applies to loggers already
    built and cached.
    """
    level = _METHOD_LEVELS.get(method_name, logging.NOTSET)
    if level < _root.level or level <= _root.manager.disable:
        raise structlog.DropEvent
    return event_dict


class BoundLogger(structlog.make_filtering_bound_logger(logging.NOTSET)):  # type: ignore[misc]
    """structlog's native logger; ``filter_by_level`` (a processor, so that
    ``structlog.testing.capture_logs`` still sees every level) does the filtering.

    A line that cannot be rendered or written is reported on stderr, as the standard
    library's handlers do, never raised into the code that logged it.
    """

    def is_enabled_for(self, level: int) -> bool:
        return level >= _root.level and level > _root.manager.disable

    def get_effective_level(self) -> int:
        return _root.level

    def _proxy_to_logger(self, method_name: str, event: str | None = None, **event_kw: Any) -> Any:
        try:
            return super()._proxy_to_logger(method_name, event, **event_kw)
        except Exception:
            _report_failure(getattr(self._logger, "name", "?"), method_name, event)
            return None


def _report_failure(name: str, method_name: str, event: Any) -> None:
    if not logging.raiseExceptions:
        return
    try:
        sys.stderr.write(f"--- Logging error ---\n{traceback.format_exc()}"
                         f"Logger {name!r}, method {method_name!r}, event {scrub(str(event))[:200]!r}\n")
    except Exception:  # noqa: BLE001 - stderr is gone too; nothing left to tell
        pass


class LineWriter:
    """structlog's wrapped logger: writes a rendered line to the handler's stream.

    One per logger name (``add_logger_name`` reads ``name``). The handler is looked up
    at each line, so loggers cached before a reconfiguration write to the new stream.
    """

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def msg(self, line: str) -> None:
        handler = _handler
        if handler is None:
            return
        handler.acquire()
        try:
            stream = handler.stream  # type: ignore[attr-defined]
            stream.write(line + "\n")
            stream.flush()
        finally:
            handler.release()

    debug = info = warning = warn = error = exception = critical = fatal = msg

    def __repr__(self) -> str:
        return f"<LineWriter {self.name!r}>"


_writers: dict[str, LineWriter] = {}


def _writer_factory(*args: Any) -> LineWriter:
    if args and isinstance(args[0], str):
        name = args[0]
    else:
        # An unnamed get_logger(): name it after the calling module, as the stdlib
        # integration did.
        name = structlog.stdlib.LoggerFactory()(*args).name
    writer = _writers.get(name)
    if writer is None:
        writer = _writers[name] = LineWriter(name)
    return writer


def configure(level: str = "info", fmt: str = "auto", stream=None) -> None:
    """Configure structlog and the standard library's root logger (idempotent)."""
    global _handler
    stream = stream or sys.stdout
    if fmt == "auto":
        fmt = "console" if getattr(stream, "isatty", lambda: False)() else "json"
    common: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if fmt == "json":
        renderer: Any = render_json
        # Never render a traceback's local variables: they hold API keys and passwords.
        final = [structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(show_locals=False))]
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=getattr(stream, "isatty", lambda: False)(),
            exception_formatter=structlog.dev.plain_traceback)
        final = []
    # Loggers cached on first use keep the processor list they were built with:
    # change that list in place, so that a reconfiguration reaches them.
    processors = structlog.get_config()["processors"]
    processors[:] = [filter_by_level, *common, structlog.processors.StackInfoRenderer(),
                     *final, redact, renderer, _scrub_rendered]
    structlog.configure(
        processors=processors,
        logger_factory=_writer_factory,
        wrapper_class=BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*common, structlog.stdlib.ExtraAdder()],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    *final, redact, renderer, _scrub_rendered],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.set_name(_HANDLER_NAME)
    # One handler, ours: a reconfiguration (tests, reload) must not double every line.
    for old in list(_root.handlers):
        if old.get_name() == _HANDLER_NAME:
            _root.removeHandler(old)
    _root.addHandler(handler)
    _handler = handler
    set_level(level)
    # aiohttp's access log repeats what our request logging says, at info; keep it quieter.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("apscheduler.executors").setLevel(logging.WARNING)
    logging.captureWarnings(True)


def set_level(level: str) -> None:
    """The level of every logger, structlog's and the stdlib's; takes effect at the next line."""
    _root.setLevel(LEVELS[level])


def adjust_level(level: str, verbose: int = 0, quiet: int = 0) -> str:
    """Apply -v/-q to a configured level name."""
    order = ["debug", "info", "warning", "error"]
    idx = order.index(level) - verbose + quiet
    return order[max(0, min(len(order) - 1, idx))]
