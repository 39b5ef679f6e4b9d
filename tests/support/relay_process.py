"""A real ``dutybridge relay`` subprocess for tests and bench/relay.py.

``start_relay(tmp, secret, allowed_hosts)`` writes RELAY.toml, starts the command, and
returns once it printed the address it listens on.
"""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

RELAY_SECRET_ENV = "TEST_RELAY_SECRET"


@dataclass
class RelayProcess:
    process: asyncio.subprocess.Process
    url: str
    config: Path
    #: What it printed (its log), as it comes.
    lines: list[str] = field(default_factory=list)
    reader: asyncio.Task | None = None

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        if self.reader is not None:
            await self.reader


async def start_relay(
    folder: Path,
    secret: str,
    allowed_hosts: list[str],
    *,
    name: str = "relay",
    port: int = 0,
    max_skew_seconds: float = 30.0,
) -> RelayProcess:
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / f"{name}.toml"
    config.write_text(
        tomli_w.dumps(
            {
                "relay": {
                    "listen_host": "127.0.0.1",
                    "listen_port": port,
                    "secret": f"env:{RELAY_SECRET_ENV}",
                    "allowed_hosts": allowed_hosts,
                    "max_skew_seconds": max_skew_seconds,
                }
            }
        )
    )
    env = {**os.environ, RELAY_SECRET_ENV: secret}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dutybridge.cli",
        "relay",
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    lines = []
    try:
        async with asyncio.timeout(30):
            while True:
                raw = await process.stdout.readline()
                if not raw:
                    raise RuntimeError("the relay exited before listening:\n" + "".join(lines))
                line = raw.decode()
                lines.append(line)
                if line.startswith("relay listening on "):
                    url = line.split()[-1]
                    break
    except BaseException:
        process.kill()
        await process.wait()
        raise
    relay = RelayProcess(process, url, config, lines)
    # Keep reading its log so a full pipe never blocks it.
    relay.reader = asyncio.get_running_loop().create_task(_drain(relay))
    return relay


async def _drain(relay: RelayProcess) -> None:
    while raw := await relay.process.stdout.readline():
        relay.lines.append(raw.decode())
