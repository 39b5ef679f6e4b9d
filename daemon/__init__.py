"""dutybridge: a self-hosted PagerDuty <-> ServiceNow integration daemon.

Plugins import ``hookimpl`` from here to mark their hook implementations.
"""

import pluggy

__version__ = "0.1.0"

PROJECT = "dutybridge"
hookimpl = pluggy.HookimplMarker(PROJECT)

__all__ = ["PROJECT", "__version__", "hookimpl"]
