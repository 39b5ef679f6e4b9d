"""The plugin manager: built-in plugins, entry-point plugins, user hook files.

Also the two ways the core calls a hook, both awaiting async implementations:
``call_hook`` (every implementation, results in a list) and ``call_first`` (stops
at the first non-None result, for ``escalation_policy_for`` and ``send_request``).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import stat
import traceback
import types
from pathlib import Path
from typing import Any

import pluggy
import structlog

from . import PROJECT, hookspecs


async def await_me_maybe(value: Any) -> Any:
    """Await ``value`` if it is awaitable (an async hook implementation's result)."""
    if inspect.isawaitable(value):
        return await value
    return value


async def call_hook(pm: pluggy.PluginManager, name: str, **kwargs: Any) -> list[Any]:
    """Call every implementation of hook ``name``; await each result in turn.

    If one raises, the coroutines of the implementations not yet awaited are closed
    (never left pending), and the exception propagates.
    """
    results = getattr(pm.hook, name)(**kwargs)
    out = []
    for index, result in enumerate(results):
        try:
            out.append(await await_me_maybe(result))
        except BaseException:
            for pending in results[index + 1:]:
                if inspect.iscoroutine(pending):
                    pending.close()
            raise
    return out


async def call_first(pm: pluggy.PluginManager, name: str, **kwargs: Any) -> Any:
    """Call implementations one at a time, in pluggy's order, until one returns non-None.

    Implementations after the first answer are not called at all (unlike a plain
    hook call, which would start every async implementation).
    """
    caller = getattr(pm.hook, name)
    for impl in reversed(caller.get_hookimpls()):
        args = {k: kwargs[k] for k in impl.argnames if k in kwargs}
        result = await await_me_maybe(impl.function(**args))
        if result is not None:
            return result
    return None


def make_test_pm(*plugins: object) -> pluggy.PluginManager:
    """A plugin manager with the hookspecs and the given plugins (for tests)."""
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    for plugin in plugins:
        pm.register(plugin)
    pm.check_pending()
    return pm


__all__ = ["await_me_maybe", "call_hook", "call_first", "make_test_pm"]


# --------------------------------------------------------------------------------------
# Building the plugin manager
# --------------------------------------------------------------------------------------




#: Built-in feature plugins: name in ``plugins.enabled`` -> module. One place, like
#: datasette's DEFAULT_PLUGINS; a plugin listed here is registered only when enabled.
BUILTIN_PLUGINS: dict[str, str] = {
    "custom_headers": "dutybridge_plugins.custom_headers",
    "incident_sync": "dutybridge_plugins.incident_sync",
}

ENTRY_POINT_GROUP = "dutybridge"
HOOK_FILE_PREFIX = "dutybridge_hookfile_"
HOOK_NAMES = frozenset(
    name for name, fn in vars(hookspecs).items()
    if callable(fn) and hasattr(fn, f"{PROJECT}_spec")
)

log = structlog.get_logger("dutybridge.plugins")


class PluginError(Exception):
    """A plugin or hook file could not be loaded; the message names the file and reason."""


class DutybridgePluginManager(pluggy.PluginManager):
    """Treats a hook file's top-level functions named after hooks as implementations.

    As pytest does for ``pytest_*`` functions in conftest.py, no decorator or import
    is needed in a hook file; hook files' implementations run after the plugins'.
    """

    def parse_hookimpl_opts(self, plugin: object, name: str):  # type: ignore[override]
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and getattr(plugin, "__dutybridge_hook_file__", False) and name in HOOK_NAMES:
            fn = getattr(plugin, name, None)
            if inspect.isfunction(fn) and fn.__module__ == plugin.__name__:
                return {"trylast": True}
        if opts is not None and getattr(plugin, "__dutybridge_hook_file__", False):
            opts = dict(opts)
            opts.setdefault("trylast", True)
        return opts


def known_plugins() -> dict[str, str]:
    """Every plugin that can be enabled: built-ins and installed entry points."""
    known = dict(BUILTIN_PLUGINS)
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        known.setdefault(ep.name, f"entry point {ep.value}")
    return known


def _load_named_plugin(name: str) -> object:
    if name in BUILTIN_PLUGINS:
        return importlib.import_module(BUILTIN_PLUGINS[name])
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            return ep.load()
    raise PluginError(f"plugins.enabled: unknown plugin {name!r} (known: {', '.join(sorted(known_plugins())) or 'none'})")


def _file_problem(path: Path) -> str | None:
    st = path.stat()
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        mode = stat.filemode(st.st_mode)
        return (f"{path}: refused: the file is writable by group or others ({mode}); "
                f"anyone who can write it can run code as the daemon. Fix with: chmod go-w {path}")
    return None


def load_hook_file(path: Path) -> types.ModuleType:
    """Import one hook file by path; errors name the file, the line and the reason."""
    problem = _file_problem(path)
    if problem:
        raise PluginError(problem)
    module_name = HOOK_FILE_PREFIX + "".join(c if c.isalnum() else "_" for c in path.stem)
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"{path}: cannot be loaded as a Python file")
    module = importlib.util.module_from_spec(spec)
    module.__dutybridge_hook_file__ = True  # type: ignore[attr-defined]
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        raise PluginError(f"{path}:{exc.lineno}: syntax error: {exc.msg}") from None
    except BaseException as exc:  # noqa: BLE001 - any import-time failure stops start-up
        tb = traceback.extract_tb(exc.__traceback__)
        frames = [f for f in tb if f.filename == str(path)]
        line = f":{frames[-1].lineno}" if frames else ""
        raise PluginError(f"{path}{line}: {type(exc).__name__} while importing: {exc}") from None
    # A public top-level function that is not a hook is almost always a misspelt hook.
    for attr, value in vars(module).items():
        if attr.startswith("_") or not inspect.isfunction(value) or value.__module__ != module_name:
            continue
        if attr in HOOK_NAMES or hasattr(value, f"{PROJECT}_impl"):
            continue
        guess = difflib.get_close_matches(attr, sorted(HOOK_NAMES), n=1)
        hint = f" (did you mean {guess[0]!r}?)" if guess else ""
        line = value.__code__.co_firstlineno
        raise PluginError(
            f"{path}:{line}: function {attr!r} is not a dutybridge hook{hint}; "
            f"name helpers with a leading underscore. Hooks: {', '.join(sorted(HOOK_NAMES))}")
    return module


