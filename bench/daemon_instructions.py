"""Instructions a signed webhook costs `dutybridge run`, against a bare aiohttp handler.

Wall-clock and CPU time on a shared machine move with the neighbours; an instruction
count does not. Each server runs under valgrind's callgrind (every thread counted), twice:
once answering N signed V3 webhooks sent one after another on one keep-alive connection,
once answering none. The difference over N is what one request costs: for the daemon
(worker on, default log level, metrics on, as bench/daemon_ingest.py runs it) that is
receiving, verifying, storing (fsync), claiming, dispatching, completing and both log
lines; for the bare handler, reading the body and answering 202. The ratio bare/daemon is
what the ingest ratio would be if CPU alone bounded both. Not a test; run (valgrind:
`apt-get install valgrind`; each run takes a minute or two):

    .venv/bin/python bench/daemon_instructions.py [--requests 1000]

The event loop is the one each server picks (`dutybridge run`: uvloop when installed; the
bare handler: asyncio's), as in bench/daemon_ingest.py.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from daemon_ingest import BARE, BIN, daemon_config, free_port, wait_drained, wait_http
from ingest import signed_requests


def counted(kind: str, n: int) -> int:
    """Instructions callgrind counted in one server's whole life, having answered ``n``."""
    with tempfile.TemporaryDirectory(prefix=f"dutybridge-ir-{kind}-") as tmp:
        folder = Path(tmp)
        port = free_port()
        if kind == "daemon":
            server = [str(BIN / "python"), str(BIN / "dutybridge"), "run", "--config", str(daemon_config(folder, port))]
        else:
            server = [sys.executable, "-c", BARE, str(port)]
        log = folder / "valgrind.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                ["valgrind", "--tool=callgrind", f"--callgrind-out-file={folder / 'callgrind.out'}", *server],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
            try:
                wait_http(f"http://127.0.0.1:{port}/healthz", timeout=600)
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
                for body, headers in signed_requests(n) if n else ():
                    conn.request("POST", "/webhooks/pagerduty", body=body, headers=headers)
                    resp = conn.getresponse()
                    resp.read()
                    if resp.status != 202:
                        raise RuntimeError(f"{kind}: HTTP {resp.status} for a signed webhook")
                conn.close()
                if kind == "daemon":
                    wait_drained(port, timeout=900)
            finally:
                proc.send_signal(signal.SIGTERM if kind == "daemon" else signal.SIGINT)
                proc.wait(600)
        found = re.findall(r"Collected : (\d+)", log.read_text(errors="replace"))
        if not found:
            raise RuntimeError(f"{kind}: callgrind printed no total: {log.read_text(errors='replace')[-500:]}")
        return int(found[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=1000, help="webhooks in the counted run")
    args = p.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("valgrind is not installed: apt-get install valgrind (Debian/Ubuntu), then run again", file=sys.stderr)
        return 2
    runs = [(kind, n) for kind in ("daemon", "bare") for n in (0, args.requests)]
    with ThreadPoolExecutor(2) as pool:  # callgrind's counts do not move with the load
        totals = dict(zip(runs, pool.map(lambda run: counted(*run), runs), strict=True))
    per = {kind: (totals[(kind, args.requests)] - totals[(kind, 0)]) / args.requests for kind in ("daemon", "bare")}
    for kind in ("daemon", "bare"):
        print(f"{kind:>6}: {per[kind] / 1e6:.3f}M instructions a request", flush=True)
    print(f" ratio: {per['bare'] / per['daemon']:.3f} (bare / daemon)", flush=True)
    print(
        json.dumps(
            {
                "bench": "daemon_instructions",
                "requests": args.requests,
                "daemon_instructions_per_request": round(per["daemon"]),
                "bare_instructions_per_request": round(per["bare"]),
                "ratio": round(per["bare"] / per["daemon"], 3),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
