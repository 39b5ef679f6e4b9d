"""The plugin manager: built-in plugins, entry-point plugins, user hook files.

It registers and validates implementations; ``dutybridge.hooks.Hooks`` calls them.
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

import pluggy
import structlog

from . import PROJECT, hookspecs
from .hooks import Hooks

#: Built-in feature plugins: name in ``plugins.enabled`` -> module. One place, like
#: datasette's DEFAULT_PLUGINS; a plugin listed here is registered only when enabled.
#: A value is ``module`` (the module is the plugin) or ``module:Class`` (an instance,
#: made with no argument, is the plugin and keeps the plugin's state, as pytest's do).
BUILTIN_PLUGINS: dict[str, str] = {
    "custom_headers": "dutybridge_plugins.custom_headers",
    "incident_sync": "dutybridge_plugins.incident_sync:IncidentSync",
}

ENTRY_POINT_GROUP = "dutybridge"
HOOK_FILE_PREFIX = "dutybridge_hookfile_"
HOOK_NAMES = frozenset(name for name, fn in vars(hookspecs).items() if callable(fn) and hasattr(fn, f"{PROJECT}_spec"))

log = structlog.get_logger("dutybridge.plugins")


class PluginError(Exception):
    """A plugin or hook file could not be loaded; the message names the file and reason."""


class DutybridgePluginManager(pluggy.PluginManager):
    """Treats a hook file's top-level functions named after hooks as implementations.

    As pytest does for ``pytest_*`` functions in conftest.py, no decorator or import
    is needed in a hook file; hook files' implementations run after the plugins'.
    ``hooks`` is the typed caller the core uses. Registration refuses what ``Hooks``
    cannot call as declared: pluggy wrappers, and ``async def`` implementations of
    hooks that must return at once.
    """

    def __init__(self, project_name: str = PROJECT) -> None:
        super().__init__(project_name)
        self.add_hookspecs(hookspecs)
        self.hooks = Hooks(self)

    def register(self, plugin: object, name: str | None = None) -> str | None:
        registered = super().register(plugin, name)
        problem = _impl_problem(self, plugin)
        if problem is not None:
            self.unregister(plugin)
            raise PluginError(problem)
        return registered

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


def _impl_problem(pm: pluggy.PluginManager, plugin: object) -> str | None:
    where = getattr(plugin, "__file__", None) or pm.get_name(plugin) or repr(plugin)
    for caller in pm.get_hookcallers(plugin) or []:
        for impl in caller.get_hookimpls():
            if impl.plugin is not plugin:
                continue
            what = f"{where}: {impl.function.__name__}"
            if impl.hookwrapper or impl.wrapper:
                kind = "hookwrapper" if impl.hookwrapper else "wrapper"
                return (
                    f"{what}: {kind}=True is not supported: dutybridge calls and awaits each "
                    f"implementation in turn, so a wrapper cannot surround them; implement "
                    f"the hook plainly (tryfirst/trylast set the order)"
                )
            if caller.name not in hookspecs.ASYNC_HOOKS and inspect.iscoroutinefunction(impl.function):
                return f"{what}: {caller.name} must not be async (it returns what the core adds at once)"
    return None


def known_plugins() -> dict[str, str]:
    """Every plugin that can be enabled: built-ins and installed entry points."""
    known = dict(BUILTIN_PLUGINS)
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        known.setdefault(ep.name, f"entry point {ep.value}")
    return known


def _instantiate(loaded: object) -> object:
    # A class is a plugin with state of its own: one instance per plugin manager.
    return loaded() if inspect.isclass(loaded) else loaded


def _load_named_plugin(name: str) -> object:
    if name in BUILTIN_PLUGINS:
        module_name, _, attr = BUILTIN_PLUGINS[name].partition(":")
        module = importlib.import_module(module_name)
        return _instantiate(getattr(module, attr) if attr else module)
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            return _instantiate(ep.load())
    raise PluginError(
        f"plugins.enabled: unknown plugin {name!r} (known: {', '.join(sorted(known_plugins())) or 'none'})"
    )


def _file_problem(path: Path) -> str | None:
    st = path.stat()
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        mode = stat.filemode(st.st_mode)
        return (
            f"{path}: refused: the file is writable by group or others ({mode}); "
            f"anyone who can write it can run code as the daemon. Fix with: chmod go-w {path}"
        )
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
    except BaseException as exc:
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
            f"name helpers with a leading underscore. Hooks: {', '.join(sorted(HOOK_NAMES))}"
        )
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


def build_plugin_manager(
    enabled: list[str], hooks_dir: Path | None = None, *, extra_plugins: list[object] = (), trace: bool | None = None
) -> DutybridgePluginManager:
    """The plugin manager for a configuration: enabled plugins, then hook files."""
    pm = DutybridgePluginManager()
    for name in enabled:
        try:
            plugin = _load_named_plugin(name)
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(f"plugin {name!r} failed to import: {type(exc).__name__}: {exc}") from None
        pm.register(plugin, name=name)
    for plugin in extra_plugins:
        pm.register(plugin)
    _check_pending(pm)
    register_hook_files(pm, hooks_dir)
    if trace is None:
        trace = os.environ.get("DUTYBRIDGE_TRACE_HOOKS", "") not in ("", "0", "false", "no")
    pm.hooks.trace = trace
    return pm


def make_test_pm(*plugins: object) -> DutybridgePluginManager:
    """A plugin manager with the hookspecs and the given plugins (for tests)."""
    pm = DutybridgePluginManager()
    for plugin in plugins:
        pm.register(plugin)
    _check_pending(pm)
    return pm


def describe_plugins(pm: pluggy.PluginManager) -> list[tuple[str, list[str]]]:
    """(plugin name, hooks it implements) for every registered plugin."""
    out = []
    for name, plugin in pm.list_name_plugin():
        hooks = sorted(c.name for c in pm.get_hookcallers(plugin) or [])
        out.append((name, hooks))
    return out