def hook_files(hooks_dir: Path) -> list[Path]:
    if not hooks_dir.exists():
        raise PluginError(f"daemon.hooks_dir: folder {hooks_dir} does not exist")
    if not hooks_dir.is_dir():
        raise PluginError(f"daemon.hooks_dir: {hooks_dir} is not a folder")
    return sorted(p for p in hooks_dir.glob("*.py") if p.is_file() and not p.name.startswith("_"))


def register_hook_files(pm: pluggy.PluginManager, hooks_dir: Path | None) -> list[str]:
    """(Re)load every hook file; on any error nothing changes and PluginError is raised."""
    modules: list[tuple[str, types.ModuleType]] = []
    if hooks_dir is not None:
        for path in hook_files(hooks_dir):
            modules.append((f"hookfile:{path.name}", load_hook_file(path)))
    old = [(n, p) for n, p in pm.list_name_plugin() if n.startswith("hookfile:")]
    for name, plugin in old:
        pm.unregister(plugin, name=name)
    try:
        for name, module in modules:
            pm.register(module, name=name)
        _check_pending(pm)
    except BaseException:
        for name, _ in modules:
            if pm.has_plugin(name):
                pm.unregister(name=name)
        for name, plugin in old:
            pm.register(plugin, name=name)
        raise
    return [n for n, _ in modules]


def _check_pending(pm: pluggy.PluginManager) -> None:
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        plugin = exc.plugin
        where = getattr(plugin, "__file__", None) or pm.get_name(plugin) or repr(plugin)
        raise PluginError(f"{where}: {exc}") from None


def _trace(pm: pluggy.PluginManager) -> None:
    trace_log = structlog.get_logger("dutybridge.hooks")

    def before(hook_name, hook_impls, kwargs):
        trace_log.debug("hook call", hook=hook_name,
                        plugins=[pm.get_name(i.plugin) for i in hook_impls])

    def after(outcome, hook_name, hook_impls, kwargs):
        exc = outcome.exception
        trace_log.debug("hook return", hook=hook_name,
                        error=repr(exc) if exc else None)

    pm.add_hookcall_monitoring(before, after)


def build_plugin_manager(enabled: list[str], hooks_dir: Path | None = None, *,
                         extra_plugins: list[object] = (), trace: bool | None = None
                         ) -> pluggy.PluginManager:
    """The plugin manager for a configuration: enabled plugins, then hook files."""
    pm = DutybridgePluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    for name in enabled:
        try:
            plugin = _load_named_plugin(name)
        except PluginError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise PluginError(f"plugin {name!r} failed to import: {type(exc).__name__}: {exc}") from None
        pm.register(plugin, name=name)
    for plugin in extra_plugins:
        pm.register(plugin)
    _check_pending(pm)
    register_hook_files(pm, hooks_dir)
    if trace is None:
        trace = os.environ.get("DUTYBRIDGE_TRACE_HOOKS", "") not in ("", "0", "false", "no")
    if trace:
        _trace(pm)
    return pm


def describe_plugins(pm: pluggy.PluginManager) -> list[tuple[str, list[str]]]:
    """(plugin name, hooks it implements) for every registered plugin."""
    out = []
    for name, plugin in pm.list_name_plugin():
        hooks = sorted(c.name for c in pm.get_hookcallers(plugin) or [])
        out.append((name, hooks))
    return out


