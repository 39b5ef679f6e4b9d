"""The plugin manager: built-in plugins, entry-point plugins, user hook files.

Also the two ways the core calls a hook, both awaiting async implementations:
``call_hook`` (every implementation, results in a list) and ``call_first`` (stops
at the first non-None result, for ``escalation_policy_for`` and ``send_request``).
"""

from __future__ import annotations

import inspect
from typing import Any

import pluggy


async def await_me_maybe(value: Any) -> Any:
    """Await ``value`` if it is awaitable (an async hook implementation's result)."""
    if inspect.isawaitable(value):
        return await value
    return value


async def call_hook(pm: pluggy.PluginManager, name: str, **kwargs: Any) -> list[Any]:
    """Call every implementation of hook ``name``; await each result in turn."""
    results = getattr(pm.hook, name)(**kwargs)
    out = []
    for result in results:
        out.append(await await_me_maybe(result))
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
    from . import PROJECT, hookspecs

    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    for plugin in plugins:
        pm.register(plugin)
    pm.check_pending()
    return pm


__all__ = ["await_me_maybe", "call_hook", "call_first", "make_test_pm"]
