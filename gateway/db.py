"""The database engine: one per process, made in the lifespan (or a CLI command), never at import.

Every GraphQL operation runs in one transaction opened by the HTTP endpoint; data functions take a
connection and never commit on their own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

if TYPE_CHECKING:
    from gateway.settings import Settings

_DRIVER_PREFIXES = ("postgresql+asyncpg://", "postgresql://", "postgres://")


def normalize_url(url: str) -> str:
    """Accept the usual spellings of a PostgreSQL URL and return the asyncpg one."""
    for prefix in _DRIVER_PREFIXES:
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    raise ValueError("DATABASE_URL must be a postgresql:// URL")


def create_engine(url: str, settings: Settings, *, pool_size: int | None = None) -> AsyncEngine:
    size = pool_size or settings.db_pool_size
    return create_async_engine(
        normalize_url(url),
        pool_size=size,
        # No overflow: a connection opened for a burst and closed after it costs PostgreSQL a
        # backend start (measured: 19 per second under the load test, a quarter of its
        # throughput); a request waits for a pooled connection instead (pool_timeout).
        max_overflow=0,
        pool_timeout=5,
        # No ping per checkout (a round trip on every request, measured); a connection the
        # server dropped fails its statement, is discarded, and the next checkout opens a new one.
        pool_pre_ping=False,
        # Parameters can be personal data: keep them out of exception messages and logs.
        hide_parameters=not settings.dev,
        connect_args={
            "timeout": 5,
            "server_settings": {
                "application_name": "tillit",
                "statement_timeout": str(settings.db_statement_timeout_ms),
                "idle_in_transaction_session_timeout": "60000",
            },
        },
    )


async def schema_revision(connection: AsyncConnection) -> str | None:
    """The Alembic revision the database is at; None when it was never migrated."""
    has_table = await connection.scalar(text("SELECT to_regclass('alembic_version') IS NOT NULL"))
    if not has_table:
        return None
    revision: str | None = await connection.scalar(text("SELECT version_num FROM alembic_version"))
    return revision


async def driver(connection: AsyncConnection) -> tuple[Any, Any]:
    """The asyncpg connection under `connection`, inside its transaction, and the lock that
    serialises statements on it.

    Raw asyncpg is for the request's hot path (measured: SQLAlchemy's statement building and result
    processing took most of a profile-read's time). It must run in the operation's transaction, so
    the transaction is begun here if SQLAlchemy has not begun it yet; this reaches into the asyncpg
    adapter (`_transaction`, `_start_transaction`, `_execute_mutex`), which the tests pin down.
    """
    fairy = await connection.get_raw_connection()
    adapted: Any = fairy.dbapi_connection
    async with adapted._execute_mutex:
        if adapted._transaction is None:
            await adapted._start_transaction()
    return adapted.driver_connection, adapted._execute_mutex


async def raw_connection(connection: AsyncConnection) -> Any:
    """The asyncpg connection under `connection`, without beginning a transaction: a statement
    run on it before the operation's first statement commits on its own."""
    fairy = await connection.get_raw_connection()
    adapted: Any = fairy.dbapi_connection
    return adapted.driver_connection


async def fetch(connection: AsyncConnection, sql: str, *args: Any) -> list[Any]:
    """Run one statement on the raw driver in the operation's transaction; asyncpg caches the
    prepared statement per connection."""
    raw, mutex = await driver(connection)
    async with mutex:
        rows: list[Any] = await raw.fetch(sql, *args)
    return rows


async def execute(connection: AsyncConnection, sql: str, *args: Any) -> None:
    raw, mutex = await driver(connection)
    async with mutex:
        await raw.execute(sql, *args)
