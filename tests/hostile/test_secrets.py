"""A configured secret, in any form it travels in, reaches no output: logs at debug
level (libraries' too), an event's last_error, `events show`, error answers.
"""

from __future__ import annotations

import asyncio
import base64
import io
import urllib.parse

import aiohttp

from dutybridge import hookimpl
from dutybridge.events import Event
from dutybridge.events_cli import show_event
from dutybridge.logging import set_secrets
from tests.hostile.conftest import inbox

SN_USER = "pagerduty.integration"
SN_PASSWORD = "sn/pass+word=0a9b&x"
PD_KEY = "y_NbAkKc66ryYTWUXYEu"
DOORBELL = "doorbell-token-3c2b1a0f"
V2_USER, V2_PASSWORD = "pd-v2", "v2 secret/pass"
SECRETS = {
    "pagerduty": {"api_key": PD_KEY},
    "servicenow": {
        "username": SN_USER,
        "password": SN_PASSWORD,
        "doorbell_username": V2_USER,
        "doorbell_password": V2_PASSWORD,
    },
}


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


FORMS = {
    "raw password": SN_PASSWORD,
    "raw key": PD_KEY,
    "raw doorbell": DOORBELL,
    "raw v2": V2_PASSWORD,
    "basic pair": b64(f"{SN_USER}:{SN_PASSWORD}"),
    "v2 basic pair": b64(f"{V2_USER}:{V2_PASSWORD}"),
    "url-encoded password": urllib.parse.quote(SN_PASSWORD, safe=""),
    "form-encoded v2": urllib.parse.quote_plus(V2_PASSWORD),
    "url-encoded key in a path": urllib.parse.quote(SN_PASSWORD),
}


class LeakyHook:
    """A handler whose exception text carries the request's headers: a realistic
    debugging habit, and the way the issue's probe leaked a Basic header."""

    @hookimpl
    def handle_event(self, event, ctx):
        headers = {
            "Authorization": f"Basic {b64(f'{SN_USER}:{SN_PASSWORD}')}",
            "X-PD": f"Token token={PD_KEY}",
            "X-Door": f"Bearer {DOORBELL}",
        }
        raise RuntimeError(
            f"upstream said no; sent headers={headers!r} "
            f"url=https://x.test/?p={urllib.parse.quote(SN_PASSWORD, safe='')}"
            f"&v2={urllib.parse.quote_plus(V2_PASSWORD)}&raw={V2_PASSWORD}"
        )


def assert_clean(text: str, channel: str) -> None:
    leaked = [name for name, form in FORMS.items() if form in text]
    assert leaked == [], f"{channel} shows {leaked}"


async def test_no_form_of_a_secret_reaches_any_output(daemon, json_logs):
    d = await daemon(
        {**SECRETS, "daemon": {"log_level": "debug", "retry_base_seconds": 30}}, worker=True, plugins=(LeakyHook(),)
    )
    set_secrets(d.ctx.config.secrets())  # as `dutybridge run` does once the config is loaded
    await d.ctx.enqueue(Event(source="test", type="leak", event_id="leak-1", resource="test:1", payload={}))
    async with asyncio.timeout(10):
        while not (rows := await inbox(d)) or not rows[0].last_error:
            await asyncio.sleep(0.05)
    assert "upstream said no" in rows[0].last_error
    assert_clean(rows[0].last_error, "last_error")
    out = io.StringIO()
    assert await show_event(d.ctx.store, out, rows[0].id) == 0
    assert_clean(out.getvalue(), "events show")

    async with aiohttp.ClientSession() as http:
        # A reason that quotes what the client sent: an unknown field named like a secret.
        async with http.post(
            f"{d.url}/webhooks/servicenow",
            json={SN_PASSWORD: 1, PD_KEY: 2},
            headers={"Authorization": f"Bearer {DOORBELL}"},
        ) as resp:
            assert resp.status == 400
            assert_clean(await resp.text(), "error answer")
        async with http.post(
            f"{d.url}/webhooks/pagerduty/v2",
            data=b"{",
            headers={"Authorization": f"Basic {b64(f'{V2_USER}:{V2_PASSWORD}')}"},
        ) as resp:
            assert resp.status == 400
            assert_clean(await resp.text(), "error answer")
    text = json_logs.getvalue()
    assert "upstream said no" in text and "[REDACTED]" in text
    assert_clean(text, "logs")
