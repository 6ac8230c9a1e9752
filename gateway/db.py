"""The database engine and the raw pool: one each per process, made in the lifespan (or a CLI
command), never at import.

The HTTP endpoint opens each GraphQL operation's connection: a transaction for anything that
writes, autocommit for operations that only read (their one INSERT of access events commits on its
own). Data functions take a connection and never commit on their own.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import asyncpg
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
        connect_args={"timeout": 5, "server_settings": server_settings(settings)},
    )


async def schema_revision(connection: AsyncConnection) -> str | None:
    """The Alembic revision the database is at; None when it was never migrated."""
    has_table = await connection.scalar(text("SELECT to_regclass('alembic_version') IS NOT NULL"))
    if not has_table:
        return None
    revision: str | None = await connection.scalar(text("SELECT version_num FROM alembic_version"))
    return revision


def asyncpg_dsn(url: str) -> str:
    return normalize_url(url).replace("postgresql+asyncpg://", "postgresql://", 1)


def server_settings(settings: Settings) -> dict[str, str]:
    return {
        "application_name": "tillit",
        "statement_timeout": str(settings.db_statement_timeout_ms),
        "idle_in_transaction_session_timeout": "60000",
    }


async def _keep(connection: Any) -> None:
    """Nothing to reset: raw connections run autocommit statements or one transaction that has
    ended by release, and change no session state (asyncpg's default reset would cost a round
    trip per request)."""


async def create_raw_pool(url: str, settings: Settings) -> asyncpg.Pool:
    """The pool for the hot operations (see gateway.graphql_http): plain asyncpg, no
    SQLAlchemy, connected as the engine is."""
    pool: asyncpg.Pool = await asyncpg.create_pool(
        asyncpg_dsn(url),
        min_size=0,
        max_size=settings.db_pool_size,
        timeout=5,
        reset=_keep,
        server_settings=server_settings(settings),
    )
    return pool


@dataclass(eq=False)
class RawConnection:
    """A connection from the raw pool, as a hot operation holds it (in autocommit for reads,
    in one transaction for consent changes).

    Resolvers get it as their `connection`; only this module's raw helpers (`fetch`, `execute`,
    `driver`, `raw_connection`) may use it, and every function on those operations' paths does
    (tests/test_fuzz.py runs every root field and mutation through the endpoint). The lock
    serialises statements, as the asyncpg adapter's mutex does for SQLAlchemy connections.
    """

    raw: asyncpg.Connection
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


async def driver(connection: AsyncConnection | RawConnection) -> tuple[Any, Any]:
    """The asyncpg connection under `connection`, inside its transaction, and the lock that
    serialises statements on it.

    Raw asyncpg is for the request's hot path (measured: SQLAlchemy's statement building and result
    processing took most of a profile-read's time). It must run in the operation's transaction, so
    the transaction is begun here if SQLAlchemy has not begun it yet; this reaches into the asyncpg
    adapter (`_transaction`, `_start_transaction`, `_execute_mutex`), which the tests pin down.
    """
    if isinstance(connection, RawConnection):
        return connection.raw, connection.lock
    fairy = await connection.get_raw_connection()
    adapted: Any = fairy.dbapi_connection
    async with adapted._execute_mutex:
        if adapted._transaction is None:
            await adapted._start_transaction()
    return adapted.driver_connection, adapted._execute_mutex


async def raw_connection(connection: AsyncConnection | RawConnection) -> Any:
    """The asyncpg connection under `connection`, without beginning a transaction: a statement
    run on it before the operation's first statement commits on its own."""
    if isinstance(connection, RawConnection):
        return connection.raw
    fairy = await connection.get_raw_connection()
    adapted: Any = fairy.dbapi_connection
    return adapted.driver_connection


async def fetch(connection: AsyncConnection | RawConnection, sql: str, *args: Any) -> list[Any]:
    """Run one statement on the raw driver in the operation's transaction; asyncpg caches the
    prepared statement per connection."""
    raw, mutex = await driver(connection)
    async with mutex:
        rows: list[Any] = await raw.fetch(sql, *args)
    return rows


async def execute(connection: AsyncConnection | RawConnection, sql: str, *args: Any) -> None:
    raw, mutex = await driver(connection)
    async with mutex:
        await raw.execute(sql, *args)
