"""Logging: one pipeline for structlog and stdlib, chosen level, secrets never rendered."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import threading

import pytest
import structlog

from dutybridge.config import ConfigError, validate
from dutybridge.logging import adjust_level, configure, set_level, set_secrets


@pytest.fixture
def json_logs():
    buf = io.StringIO()
    configure("debug", "json", stream=buf)
    yield buf
    set_secrets([])
    configure("info", "json", stream=io.StringIO())


def lines(buf):
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def test_structlog_and_stdlib_share_one_json_format(json_logs):
    structlog.get_logger("dutybridge.test").info("hello", incident="P123")
    logging.getLogger("aiohttp.server").error("from aiohttp")
    out = lines(json_logs)
    assert out[0]["event"] == "hello" and out[0]["incident"] == "P123" and out[0]["level"] == "info"
    assert out[1]["logger"] == "aiohttp.server" and out[1]["level"] == "error"
    assert all(line["timestamp"].endswith("Z") for line in out)


def test_context_vars_are_bound_into_lines(json_logs):
    with structlog.contextvars.bound_contextvars(request_id="req-1", event_id=42):
        structlog.get_logger("t").info("inside")
    structlog.get_logger("t").info("outside")
    inside, outside = lines(json_logs)
    assert inside["request_id"] == "req-1" and inside["event_id"] == 42
    assert "request_id" not in outside


def test_secrets_are_scrubbed_from_values_keys_stdlib_and_tracebacks(json_logs):
    set_secrets(["s3cr3t-api-key", "pw"])  # too short to scrub safely: ignored
    log = structlog.get_logger("t")
    log.info("calling", url="https://x/?token=s3cr3t-api-key", headers={"Authorization": "Token token=abc"})
    logging.getLogger("aiohttp.client").warning("failed with %s", "s3cr3t-api-key")

    def fail(api_key="s3cr3t-api-key"):
        raise RuntimeError("rejected s3cr3t-api-key")

    try:
        fail()
    except RuntimeError:
        log.exception("boom")
    text = json_logs.getvalue()
    assert "s3cr3t-api-key" not in text and "token=abc" not in text
    assert text.count("[REDACTED]") >= 4


def test_only_the_value_holding_a_secret_changes_and_a_secret_split_over_two_values_is_none(json_logs):
    set_secrets(["s3cr3t-api-key"])
    structlog.get_logger("t").info(
        "calling", before="plain one", holder='has "s3cr3t-api-key" inside', after="plain two", tail="s3cr3t"
    )
    structlog.get_logger("t").info("split", head="ends s3cr3t", rest="-api-key starts")
    holder, split = lines(json_logs)
    assert holder["holder"] == 'has "[REDACTED]" inside'
    assert (holder["before"], holder["after"], holder["tail"]) == ("plain one", "plain two", "s3cr3t")
    assert (split["head"], split["rest"]) == ("ends s3cr3t", "-api-key starts")


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_a_secret_is_scrubbed_whether_or_not_the_renderer_escapes_its_value(fmt):
    # Printable ASCII values are left to the scrub of the rendered line; values a renderer
    # escapes (quotes, backslashes, newlines, non-ASCII) are scrubbed before rendering.
    buf = io.StringIO()
    configure("info", fmt, stream=buf)
    secret = "s3cr3t-api-key"
    try:
        set_secrets([secret])
        structlog.get_logger("t").info(
            "calling",
            plain=f"key {secret} here",
            quoted=f'say "{secret}"',
            multiline=f"first\n{secret}\\",
            accented=f"clé {secret}",
            bearer="BEARER abcdefghijklmnopqrstuvwxyz",
            header="proxy-authorization: Basic dXNlcjpwYXNzd29yZA==",
        )
        text = buf.getvalue()
    finally:
        set_secrets([])
        configure("info", "json", stream=io.StringIO())
    assert secret not in text, text
    assert "abcdefghijklmnopqrstuvwxyz" not in text and "dXNlcjpwYXNzd29yZA" not in text, text
    assert text.count("[REDACTED]") == 6, text


def test_timestamps_are_iso_utc_to_the_microsecond(json_logs):
    import re
    from datetime import UTC, datetime, timedelta

    structlog.get_logger("t").info("now")
    [line] = lines(json_logs)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", line["timestamp"]), line["timestamp"]
    stamped = datetime.strptime(line["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert abs(datetime.now(UTC) - stamped) < timedelta(seconds=60)


def test_level_filters_and_verbosity_flags(json_logs):
    configure("warning", "json", stream=json_logs)
    structlog.get_logger("t").info("dropped")
    structlog.get_logger("t").warning("kept")
    assert [e["event"] for e in lines(json_logs)] == ["kept"]
    assert adjust_level("info", verbose=1) == "debug"
    assert adjust_level("info", quiet=5) == "error"
    assert adjust_level("warning", verbose=1, quiet=1) == "warning"


def test_level_set_at_run_time_applies_to_cached_structlog_loggers(json_logs):
    log = structlog.get_logger("dutybridge.test.level")
    log.debug("first")  # built and cached at debug
    set_level("warning")  # what SIGHUP does
    log.info("dropped")
    log.warning("kept")
    logging.getLogger("aiohttp.server").info("dropped too")
    set_level("debug")
    log.debug("back")
    assert [e["event"] for e in lines(json_logs)] == ["first", "kept", "back"]


def test_structlog_lines_carry_their_logger_name_and_reach_a_new_stream(json_logs):
    log = structlog.get_logger("dutybridge.test.stream")
    log.info("before")
    other = io.StringIO()
    configure("info", "json", stream=other)  # a cached logger follows the reconfiguration
    log.info("after")
    assert [(e["event"], e["logger"]) for e in lines(json_logs)] == [("before", "dutybridge.test.stream")]
    assert [(e["event"], e["logger"]) for e in lines(other)] == [("after", "dutybridge.test.stream")]


def test_secrets_set_after_a_logger_is_cached_are_still_scrubbed(json_logs):
    log = structlog.get_logger("dutybridge.test.redact")
    log.info("warm")
    set_secrets(["late-s3cr3t-value"])
    log.info("late-s3cr3t-value in the event", nested={"list": ["x late-s3cr3t-value"]}, password="p4ss")
    logging.getLogger("apscheduler.scheduler").warning("job with late-s3cr3t-value")
    text = json_logs.getvalue()
    assert "late-s3cr3t-value" not in text and "p4ss" not in text
    assert text.count("[REDACTED]") >= 4


def test_capture_logs_sees_every_level_whatever_the_configured_one(json_logs):
    set_level("error")
    log = structlog.get_logger("dutybridge.test.capture")
    log.info("cached at error")
    with structlog.testing.capture_logs() as logs:
        log.debug("seen")
    assert [e["event"] for e in logs] == ["seen"]
    log.warning("still dropped")
    assert lines(json_logs) == []


def test_positional_arguments_are_interpolated(json_logs):
    structlog.get_logger("t").info("got %s of %d", "three", 4)
    assert lines(json_logs)[0]["event"] == "got three of 4"


def test_a_line_that_cannot_be_written_never_raises_into_the_caller(capsys):
    class Broken(io.StringIO):
        def write(self, text):
            raise OSError("disk full")

    configure("info", "json", stream=Broken())
    try:
        structlog.get_logger("dutybridge.test.broken").info("lost", token="t0k3n-value")
    finally:
        configure("info", "json", stream=io.StringIO())
    err = capsys.readouterr().err
    assert "Logging error" in err and "OSError: disk full" in err and '"event": "lost"' in err
    assert "t0k3n-value" not in err


def test_values_json_cannot_encode_are_rendered_by_structlog_or_repr(json_logs):
    class Custom:
        def __structlog__(self):
            return {"custom": True}

    class Plain:
        def __repr__(self):
            return "<plain>"

    structlog.get_logger("t").info("objects", a=Custom(), b=Plain(), c=(1, 2))
    line = lines(json_logs)[0]
    assert (line["a"], line["b"], line["c"]) == ({"custom": True}, "<plain>", [1, 2])


def test_library_loggers_stay_at_warning_when_the_daemon_logs_at_debug(json_logs):
    for name in ("aiosqlite", "asyncio", "apscheduler.scheduler", "aiohttp.access"):
        logging.getLogger(name).debug("executing SELECT * FROM events WHERE body = ?")
        logging.getLogger(name).info("chatter")
    logging.getLogger("aiosqlite").warning("slow commit")
    structlog.get_logger("dutybridge.worker").debug("ours")
    assert [(e["logger"], e["event"]) for e in lines(json_logs)] == [
        ("aiosqlite", "slow commit"),
        ("dutybridge.worker", "ours"),
    ]


def test_a_daemon_level_above_warning_holds_the_libraries_too(json_logs):
    set_level("error")
    logging.getLogger("aiosqlite").warning("dropped")
    logging.getLogger("aiosqlite").error("kept")
    assert [e["event"] for e in lines(json_logs)] == ["kept"]


def test_log_levels_and_the_sql_switch_let_a_library_speak(json_logs, monkeypatch):
    configure("info", "json", stream=json_logs, log_levels={"apscheduler": "debug", "dutybridge.hooks": "warning"})
    logging.getLogger("apscheduler.scheduler").debug("job added")
    logging.getLogger("aiosqlite").debug("hidden sql")
    structlog.get_logger("dutybridge.hooks").info("hidden hook line")
    set_level("info")  # a reload that passes no table keeps the one configured
    logging.getLogger("apscheduler.scheduler").debug("still there")
    monkeypatch.setenv("DUTYBRIDGE_DEBUG_SQL", "1")
    configure("info", "json", stream=json_logs, log_levels={})
    logging.getLogger("aiosqlite").debug("shown sql")
    logging.getLogger("apscheduler.scheduler").debug("quiet again")
    structlog.get_logger("dutybridge.hooks").info("hook line back")
    assert [e["event"] for e in lines(json_logs)] == ["job added", "still there", "shown sql", "hook line back"]


def test_a_logger_used_before_a_reconfiguration_takes_the_new_format():
    log = structlog.get_logger("dutybridge.test.format")
    console, json_out = io.StringIO(), io.StringIO()
    configure("info", "console", stream=console)
    log.info("first")
    configure("info", "json", stream=json_out)
    log.info("second")
    configure("info", "json", stream=io.StringIO())
    assert "first" in console.getvalue() and not console.getvalue().startswith("{")
    assert [e["event"] for e in lines(json_out)] == ["second"]


def test_auto_format_is_the_console_on_a_terminal_and_json_elsewhere():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    tty, pipe = Terminal(), io.StringIO()
    for stream in (tty, pipe):
        configure("info", "auto", stream=stream)
        structlog.get_logger("dutybridge.test.auto").info("ours", incident="P1")
        logging.getLogger("aiohttp.server").error("theirs")
    configure("info", "json", stream=io.StringIO())
    assert all(not line.startswith("{") for line in tty.getvalue().splitlines())
    assert "ours" in tty.getvalue() and "incident" in tty.getvalue() and "theirs" in tty.getvalue()
    assert [e["event"] for e in lines(pipe)] == ["ours", "theirs"]


def test_a_bad_level_in_log_levels_is_a_config_error_naming_the_key():
    base = {
        "pagerduty": {"api_key": "k"},
        "servicenow": {"instance_url": "https://x.service-now.com", "username": "u", "password": "p"},
    }
    assert validate({**base, "daemon": {"log_levels": {"aiosqlite": "debug"}}}, {}).daemon.log_levels == {
        "aiosqlite": "debug"
    }
    with pytest.raises(ConfigError) as err:
        validate({**base, "daemon": {"log_levels": {"aiosqlite": "verbose"}}}, {})
    assert "daemon.log_levels.aiosqlite" in str(err.value) and "verbose" in str(err.value)


@pytest.mark.slow
def test_daemon_stdout_is_json_from_its_first_line_with_hook_tracing_at_debug(write_config):
    config = write_config()
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "DUTYBRIDGE_DEBUG_SQL")}
    env["DUTYBRIDGE_TRACE_HOOKS"] = "1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "dutybridge.cli", "-v", "run", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    out: list[str] = []
    listening = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            out.append(line)
            if '"listening"' in line:
                listening.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert listening.wait(30), "".join(out)[-2000:]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        reader.join(10)
        proc.stdout.close()
    records = [json.loads(line) for line in out]  # a console line here fails to parse
    assert records[0]["logger"] == "dutybridge.hooks" and records[0]["event"] == "hook_call"
    assert any(r["level"] == "debug" and r["logger"].startswith("dutybridge.") for r in records[1:])
    assert not [r for r in records if r["logger"].startswith(("aiosqlite", "asyncio"))]
