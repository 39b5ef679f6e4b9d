#!/usr/bin/env python3
"""Bootstrap and run dutybridge from a fresh clone with nothing but Python 3.11.

    python3 tasks.py demo     # the daemon against the local sandbox
    python3 tasks.py test     # the whole test suite

Each command creates ./.venv on first use and installs dutybridge into it (editable,
with the test extras), then re-installs only when pyproject.toml or setup.py change.
Any further arguments are passed on (to pytest for `test`, to `dutybridge` for `run`).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("DUTYBRIDGE_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".dutybridge-install-stamp"


def _fingerprint() -> str:
    h = hashlib.sha256()
    for name in ("pyproject.toml", "setup.py"):
        h.update((ROOT / name).read_bytes())
    return h.hexdigest()


def bootstrap() -> None:
    if sys.version_info < (3, 11):
        sys.exit(f"dutybridge needs Python >= 3.11, this is {sys.version.split()[0]}")
    if not (BIN / "python").exists():
        print(f"creating virtual environment in {VENV}", file=sys.stderr)
        venv.EnvBuilder(with_pip=True).create(VENV)
    if STAMP.exists() and STAMP.read_text() == _fingerprint():
        return
    print("installing dutybridge and its test dependencies into the venv", file=sys.stderr)
    subprocess.run(
        [str(BIN / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-e", f"{ROOT}[test]"],
        check=True,
    )
    STAMP.write_text(_fingerprint())


#: Import name -> directory, as setup.py maps them.
PACKAGES = {
    "dutybridge": "daemon",
    "dutybridge_plugins": "plugins",
    "dutybridge_sandbox": "sandbox",
    "dutybridge_demo": "demo",
}


def lint() -> int:
    """ruff (lint and format) over the repository, then mypy over the core and the plugins."""
    steps = [
        ("ruff check", [str(BIN / "ruff"), "check", "--quiet", "."]),
        ("ruff format", [str(BIN / "ruff"), "format", "--check", "--quiet", "."]),
    ]
    for name, cmd in steps:
        print(f"{name} ...", file=sys.stderr, flush=True)
        rc = subprocess.call(cmd, cwd=ROOT)
        if rc:
            print(
                f"{name} failed (exit {rc}); `.venv/bin/ruff check --fix .` / `.venv/bin/ruff format .` fix most",
                file=sys.stderr,
            )
            return rc
    # mypy cannot follow setuptools' editable finder, so it reads the directories under
    # their import names through symlinks made fresh for each run.
    src = VENV / ".mypy-src"
    src.mkdir(exist_ok=True)
    for name, directory in PACKAGES.items():
        link = src / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(ROOT / directory, target_is_directory=True)
    print("mypy ...", file=sys.stderr, flush=True)
    env = {**os.environ, "MYPYPATH": str(src)}
    rc = subprocess.call(
        [str(BIN / "python"), "-m", "mypy", "--no-error-summary", "-p", "dutybridge", "-p", "dutybridge_plugins"],
        cwd=ROOT,
        env=env,
    )
    if rc:
        print(f"mypy failed (exit {rc})", file=sys.stderr)
    return rc


def call(cmd: list[str]) -> int:
    """Run ``cmd`` to its end; its exit status, 128 + N for a child ended by signal N.

    Ctrl-C reaches the child too (one process group): the child decides how to stop,
    and this process waits for it instead of dying with a KeyboardInterrupt traceback.
    """
    child = subprocess.Popen(cmd, cwd=ROOT)
    while True:
        try:
            code = child.wait()
        except KeyboardInterrupt:
            continue
        return 128 - code if code < 0 else code


def main(argv: list[str]) -> int:
    commands = {"demo", "test", "lint", "run", "sandbox", "bootstrap"}
    if not argv or argv[0] not in commands:
        print(__doc__.strip(), file=sys.stderr)
        print(f"\ncommands: {', '.join(sorted(commands))}", file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    bootstrap()
    if command == "bootstrap":
        return 0
    if command == "lint":
        return lint()
    if command == "test":
        # pytest exits 5 when it collects no test: that is a failure here, not a pass.
        rc = call([str(BIN / "python"), "-m", "pytest", *rest])
        if rc == 5:
            print("pytest collected no tests: treating as failure", file=sys.stderr)
            return 1
        return rc
    if command == "run":
        return call([str(BIN / "dutybridge"), *rest])
    return call([str(BIN / "dutybridge"), command, *rest])


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:  # during bootstrap (venv creation, pip): stop quietly
        sys.exit(130)
