"""The per-operation Context: raw SQL on every path, SQLAlchemy only where the operation has it."""

from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.domain import Anonymous
from gateway.settings import Settings
from gateway.store.db import Raw, raw_of
from resolvers.context import Context, RawPathOnly


def context(raw: Raw, settings: Settings, sql: AsyncConnection | None = None) -> Context:
    return Context.create(
        db=raw,
        sql=sql,
        principal=Anonymous(),
        request_id="r",
        settings=settings,  # type: ignore[arg-type]
    )


async def test_an_operation_on_the_raw_pool_has_no_sqlalchemy_connection(
    db: AsyncEngine, settings: Settings
) -> None:
    async with db.connect() as connection:
        on_raw_pool = context(await raw_of(connection), settings)

        with pytest.raises(RawPathOnly, match="runs on the raw pool"):
            _ = on_raw_pool.sql


async def test_an_engine_operation_speaks_both_in_one_transaction(
    db: AsyncEngine, settings: Settings
) -> None:
    async with db.connect() as connection:
        both = context(await raw_of(connection), settings, sql=connection)

        assert both.sql is connection
        assert (await both.db.fetchrow("SELECT 1 AS one"))["one"] == 1
