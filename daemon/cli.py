"""The ``dutybridge`` command: run the daemon, check connections, manage config and events."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import IO

import pluggy

from . import __version__, events_cli, hooks_cli
from .app import command_context, load, plugin_schemas
from .checks import BUILTIN_CHECKS, CheckResult
from .commands import Command
from .config import SECRET_PREFIXES, Config, ConfigError, render_example, resolve_secret
from .logging import adjust_level, configure, set_secrets
from .plugins import PluginError, build_plugin_manager, describe_plugins, known_plugins
from .redact import hide_credentials
from .serve import run
from .store import open_store
from .store.postgres import PostgresStore
from .store.transfer import copy_sqlite_to_postgres

CONFIG_HELP = (
    "configuration file (default: $DUTYBRIDGE_CONFIG, else "
    "$CONFIGURATION_DIRECTORY/config.toml under systemd, else ./config.toml)"
)


def default_config_path() -> str:
    if os.environ.get("DUTYBRIDGE_CONFIG"):
        return os.environ["DUTYBRIDGE_CONFIG"]
    if os.environ.get("CONFIGURATION_DIRECTORY"):
        return str(Path(os.environ["CONFIGURATION_DIRECTORY"].split(":")[0]) / "config.toml")
    return "config.toml"


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", metavar="PATH", default=None, help=CONFIG_HELP)


def _add_verbosity(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output (repeatable)")
    p.add_argument("-q", "--quiet", action="count", default=0, help="less log output (repeatable)")


def _global_options(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """``--config``, ``-v`` and ``-q`` wherever they stand (before or after a command
    and its sub-commands), and the arguments left for the command's own parser."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config", "-c", default=None)
    _add_verbosity(pre)
    # Only up to "--": what follows belongs to the command, whatever it looks like.
    cut = argv.index("--") if "--" in argv else len(argv)
    options, rest = pre.parse_known_args(argv[:cut])
    return options, rest + argv[cut:]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dutybridge",
        description="A self-hosted PagerDuty <-> ServiceNow integration daemon.",
        epilog="Exit codes: 0 success, 1 failure, 2 invalid configuration or usage.",
    )
    parser.add_argument("--version", action="version", version=f"dutybridge {__version__}")
    _add_config(parser)
    _add_verbosity(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="run the daemon (webhook server, worker, scheduler)")
    _add_config(p)

    p = sub.add_parser("check", help="test the PagerDuty and ServiceNow connections and settings")
    _add_config(p)

    p = sub.add_parser("config", help="write or validate a configuration file")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    pi = csub.add_parser("init", help="write a commented starting configuration")
    pi.add_argument(
        "--output",
        "-o",
        metavar="PATH",
        default="config.toml",
        help="where to write it (default: ./config.toml; - for stdout)",
    )
    pi.add_argument("--force", action="store_true", help="overwrite an existing file")
    pi.add_argument(
        "--enable",
        metavar="PLUGIN",
        action="append",
        default=[],
        help="enable a plugin in the written file (repeatable)",
    )
    pi.add_argument(
        "--systemd",
        action="store_true",
        help="for contrib/systemd/dutybridge.service: secrets as file:NAME, the unit's "
        "LoadCredential= names (read from $CREDENTIALS_DIRECTORY), not env:NAME",
    )
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

    p = sub.add_parser("hooks", help="try a user hook file before deploying it")
    hooks_cli.add_arguments(p)
    p = sub.add_parser("store", help="move the store: copy a SQLite store into PostgreSQL")
    ssub = p.add_subparsers(dest="store_command", metavar="ACTION", required=True)
    pm_ = ssub.add_parser("migrate", help="copy inbox, links and watermarks from SQLite into an empty PostgreSQL")
    pm_.add_argument("--from", dest="source", required=True, metavar="sqlite:///PATH")
    pm_.add_argument("--to", dest="target", required=True, metavar="postgresql://USER@HOST/DB")
    pm_.add_argument(
        "--to-password",
        default=None,
        metavar="env:NAME|file:PATH",
        help="the PostgreSQL user's password, by reference (never on the command line)",
    )

    p = sub.add_parser("demo", help="the sandbox and the daemon wired together, with a scripted story")
    p.add_argument("--keep-running", action="store_true", help="leave everything up afterwards, for playing")

    p = sub.add_parser("sandbox", help="run the local PagerDuty and ServiceNow sandbox", add_help=False)
    p.add_argument("sandbox_args", nargs=argparse.REMAINDER)
    for plugin, command in plugin_commands():
        p = sub.add_parser(command.name, help=f"{command.help} [plugin {plugin}]")
        _add_config(p)
        if command.add_arguments is not None:
            command.add_arguments(p)
        p.set_defaults(plugin_command=command, plugin=plugin)
    return parser


