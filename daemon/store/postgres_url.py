"""What a PostgreSQL ``store_url`` may say, checked without asyncpg (the config checks it
at load time, before any store exists)."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def split_url(url: str) -> tuple[str, str | None]:
    """``(dsn for asyncpg, schema)``: the URL less dutybridge's own ``schema=`` parameter.

    A password in the URL is refused: it belongs in ``daemon.store_password`` (an
    ``env:``/``file:`` reference), so that the URL can be logged and shown.
    """
    parts = urlsplit(url)
    if parts.password is not None:
        raise ValueError(
            "store_url carries a password; give it as daemon.store_password "
            "(env:NAME or file:PATH) and leave it out of the URL"
        )
    if not parts.hostname and "host=" not in parts.query:
        raise ValueError(f"store_url {url!r} names no host; expected postgresql://USER@HOST[:PORT]/DATABASE")
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = None
    rest = []
    for key, value in query:
        if key == "schema":
            if not _SCHEMA_NAME.fullmatch(value):
                raise ValueError(f"store_url schema {value!r}: expected a lower-case SQL name ([a-z_][a-z0-9_]*)")
            schema = value
        else:
            rest.append((key, value))
    scheme = "postgresql"
    return urlunsplit((scheme, parts.netloc, parts.path, urlencode(rest), "")), schema
