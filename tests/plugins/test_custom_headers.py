"""custom_headers: configured headers reach the outbound request; bad lines are config errors."""

from __future__ import annotations

import pytest

from dutybridge.context import Ctx
from dutybridge.http import OutboundRequest
from dutybridge_plugins.custom_headers import parse_headers


async def test_headers_added_per_service(make_config):
    config, pm = make_config(
        {
            "plugins": {
                "enabled": ["custom_headers"],
                "custom_headers": {"pagerduty": "X-Team: sre\nX-Env: prod", "servicenow": "X-Source: dutybridge"},
            }
        }
    )
    ctx = Ctx(config=config, pm=pm)
    pd = OutboundRequest("GET", "https://api.pagerduty.com/users", service="pagerduty")
    sn = OutboundRequest("GET", "https://x.service-now.com/api/now/table/incident", service="servicenow")
    other = OutboundRequest("GET", "https://elsewhere.example/", service="slack")
    for req in (pd, sn, other):
        await pm.hooks.outbound_request(request=req, ctx=ctx)
    assert pd.headers["X-Team"] == "sre" and pd.headers["X-Env"] == "prod" and "X-Source" not in pd.headers
    assert sn.headers["X-Source"] == "dutybridge" and "X-Team" not in sn.headers
    assert "X-Team" not in other.headers and "X-Source" not in other.headers


@pytest.mark.parametrize(
    "text, message",
    [
        ("X-A 1", "line 1: expected 'Name: value'"),
        ("X-A: 1\nBad Name: 2", "line 2: 'Bad Name' is not a valid header name"),
        ("Authorization: Basic abc", "line 1: Authorization is set by dutybridge"),
    ],
)
def test_bad_lines_are_named(text, message):
    with pytest.raises(ValueError, match=message):
        parse_headers(text)


def test_comments_and_blank_lines_are_skipped():
    assert parse_headers("# ours\n\nX-A: 1 2\n") == [("X-A", "1 2")]