BUILTIN_COMMANDS = frozenset({"run", "check", "config", "plugins", "events", "store", "sandbox", "demo", "hooks"})


def plugin_commands() -> list[tuple[str, Command]]:
    """(plugin, command) for every installed plugin's commands, enabled or not, so that
    ``--help`` lists them all; running one needs its plugin enabled."""
    try:
        pm = build_plugin_manager(list(known_plugins()), None, trace=False)
    except PluginError as exc:
        print(f"plugin commands unavailable: {exc}", file=sys.stderr)
        return []
    return [
        (plugin, command)
        for plugin, command in pm.hooks.register_cli_commands()
        if command.name not in BUILTIN_COMMANDS
    ]


def _config_path(args: argparse.Namespace) -> str:
    return getattr(args, "config", None) or default_config_path()


def _load(args: argparse.Namespace) -> tuple[Config, pluggy.PluginManager]:
    try:
        return load(_config_path(args))
    except (ConfigError, PluginError) as exc:
        print(str(exc), file=sys.stderr)
        raise SystemExit(2) from None


def _configure_cli_logging(args: argparse.Namespace, level: str = "warning") -> None:
    configure(adjust_level(level, args.verbose, args.quiet), "console", stream=sys.stderr)


async def _check(config: Config, pm: pluggy.PluginManager, out: IO[str]) -> int:
    async with command_context(config, pm) as ctx:
        checks = [*BUILTIN_CHECKS, *ctx.hooks.register_checks(ctx=ctx)]
        failed = 0
        for check in checks:
            try:
                result = await check.func(ctx)
            except Exception as exc:
                result = CheckResult(False, f"{type(exc).__name__}: {exc}")
            mark = "success" if result.ok else "FAILED "
            failed += not result.ok
            print(f"{mark}  {check.name}: {result.detail}", file=out)
        print(f"\n{len(checks) - failed} passed, {failed} failed", file=out)
        return 1 if failed else 0


def _config_init(args: argparse.Namespace) -> int:
    known = known_plugins()
    unknown = [n for n in args.enable if n not in known]
    if unknown:
        print(
            f"--enable: unknown plugin(s) {', '.join(unknown)} (known: {', '.join(sorted(known)) or 'none'})",
            file=sys.stderr,
        )
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


def _plugins(config: Config, pm: pluggy.PluginManager, out: IO[str]) -> int:
    rows = describe_plugins(pm)
    if not rows:
        print("no plugins loaded (enable some in plugins.enabled)", file=out)
    for name, hooks in rows:
        print(f"{name}: {', '.join(hooks) or '(no hooks)'}", file=out)
    return 0


async def _events(args: argparse.Namespace, config: Config, pm: pluggy.PluginManager, out: IO[str]) -> int:
    async with command_context(config, pm, clients=False) as ctx:
        store = ctx.store
        if store is None:
            return 1
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


async def _store_migrate(source: str, target: str, password_ref: str | None) -> int:
    """``dutybridge store migrate``: stop the daemon first; the SQLite file is only read."""
    if not source.startswith("sqlite:///") or source == "sqlite:///":
        print(f"--from: expected sqlite:///PATH, found {hide_credentials(source)!r}", file=sys.stderr)
        return 2
    password = None
    try:
        if password_ref is not None:
            if not password_ref.startswith(SECRET_PREFIXES):
                raise ValueError("--to-password takes env:NAME or file:PATH, never the password itself")
            # As a config file's reference would be read, relative to the working folder.
            password = resolve_secret(password_ref, SimpleNamespace(context={"base_dir": Path.cwd()}))
        store = open_store(target, Path.cwd(), password=password)
        if not isinstance(store, PostgresStore):
            raise ValueError(f"--to: expected postgresql://USER@HOST/DATABASE, found {hide_credentials(target)!r}")
    except ValueError as exc:
        print(f"dutybridge store migrate: {exc}", file=sys.stderr)
        return 2
    if password is not None:
        set_secrets([password])
    try:
        async with store:
            copied = await copy_sqlite_to_postgres(Path(source[len("sqlite:///") :]), store)
    except (ValueError, ConnectionError) as exc:
        print(f"dutybridge store migrate: {exc}", file=sys.stderr)
        return 1
    print(
        f"copied {copied.events} events ({copied.released} claimed ones made pending), "
        f"{copied.links} links and {copied.watermarks} watermarks to {store.url}"
    )
    return 0


