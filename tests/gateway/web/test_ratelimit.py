"""Rate limits: per client, shared by every worker through PostgreSQL, 429 with Retry-After."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.errors import RateLimited
from gateway.settings import Settings
from gateway.store.db import create_raw_pool, raw_of
from gateway.web.ratelimit import FORGET_IDLE_RATE_LIMITS, RateLimiter
from tests.conftest import (
    add_client,
    add_member,
    make_settings,
    member_token,
    row_counts,
    scalar,
    serving,
)

PURPOSES = "{ purposes { key } }"
IDLE_ROWS = "SELECT count(*) FROM rate_limits WHERE subject = 'client:old'"
ONE = 'query($id: ID!) { member(id: $id, purpose: "membership_service") { id tier } }'


async def test_over_the_limit_is_429_with_retry_after_and_leaves_no_trace(
    db: AsyncEngine, gateway_url: str
) -> None:
    client = await add_client(db, purposes=("membership_service",))
    member_id = await add_member(db)
    limited = make_settings(gateway_url, rate_limit_per_second=0.5, rate_limit_burst=2)
    async with serving(limited, gateway_url) as api:
        allowed = [await api.graphql(ONE, {"id": str(member_id)}, token=client.key) for _ in "ab"]
        before = await row_counts(db)
        refused = await api.graphql(ONE, {"id": str(member_id)}, token=client.key)

    assert [r.status_code for r in allowed] == [200, 200]
    assert refused.status_code == 429
    assert refused.json()["errors"][0]["extensions"]["code"] == "RATE_LIMITED"
    assert 1 <= int(refused.headers["Retry-After"]) <= 2
    assert "data" not in refused.json()
    assert await row_counts(db) == before  # no read, so no access event either


async def test_the_limit_is_shared_by_workers_and_kept_per_client(
    db: AsyncEngine, gateway_url: str
) -> None:
    shop = await add_client(db, name="shop")
    other = await add_client(db, name="other")
    member = member_token(await add_member(db))
    limited = make_settings(
        gateway_url, rate_limit_per_second=0.2, rate_limit_burst=2, rate_limit_sync_seconds=0.05
    )
    async with AsyncExitStack() as stack:
        # Two app instances on one database: two workers (or two hosts) behind a balancer.
        worker_a = await stack.enter_async_context(serving(limited, gateway_url))
        worker_b = await stack.enter_async_context(serving(limited, gateway_url))
        first = await worker_a.graphql(PURPOSES, token=shop.key)
        second = await worker_a.graphql(PURPOSES, token=shop.key)
        await asyncio.sleep(0.5)  # worker A's sync task adds its requests to the shared count
        third = await worker_b.graphql(PURPOSES, token=shop.key)
        fourth = await worker_a.graphql(PURPOSES, token=shop.key)
        other_client = await worker_b.graphql(PURPOSES, token=other.key)
        a_member = await worker_b.graphql("{ me { id } }", token=member)

    statuses = [r.status_code for r in (first, second, third, fourth)]
    assert statuses == [200, 200, 429, 429]
    assert other_client.status_code == 200
    assert a_member.status_code == 200


async def test_anonymous_callers_are_limited_by_address(db: AsyncEngine, gateway_url: str) -> None:
    limited = make_settings(gateway_url, rate_limit_per_second=0.2, rate_limit_burst=1)
    async with serving(limited, gateway_url) as api:
        statuses = [(await api.graphql(PURPOSES)).status_code for _ in range(2)]

    assert statuses == [200, 429]


async def test_no_limit_when_turned_off(db: AsyncEngine, gateway_url: str) -> None:
    client = await add_client(db)
    off = make_settings(gateway_url, rate_limit_per_second=0)
    async with serving(off, gateway_url) as api:
        statuses = {(await api.graphql(PURPOSES, token=client.key)).status_code for _ in range(5)}
    async with db.connect() as connection:
        rows = await connection.scalar(text("SELECT count(*) FROM rate_limits"))

    assert statuses == {200}
    assert rows == 0


async def test_idle_subjects_are_forgotten(db: AsyncEngine) -> None:
    async with db.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO rate_limits VALUES ('client:old', now() - interval '2 minutes'), "
                "('client:busy', now() + interval '1 second')"
            )
        )
        await connection.execute(text(FORGET_IDLE_RATE_LIMITS))
        left = (await connection.execute(text("SELECT subject FROM rate_limits"))).scalars()

        assert list(left) == ["client:busy"]


async def test_workers_share_their_counts_through_the_table(db: AsyncEngine) -> None:
    """Two limiters on one table, as two workers: a worker's first request for a caller is
    decided against the table; later ones locally, and a sync adds them to the table."""
    worker_a = RateLimiter(per_second=1, burst=3)
    worker_b = RateLimiter(per_second=1, burst=3)
    async with db.connect() as connection:
        raw = await raw_of(connection)

        await worker_a.check(raw, "client:x")  # first here: through the table
        await worker_a.check(raw, "client:x")  # local
        await worker_a.sync(raw)  # the table now holds both
        await worker_b.check(raw, "client:x")  # first for B: the table says two are used
        with pytest.raises(RateLimited) as refused:
            await worker_b.check(raw, "client:x")
        [row] = (
            await connection.execute(
                text("SELECT tat - now() > interval '2 seconds' FROM rate_limits")
            )
        ).all()

    assert refused.value.retry_after == 1
    assert row[0] is True  # three requests' worth of the one-second interval


async def test_the_sync_task_forgets_idle_subjects(
    db: AsyncEngine, database_url: str, settings: Settings
) -> None:
    """Where rate limits live, so does their housekeeping (not in the sealer)."""
    async with db.begin() as connection:
        await connection.execute(
            text("INSERT INTO rate_limits VALUES ('client:old', now() - interval '2 minutes')")
        )
    pool = await create_raw_pool(database_url, settings)
    stop = asyncio.Event()
    limiter = RateLimiter(per_second=1, burst=3, sync_seconds=0.01)
    task = asyncio.create_task(limiter.run_sync(pool, stop, forget_seconds=0))
    try:
        for _ in range(500):  # bounded: the first ticks forget the idle row
            if await scalar(db, IDLE_ROWS) == 0:
                break
            await asyncio.sleep(0.01)
    finally:
        stop.set()
        await task
        await pool.close()

    assert await scalar(db, IDLE_ROWS) == 0


async def test_a_subject_the_worker_knows_is_decided_without_the_database(db: AsyncEngine) -> None:
    """The public routes count a known address, and refuse it when over, before they take a
    connection: only a subject never seen (or idle for a minute) needs one."""
    limiter = RateLimiter(per_second=0.5, burst=2)

    assert limiter.check_known("public:192.0.2.1") is False  # unknown: needs `check`
    async with db.connect() as connection:
        await limiter.check(await raw_of(connection), "public:192.0.2.1")
    admitted = limiter.check_known("public:192.0.2.1")
    with pytest.raises(RateLimited) as refused:
        limiter.check_known("public:192.0.2.1")

    assert admitted is True
    assert refused.value.retry_after >= 1
