"""The migrations: up, down and up again on an empty database, and in step with the models."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.store import migrate
from gateway.store.db import create_engine
from gateway.store.models import Base
from tests.conftest import make_settings


@pytest.fixture
async def fresh(empty_database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(empty_database_url, make_settings(empty_database_url), pool_size=1)
    yield engine
    await engine.dispose()


async def tables(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        )
        return {row[0] for row in rows}


async def test_upgrade_downgrade_upgrade_on_an_empty_database(fresh: AsyncEngine) -> None:
    expected = {table.name for table in Base.metadata.sorted_tables}

    await migrate.upgrade(fresh)
    assert expected <= await tables(fresh)

    await migrate.downgrade(fresh, "base")
    assert await tables(fresh) == {"alembic_version"}

    await migrate.upgrade(fresh)
    assert expected <= await tables(fresh)
    async with fresh.connect() as connection:
        assert await migrate.current_revision(connection) == migrate.head_revision()


async def test_migrated_schema_matches_the_models(fresh: AsyncEngine) -> None:
    await migrate.upgrade(fresh)

    def diff(sync_connection: object) -> list[object]:
        context = MigrationContext.configure(
            sync_connection,  # type: ignore[arg-type]
            opts={
                "compare_type": True,
                "compare_server_default": True,
                "include_name": migrate.include_name,
            },
        )
        return list(compare_metadata(context, Base.metadata))

    async with fresh.connect() as connection:
        differences = await connection.run_sync(diff)
    assert differences == []


async def test_database_refuses_a_row_the_gateway_would_refuse(fresh: AsyncEngine) -> None:
    await migrate.upgrade(fresh)
    async with fresh.connect() as connection:
        with pytest.raises(Exception, match="ck_clients_role"):
            await connection.execute(
                text(
                    "INSERT INTO clients (name, role, key_id, key_hash) "
                    "VALUES ('x', 'superuser', 'k', repeat('0', 64))"
                )
            )


async def test_a_client_the_access_log_names_cannot_be_deleted(fresh: AsyncEngine) -> None:
    # The log names clients without a per-row foreign key check (0009); the guard is on delete.
    await migrate.upgrade(fresh)
    add = text(
        "INSERT INTO clients (name, role, key_id, key_hash) "
        "VALUES (:name, 'app', :name, repeat('0', 64)) RETURNING id"
    )
    async with fresh.begin() as connection:
        named = await connection.scalar(add, {"name": "named"})
        unnamed = await connection.scalar(add, {"name": "unnamed"})
        await connection.execute(
            text(
                "INSERT INTO access_events (request_id, operation, actor_kind, client_id, outcome) "
                "VALUES ('r', 'member', 'CLIENT', :client, 'DENIED')"
            ),
            {"client": named},
        )
    async with fresh.connect() as connection:
        with pytest.raises(Exception, match="the access log names this client"):
            await connection.execute(text("DELETE FROM clients WHERE id = :id"), {"id": named})
    async with fresh.begin() as connection:
        await connection.execute(text("DELETE FROM clients WHERE id = :id"), {"id": unnamed})
        left = await connection.scalar(text("SELECT array_agg(name ORDER BY name) FROM clients"))
    assert left == ["named"]


async def test_a_sealed_event_costs_two_index_entries(fresh: AsyncEngine) -> None:
    # A seal is found by its position or its event, never by its checkpoint (0010): an index on
    # checkpoint_id was work for the sealer on every event and served no query.
    await migrate.upgrade(fresh)
    async with fresh.connect() as connection:
        indexes = await connection.scalar(
            text(
                "SELECT array_agg(indexdef ORDER BY indexname) FROM pg_indexes "
                "WHERE tablename = 'audit_seals'"
            )
        )
    assert [definition.split(" USING ")[1] for definition in indexes] == [
        'btree ("position")',
        "btree (event_id)",
    ]
