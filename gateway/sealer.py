"""The sealer: gives committed access events contiguous positions and writes signed checkpoints.

See gateway/sealing.py for what a checkpoint holds. One sealer runs per database.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Any

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway import db
from gateway.ratelimit import FORGET_IDLE_RATE_LIMITS
from gateway.sealing import (
    EVENT_COLUMNS,
    MAX_BATCH,
    SEAL_LOCK,
    Checkpoint,
    event_hash,
    last_checkpoint,
    merkle_root,
    write_checkpoint,
)
from gateway.signing import Signer

log = structlog.get_logger("tillit.sealer")


async def _final_events(
    connection: AsyncConnection, after: tuple[int, int | None], horizon: int, limit: int
) -> tuple[list[dict[str, Any]], tuple[int, int | None]]:
    """Unsealed events whose transactions ended, in (txid, id) order, at most `limit`.

    `after` is where the previous checkpoint stopped: (txid, None) when it sealed everything below
    that transaction, (txid, id) when it stopped inside one transaction's events (a batch may cut a
    large transaction: all its events are final together). Returns the events and where this
    batch stops.
    """
    columns = ", ".join(EVENT_COLUMNS)
    since_txid, since_id = after
    position = (
        "txid >= $1::text::xid8"
        if since_id is None
        else "(txid > $1::text::xid8 OR (txid = $1::text::xid8 AND id > $4))"
    )
    # Raw asyncpg: the sealer reads every event once (SQLAlchemy's row handling was its cost).
    query = (
        f"SELECT {columns}, txid::text AS txid_text FROM access_events "  # noqa: S608  # constant columns
        f"WHERE {position} AND txid < $2::text::xid8 ORDER BY txid, id LIMIT $3"
    )
    args: list[Any] = [str(since_txid), str(horizon), limit]
    if since_id is not None:
        args.append(since_id)
    rows = []
    for record in await db.fetch(connection, query, *args):
        row = dict(record)
        # SQLAlchemy's asyncpg dialect decodes JSON on its connections; plain asyncpg would not.
        for name in ("fields_withheld", "details"):
            if isinstance(row[name], str):
                row[name] = json.loads(row[name])
        rows.append(row)
    if len(rows) < limit:
        return rows, (horizon, None)
    last = rows[-1]
    return rows, (int(last["txid_text"]), int(last["id"]))


async def seal_once(
    connection: AsyncConnection, signer: Signer, *, max_batch: int = MAX_BATCH
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
    events, (sealed_to, last_id) = await _final_events(connection, after, horizon, max_batch)
    leaves = [event_hash(event) for event in events]
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
    )
    if events:
        await connection.execute(
            text(
                "INSERT INTO audit_seals (position, event_id, occurred_at, event_hash, "
                "checkpoint_id) SELECT p, e, o, h, :checkpoint FROM unnest("
                "CAST(:positions AS bigint[]), CAST(:events AS bigint[]), "
                "CAST(:occurred AS timestamptz[]), CAST(:hashes AS bytea[])) AS t(p, e, o, h)"
            ),
            {
                "checkpoint": checkpoint.id,
                "positions": list(range(checkpoint.first_position, checkpoint.last_position + 1)),
                "events": [event["id"] for event in events],
                "occurred": [event["occurred_at"] for event in events],
                "hashes": leaves,
            },
        )
    return checkpoint


async def seal_until_current(engine: AsyncEngine, signer: Signer) -> list[Checkpoint]:
    """Seal in batches until no final event is left unsealed (for the CLI and tests)."""
    written: list[Checkpoint] = []
    while True:
        async with engine.begin() as connection:
            checkpoint = await seal_once(connection, signer)
        if checkpoint is None:
            raise RuntimeError("another sealer holds the lock")
        written.append(checkpoint)
        if checkpoint.event_count < MAX_BATCH and "last_id" not in checkpoint.details:
            return written


async def run_sealer(
    engine: AsyncEngine, signer: Signer, *, interval: float, stop: asyncio.Event
) -> None:
    """Seal every `interval` seconds while this process holds the database's sealer lock.

    Every gateway process runs this; the session-level advisory lock lets exactly one of them
    seal, and another takes over within an interval when that one stops.
    """
    while not stop.is_set():
        try:
            async with engine.connect() as connection:
                held = await connection.scalar(
                    text("SELECT pg_try_advisory_lock(:key)"), {"key": SEAL_LOCK}
                )
                await connection.commit()
                if held:
                    log.info("sealer.started")
                    try:
                        while not stop.is_set():
                            async with connection.begin():
                                checkpoint = await seal_once(connection, signer)
                            # The one process per database that seals also forgets idle rate
                            # limits (housekeeping that, like sealing, needs no second runner).
                            async with connection.begin():
                                await connection.execute(text(FORGET_IDLE_RATE_LIMITS))
                            if checkpoint is not None and checkpoint.event_count:
                                log.info(
                                    "sealer.sealed",
                                    checkpoint=checkpoint.id,
                                    events=checkpoint.event_count,
                                )
                            await _wait(stop, interval)
                    finally:
                        await connection.execute(
                            text("SELECT pg_advisory_unlock(:key)"), {"key": SEAL_LOCK}
                        )
                        await connection.commit()
        except Exception as exc:  # the database may be gone; try again later
            log.warning("sealer.failed", error_type=type(exc).__name__)
        await _wait(stop, interval)


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        return
