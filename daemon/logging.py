"""Logging for the daemon: structlog and stdlib lines in one format (JSON lines for journald,
console on a terminal), one level per logger name, configured secrets redacted from every line.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import sys
import time
import traceback
import urllib.parse
from collections.abc import Iterable, Mapping, MutableMapping
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:  # pragma: no cover
    from structlog.typing import Processor

REDACTED = "[REDACTED]"
#: Keys whose values are never rendered, whatever they hold.
SENSITIVE_KEYS = frozenset(
    {
        "authorization",
        "password",
        "passwd",
        "secret",
        "secrets",
        "token",
        "api_key",
        "apikey",
        "x-pagerduty-signature",
        "webhook_secret",
        "doorbell_token",
        "cookie",
        "set-cookie",
        "proxy-authorization",
    }
)
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
#: Libraries held at warning (or the daemon's level, if higher) unless ``daemon.log_levels``
#: names them: at debug aiosqlite alone writes a dozen lines a second, each with its SQL
#: and parameters (webhook payloads among them).
QUIET_LIBRARIES = ("aiosqlite", "asyncpg", "asyncio", "apscheduler", "aiohttp", "urllib3")
#: ``DUTYBRIDGE_DEBUG_SQL=1`` is ``log_levels = {aiosqlite = "debug"}`` without a config
#: edit (and wins over the table's entry, being the narrower ask).
DEBUG_SQL_ENV = "DUTYBRIDGE_DEBUG_SQL"

_HANDLER_NAME = "dutybridge"
_root = logging.getLogger()
#: The handler every line goes to (the stdlib's own, so both kinds share stream and lock).
_handler: logging.Handler | None = None
_secrets: tuple[str, ...] = ()
#: The per-logger levels last configured; a reload that passes none keeps them.
_log_levels: dict[str, str] = {}
#: Loggers given a level of their own by us, so that a new configuration can undo it.
_leveled: set[str] = set()


def secret_forms(values: Iterable[str]) -> set[str]:
    """Every form in which ``values`` travel: as they are, URL-encoded (a query string, a
    form body), base64 (a Basic header's ``user:password``, which Config.secrets() lists
    as a pair, encodes to a string the password's own base64 is no part of)."""
    out: set[str] = set()
    for value in values:
        if not value or len(value) < 4:
            continue
        raw = value.encode("utf-8")
        out.update(
            {value, urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value), urllib.parse.quote(value)}
        )
        for encoded in (base64.b64encode(raw), base64.urlsafe_b64encode(raw)):
            text = encoded.decode("ascii")
            out.update({text, text.rstrip("=")})
    return out


def set_secrets(values: Iterable[str]) -> None:
    """Values to scrub from every log line (the configured secrets, in each of their
    ``secret_forms``); replaces the old set."""
    global _secrets
    # Longest first, so a secret containing another is scrubbed whole. Very short
    # values would redact ordinary words; four characters is the floor.
    _secrets = tuple(sorted({v for v in secret_forms(values) if len(v) >= 4}, key=len, reverse=True))


# A credential after its scheme, wherever a header's text lands (a repr of a dict, an
# HTTP dump): known or not, what follows Basic/Bearer/Token token= is never shown.
_CREDENTIAL = re.compile(
    r"(?i)\b(?P<head>(?:proxy-)?authorization['\"]?\s*[:=]\s*['\"]?|)"
    r"(?P<scheme>basic|bearer|token\s+token|token)(?P<sep>\s+|=['\"]?)"
    r"(?P<cred>[A-Za-z0-9._~+/\-]{6,}=*)"
)


# What every scheme's spelling holds, looked for before the full pattern runs (most values
# are ids and names with none of them). Substring tests on the case-folded text: a regex
# alternation with IGNORECASE cost 37 us on a 380-character log line, these 1.8 us.
def _may_hold_credential(text: str) -> bool:
    """Whatever ``_CREDENTIAL`` (IGNORECASE) could match holds one of these, case-folded."""
    folded = text.casefold()
    if "\u0131" in folded:  # dotless i: IGNORECASE takes it for an i, casefold() keeps it
        folded = folded.replace("\u0131", "i")
    return "asic" in folded or "earer" in folded or "oken" in folded or "uthorization" in folded


def _credential(match: re.Match[str]) -> str:
    head, scheme, cred = match.group("head"), match.group("scheme").lower(), match.group("cred")
    # Outside a header, only what looks like a credential: "Token token=...", or a
    # long word after Basic/Bearer (not "basic income", "token xyz" in prose).
    if not head and not (scheme.startswith("token ") or (scheme != "token" and len(cred) >= 12)):
        return match.group(0)
    return f"{match.group('head')}{match.group('scheme')}{match.group('sep')}{REDACTED}"


