"""Alembic environment. Tillit runs migrations on a connection it hands in (see
gateway.store.migrate); the `alembic` command line works too, with the URL from DATABASE_URL."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.store.connect import Connector, Deadlines, parse_url
from gateway.store.migrate import include_name
from gateway.store.models import Base

config = context.config
target_metadata = Base.metadata


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        compare_server_default=True,
        include_name=include_name,
        transaction_per_migration=True,
    )


def run_on(connection: Connection) -> None:
    _configure(connection)
    with context.begin_transaction():
        context.run_migrations()


async def _run_from_url(url: str) -> None:
    # Every URL form the gateway reads (several hosts among them) connects the same way here.
    connect = Connector(parse_url(url), Deadlines(command=None), {})
    engine = create_async_engine("postgresql+asyncpg://", async_creator=connect)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(run_on)
            await connection.commit()
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run_on(connection)
        return
    import os

    url = os.environ.get("DATABASE_URL") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("Set DATABASE_URL to run alembic directly, or use `tillit migrate`.")
    asyncio.run(_run_from_url(url))  # every spelling parse_url reads


if context.is_offline_mode():
    raise SystemExit("Offline (SQL script) migrations are not supported; use `tillit migrate`.")
run_migrations_online()
