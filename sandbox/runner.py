"""Run the PagerDuty and ServiceNow sandboxes together on real TCP ports.

    python -m dutybridge_sandbox [--pagerduty-port N] [--servicenow-port N]
                                 [--host 127.0.0.1] [--seed FILE] [--faults SPEC]
                                 [--doorbell-url URL (--doorbell-token T | --doorbell-basic U:P)]

``dutybridge sandbox`` calls ``main``/``serve_forever``; tests and the demo use
``Sandbox`` as an async context manager.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web

from .faults import FaultInjector, FaultSpecError
from .servicenow import ServiceNowState
from .servicenow import create_app as create_servicenow_app

PACKAGED_SEED = "seed.toml"


def load_seed(path: str | Path | None = None) -> dict:
    """The seeded organisation: ``path`` (.toml or .json) or the packaged seed.toml.

    Raises ValueError naming the file and the problem when it cannot be used."""
    if path is None:
        name = f"<packaged {PACKAGED_SEED}>"
        text = (resources.files("dutybridge_sandbox") / PACKAGED_SEED).read_text(encoding="utf-8")
        suffix = ".toml"
    else:
        name = str(path)
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in (".toml", ".json"):
            raise ValueError(
                f"{name}: unknown seed format {path.suffix or '(no extension)'!r}: use a .toml or .json file"
            )
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ValueError(f"{name}: seed file not found") from None
        except UnicodeDecodeError as exc:
            raise ValueError(f"{name}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        except OSError as exc:
            raise ValueError(f"{name}: cannot read seed file: {exc.strerror or exc}") from None
    if suffix == ".toml":
        try:
            data: Any = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{name}: invalid TOML: {exc}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{name}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{name}: a seed is a table/object with [pagerduty] and [servicenow] sections")
    for section in ("pagerduty", "servicenow"):
        if section not in data:
            raise ValueError(f"{name}: missing the [{section}] section")
        if not isinstance(data[section], dict):
            raise ValueError(f"{name}: [{section}] must be a table/object, found {type(data[section]).__name__}")
    return data


def _injector(spec: str | list[str] | FaultInjector | None) -> FaultInjector:
    if isinstance(spec, FaultInjector):
        return spec
    return FaultInjector.parse(spec)


def _url(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


class Sandbox:
    """Both sandboxes on real TCP ports (0: a free port). ``async with Sandbox() as sb:``.

    ``faults`` (a spec string) applies to both sides, each with its own random
    sequence; ``pd_faults``/``sn_faults`` (spec or FaultInjector) override per side.
    """

    def __init__(
        self,
        seed: dict | None = None,
        *,
        host: str = "127.0.0.1",
        pagerduty_port: int = 0,
        servicenow_port: int = 0,
        faults: str | None = None,
        pd_faults: str | FaultInjector | None = None,
        sn_faults: str | FaultInjector | None = None,
    ):
        from .pagerduty import PagerDutyState  # imported late: the CLI may only want load_seed

        self.seed = seed if seed is not None else load_seed()
        self.host = host
        self._ports = {"pagerduty": pagerduty_port, "servicenow": servicenow_port}
        self.pagerduty = PagerDutyState.from_seed(self.seed.get("pagerduty", {}))
        self.servicenow = ServiceNowState.from_seed(self.seed.get("servicenow", {}))
        self._pd_faults = _injector(pd_faults if pd_faults is not None else faults)
        self._sn_faults = _injector(sn_faults if sn_faults is not None else faults)
        self._runners: list[web.AppRunner] = []
        self.pagerduty_url = ""
        self.servicenow_url = ""

    async def _serve(self, app: web.Application, port: int) -> str:
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, self.host, port)
        await site.start()
        bound = runner.addresses[0][1]
        return _url(self.host, bound)

    async def start(self) -> None:
        if self._runners:
            raise RuntimeError("sandbox already started")
        from .pagerduty import create_app as create_pagerduty_app

        try:
            self.pagerduty_url = await self._serve(
                create_pagerduty_app(self.pagerduty, faults=self._pd_faults), self._ports["pagerduty"]
            )
            self.servicenow_url = await self._serve(
                create_servicenow_app(self.servicenow, faults=self._sn_faults), self._ports["servicenow"]
            )
        except BaseException:
            await self.stop()
            raise
        self.servicenow.base_url = self.servicenow_url
        if hasattr(self.pagerduty, "base_url"):
            self.pagerduty.base_url = self.pagerduty_url

    async def stop(self) -> None:
        runners, self._runners = self._runners, []
        for runner in reversed(runners):
            await runner.cleanup()

    async def __aenter__(self) -> Sandbox:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def credentials(self) -> dict[str, str]:
        """What a dutybridge config needs to talk to this sandbox."""
        pd_seed, sn_seed = self.seed.get("pagerduty", {}), self.seed.get("servicenow", {})
        keys = pd_seed.get("api_keys", [])
        full = next((k["key"] for k in keys if not k.get("read_only")), "")
        read_only = next((k["key"] for k in keys if k.get("read_only")), "")
        users = pd_seed.get("users", [])
        default = next((u for u in users if u.get("role") in ("owner", "admin")), users[0] if users else {})
        sn_users = [u for u in sn_seed.get("users", []) if u.get("password") is not None]
        integration = next(
            (u for u in sn_users if "x_pd_integration.admin" in u.get("roles", ())),
            next((u for u in sn_users if "admin" in u.get("roles", ())), sn_users[0] if sn_users else {}),
        )
        return {
            "pagerduty_url": self.pagerduty_url,
            "pagerduty_api_key": full,
            "pagerduty_read_only_api_key": read_only,
            "pagerduty_user_id": default.get("id", ""),
            "pagerduty_user_email": default.get("email", ""),
            "servicenow_url": self.servicenow_url,
            "servicenow_username": integration.get("user_name", ""),
            "servicenow_password": str(integration.get("password", "")),
        }


def _banner(sandbox: Sandbox) -> str:
    c = sandbox.credentials()
    return "\n".join(
        [
            "dutybridge sandbox running (Ctrl-C to stop)",
            f"  PagerDuty   {c['pagerduty_url']}",
            f"      API key             {c['pagerduty_api_key']}",
            f"      read-only API key   {c['pagerduty_read_only_api_key']}",
            f"      default user        {c['pagerduty_user_id']} <{c['pagerduty_user_email']}>",
            f"  ServiceNow  {c['servicenow_url']}",
            f"      user                {c['servicenow_username']}",
            f"      password            {c['servicenow_password']}",
        ]
    )


async def serve_forever(args: argparse.Namespace) -> int:
    """Start both sandboxes, print URLs and credentials, run until SIGINT/SIGTERM."""
    try:
        seed = load_seed(getattr(args, "seed", None))
        sandbox = Sandbox(
            seed,
            host=getattr(args, "host", "127.0.0.1"),
            pagerduty_port=getattr(args, "pagerduty_port", 0),
            servicenow_port=getattr(args, "servicenow_port", 0),
            faults=getattr(args, "faults", None),
        )
        doorbell_url = getattr(args, "doorbell_url", None)
        if doorbell_url:
            basic = getattr(args, "doorbell_basic", None)
            if basic is not None:
                user, sep, password = basic.partition(":")
                if not sep:
                    raise ValueError("--doorbell-basic expects USER:PASSWORD")
                basic = (user, password)
            sandbox.servicenow.configure_doorbell(
                doorbell_url, token=getattr(args, "doorbell_token", None), basic=basic
            )
    except (ValueError, FaultSpecError) as exc:
        print(f"dutybridge sandbox: {exc}", file=sys.stderr)
        return 2
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread, or no signal support: stop() by cancellation
    try:
        try:
            await sandbox.start()
        except OSError as exc:
            print(f"dutybridge sandbox: cannot listen: {exc.strerror or exc}", file=sys.stderr)
            return 1
        banner = _banner(sandbox)
        if sandbox.servicenow.doorbell is not None:
            banner += f"\n      doorbell            {sandbox.servicenow.doorbell.url} ({', '.join(sandbox.servicenow.doorbell.tables)})"
        print(banner, flush=True)
        await stop.wait()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        await sandbox.stop()
    print("dutybridge sandbox stopped", flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dutybridge sandbox", description="Run the local PagerDuty and ServiceNow sandboxes."
    )
    parser.add_argument(
        "--pagerduty-port", type=int, default=0, metavar="N", help="PagerDuty sandbox port (0: a free port)"
    )
    parser.add_argument(
        "--servicenow-port", type=int, default=0, metavar="N", help="ServiceNow sandbox port (0: a free port)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--seed", metavar="FILE", help="seed file (.toml or .json); default: the packaged seed.toml")
    parser.add_argument("--faults", metavar="SPEC", help="fault injection spec, e.g. 'error_rate=0.1; latency_ms=20'")
    parser.add_argument(
        "--doorbell-url",
        metavar="URL",
        help="where ServiceNow's business rule stand-in posts incident changes (a running dutybridge)",
    )
    parser.add_argument("--doorbell-token", metavar="TOKEN", help="bearer token for --doorbell-url")
    parser.add_argument(
        "--doorbell-basic", metavar="USER:PASSWORD", help="basic credentials for --doorbell-url instead of a token"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return asyncio.run(serve_forever(args))


__all__ = ["Sandbox", "build_parser", "load_seed", "main", "serve_forever"]
