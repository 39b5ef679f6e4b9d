"""The loop `dutybridge run` serves on: uvloop when installed, asyncio's when asked for,
a clear exit when the choice is unknown or cannot be met."""

from __future__ import annotations

import asyncio
import sys

import pytest
from structlog.testing import capture_logs

from dutybridge import eventloop


async def loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_asyncio_when_asked_for(monkeypatch):
    monkeypatch.setenv(eventloop.ENV, "asyncio")
    with capture_logs() as logs:
        assert eventloop.run(loop_module()).startswith("asyncio")
    assert {"event": "event_loop", "loop": "asyncio", "log_level": "info"} in logs


def test_asyncio_when_uvloop_is_missing(monkeypatch):
    monkeypatch.delenv(eventloop.ENV, raising=False)
    monkeypatch.setitem(sys.modules, "uvloop", None)  # an import of it raises ImportError
    assert eventloop.run(loop_module()).startswith("asyncio")


def test_uvloop_when_installed(monkeypatch):
    pytest.importorskip("uvloop")
    monkeypatch.delenv(eventloop.ENV, raising=False)
    assert eventloop.run(loop_module()).startswith("uvloop")


@pytest.mark.parametrize(
    "value, problem", [("tokio", "expected one of auto, asyncio, uvloop"), ("uvloop", "uvloop cannot be imported")]
)
def test_a_choice_that_cannot_be_met_exits_2(monkeypatch, value, problem):
    monkeypatch.setenv(eventloop.ENV, value)
    monkeypatch.setitem(sys.modules, "uvloop", None)
    coro = loop_module()
    with capture_logs() as logs, pytest.raises(SystemExit) as info:
        eventloop.run(coro)
    assert info.value.code == 2
    assert coro.cr_frame is None  # closed, not left to warn that it was never awaited
    assert [e["event"] for e in logs] == ["event_loop_unavailable"] and problem in logs[0]["problem"]
