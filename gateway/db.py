"""The database engine: one per process, made in the lifespan (or a CLI command), never at import.

Every GraphQL operation runs in one transaction opened by the HTTP endpoint; data functions take a
connection and never commit on their own.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

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
        max_overflow=size,
        pool_timeout=5,
        pool_pre_ping=True,
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
