"""Fixtures for mid_proxy: a recording server playing PagerDuty and ServiceNow, and the config."""

from __future__ import annotations

import pytest
from aiohttp import web


class Recorder:
    """A real HTTP server: keeps each request it received, answers what the clients expect."""

    def __init__(self) -> None:
        self.seen: list[dict] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append(
            {
                "method": request.method,
                "path": request.path,
                "headers": dict(request.headers),
                "query": dict(request.query),
                "body": await request.read(),
            }
        )
        return web.json_response(
            {"user": {"id": "P1"}, "result": {"sys_id": "abc", "state": "2"}}, headers={"X-Upstream": "recorder"}
        )

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app


@pytest.fixture
async def recorder(aiohttp_server):
    rec = Recorder()
    server = await aiohttp_server(rec.app())
    rec.url = str(server.make_url("")).rstrip("/")
    return rec


def mid_proxy_config(url: str, section: dict, *, retries: int = 0) -> dict:
    return {
        "pagerduty": {"api_url": url, "max_retries": retries},
        "servicenow": {"instance_url": url, "max_retries": retries},
        "plugins": {"enabled": ["mid_proxy"], "mid_proxy": section},
    }
