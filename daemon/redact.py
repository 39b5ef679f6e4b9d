"""Hiding credentials carried in URLs (``scheme://user:password@host``) before text is logged.

One function, used by the worker's error text and the daemon's start-up log line.
"""

from __future__ import annotations

import re

# The lookbehind anchors the scheme at a word start, keeping the match linear.
_URL_USERINFO = re.compile(r"(?<![a-zA-Z0-9+.-])(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")


def hide_credentials(text: str) -> str:
    """``text`` with the user-info part of every URL in it replaced by ``***``."""
    return _URL_USERINFO.sub(r"\g<scheme>***@", text)
