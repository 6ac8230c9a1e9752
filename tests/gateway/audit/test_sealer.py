"""Where the sealer runs: a process of its own (`tillit sealer`, started by `tillit serve`), the
workers on standby taking over only when it is gone, and giving the lock back."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.audit.sealer import final_events_query, run_sealer, seal_until_current
from gateway.audit.sealing import SEAL_LOCK
from gateway.store.db import raw_of
from tests.conftest import TEST_SIGNER, scalar
from tests.helpers import explained, plan_nodes, write_events


async def _checkpoints(engine: AsyncEngine) -> int:
    return int(await scalar(engine, "SELECT count(*) FROM audit_checkpoints") or 0)


async def _lock_held(engine: AsyncEngine) -> bool:
    held = await scalar(
        engine,
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
        f"AND (classid::bigint << 32 | objid::bigint) = {SEAL_LOCK}",
    )
    return bool(held)


async def test_a_standby_sealer_leaves_a_fresh_log_to_the_sealer_process(db: AsyncEngine) -> None:
    await write_events(db, 5)
    await seal_until_current(db, TEST_SIGNER)  # the dedicated sealer, a moment ago
    await write_events(db, 5)
    before = await _checkpoints(db)
    stop = asyncio.Event()

    standby = asyncio.create_task(
        run_sealer(db, TEST_SIGNER, interval=0.2, stop=stop, standby=True)
    )
    await asyncio.sleep(0.3)  # younger than three intervals: nothing to do
    try:
        assert await _checkpoints(db) == before
        assert not await _lock_held(db)
    finally:
        stop.set()
        await standby


async def test_a_standby_sealer_takes_over_when_the_log_goes_stale_and_gives_the_lock_back(
    db: AsyncEngine,
) -> None:
    await write_events(db, 5)
    stop = asyncio.Event()
    standby = asyncio.create_task(
        run_sealer(db, TEST_SIGNER, interval=0.2, stop=stop, standby=True)
    )
    try:
        # No checkpoint at all: stale; it seals what waits, then lets go of the lock.
        for _ in range(50):
            if await scalar(db, "SELECT count(*) FROM audit_seals") == 5:
                break
            await asyncio.sleep(0.05)
        assert await scalar(db, "SELECT count(*) FROM audit_seals") == 5
        for _ in range(50):
            if not await _lock_held(db):
                break
            await asyncio.sleep(0.05)
        assert not await _lock_held(db)
        # While it stands by, the sealer process (here: this test) can take the lock at once.
        async with db.begin() as connection:
            assert await connection.scalar(
                text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": SEAL_LOCK}
            )
            assert await _lock_held(db)  # the check sees a held lock
    finally:
        stop.set()
        await standby


@pytest.mark.parametrize("inside", [False, True], ids=["from a transaction", "inside one"])
async def test_a_batch_reads_its_own_events_not_the_backlog(db: AsyncEngine, inside: bool) -> None:
    # A batch is the first events in (txid, id) order. Read in an index's order it stops after
    # its own; sorted, it reads (and sorts) every unsealed event, for each batch: the whole
    # backlog again and again when the sealer is behind (migration 0011).
    await write_events(db, 20)
    await write_events(db, 20)
    limit = 5
    async with db.begin() as connection:
        raw = await raw_of(connection)
        first_txid, first_id = await raw.fetchrow(
            "SELECT txid::text, min(id) FROM access_events GROUP BY txid ORDER BY txid LIMIT 1"
        )
        [horizon] = await raw.fetchrow("SELECT pg_snapshot_xmin(pg_current_snapshot())::text")
        # A table this small is cheapest scanned whole; the question is what an index gives.
        await raw.execute("SET LOCAL enable_seqscan = off")
        await raw.execute("SET LOCAL enable_bitmapscan = off")
        args: list[Any] = [first_txid, horizon, limit]
        if inside:
            args.append(first_id)
        [plan] = await raw.fetchrow(
            "EXPLAIN (ANALYZE, FORMAT JSON) " + final_events_query(inside=inside), *args
        )
    scans = [
        node
        for node in plan_nodes(explained(plan))
        if "Scan" in node["Node Type"] and node.get("Relation Name", "").startswith("access_events")
    ]
    # Its own rows and at most one look-ahead row from each partition's scan.
    assert scans
    assert sum(int(node["Actual Rows"]) for node in scans) <= limit + len(scans)
