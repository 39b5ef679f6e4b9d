"""``Command``: what a plugin's ``register_cli_commands`` returns, one ``dutybridge`` subcommand.

The CLI adds each to its parser, runs it with the configuration loaded and a ready ``ctx``.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .context import Ctx


@dataclass(frozen=True)
class Command:
    """``dutybridge NAME ...``, provided by a plugin.

    ``add_arguments(parser)`` adds the command's arguments (and sub-commands, with
    ``parser.add_subparsers()``) to the ``argparse.ArgumentParser`` made for it; the
    CLI adds ``--config`` itself. ``handler(args, ctx)`` runs the command with the
    configuration loaded and ``ctx`` ready (store open, clients built, nothing
    listening) and returns the exit code.

    ``standalone`` commands run without the daemon's configuration: the plugin need not
    be enabled, nothing is opened, and ``ctx`` is None (an agent with a config file of
    its own, such as a relay).
    """

    name: str
    help: str
    handler: Callable[[argparse.Namespace, Ctx | None], Awaitable[int | None]]
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    standalone: bool = False
