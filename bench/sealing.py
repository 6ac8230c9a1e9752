"""How fast the sealer seals: events per second and CPU per event, on a database of its own.

Writes ROUNDS x EVENTS access events twice, alternating: as reads' events are written (with their
leaf hashes, by the group commit's statement) and as every other path writes them (no hash: the
sealer hashes their columns). Each time it seals them in full batches (`seal_until_current`, as a
running sealer does when behind) and times it: wall time, and this process's CPU (hashing, the
tree, signing) beside the server's (PostgreSQL's backends, from /proc when it runs on this
machine). After each round it also writes as many seal rows again, with the sealer's own
statement, in a transaction it rolls back: what writing one seal row an event costs PostgreSQL,
the share of the sealing that a design with one row a batch would save. Prints one line per
round and the medians. `make bench-seal`; DATABASE_URL picks the server (default: the embedded
one).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.serving import cpu_delta, postgres_cpu, scratch_database
from gateway.audit.group_commit import NEXT_IDS
from gateway.audit.sealer import seal_until_current, write_seals
from gateway.audit.sealing import MAX_BATCH
from gateway.audit.trail import AccessRecord, AuditTrail, write_events
from gateway.domain import AccessOutcome, LegalBasis, SystemPrincipal
from gateway.settings import Settings
from gateway.signing import Signer
from gateway.store import migrate
from gateway.store.db import create_engine, raw_of

EVENTS = int(os.environ.get("SEAL_BENCH_EVENTS", "200000"))
ROUNDS = int(os.environ.get("SEAL_BENCH_ROUNDS", "3"))
DATA_DIR = Path(__file__).resolve().parent / ".pgdata"


async def _write_hashed(engine: AsyncEngine, count: int) -> None:
    """`count` events as the gateway's group commit writes reads' events: with ids and hashes."""
    now = dt.datetime.now(dt.UTC)
    async with engine.begin() as connection:
        raw = await raw_of(connection)
        for start in range(0, count, MAX_BATCH):
            size = min(MAX_BATCH, count - start)
            trail = AuditTrail(
                request_id=f"seal-bench-{start}", principal=SystemPrincipal("bench"), now=now
            )
            for _ in range(size):
                trail.record(
                    AccessRecord(
                        operation="member",
                        member_id=uuid.uuid4(),
                        purpose="personalized_offers",
                        legal_basis=LegalBasis.CONSENT,
                        outcome=AccessOutcome.RELEASED,
                        fields_requested=("points", "tier"),
                        fields_released=("points", "tier"),
                    )
                )
            ids = (await raw.fetchrow(NEXT_IDS, size))[0]
            await write_events(raw, [trail], ids=ids)


async def _round(
    engine: AsyncEngine, signer: Signer, count: int, *, hashed: bool
) -> tuple[float, float, float]:
    if hashed:
        await _write_hashed(engine, count)
    else:
        await _write_columns(engine, count)
    cpu, pg, began = time.process_time(), postgres_cpu(), time.perf_counter()
    written = await seal_until_current(engine, signer)
    wall = time.perf_counter() - began
    sealed = sum(c.event_count for c in written)
    assert sealed == count, (sealed, count)
    return wall, time.process_time() - cpu, cpu_delta(pg, postgres_cpu())


async def _seal_rows(engine: AsyncEngine, count: int) -> float:
    """PostgreSQL's CPU (seconds) for `count` seal rows written by the sealer's own
    `write_seals`, a batch at a time, past the log's end (event ids no event has), rolled back."""
    pg = postgres_cpu()
    async with engine.connect() as connection:
        first = await connection.scalar(
            text("SELECT coalesce(max(position), 0) + 1 FROM audit_seals")
        )
        raw = await raw_of(connection)
        now = dt.datetime.now(dt.UTC)
        for start in range(0, count, MAX_BATCH):
            size = min(MAX_BATCH, count - start)
            await write_seals(
                raw,
                first + start,
                [-(start + n) for n in range(1, size + 1)],
                [now] * size,
                os.urandom(32 * size),
                0,
            )
        await connection.rollback()
    return cpu_delta(pg, postgres_cpu())


async def _write_columns(engine: AsyncEngine, count: int) -> None:
    """`count` events without hashes, as the benchmark's seed (and any path but the group
    commit) writes them: the sealer hashes their columns."""
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO access_events (request_id, operation, actor_kind, member_id, purpose, "
                "legal_basis, outcome, fields_requested, fields_released) "
                "SELECT 'seal-bench-' || g, 'member', 'SYSTEM', gen_random_uuid(), "
                "'personalized_offers', 'CONSENT', 'RELEASED', ARRAY['tier','points'], "
                "ARRAY['tier','points'] FROM generate_series(1, CAST(:n AS int)) AS g"
            ),
            {"n": count},
        )


async def measure(url: str) -> None:
    signer, _ = Signer.generate()
    engine = create_engine(url, Settings(dev=True, database_url=url))
    try:
        await migrate.upgrade(engine)
        # Alternated: events hashed as written (reads through the group commit), and events the
        # sealer hashes from their columns (every other path).
        results: dict[str, tuple[list[float], list[float], list[float]]] = {}
        seal_rows: list[float] = []
        for number in range(1, ROUNDS + 1):
            for kind in ("hashed as written", "hashed by the sealer"):
                rates, cpus, pgs = results.setdefault(kind, ([], [], []))
                wall, cpu, pg = await _round(
                    engine, signer, EVENTS, hashed=kind == "hashed as written"
                )
                rates.append(EVENTS / wall)
                cpus.append(cpu / EVENTS * 1e6)
                pgs.append(pg / EVENTS * 1e6)
                print(
                    f"round {number}, {kind}: {EVENTS} events sealed in {wall:.2f} s = "
                    f"{EVENTS / wall:,.0f} events/s; CPU per event: sealer {cpus[-1]:.1f} us + "
                    f"PostgreSQL {pgs[-1]:.1f} us",
                    flush=True,
                )
                if kind == "hashed as written":
                    seal_rows.append(await _seal_rows(engine, EVENTS) / EVENTS * 1e6)
                    print(
                        f"round {number}, the same number of seal rows alone, rolled back: "
                        f"PostgreSQL {seal_rows[-1]:.1f} us a row",
                        flush=True,
                    )
        for kind, (rates, cpus, pgs) in results.items():
            print(
                f"{kind}, median of {ROUNDS}: {statistics.median(rates):,.0f} events/s; CPU per "
                f"event: sealer {statistics.median(cpus):.1f} us + PostgreSQL "
                f"{statistics.median(pgs):.1f} us"
            )
        print(
            f"of it one seal row an event, median of {ROUNDS}: PostgreSQL "
            f"{statistics.median(seal_rows):.1f} us"
        )
    finally:
        await engine.dispose()


async def main() -> None:
    async with scratch_database("tillit_seal_bench", DATA_DIR) as url:
        await measure(url)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
