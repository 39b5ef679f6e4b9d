"""`dutybridge demo`: the scripted story runs against the sandbox and every hop is observed."""

from __future__ import annotations

import io

import pytest

from dutybridge.cli import main
from dutybridge_demo.story import run_demo

pytestmark = pytest.mark.slow


async def test_demo_observes_every_step_in_both_systems():
    out = io.StringIO()
    assert await run_demo(out=out) == 0, out.getvalue()
    text = out.getvalue()
    assert "steps observed in both systems: 7 of 7" in text
    assert "ServiceNow INC0010001" in text and "MISSED" not in text
    assert "(from ServiceNow: Dave Patel)" in text
    assert "0 mirrored back from PagerDuty; 1 PagerDuty note(s)" in text
    assert "inbox: done" in text and "dead" not in text.split("Summary", 1)[1]


def test_demo_is_a_cli_command(capsys):
    with pytest.raises(SystemExit) as info:
        main(["demo", "--help"])
    assert info.value.code == 0
    assert "--keep-running" in capsys.readouterr().out


def test_ctrl_c_on_tasks_py_demo_keep_running_stops_quietly_with_130():
    import os
    import signal
    import subprocess
    import sys
    import threading
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    # This venv (already installed: bootstrap finds its stamp and installs nothing).
    env = {**os.environ, "DUTYBRIDGE_VENV": sys.prefix}
    # A session of its own: the signal goes to the group, as a terminal's Ctrl-C does.
    proc = subprocess.Popen(
        [sys.executable, str(root / "tasks.py"), "demo", "--keep-running"],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("Still running (Ctrl-C to stop)"):
                ready.set()  # the demo catches the signal from before this line

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert ready.wait(60), "".join(lines)[-3000:]
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(30) == 130
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        reader.join(10)
        proc.stdout.close()
    output = "".join(lines)
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output[-3000:]
