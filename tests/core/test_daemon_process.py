"""The daemon as systemd runs it: a real process, signals, sd_notify, kill -9 and restart."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SECRET = "whsec-primary-1a2b3c4d"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sign(body: bytes, secret: str = SECRET) -> str:
    return "v1=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def post_webhook(port: int, event_id: str, incident: str = "PINC001", secret: str = SECRET) -> int:
    body = json.dumps(
        {
            "event": {
                "id": event_id,
                "event_type": "incident.triggered",
                "resource_type": "incident",
                "occurred_at": "2026-11-28T10:00:00Z",
                "agent": None,
                "client": None,
                "data": {"id": incident, "type": "incident"},
            }
        }
    ).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/webhooks/pagerduty",
        data=body,
        method="POST",
        headers={"X-PagerDuty-Signature": sign(body, secret), "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


class Daemon:
    """``dutybridge run`` in a subprocess, its JSON log lines collected as they come."""

    def __init__(self, config: Path, notify: Path | None = None, env: dict | None = None, args: tuple = ()):
        environ = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
        environ.update(env or {})
        if notify:
            environ["NOTIFY_SOCKET"] = str(notify)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dutybridge.cli", "run", "--config", str(config), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=environ,
            text=True,
        )
        self.lines: list[dict] = []
        self.raw: list[str] = []
        self._cv = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._cv:
                self.raw.append(line)
                try:
                    self.lines.append(json.loads(line))
                except ValueError:
                    pass
                self._cv.notify_all()

    def wait_for(self, event: str, timeout: float = 20) -> dict:
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                for line in self.lines:
                    if line.get("event") == event:
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._cv.wait(0.2)):
                    raise AssertionError(f"no log line {event!r}; got: {''.join(self.raw)[-3000:]}")
                self._cv.wait(min(left, 0.2))

    def count(self, event: str) -> int:
        with self._cv:
            return sum(1 for line in self.lines if line.get("event") == event)

    def stop(self, sig=signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self.proc.stdout.close()
            self.proc.stderr.close()


@pytest.fixture
def notify_socket(tmp_path):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(20)
    yield path, sock
    sock.close()


@pytest.fixture
def daemons():
    started: list[Daemon] = []

    def start(*args, **kwargs) -> Daemon:
        d = Daemon(*args, **kwargs)
        started.append(d)
        return d

    yield start
    for d in started:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()
        for stream in (d.proc.stdout, d.proc.stderr):
            if not stream.closed:
                stream.close()


def recv_until(sock, needle: str) -> str:
    while True:
        msg = sock.recv(4096).decode()
        if needle in msg.splitlines():
            return msg


def hook_file(folder: Path, body: str) -> None:
    folder.mkdir(exist_ok=True)
    path = folder / "recorder.py"
    path.write_text(textwrap.dedent(body))
    path.chmod(0o644)


def test_ready_watchdog_and_clean_sigterm(write_config, notify_socket, daemons):
    port = free_port()
    config = write_config({"daemon": {"listen_port": port}})
    path, sock = notify_socket
    d = daemons(config, notify=path, env={"WATCHDOG_USEC": "200000"})
    assert "READY=1" in recv_until(sock, "READY=1")
    assert recv_until(sock, "WATCHDOG=1") == "WATCHDOG=1"
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
        assert resp.status == 200
    assert d.stop() == 0
    assert recv_until(sock, "STOPPING=1")
    for step in ("webhooks_stopped", "worker_stopped", "scheduler_stopped", "store_closed", "shutdown_complete"):
        d.wait_for(step, timeout=1)


def test_kill_9_between_accept_and_dispatch_then_restart_dispatches_once(
    write_config, notify_socket, daemons, tmp_path
):
    port = free_port()
    hooks = tmp_path / "hooks"
    record = tmp_path / "handled.txt"
    block = tmp_path / "block"
    block.write_text("1")
    hook_file(
        hooks,
        f"""
        import asyncio, pathlib

        async def handle_event(event, ctx):
            if pathlib.Path({str(block)!r}).exists():
                pathlib.Path({str(tmp_path / "began")!r}).write_text(event.event_id)
                await asyncio.Event().wait()  # blocks until the test kills the process mid-dispatch
            with open({str(record)!r}, "a") as fh:
                fh.write(event.event_id + "\\n")
            return True
    """,
    )
    config = write_config({"daemon": {"listen_port": port, "hooks_dir": "hooks"}})
    path, sock = notify_socket
    d = daemons(config, notify=path)
    recv_until(sock, "READY=1")
    assert post_webhook(port, "01KILL9") == 202
    deadline = time.monotonic() + 20
    while not (tmp_path / "began").exists():
        assert time.monotonic() < deadline, "handler never started"
        time.sleep(0.05)
    d.proc.kill()  # SIGKILL: no shutdown, the event is claimed and unfinished
    d.proc.wait()
    assert not record.exists()

    block.unlink()
    d2 = daemons(config, notify=path)
    recv_until(sock, "READY=1")
    deadline = time.monotonic() + 20
    while not record.exists():
        assert time.monotonic() < deadline, "event was not dispatched after restart"
        time.sleep(0.05)
    assert d2.stop() == 0
    assert record.read_text().splitlines() == ["01KILL9"]
    out = subprocess.run(
        [sys.executable, "-m", "dutybridge.cli", "events", "list", "--json", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    events = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    assert [(e["event_id"], e["status"]) for e in events] == [("01KILL9", "done")]


def test_sighup_with_broken_config_keeps_the_old_one(write_config, notify_socket, daemons):
    port = free_port()
    config = write_config({"daemon": {"listen_port": port}})
    path, sock = notify_socket
    d = daemons(config, notify=path)
    recv_until(sock, "READY=1")
    good = config.read_text()
    config.write_text(good.replace("[daemon]", "[daemon]\nlisten_portt = 1"))
    d.proc.send_signal(signal.SIGHUP)
    line = d.wait_for("reload_rejected")
    assert any("daemon.listen_portt: unknown key" in p for p in line["problems"])
    assert post_webhook(port, "01AFTERBADRELOAD") == 202  # still serving with the old secrets

    # A good reload applies: the rotated-in secret alone now verifies.
    rotated = good.replace('"whsec-primary-1a2b3c4d",', "")
    assert rotated != good
    config.write_text(rotated)
    d.proc.send_signal(signal.SIGHUP)
    d.wait_for("reloaded")
    assert post_webhook(port, "01OLDSECRET") == 401
    assert post_webhook(port, "01NEWSECRET", secret="whsec-rotating-5e6f7a8b") == 202
    assert d.stop() == 0


def test_misspelt_hook_stops_start_up_with_the_file_name(write_config, tmp_path):
    hook_file(tmp_path / "hooks", "def handle_events(event, ctx):\n    return True\n")
    config = write_config({"daemon": {"hooks_dir": "hooks"}})
    out = subprocess.run(
        [sys.executable, "-m", "dutybridge.cli", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2
    assert f"{tmp_path / 'hooks' / 'recorder.py'}:1: function 'handle_events' is not a dutybridge hook" in out.stderr
    assert "did you mean 'handle_event'" in out.stderr
    assert "Traceback" not in out.stderr + out.stdout


def test_invalid_config_exits_2_with_one_line_per_problem(write_config):
    config = write_config({"daemon": {"listen_port": "x", "log_level": "chatty"}})
    out = subprocess.run(
        [sys.executable, "-m", "dutybridge.cli", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith(f"{config}: daemon.") for line in lines)
    assert "Traceback" not in out.stderr


def test_a_taken_port_fails_start_up_before_the_worker_starts(write_config):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config({"daemon": {"listen_port": port}})
        out = subprocess.run(
            [sys.executable, "-m", "dutybridge.cli", "run", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert out.returncode == 1
    events = [json.loads(line)["event"] for line in out.stdout.splitlines()]
    assert events.count("cannot_listen") == 1 and events[-1] == "shutdown_complete"
    # Nothing started that could have claimed an event or run a job.
    assert not {"worker_started", "scheduler started", "store open", "listening"} & set(events)
    line = next(json.loads(line) for line in out.stdout.splitlines() if json.loads(line)["event"] == "cannot_listen")
    assert line["port"] == port and "in use" in line["error"]
    assert "Traceback" not in out.stderr + out.stdout


def test_sighup_applies_worker_settings_keeps_minus_v_and_warns_against_what_runs(write_config, notify_socket, daemons):
    port = free_port()
    config = write_config({"daemon": {"listen_port": port, "log_level": "warning", "log_format": "json"}})
    path, sock = notify_socket
    d = daemons(config, notify=path, args=("-v",))  # warning, one step more verbose: info
    recv_until(sock, "READY=1")
    good = config.read_text()
    warning = "reloaded_restart_needed"

    config.write_text(good.replace(f"listen_port = {port}", f"listen_port = {port + 1}\nmax_attempts = 2"))
    for reloads in (1, 2):
        d.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while d.count(warning) < reloads:
            assert time.monotonic() < deadline, "".join(d.raw)[-3000:]
            time.sleep(0.05)
    first = d.wait_for(warning)
    assert first["keys"] == ["daemon.listen_port"] and first["running"] == {"daemon.listen_port": port}
    assert first["worker_applied"] == {"daemon.max_attempts": 2}

    config.write_text(good)  # the running port again; max_attempts back to 8
    d.proc.send_signal(signal.SIGHUP)
    # An info line: shown only if -v still holds after three reloads of log_level warning.
    line = d.wait_for("reloaded")
    assert line["worker_applied"] == {"daemon.max_attempts": 8}
    assert d.count(warning) == 2
    assert post_webhook(port, "01AFTERRELOADS") == 202
    assert d.stop() == 0
