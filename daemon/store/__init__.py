"""Choose and build the durable store from ``daemon.store_url``."""

from __future__ import annotations

import re
from pathlib import Path

from .base import Link, LinkConflictError, Store

__all__ = ["Link", "LinkConflictError", "Store", "open_store"]


def _redact(url: str) -> str:
    # A database URL may carry a password (postgresql://user:secret@host/db).
    return re.sub(r"//[^/@]*@", "//***@", url)


def open_store(url: str, base_dir: Path, *, password: str | None = None) -> Store:
    """Build the store named by ``url`` (not yet opened: ``await store.open()``).

    ``sqlite:///PATH``: a relative PATH is resolved against ``base_dir`` (the state
    directory), ``sqlite:////abs/path`` is absolute, ``sqlite:///:memory:`` is a
    private in-memory database (tests). ``postgresql://USER@HOST[:PORT]/DATABASE``
    (``?schema=NAME`` for a schema of its own) is PostgreSQL, with ``password`` (never
    in the URL). Anything else raises ``ValueError``.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"store_url {_redact(url)!r} is not a URL; expected sqlite:///PATH")
    scheme = scheme.lower()
    if scheme == "sqlite":
        if not rest.startswith("/"):
            raise ValueError(
                f"store_url {_redact(url)!r}: a SQLite URL has three slashes and no host, "
                f"as in sqlite:///dutybridge.db (relative) or sqlite:////var/lib/dutybridge/dutybridge.db"
            )
        raw = rest[1:]
        if not raw:
            raise ValueError("store_url 'sqlite:///' names no file; expected sqlite:///PATH")
        from .sqlite import MEMORY, SQLiteStore

        if raw == MEMORY:
            return SQLiteStore(MEMORY)
        path = Path(raw).expanduser()
        if not path.is_absolute():
            path = Path(base_dir) / path
        return SQLiteStore(path)
    if scheme in ("postgresql", "postgres"):
        # Imported here: asyncpg loads only for a PostgreSQL store.
        from .postgres import PostgresStore

        return PostgresStore(url, password=password)
    raise ValueError(
        f"store_url {_redact(url)!r}: unsupported scheme {scheme!r}; "
        f"expected sqlite:///PATH or postgresql://USER@HOST/DATABASE"
    )
