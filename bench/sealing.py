"""How fast the sealer seals: events per second and CPU per event, on a database of its own.

Writes ROUNDS x EVENTS access events (as the benchmark's seed writes them, in one INSERT), then
seals them in full batches (`seal_until_current`, as a running sealer does when behind) and
times it: wall time, and this process's CPU (hashing, the tree, signing) beside the server's
(PostgreSQL's backends, from /proc when it runs on this machine). Prints one line per round and
the medians. `make bench-seal`; DATABASE_URL picks the server (default: the embedded one).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.serving import cpu_delta, postgres_cpu
from gateway.audit.sealer import seal_until_current
from gateway.settings import Settings
from gateway.signing import Signer
from gateway.store import migrate
from gateway.store.db import asyncpg_dsn, create_engine, normalize_url
from gateway.store.embedded import start_embedded, with_database

EVENTS = int(os.environ.get("SEAL_BENCH_EVENTS", "200000"))
ROUNDS = int(os.environ.get("SEAL_BENCH_ROUNDS", "3"))
DATA_DIR = Path(__file__).resolve().parent / ".pgdata"


async def _round(engine: AsyncEngine, signer: Signer, count: int) -> tuple[float, float, float]:
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
    cpu, pg, began = time.process_time(), postgres_cpu(), time.perf_counter()
    written = await seal_until_current(engine, signer)
    wall = time.perf_counter() - began
    sealed = sum(c.event_count for c in written)
    assert sealed == count, (sealed, count)
    return wall, time.process_time() - cpu, cpu_delta(pg, postgres_cpu())


async def main() -> None:
    configured = os.environ.get("DATABASE_URL")
    server = normalize_url(configured) if configured else start_embedded(DATA_DIR)
    name = f"tillit_seal_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(asyncpg_dsn(server))
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = with_database(server, name)
    signer, _ = Signer.generate()
    engine = create_engine(url, Settings(dev=True, database_url=url))
    try:
        await migrate.upgrade(engine)
        rates, cpus, pgs = [], [], []
        for number in range(1, ROUNDS + 1):
            wall, cpu, pg = await _round(engine, signer, EVENTS)
            rates.append(EVENTS / wall)
            cpus.append(cpu / EVENTS * 1e6)
            pgs.append(pg / EVENTS * 1e6)
            print(
                f"round {number}: {EVENTS} events sealed in {wall:.2f} s = {EVENTS / wall:,.0f} "
                f"events/s; CPU per event: sealer {cpus[-1]:.1f} us + PostgreSQL {pgs[-1]:.1f} us",
                flush=True,
            )
        print(
            f"median of {ROUNDS}: {statistics.median(rates):,.0f} events/s; CPU per event: "
            f"sealer {statistics.median(cpus):.1f} us + PostgreSQL {statistics.median(pgs):.1f} us"
        )
    finally:
        await engine.dispose()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
