"""sd_notify over a real datagram socket, as systemd receives it."""

from __future__ import annotations

import os
import socket

import pytest

from dutybridge import systemd


@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def test_ready_stopping_and_watchdog_reach_the_socket(notify_socket):
    assert systemd.ready("serving on x")
    msg = notify_socket.recv(4096).decode()
    assert "READY=1" in msg.splitlines() and f"MAINPID={os.getpid()}" in msg
    assert systemd.watchdog()
    assert notify_socket.recv(4096) == b"WATCHDOG=1"
    assert systemd.stopping()
    assert notify_socket.recv(4096).decode().startswith("STOPPING=1")


def test_without_notify_socket_nothing_is_sent(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False


def test_watchdog_interval_is_half_of_watchdogsec(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert systemd.watchdog_interval() == 15
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert systemd.watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_USEC")
    monkeypatch.delenv("WATCHDOG_PID")
    assert systemd.watchdog_interval() is None
