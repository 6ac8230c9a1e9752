"""The per-worker caches of policy: kept for their time-to-live, then read again."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.access.auth import authenticate
from gateway.access.caches import TtlCache
from gateway.domain import ClientPrincipal
from gateway.errors import Unauthenticated
from gateway.store.db import raw_of
from tests.conftest import TEST_SECRET, add_client


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_a_value_is_kept_for_its_ttl_and_then_loaded_again() -> None:
    clock = Clock()
    cache: TtlCache[str, int] = TtlCache(5.0, clock=clock)
    loads = 0

    async def load() -> int:
        nonlocal loads
        loads += 1
        return loads

    first = await cache.get("k", load)
    clock.now = 4.9
    cached = await cache.get("k", load)
    clock.now = 5.1
    fresh = await cache.get("k", load)

    assert (first, cached, fresh) == (1, 1, 2)


async def test_a_disabled_client_is_refused_once_its_entry_expires(db: AsyncEngine) -> None:
    issued = await add_client(db)
    clock = Clock()
    clients: TtlCache[str, ClientPrincipal] = TtlCache(5.0, clock=clock)
    header = f"Bearer {issued.key}"
    async with db.connect() as connection:
        await authenticate(
            await raw_of(connection), header, token_secret=TEST_SECRET, clients=clients
        )
    async with db.begin() as connection:
        await connection.execute(text("UPDATE clients SET disabled_at = now()"))

    clock.now = 6.0
    async with db.connect() as connection:
        with pytest.raises(Unauthenticated):
            await authenticate(
                await raw_of(connection), header, token_secret=TEST_SECRET, clients=clients
            )


async def test_failed_authentications_are_not_cached(db: AsyncEngine) -> None:
    clients: TtlCache[str, ClientPrincipal] = TtlCache(5.0, clock=Clock())
    issued = await add_client(db)
    wrong = issued.key[:-1] + ("A" if issued.key[-1] != "A" else "B")

    async with db.connect() as connection:
        with pytest.raises(Unauthenticated):
            await authenticate(
                await raw_of(connection),
                f"Bearer {wrong}",
                token_secret=TEST_SECRET,
                clients=clients,
            )
        principal = await authenticate(
            await raw_of(connection),
            f"Bearer {issued.key}",
            token_secret=TEST_SECRET,
            clients=clients,
        )

    assert isinstance(principal, ClientPrincipal)
    assert principal.id == issued.id