def scrub(text: str) -> str:
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    if _may_hold_credential(text):
        text = _CREDENTIAL.sub(_credential, text)
    return text


def _scrub_value(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if depth > 4:
        return value
    if isinstance(value, dict):
        return {
            k: (REDACTED if isinstance(k, str) and k.lower() in SENSITIVE_KEYS else _scrub_value(v, depth + 1))
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return type(value)(_scrub_value(v, depth + 1) for v in value)
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    return scrub(repr(value)) if _secrets else value


_PLAIN = frozenset({int, float, bool, type(None)})


def _may_need_scrub(text: str) -> bool:
    """Whether ``scrub`` could change ``text`` (or any part of it)."""
    for secret in _secrets:
        if secret in text:
            return True
    return _may_hold_credential(text)


def redact(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: drop sensitive keys and scrub secret values everywhere."""
    texts: list[str] = []
    for key, value in event_dict.items():
        # Replacing values (never adding or removing keys) is safe while iterating.
        if key.lower() in SENSITIVE_KEYS:
            event_dict[key] = REDACTED
        elif type(value) is str:
            texts.append(value)
        elif type(value) not in _PLAIN:
            event_dict[key] = _scrub_value(value)
    # Most lines hold nothing to scrub: one look at all their strings at once (a
    # secret in any one of them is in the whole), and value by value only if it finds
    # something. A webhook's line: 10 looks for each secret form instead of 2.
    if texts and _secrets and _may_need_scrub("\n".join(texts)):
        for key, value in event_dict.items():
            if type(value) is str:
                event_dict[key] = scrub(value)
    return event_dict


def _scrub_rendered(_logger: Any, _name: str, line: Any) -> Any:
    # Last line of defence: a secret inside a formatted traceback or a repr.
    return scrub(line) if isinstance(line, str) else line


class _Stamper:
    """structlog processor: ``timestamp`` as ``TimeStamper(fmt="iso", utc=True)`` writes it
    (``2026-12-04T20:10:38.524056Z``), the date and time of day formatted once a second
    instead of at every line: 2.5 us a line instead of 5.4 (a 2 GHz core)."""

    __slots__ = ("_cached",)

    def __init__(self) -> None:
        self._cached: tuple[int, str] = (-1, "")

    def __call__(self, _logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        now = time.time()
        second = int(now)
        cached_second, prefix = self._cached  # one tuple: threads may log at once
        if second != cached_second:
            prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._cached = (second, prefix)
        event_dict["timestamp"] = f"{prefix}.{int((now - second) * 1_000_000):06d}Z"
        return event_dict


def _is_tty(stream: Any) -> bool:
    return bool(getattr(stream, "isatty", lambda: False)())


class LineWriter:
    """structlog's wrapped logger: writes a rendered line to the stdlib handler's stream,
    under its lock, and reports a failed write on stderr as the stdlib's handlers do.

    Kept for speed: handing the event to the stdlib logger instead (a LogRecord, made
    twice by ProcessorFormatter) costs a webhook's line 24.5 us instead of 10.7, and
    bench/ingest.py shows it: 245 vs 222 us of server CPU a request (medians of 6
    alternating rounds). It stands for the stdlib logger of its name (``name``,
    ``disabled``, ``getEffectiveLevel``), so structlog's ``filter_by_level`` and
    ``add_logger_name`` read that logger's level and name.
    """

    __slots__ = ("_logger", "name")

    def __init__(self, logger: logging.Logger) -> None:
        self.name = logger.name
        self._logger = logger

    @property
    def disabled(self) -> bool:
        return self._logger.disabled

    def getEffectiveLevel(self) -> int:
        return self._logger.getEffectiveLevel()

    def msg(self, line: str) -> None:
        handler = _handler
        if handler is None:
            return
        try:
            handler.acquire()
            try:
                stream = handler.stream  # type: ignore[attr-defined]
                stream.write(line + "\n")
                stream.flush()
            finally:
                handler.release()
        except Exception:
            _report_failure(self.name, line)

    debug = info = warning = warn = error = exception = critical = fatal = msg

    def __repr__(self) -> str:
        return f"<LineWriter {self.name!r}>"


def _report_failure(name: str, line: str) -> None:
    if not logging.raiseExceptions:
        return
    try:
        sys.stderr.write(f"--- Logging error ---\n{traceback.format_exc()}Logger {name!r}, line {line[:200]!r}\n")
    except Exception:
        pass


_writers: dict[str, LineWriter] = {}
#: The processor list ``configure`` gave structlog: while it is the one in force, the
#: stdlib levels decide which lines are written (``enabled``).
_processors: list[Processor] | None = None


def enabled(name: str, level: int = logging.DEBUG) -> bool:
    """Whether a line of ``level`` from logger ``name`` would be written: lets a caller
    skip building the fields of a debug line at info (a dozen microseconds a call).
    True whenever another structlog configuration is in force (``capture_logs`` in
    tests, a host application's), which may keep every level."""
    processors = structlog.get_config()["processors"]
    # capture_logs swaps the contents of the same list, hence the look at its first item.
    if processors is not _processors or not processors or processors[0] is not structlog.stdlib.filter_by_level:
        return True
    logger = logging.getLogger(name)
    return not logger.disabled and logger.isEnabledFor(level)


#: For an unnamed get_logger(): named after the calling module, past this one's frames.
_caller_logger = structlog.stdlib.LoggerFactory(ignore_frame_names=[__name__])


def _writer_factory(*args: Any) -> LineWriter:
    name = args[0] if args and isinstance(args[0], str) else None
    writer = _writers.get(name) if name is not None else None
    if writer is None:
        logger = logging.getLogger(name) if name is not None else _caller_logger()
        writer = _writers.setdefault(logger.name, LineWriter(logger))
    return writer


def configure(
    level: str = "info",
    fmt: str = "auto",
    stream: IO[str] | None = None,
    *,
    log_levels: Mapping[str, str] | None = None,
) -> None:
    """Configure structlog and the standard library's root logger (idempotent).

    ``log_levels`` (logger name -> level name) overrides the level of single loggers,
    the quieted libraries' included; None keeps the ones configured before.
    """
    global _handler
    stream = stream or sys.stdout
    if fmt == "auto":
        fmt = "console" if _is_tty(stream) else "json"
    shared: list[Processor] = [
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        _Stamper(),
    ]
    if fmt == "json":
        renderer: Processor = structlog.processors.JSONRenderer()
        # Never render a traceback's local variables: they hold API keys and passwords.
        final: list[Processor] = [
            structlog.processors.ExceptionRenderer(structlog.tracebacks.ExceptionDictTransformer(show_locals=False))
        ]
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=_is_tty(stream), exception_formatter=structlog.dev.plain_traceback
        )
        final = []
    # structlog's loggers are made afresh at each line (no cache), so a reconfiguration
    # reaches the ones modules made at import; their level is the stdlib logger's of the
    # same name, read by filter_by_level (a processor: capture_logs in tests sees every
    # level). Measured against a level baked into make_filtering_bound_logger and
    # against caching with the processor list changed in place: within 1.5 us a line,
    # and bench/ingest.py shows none of it (224-228 us server CPU a request for all).
    global _processors
    _processors = [
        structlog.stdlib.filter_by_level,
        structlog.contextvars.merge_contextvars,
        *shared,
        structlog.processors.StackInfoRenderer(),
        *final,
        redact,
        renderer,
        _scrub_rendered,
    ]
    structlog.configure(
        processors=_processors,
        logger_factory=_writer_factory,
        wrapper_class=structlog.make_filtering_bound_logger(logging.NOTSET),
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *final,
            redact,
            renderer,
            _scrub_rendered,
        ],
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
    set_level(level, log_levels)
    logging.captureWarnings(True)


def set_level(level: str, log_levels: Mapping[str, str] | None = None) -> None:
    """The daemon's level and the per-logger ones; takes effect at the next line, for
    loggers already made too. ``log_levels`` None keeps the ones set before."""
    global _log_levels
    if log_levels is not None:
        _log_levels = dict(log_levels)
    overrides = dict(_log_levels)
    if os.environ.get(DEBUG_SQL_ENV, "") not in ("", "0", "false", "no"):
        overrides["aiosqlite"] = "debug"
    root_level = LEVELS[level]
    _root.setLevel(root_level)
    for name in _leveled - overrides.keys() - set(QUIET_LIBRARIES):
        logging.getLogger(name).setLevel(logging.NOTSET)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.WARNING, root_level))
    for name, value in overrides.items():
        logging.getLogger(name).setLevel(LEVELS[value])
    _leveled.clear()
    _leveled.update(overrides.keys(), QUIET_LIBRARIES)


def adjust_level(level: str, verbose: int = 0, quiet: int = 0) -> str:
    """Apply -v/-q to a configured level name."""
    order = ["debug", "info", "warning", "error"]
    idx = order.index(level) - verbose + quiet
    return order[max(0, min(len(order) - 1, idx))]
