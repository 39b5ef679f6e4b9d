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
    # The groups were provisioned through the provisioning plugin, not linked in the config.
    assert "group Database: created (escalation policy PEPDB01, service PSVCDB1, webhook P" in text
    assert "ServiceNow INC0010001" in text and "MISSED" not in text
    assert "(from ServiceNow: Dave Patel)" in text
    assert "0 mirrored back from PagerDuty; 1 PagerDuty note(s)" in text
    assert "inbox: done" in text and "dead" not in text.split("Summary", 1)[1]


def test_demo_is_a_cli_command(capsys):
    with pytest.raises(SystemExit) as info:
        main(["demo", "--help"])
    assert info.value.code == 0
    assert "--keep-running" in capsys.readouterr().out
