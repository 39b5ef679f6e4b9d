"""A PostgreSQL for the tests: the one at 127.0.0.1:5432 (or $DUTYBRIDGE_TEST_POSTGRES), else a
throwaway server started from the ``pgserver`` wheel (the test extra); each test gets a schema.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import socket
import tempfile
import uuid
import warnings
from urllib.parse import urlsplit

import asyncpg

from dutybridge.store.postgres_url import split_url

DEFAULT = "postgresql://postgres@127.0.0.1:5432/test"
_server_url: str | None = None


def _answers(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5432), timeout=1):
            return True
    except OSError:
        return False


def server_url() -> str:
    """The base URL of a PostgreSQL that answers, started once per test session if need be.

    Raises ``RuntimeError`` with what to do when none can be had: a PostgreSQL test is
    never skipped.
    """
    global _server_url
    if _server_url is not None:
        return _server_url
    url = os.environ.get("DUTYBRIDGE_TEST_POSTGRES", DEFAULT)
    if not _answers(url):
        url = _start_pgserver()
    _server_url = url
    return url


def _start_pgserver() -> str:
    try:
        with warnings.catch_warnings():
            # platformdirs (under pgserver) warns at import when XDG_RUNTIME_DIR is
            # unset, as in CI; the suite makes warnings errors, and this one is not ours.
            warnings.simplefilter("ignore")
            import pgserver  # the test extra; imported only when no PostgreSQL answers
    except ImportError:
        raise RuntimeError(
            "no PostgreSQL answers at 127.0.0.1:5432 and the pgserver wheel is not installed: "
            "pip install -e '.[test]' (it bundles a PostgreSQL), or set DUTYBRIDGE_TEST_POSTGRES "
            "to a server's URL"
        ) from None
    folder = tempfile.mkdtemp(prefix="dutybridge-pg-")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the same warning, from the server's start
        server = pgserver.get_server(folder, cleanup_mode="delete")
    atexit.register(server.cleanup)
    # pgserver listens on a Unix socket in its folder; its URI carries an empty
    # password, which the store refuses in a URL.
    parts = urlsplit(server.get_uri())
    return f"postgresql://postgres@/postgres?{parts.query}"


def with_schema(base: str, schema: str) -> str:
    return f"{base}{'&' if '?' in base else '?'}schema={schema}"


def new_schema() -> str:
    return f"t_{uuid.uuid4().hex[:16]}"


async def drop_schema(base: str, schema: str) -> None:
    dsn, _ = split_url(base)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def drop_schema_sync(base: str, schema: str) -> None:
    asyncio.run(drop_schema(base, schema))
