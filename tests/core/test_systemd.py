"""sd_notify over a real datagram socket, as systemd receives it; the unit file in contrib/."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from dutybridge import systemd
from dutybridge.app import plugin_schemas
from dutybridge.config import render_example
from dutybridge.plugins import BUILTIN_PLUGINS, build_plugin_manager

UNIT_DIR = Path(__file__).resolve().parents[2] / "contrib" / "systemd"
UNIT = UNIT_DIR / "dutybridge.service"
DROP_INS = sorted((UNIT_DIR / "dutybridge.service.d").glob("*.conf"))


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


def directives(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment of a unit file, repeats kept."""
    out, section = [], ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def service(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for section, key, value in directives(path):
        if section == "Service":
            out.setdefault(key, []).append(value)
    return out


def credentials(path: Path) -> dict[str, str]:
    return dict(v.split(":", 1) for v in service(path).get("LoadCredential", []))


def systemd_config_references() -> tuple[set[str], set[str]]:
    """The file: names `config init --systemd` writes: (set, offered commented out)."""
    pm = build_plugin_manager(list(BUILTIN_PLUGINS), None)
    text = render_example(plugin_schemas(pm), systemd=True)
    written = set(
        re.findall(r'"file:([\w.-]+)"', "\n".join(line for line in text.splitlines() if not line.startswith("#")))
    )
    offered = set(re.findall(r'^# \w+ = "file:([\w.-]+)"', text, re.M))
    return written, offered


def test_the_unit_loads_every_credential_config_init_systemd_refers_to():
    written, offered = systemd_config_references()
    required = credentials(UNIT)
    assert set(required) == written == {"pagerduty-api-key", "pagerduty-webhook-secret", "servicenow-password"}
    assert all(path == f"/etc/dutybridge/credentials/{name}" for name, path in required.items())
    optional = {name: path for conf in DROP_INS for name, path in credentials(conf).items()}
    # A LoadCredential= whose file is missing fails the unit: the optional ones stay out of it.
    assert set(optional) == offered == {"doorbell-token", "doorbell-password"}
    assert not set(optional) & set(required)
    assert [conf.stem for conf in DROP_INS] == sorted(optional)


def test_the_unit_is_hardened_as_far_as_the_daemon_allows():
    unit = service(UNIT)
    for key in (
        "ProtectClock",
        "ProtectHostname",
        "ProtectKernelLogs",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectControlGroups",
        "RestrictRealtime",
        "NoNewPrivileges",
        "PrivateTmp",
        "PrivateDevices",
        "PrivateMounts",
        "LockPersonality",
        "MemoryDenyWriteExecute",
    ):
        assert unit.get(key) == ["yes"], key
    assert unit["ProtectProc"] == ["invisible"]
    assert unit["SystemCallFilter"][0] == "@system-service"
    assert unit["SystemCallErrorNumber"] == ["EPERM"]
    # sd_notify needs AF_UNIX, the webhook server and the APIs need AF_INET/AF_INET6.
    assert set(unit["RestrictAddressFamilies"][0].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert unit["Type"] == ["notify"] and unit["WatchdogSec"] == ["30s"]


analyze = shutil.which("systemd-analyze")


@pytest.mark.skipif(analyze is None, reason="systemd-analyze is not installed")
def test_systemd_accepts_every_line_of_the_unit_and_its_drop_ins(tmp_path):
    shutil.copy(UNIT, tmp_path / UNIT.name)
    shutil.copytree(UNIT_DIR / "dutybridge.service.d", tmp_path / "dutybridge.service.d")
    result = subprocess.run([analyze, "verify", str(tmp_path / UNIT.name)], capture_output=True, text=True, timeout=60)
    complaints = [
        line for line in (result.stdout + result.stderr).splitlines() if "is not executable" not in line
    ]  # /opt/dutybridge is not installed here
    assert complaints == []
    result = subprocess.run(
        [analyze, "security", "--offline=yes", str(UNIT)], capture_output=True, text=True, timeout=60
    )
    marked = {line.split()[1] for line in result.stdout.splitlines() if line.startswith("✗")}
    assert not marked & {
        "ProtectClock=",
        "ProtectHostname=",
        "ProtectKernelLogs=",
        "RestrictRealtime=",
        "ProtectProc=",
        "SystemCallFilter=~@privileged",
        "SystemCallFilter=~@mount",
    }
