"""The sealer: gives committed access events contiguous positions and writes signed checkpoints.

See gateway/audit/sealing.py for what a checkpoint holds. One sealer runs per database.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from typing import Any

import asyncpg
import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.audit.sealing import (
    EVENT_COLUMNS,
    MAX_BATCH,
    SEAL_LOCK,
    Checkpoint,
    checkpoints_after,
    event_hash,
    last_checkpoint,
    merkle_root,
    write_checkpoint,
)
from gateway.audit.tiles import edge_at, store_tiles
from gateway.audit.tree import Edge
from gateway.signing import Signer
from gateway.store import db
from gateway.store.db import Raw

log = structlog.get_logger("tillit.sealer")


async def _final_events(
    connection: Raw, after: tuple[int, int | None], horizon: int, limit: int
) -> tuple[list[asyncpg.Record], tuple[int, int | None]]:
    """Unsealed events whose transactions ended, in (txid, id) order, at most `limit`.

    `after` is where the previous checkpoint stopped: (txid, None) when it sealed everything below
    that transaction, (txid, id) when it stopped inside one transaction's events (a batch may cut a
    large transaction: all its events are final together). Returns the events and where this
    batch stops.
    """
    since_txid, since_id = after
    args: list[Any] = [str(since_txid), str(horizon), limit]
    if since_id is not None:
        args.append(since_id)
    rows = await connection.fetch(final_events_query(inside=since_id is not None), *args)
    if len(rows) < limit:
        return rows, (horizon, None)
    last = rows[-1]
    return rows, (int(last["txid_text"]), int(last["id"]))


def final_events_query(*, inside: bool) -> str:
    """The sealer's read of a batch: $1 the txid it starts at (and, `inside` a transaction the
    previous batch cut, $4 the id after which it starts), $2 the horizon, $3 the batch's size.

    The order is an index's (ix_access_events_txid_id), so a batch reads its own events and stops:
    with an index on txid alone PostgreSQL read and sorted every unsealed event for each batch
    (migration 0011)."""
    # `txid >= $1` on its own as well: it is what bounds the index scan (the OR alone did not,
    # and each batch then walked the index from the log's first event: measured 1.7 s a batch
    # on 2.7 million events, growing with the log).
    position = (
        "txid >= $1::text::xid8 AND (txid > $1::text::xid8 OR id > $4)"
        if inside
        else "txid >= $1::text::xid8"
    )
    # Raw asyncpg: the sealer reads every event once (SQLAlchemy's row handling was its cost).
    return (
        f"SELECT {_COLUMNS}, txid::text AS txid_text FROM access_events "  # noqa: S608  # constant columns
        f"WHERE {position} AND txid < $2::text::xid8 ORDER BY txid, id LIMIT $3"
    )


_JSON_COLUMNS = ("fields_withheld", "details")


def _column(name: str) -> str:
    """How the sealer reads a column: the id and time always (the seal records them); the others
    only for an event written without its leaf hash, which the sealer then computes from them
    (reading every event back was most of the sealer's work). The two JSON columns as text,
    decoded by event_document with orjson (the connection's own jsonb decoder was most of the
    sealer's time); the records go to it as they are."""
    if name in ("id", "occurred_at"):
        return name
    value = f"{name}::text" if name in _JSON_COLUMNS else name
    return f"CASE WHEN leaf_hash IS NULL THEN {value} END AS {name}"


_COLUMNS = ", ".join([*(_column(name) for name in EVENT_COLUMNS), "leaf_hash"])
# Events hashed between two turns of the event loop: a full batch is some 100 ms of hashing,
# which would otherwise hold every request of this process for that long.
_HASH_SLICE = 500


async def _hashes(events: list[asyncpg.Record], tree: Edge) -> list[bytes]:
    """The events' leaf hashes, appended to the tree as they are computed."""
    leaves: list[bytes] = []
    for start in range(0, len(events), _HASH_SLICE):
        if start:
            await asyncio.sleep(0)
        part = [
            event["leaf_hash"] or event_hash(event) for event in events[start : start + _HASH_SLICE]
        ]
        tree.extend(part)
        leaves.extend(part)
    return leaves


async def seal_once(
    connection: AsyncConnection, signer: Signer, *, max_batch: int | None = None
) -> Checkpoint | None:
    """Seal the final events and write one checkpoint, inside the caller's transaction.

    Returns None (and writes nothing) when another sealer holds the lock.
    """
    locked = await connection.scalar(
        text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": SEAL_LOCK}
    )
    if not locked:
        return None
    await connection.execute(text("SELECT tillit_ensure_audit_partitions(CAST(now() AS date), 2)"))
    horizon = int(
        await connection.scalar(text("SELECT pg_snapshot_xmin(pg_current_snapshot())::text"))
    )
    previous = await last_checkpoint(connection)
    after = (previous.horizon, previous.details.get("last_id")) if previous else (0, None)
    raw = await db.raw_of(connection)
    events, (sealed_to, last_id) = await _final_events(raw, after, horizon, max_batch or MAX_BATCH)
    tree = await edge_at(raw, previous.last_position if previous else 0)
    leaves = await _hashes(events, tree)
    await store_tiles(raw, tree.take_changed())
    now = dt.datetime.now(dt.UTC)
    checkpoint = await write_checkpoint(
        connection,
        signer,
        kind="SEAL",
        previous=previous,
        horizon=sealed_to,
        event_count=len(events),
        batch_root=merkle_root(leaves),
        # A full batch may stop inside a transaction: say after which event.
        details={} if last_id is None else {"last_id": last_id},
        now=now,
        tree_root=tree.root(),
    )
    if events:
        await write_seals(
            raw,
            checkpoint.first_position,
            [event["id"] for event in events],
            [event["occurred_at"] for event in events],
            b"".join(leaves),
            checkpoint.id,
        )
    return checkpoint


async def write_seals(
    raw: Raw,
    first_position: int,
    event_ids: list[int],
    occurred_at: list[dt.datetime],
    hashes: bytes,
    checkpoint_id: int,
) -> None:
    """One seal row an event, in one statement: the events' positions follow from their place
    in the batch from `first_position` on; their hashes travel as one bytea of 32 bytes an
    event, cut by the server (no per-element encoding of 10,000 values). Also run by
    `make bench-seal` to measure what the seal rows cost."""
    await raw.execute(_INSERT_SEALS, first_position, event_ids, occurred_at, hashes, checkpoint_id)


_INSERT_SEALS = """
    INSERT INTO audit_seals (position, event_id, occurred_at, event_hash, checkpoint_id)
    SELECT $1::bigint + e.n - 1, e.id, e.occurred_at,
           substring($4::bytea FROM (e.n::int - 1) * 32 + 1 FOR 32), $5::bigint
    FROM unnest($2::bigint[], $3::timestamptz[]) WITH ORDINALITY AS e(id, occurred_at, n)
"""


async def seal_until_current(engine: AsyncEngine, signer: Signer) -> list[Checkpoint]:
    """Seal in batches until no final event is left unsealed (for the CLI and tests)."""
    written: list[Checkpoint] = []
    while True:
        async with engine.begin() as connection:
            checkpoint = await seal_once(connection, signer)
        if checkpoint is None:
            raise RuntimeError("another sealer holds the lock")
        written.append(checkpoint)
        if not _full(checkpoint):
            return written


# How often `seal_through_now` looks whether the running sealer has passed its horizon.
_POLL_SECONDS = 0.2


async def seal_through_now(engine: AsyncEngine, signer: Signer) -> list[Checkpoint]:
    """Every event committed before this call sealed: by this process, or, when another one
    holds the sealer lock (a running gateway), by waiting until that sealer's checkpoints pass
    the transactions that had begun when it was called. Returns the checkpoints written
    meanwhile, by whichever sealer. Bound it with a timeout: a sealer that is far behind takes
    long."""
    async with engine.connect() as connection:
        target = int(
            await connection.scalar(text("SELECT pg_snapshot_xmax(pg_current_snapshot())::text"))
        )
        start = await last_checkpoint(connection)
    since = start.id if start is not None else 0
    while True:
        # When another sealer holds the lock, wait for it to pass the target.
        with contextlib.suppress(RuntimeError):
            await seal_until_current(engine, signer)
        async with engine.connect() as connection:
            newest = await last_checkpoint(connection)
            if newest is not None and (
                newest.horizon > target or (newest.horizon >= target and not _full(newest))
            ):
                return await checkpoints_after(connection, since)
        await asyncio.sleep(_POLL_SECONDS)


def _full(checkpoint: Checkpoint) -> bool:
    """Whether the batch stopped at its size (saying after which event), so more final events
    may wait."""
    return "last_id" in checkpoint.details


# Longest a batch may take, from the lock to the commit: ten times what a full batch takes on the
# benchmark machine. Past it the sealer's connection counts as lost (a silent host, a commit
# waiting for a standby that is gone) and is discarded.
BATCH_DEADLINE_SECONDS = 30.0
# After a failure (the database away, a failover), how soon the sealer tries again.
RETRY_SECONDS = 1.0


# A standby sealer takes over when the newest checkpoint is older than this many intervals.
STANDBY_INTERVALS = 3


async def run_sealer(
    engine: AsyncEngine,
    signer: Signer,
    *,
    interval: float,
    stop: asyncio.Event,
    standby: bool = False,
) -> None:
    """Seal every `interval` seconds while this process holds the database's sealer lock.

    Every gateway process runs this; the session-level advisory lock lets exactly one of them
    seal, and another takes over within an interval when that one stops. After a failover the
    lock is free on the new primary (locks are not replicated): whichever sealer reconnects first
    takes it, within RETRY_SECONDS of its connection failing.

    `standby`: the process serves requests beside a dedicated sealer process (`tillit serve`
    starts one, so that sealing gets a CPU of its own rather than turns of the request loop); it
    seals only when the newest checkpoint is STANDBY_INTERVALS intervals old, and gives the lock
    back as soon as it has caught up.
    """
    while not stop.is_set():
        try:
            async with engine.connect() as connection:
                try:
                    if standby and not await _stale(connection, interval * STANDBY_INTERVALS):
                        await connection.rollback()
                    else:
                        await _seal_while_holding(
                            connection, signer, interval=interval, stop=stop, once=standby
                        )
                except BaseException:
                    # Closed without a round trip: the session ends, and with it the lock, so
                    # no pooled connection is left holding it, whatever went wrong.
                    await connection.invalidate()
                    raise
        except Exception as exc:  # the database may be gone; try again soon
            log.warning("sealer.failed", error_type=type(exc).__name__)
            await _wait(stop, min(interval, RETRY_SECONDS))
            continue
        await _wait(stop, interval)


async def _stale(connection: AsyncConnection, seconds: float) -> bool:
    """Whether the newest checkpoint is older than `seconds` (or there is none)."""
    async with asyncio.timeout(BATCH_DEADLINE_SECONDS):
        stale = await connection.scalar(
            text(
                "SELECT coalesce((SELECT created_at FROM audit_checkpoints ORDER BY id DESC "
                "LIMIT 1) < now() - make_interval(secs => :seconds), true)"
            ),
            {"seconds": seconds},
        )
    return bool(stale)


async def _seal_while_holding(
    connection: AsyncConnection,
    signer: Signer,
    *,
    interval: float,
    stop: asyncio.Event,
    once: bool = False,
) -> None:
    async with asyncio.timeout(BATCH_DEADLINE_SECONDS):
        held = await connection.scalar(
            text("SELECT pg_try_advisory_lock(:key)"), {"key": SEAL_LOCK}
        )
        await connection.commit()
    if not held:
        return
    log.info("sealer.started")
    while not stop.is_set():
        async with asyncio.timeout(BATCH_DEADLINE_SECONDS), connection.begin():
            checkpoint = await seal_once(connection, signer)
        if checkpoint is not None and checkpoint.event_count:
            log.info("sealer.sealed", checkpoint=checkpoint.id, events=checkpoint.event_count)
        if checkpoint is not None and _full(checkpoint):
            # Behind: seal the next batch now, after one turn of the loop.
            await asyncio.sleep(0)
            continue
        if once:
            break
        await _wait(stop, interval)
    async with asyncio.timeout(BATCH_DEADLINE_SECONDS):
        await connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": SEAL_LOCK})
        await connection.commit()


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        return
