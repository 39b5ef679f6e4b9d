"""Hiding credentials carried in URLs (``scheme://user:password@host``) before they are logged:
in any text (``hide_credentials``), or from one URL with its query too (``safe_url``)."""

from __future__ import annotations

import re

from yarl import URL

# The lookbehind anchors the scheme at a word start, keeping the match linear.
_URL_USERINFO = re.compile(r"(?<![a-zA-Z0-9+.-])(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")


def hide_credentials(text: str) -> str:
    """``text`` with the user-info part of every URL in it replaced by ``***``."""
    return _URL_USERINFO.sub(r"\g<scheme>***@", text)


def safe_url(url: str) -> str:
    """``url`` without credentials, query string or fragment: safe to log."""
    try:
        u = URL(url)
        if not u.host:
            # sqlite:////var/lib/db: no authority to hold credentials; yarl cannot
            # rebuild a URL without a host, and there is nothing to take out but the query.
            return hide_credentials(url.split("?", 1)[0].split("#", 1)[0])
        return str(u.with_user(None).with_password(None).with_query(None).with_fragment(None))
    except (ValueError, TypeError):
        return "<unparseable url>"
