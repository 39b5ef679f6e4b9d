"""The ``dutybridge`` command: run the daemon, check connections, manage config and events."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from pathlib import Path
from typing import AsyncIterator, Sequence

from . import __version__

CONFIG_HELP = ("configuration file (default: $DUTYBRIDGE_CONFIG, else "
               "$CONFIGURATION_DIRECTORY/config.toml under systemd, else ./config.toml)")


def default_config_path() -> str:
    if os.environ.get("DUTYBRIDGE_CONFIG"):
        return os.environ["DUTYBRIDGE_CONFIG"]
    if os.environ.get("CONFIGURATION_DIRECTORY"):
        return str(Path(os.environ["CONFIGURATION_DIRECTORY"].split(":")[0]) / "config.toml")
    return "config.toml"


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", metavar="PATH", default=None, help=CONFIG_HELP)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dutybridge",
        description="A self-hosted PagerDuty <-> ServiceNow integration daemon.",
        epilog="Exit codes: 0 success, 1 failure, 2 invalid configuration or usage.",
    )
    parser.add_argument("--version", action="version", version=f"dutybridge {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (repeatable)")
    parser.add_argument("-q", "--quiet", action="count", default=0, help="less log output (repeatable)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="run the daemon (webhook server, worker, scheduler)")
    _add_config(p)

    p = sub.add_parser("check", help="test the PagerDuty and ServiceNow connections and settings")
    _add_config(p)

    p = sub.add_parser("config", help="write or validate a configuration file")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    pi = csub.add_parser("init", help="write a commented starting configuration")
    pi.add_argument("--output", "-o", metavar="PATH", default="config.toml", help="where to write it (default: ./config.toml; - for stdout)")
    pi.add_argument("--force", action="store_true", help="overwrite an existing file")
    pi.add_argument("--enable", metavar="PLUGIN", action="append", default=[], help="enable a plugin in the written file (repeatable)")
    pi.add_argument("--systemd", action="store_true",
                    help="for contrib/systemd/dutybridge.service: secrets as file:NAME, the unit's "
                         "LoadCredential= names (read from $CREDENTIALS_DIRECTORY), not env:NAME")
    pc = csub.add_parser("check", help="validate a configuration file and its hook files")
    _add_config(pc)

    p = sub.add_parser("plugins", help="list loaded plugins and the hooks each implements")
    _add_config(p)

    p = sub.add_parser("events", help="inspect and replay the durable inbox")
    esub = p.add_subparsers(dest="events_command", metavar="ACTION", required=True)
    pl = esub.add_parser("list", help="list events, newest first")
    _add_config(pl)
    pl.add_argument("--status", choices=["pending", "claimed", "done", "dead", "ignored"])
    pl.add_argument("--limit", type=int, default=50)
    pl.add_argument("--json", action="store_true", help="one JSON object per line")
    ps = esub.add_parser("show", help="show one event with its payload")
    _add_config(ps)
    ps.add_argument("id", type=int)
    pr = esub.add_parser("replay", help="make an event (or every dead letter) pending again")
    _add_config(pr)
    group = pr.add_mutually_exclusive_group(required=True)
    group.add_argument("id", type=int, nargs="?")
    group.add_argument("--dead", action="store_true", help="replay every dead letter")
    pp = esub.add_parser("purge", help="delete dead letters")
    _add_config(pp)
    pp.add_argument("--dead", action="store_true", required=True, help="delete every dead letter")

    p = sub.add_parser("demo", help="the sandbox and the daemon wired together, with a scripted story")
    p.add_argument("--keep-running", action="store_true", help="leave everything up afterwards, for playing")

    p = sub.add_parser("sandbox", help="run the local PagerDuty and ServiceNow sandbox", add_help=False)
    p.add_argument("sandbox_args", nargs=argparse.REMAINDER)
    return parser


def _config_path(args: argparse.Namespace) -> str:
    return getattr(args, "config", None) or default_config_path()


def _load(args: argparse.Namespace):
    from .app import load
    from .config import ConfigError
    from .plugins import PluginError

    try:
        return load(_config_path(args))
    except (ConfigError, PluginError) as exc:
        print(str(exc), file=sys.stderr)
        raise SystemExit(2) from None


def _configure_cli_logging(args: argparse.Namespace, level: str = "warning") -> None:
    from .logging import adjust_level, configure

    configure(adjust_level(level, args.verbose, args.quiet), "console", stream=sys.stderr)


@contextlib.asynccontextmanager
async def cli_context(config, pm, *, store: bool = True, clients: bool = True) -> AsyncIterator:
    """``ctx`` for a one-off command: store open, clients ready, nothing listening."""
    from .app import build_clients, make_ctx
    from .http import OutboundPipeline
    from .store import open_store

    ctx = make_ctx(config, pm)
    async with contextlib.AsyncExitStack() as stack:
        if store:
            ctx.store = open_store(config.daemon.store_url, config.resolve_path(".", state=True))
            await ctx.store.open()
            stack.push_async_callback(ctx.store.close)
        if clients:
            ctx.http = OutboundPipeline(pm, ctx, metrics=ctx.metrics)
            await ctx.http.start()
            stack.push_async_callback(ctx.http.close)
            build_clients(ctx)
        yield ctx


async def _check(config, pm, out) -> int:
    from .checks import BUILTIN_CHECKS

    async with cli_context(config, pm, store=False) as ctx:
        checks = list(BUILTIN_CHECKS)
        for extra in pm.hook.register_checks(ctx=ctx):
            checks.extend(extra or [])
        failed = 0
        for check in checks:
            try:
                result = await check.func(ctx)
            except Exception as exc:  # noqa: BLE001 - a broken check is a failed check
                from .checks import CheckResult

                result = CheckResult(False, f"{type(exc).__name__}: {exc}")
            mark = "success" if result.ok else "FAILED "
            failed += not result.ok
            print(f"{mark}  {check.name}: {result.detail}", file=out)
        print(f"\n{len(checks) - failed} passed, {failed} failed", file=out)
        return 1 if failed else 0


def _config_init(args: argparse.Namespace) -> int:
    from .config import render_example
    from .plugins import PluginError, build_plugin_manager, known_plugins
    from .app import plugin_schemas

    known = known_plugins()
    unknown = [n for n in args.enable if n not in known]
    if unknown:
        print(f"--enable: unknown plugin(s) {', '.join(unknown)} (known: {', '.join(sorted(known)) or 'none'})", file=sys.stderr)
        return 2
    try:
        pm = build_plugin_manager(list(known), None)
    except PluginError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    text = render_example(plugin_schemas(pm), enabled=args.enable, systemd=args.systemd)
    if args.output == "-":
        sys.stdout.write(text)
        return 0
    out = Path(args.output)
    if out.exists() and not args.force:
        print(f"{out} exists; not overwriting it (use --force to replace it)", file=sys.stderr)
        return 1
    try:
        out.write_text(text)
    except OSError as exc:
        print(f"cannot write {out}: {exc.strerror}", file=sys.stderr)
        return 1
    print(f"wrote {out}; edit it, then: dutybridge config check --config {out}")
    return 0


def _plugins(config, pm, out) -> int:
    from .plugins import describe_plugins

    rows = describe_plugins(pm)
    if not rows:
        print("no plugins loaded (enable some in plugins.enabled)", file=out)
    for name, hooks in rows:
        print(f"{name}: {', '.join(hooks) or '(no hooks)'}", file=out)
    return 0


async def _events(args, config, pm, out) -> int:
    from . import events_cli

    async with cli_context(config, pm, clients=False) as ctx:
        store = ctx.store
        action = args.events_command
        if action == "list":
            return await events_cli.list_events(store, out, status=args.status, limit=args.limit, as_json=args.json)
        if action == "show":
            return await events_cli.show_event(store, out, args.id)
        if action == "replay":
            if args.dead:
                return await events_cli.replay_dead(store, out)
            return await events_cli.replay_event(store, out, args.id)
        if action == "purge":
            return await events_cli.purge_dead(store, out)
    return 2


def _plugin_command(args, config, pm) -> int:
    async def go() -> int:
        async with cli_context(config, pm) as ctx:
            return int(await args.handler(args, ctx) or 0)

    return asyncio.run(go())


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    first = next((a for a in argv if not a.startswith("-")), None)
    if first == "sandbox":
        # The sandbox has its own options (and --help); hand it everything after its name.
        from dutybridge_sandbox.runner import main as sandbox_main

        return sandbox_main(argv[argv.index("sandbox") + 1:])
    parser = build_parser()
    # Plugins add subcommands, and which plugins run depends on the configuration:
    # find --config first, then let the enabled plugins extend the parser.
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", "-c", default=None)
    known_args, _ = pre.parse_known_args(argv)
    builtin = {"run", "check", "config", "plugins", "events", "sandbox", "demo"}
    first = next((a for a in argv if not a.startswith("-")), None)
    if first is not None and first not in builtin:
        cfg_args = argparse.Namespace(config=known_args.config)
        config, pm = _load(cfg_args)
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        pm.hook.register_cli_commands(subparsers=sub)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "demo":
        from .demo import run_demo

        try:
            return asyncio.run(run_demo(keep_running=args.keep_running))
        except KeyboardInterrupt:
            return 130
    if args.command == "config" and args.config_command == "init":
        return _config_init(args)
    if args.command == "run":
        from .app import run

        return run(_config_path(args), verbose=args.verbose, quiet=args.quiet)

    config, pm = _load(args)
    if args.command == "config":
        for warning in config.warnings:
            print(f"{_config_path(args)}: warning: {warning}", file=sys.stderr)
        print(f"{_config_path(args)}: valid ({len(config.plugins_enabled)} plugin(s) enabled: "
              f"{', '.join(config.plugins_enabled) or 'none'})")
        return 0
    _configure_cli_logging(args)
    from .logging import set_secrets

    set_secrets(config.secrets())
    if args.command == "check":
        return asyncio.run(_check(config, pm, sys.stdout))
    if args.command == "plugins":
        return _plugins(config, pm, sys.stdout)
    if args.command == "events":
        return asyncio.run(_events(args, config, pm, sys.stdout))
    if hasattr(args, "handler"):
        return _plugin_command(args, config, pm)
    parser.print_help()
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