def _plugin_command(args: argparse.Namespace, config: Config, pm: pluggy.PluginManager) -> int:
    command: Command = args.plugin_command
    if args.plugin not in config.plugins_enabled:
        print(
            f"dutybridge {command.name}: the {args.plugin} plugin is not enabled in {_config_path(args)} "
            f"(add it to plugins.enabled)",
            file=sys.stderr,
        )
        return 2

    async def go() -> int:
        async with command_context(config, pm) as ctx:
            return int(await command.handler(args, ctx) or 0)

    return asyncio.run(go())


#: A command whose reader went away (``dutybridge events list | head -1``): the shell's
#: status for a process ended by SIGPIPE.
EXIT_BROKEN_PIPE = 128 + 13


def main(argv: Sequence[str] | None = None) -> int:
    try:
        code = _main(argv)
        # Output still buffered would fail at exit, outside this handler.
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # As the Python docs' "Note on SIGPIPE" does: the interpreter's own flush at exit
        # would otherwise report the broken pipe again.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):  # a stdout without a file descriptor (captured in tests)
            pass
        return EXIT_BROKEN_PIPE


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    first = next((a for a in argv if not a.startswith("-")), None)
    if first == "sandbox":
        # The sandbox has its own options (and --help); hand it everything after its name.
        # It is a separate package the core does not import otherwise.
        from dutybridge_sandbox.runner import main as sandbox_main

        return sandbox_main(argv[argv.index("sandbox") + 1 :])
    options, rest = _global_options(argv)
    parser = build_parser()
    args = parser.parse_args(rest)
    args.config, args.verbose, args.quiet = options.config, options.verbose, options.quiet
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "demo":
        # The demo composes the core, a plugin and the sandbox: a package of its own.
        from dutybridge_demo.story import run_demo

        try:
            return asyncio.run(run_demo(keep_running=args.keep_running))
        except KeyboardInterrupt:
            return 130
    if args.command == "hooks":
        # Hook files are tried without a configuration: the file alone, as the daemon loads it.
        _configure_cli_logging(args)
        return asyncio.run(hooks_cli.run_hook_test(args.file, args.request, sys.stdout, sys.stderr))
    if args.command == "config" and args.config_command == "init":
        return _config_init(args)
    if args.command == "store":
        return asyncio.run(_store_migrate(args.source, args.target, args.to_password))
    command = getattr(args, "plugin_command", None)
    if command is not None and command.standalone:
        return int(asyncio.run(command.handler(args, None)) or 0)
    if args.command == "run":
        return run(_config_path(args), verbose=args.verbose, quiet=args.quiet)

    config, pm = _load(args)
    if args.command == "config":
        for warning in config.warnings:
            print(f"{_config_path(args)}: warning: {warning}", file=sys.stderr)
        print(
            f"{_config_path(args)}: valid ({len(config.plugins_enabled)} plugin(s) enabled: "
            f"{', '.join(config.plugins_enabled) or 'none'})"
        )
        return 0
    _configure_cli_logging(args)
    set_secrets(config.secrets())
    if args.command == "check":
        return asyncio.run(_check(config, pm, sys.stdout))
    if args.command == "plugins":
        return _plugins(config, pm, sys.stdout)
    if args.command == "events":
        return asyncio.run(_events(args, config, pm, sys.stdout))
    if getattr(args, "plugin_command", None) is not None:
        return _plugin_command(args, config, pm)
    parser.print_help()
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
