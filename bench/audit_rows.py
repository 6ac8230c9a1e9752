"""What an access event's row costs PostgreSQL, as stored today and in two other shapes.

A hundred-member read (S2) writes a hundred access events, one row each (SPEC.md: "one row per
member touched"); under S2 that insert is most of what PostgreSQL does for Tillit. This measures,
on a database of its own, what writing the same reads costs in three shapes, so that a decision on
the audit unit rests on figures anyone can reproduce:

- `today`: `access_events` as migrated, written by the group commit's own statement
  (gateway.audit.trail.write_events with ids and leaf hashes): one row an event, every column,
  five indexes.
- `thin`: still one row an event, but only what differs between a read's events (id, time, member,
  consents, leaf hash, transaction), pointing at a row for each class of alike events (operation,
  actor, purpose, outcome, fields), where the time and client indexes move.
- `per class`: one row for each class of alike events of a read, with its members as an array
  (a GIN index finds a member's; without its pending list, so that an insert pays for its entries
  at once rather than the next VACUUM) and their leaf hashes side by side: not one row per
  member.

The two other shapes are tables this script makes (partitioned by month as `access_events` is);
nothing in the gateway reads them. Each shape first takes PRELOAD events untimed (an index's
insert cost grows with its size), then ROUNDS x EVENTS events, alternating the shapes, as reads
of 100 members (half of them consenting) that the group commit writes eight at a time. Prints
PostgreSQL's CPU a member access (its backends, from /proc: the server must run on this machine)
and the time to find one member's 50 newest accesses. `make bench-audit-rows`; DATABASE_URL picks
the server (default: the embedded one); AUDIT_ROWS_EVENTS (100000), AUDIT_ROWS_ROUNDS (3),
AUDIT_ROWS_PRELOAD (500000).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import random
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import orjson

from bench.serving import cpu_delta, postgres_cpu, scratch_database
from gateway.audit.group_commit import NEXT_IDS
from gateway.audit.trail import AccessRecord, AuditTrail, write_events
from gateway.domain import AccessOutcome, ClientPrincipal, LegalBasis, Role
from gateway.settings import Settings
from gateway.store import migrate
from gateway.store.db import Raw, asyncpg_dsn, create_engine

EVENTS = int(os.environ.get("AUDIT_ROWS_EVENTS", "100000"))
ROUNDS = int(os.environ.get("AUDIT_ROWS_ROUNDS", "3"))
PRELOAD = int(os.environ.get("AUDIT_ROWS_PRELOAD", "500000"))
DATA_DIR = Path(__file__).resolve().parent / ".pgdata"
MEMBERS_A_READ = 100
READS_A_STATEMENT = 8  # what the group commit gathers under S2 (16 clients, one worker)
MEMBERS = 100_000
LOOKUPS = 200

REQUESTED = (
    "householdSize",
    "id",
    "incomeBand",
    "lifestyleSegment",
    "memberSince",
    "points",
    "tier",
)
ENRICHED = ("householdSize", "incomeBand", "lifestyleSegment")
BASE = tuple(f for f in REQUESTED if f not in ENRICHED)


@dataclass(frozen=True, slots=True)
class Read:
    """One hundred-member read: its request and, per member, whether the member consented."""

    request_id: str
    occurred_at: dt.datetime
    members: Sequence[tuple[uuid.UUID, uuid.UUID | None]]  # member, the consent it read under


def reads(count: int, population: Sequence[uuid.UUID]) -> list[Read]:
    now = dt.datetime.now(dt.UTC)
    made = []
    for n in range(count):
        chosen = random.sample(population, MEMBERS_A_READ)
        made.append(
            Read(
                f"rows-bench-{uuid.uuid4().hex}",
                now + dt.timedelta(microseconds=n),
                [(m, uuid.uuid4() if i % 2 else None) for i, m in enumerate(chosen)],
            )
        )
    return made


WITHHELD = dict.fromkeys(ENRICHED, "CONSENT_REQUIRED")


def _trail(read: Read, client: ClientPrincipal) -> AuditTrail:
    """The read's events as resolvers.members records them."""
    trail = AuditTrail(request_id=read.request_id, principal=client, now=read.occurred_at)
    for member_id, consent in read.members:
        trail.record(
            AccessRecord(
                operation="members",
                member_id=member_id,
                purpose="personalized_offers",
                legal_basis=LegalBasis.CONSENT,
                outcome=AccessOutcome.RELEASED if consent else AccessOutcome.PARTIAL,
                fields_requested=REQUESTED,
                fields_released=REQUESTED if consent else BASE,
                fields_withheld={} if consent else WITHHELD,
                consent_ids=(consent,) if consent else (),
            )
        )
    return trail


async def write_today(raw: Raw, group: Sequence[Read], client: ClientPrincipal) -> None:
    trails = [_trail(read, client) for read in group]
    ids = (await raw.fetchrow(NEXT_IDS, sum(len(t.records) for t in trails)))[0]
    await write_events(raw, trails, ids=ids)


# The other shapes, partitioned by month like access_events (one partition holds the run).
SCRATCH = """
CREATE TABLE rows_classes (
    id bigint NOT NULL, occurred_at timestamptz NOT NULL, request_id varchar(128) NOT NULL,
    operation varchar(100) NOT NULL, actor_kind varchar(16) NOT NULL, client_id uuid,
    actor_member_id uuid, purpose varchar(64), legal_basis varchar(32),
    outcome varchar(16) NOT NULL, fields_requested text[] NOT NULL, fields_released text[] NOT NULL,
    fields_withheld jsonb NOT NULL, details jsonb NOT NULL, PRIMARY KEY (id, occurred_at)
) PARTITION BY RANGE (occurred_at);
CREATE TABLE rows_classes_p PARTITION OF rows_classes FOR VALUES FROM ($FROM) TO ($TO);
CREATE INDEX ON rows_classes (occurred_at);
CREATE INDEX ON rows_classes (client_id, occurred_at);
CREATE TABLE rows_thin (
    id bigint NOT NULL, occurred_at timestamptz NOT NULL, class_id bigint NOT NULL,
    member_id uuid, consent_ids uuid[] NOT NULL, leaf_hash bytea,
    txid xid8 NOT NULL DEFAULT pg_current_xact_id(), PRIMARY KEY (id, occurred_at)
) PARTITION BY RANGE (occurred_at);
CREATE TABLE rows_thin_p PARTITION OF rows_thin FOR VALUES FROM ($FROM) TO ($TO);
CREATE INDEX ON rows_thin (member_id, occurred_at);
CREATE INDEX ON rows_thin (txid, id);
CREATE TABLE rows_per_class (
    id bigint NOT NULL, occurred_at timestamptz NOT NULL, request_id varchar(128) NOT NULL,
    operation varchar(100) NOT NULL, actor_kind varchar(16) NOT NULL, client_id uuid,
    actor_member_id uuid, purpose varchar(64), legal_basis varchar(32),
    outcome varchar(16) NOT NULL, fields_requested text[] NOT NULL, fields_released text[] NOT NULL,
    fields_withheld jsonb NOT NULL, details jsonb NOT NULL, member_ids uuid[] NOT NULL,
    consent_ids uuid[] NOT NULL, leaf_hashes bytea NOT NULL,
    txid xid8 NOT NULL DEFAULT pg_current_xact_id(), PRIMARY KEY (id, occurred_at)
) PARTITION BY RANGE (occurred_at);
CREATE TABLE rows_per_class_p PARTITION OF rows_per_class FOR VALUES FROM ($FROM) TO ($TO);
CREATE INDEX ON rows_per_class (occurred_at);
CREATE INDEX ON rows_per_class (client_id, occurred_at);
CREATE INDEX ON rows_per_class (txid, id);
CREATE INDEX ON rows_per_class USING gin (member_ids) WITH (fastupdate = off);
CREATE SEQUENCE rows_ids;
"""

# A class row per (read, outcome), then its events pointing at it. $1-$8 per class (and the
# client); $9-$13 per event (its class's place in $1, id, member, consent or NULL, leaf hash).
_INSERT_THIN = """
WITH classes AS (
    INSERT INTO rows_classes (id, occurred_at, request_id, operation, actor_kind, client_id,
        purpose, legal_basis, outcome, fields_requested, fields_released, fields_withheld,
        details)
    SELECT u.id, u.occurred_at, u.request_id, 'members', 'CLIENT', $8::uuid,
        'personalized_offers', 'CONSENT', u.outcome, CAST($5::text AS text[]),
        CAST(u.released AS text[]), CAST(u.withheld AS jsonb), '{}'::jsonb
    FROM unnest($1::bigint[], $2::timestamptz[], $3::text[], $4::text[], $6::text[], $7::text[])
        AS u(id, occurred_at, request_id, outcome, released, withheld)
    RETURNING id, occurred_at
)
INSERT INTO rows_thin (id, occurred_at, class_id, member_id, consent_ids, leaf_hash)
SELECT e.id, ($2::timestamptz[])[e.class], ($1::bigint[])[e.class], e.member_id,
    CASE WHEN e.consent IS NULL THEN '{}'::uuid[] ELSE ARRAY[e.consent] END, e.hash
FROM unnest($9::int[], $10::bigint[], $11::uuid[], $12::uuid[], $13::bytea[])
    AS e(class, id, member_id, consent, hash)
"""

_INSERT_PER_CLASS = """
INSERT INTO rows_per_class (id, occurred_at, request_id, operation, actor_kind, client_id,
    purpose, legal_basis, outcome, fields_requested, fields_released, fields_withheld, details,
    member_ids, consent_ids, leaf_hashes)
SELECT u.id, u.occurred_at, u.request_id, 'members', 'CLIENT', $9::uuid, 'personalized_offers',
    'CONSENT', u.outcome, CAST($5::text AS text[]), CAST(u.released AS text[]),
    CAST(u.withheld AS jsonb), '{}'::jsonb, CAST(u.members AS uuid[]), CAST(u.consents AS uuid[]),
    u.hashes
FROM unnest($1::bigint[], $2::timestamptz[], $3::text[], $4::text[], $6::text[], $7::text[],
            $8::text[], $10::text[], $11::bytea[])
    AS u(id, occurred_at, request_id, outcome, released, withheld, members, consents, hashes)
"""


def _array(items: Sequence[object]) -> str:
    return "{" + ",".join(f'"{item}"' for item in items) + "}"


_REQUESTED_ARRAY, _BASE_ARRAY = _array(REQUESTED), _array(BASE)
_WITHHELD_JSON = orjson.dumps(WITHHELD).decode()


def _classes(read: Read) -> list[tuple[str, str, str, list[tuple[uuid.UUID, uuid.UUID | None]]]]:
    """The read's classes of alike events: outcome, released fields, withheld JSON, members."""
    released: list[tuple[uuid.UUID, uuid.UUID | None]] = []
    partial: list[tuple[uuid.UUID, uuid.UUID | None]] = []
    for member, consent in read.members:
        (partial if consent is None else released).append((member, consent))
    return [
        ("RELEASED", _REQUESTED_ARRAY, "{}", released),
        ("PARTIAL", _BASE_ARRAY, _WITHHELD_JSON, partial),
    ]


async def _ids(connection: asyncpg.Connection, count: int) -> list[int]:
    ids: list[int] = await connection.fetchval(
        "SELECT array_agg(nextval('rows_ids')) FROM generate_series(1, $1::int)", count
    )
    return ids


async def write_thin(
    connection: asyncpg.Connection, group: Sequence[Read], client: ClientPrincipal
) -> None:
    class_columns: list[list[object]] = [[] for _ in range(6)]
    event_columns: list[list[object]] = [[] for _ in range(5)]
    classes = [(read, c) for read in group for c in _classes(read)]
    ids = iter(await _ids(connection, len(classes) + len(group) * MEMBERS_A_READ))
    for number, (read, (outcome, released, withheld, members)) in enumerate(classes, start=1):
        for column, value in zip(
            class_columns,
            (next(ids), read.occurred_at, read.request_id, outcome, released, withheld),
            strict=True,
        ):
            column.append(value)
        for member_id, consent in members:
            for column, value in zip(
                event_columns,
                (number, next(ids), member_id, consent, os.urandom(32)),
                strict=True,
            ):
                column.append(value)
    await connection.execute(
        _INSERT_THIN,
        *class_columns[:4],
        _REQUESTED_ARRAY,
        *class_columns[4:6],
        client.id,
        *event_columns,
    )


async def write_per_class(
    connection: asyncpg.Connection, group: Sequence[Read], client: ClientPrincipal
) -> None:
    columns: list[list[object]] = [[] for _ in range(9)]
    classes = [(read, c) for read in group for c in _classes(read)]
    ids = iter(await _ids(connection, len(classes)))
    for read, (outcome, released, withheld, members) in classes:
        values = (
            next(ids),
            read.occurred_at,
            read.request_id,
            outcome,
            released,
            withheld,
            _array([m for m, _ in members]),
            _array([c for _, c in members if c is not None]),
            os.urandom(32 * len(members)),
        )
        for column, value in zip(columns, values, strict=True):
            column.append(value)
    await connection.execute(
        _INSERT_PER_CLASS,
        *columns[:4],
        _REQUESTED_ARRAY,
        *columns[4:6],
        columns[6],
        client.id,
        columns[7],
        columns[8],
    )


# One member's 50 newest accesses, as me.accessLog and the auditors' per-member page ask.
LOOKUP = {
    "today": "SELECT id, occurred_at, operation, purpose, outcome FROM access_events "
    "WHERE member_id = $1 ORDER BY occurred_at DESC LIMIT 50",
    "thin": "SELECT e.id, e.occurred_at, c.operation, c.purpose, c.outcome FROM rows_thin e "
    "JOIN rows_classes c ON c.id = e.class_id AND c.occurred_at = e.occurred_at "
    "WHERE e.member_id = $1 ORDER BY e.occurred_at DESC LIMIT 50",
    "per class": "SELECT id, occurred_at, operation, purpose, outcome FROM rows_per_class "
    "WHERE member_ids @> ARRAY[$1::uuid] ORDER BY occurred_at DESC LIMIT 50",
}


@dataclass(slots=True)
class Shape:
    name: str
    write: Callable[[Sequence[Read]], Awaitable[None]]
    cpu: list[float]
    wall: list[float]


async def write_reads(shape: Shape, batch: Sequence[Read]) -> float:
    """PostgreSQL's CPU seconds for writing `batch`, a statement (and commit) a group of reads."""
    pg = postgres_cpu()
    for start in range(0, len(batch), READS_A_STATEMENT):
        await shape.write(batch[start : start + READS_A_STATEMENT])
    return cpu_delta(pg, postgres_cpu())


async def _lookups(connection: asyncpg.Connection, sql: str, members: Sequence[uuid.UUID]) -> float:
    began = time.perf_counter()
    for member_id in members:
        await connection.fetch(sql, member_id)
    return (time.perf_counter() - began) / len(members) * 1e3


async def prepare(url: str) -> asyncpg.Connection:
    """Migrate the database at `url` and make the other shapes' tables; a connection to it."""
    engine = create_engine(url, Settings(dev=True, database_url=url))
    try:
        await migrate.upgrade(engine)
    finally:
        await engine.dispose()
    connection = await asyncpg.connect(asyncpg_dsn(url))
    start = dt.datetime.now(dt.UTC).date().replace(day=1)
    end = (start + dt.timedelta(days=62)).replace(day=1)  # past the month this runs in
    await connection.execute(
        SCRATCH.replace("$FROM", f"'{start - dt.timedelta(days=31)}'").replace("$TO", f"'{end}'")
    )
    return connection


def shapes(connection: asyncpg.Connection) -> list[Shape]:
    # access_events.client_id has no foreign key (migration 0009): any client id will do.
    client = ClientPrincipal(uuid.uuid4(), "rows-bench", Role.APP, frozenset(), frozenset())
    raw = Raw(connection)
    return [
        Shape("today", lambda group: write_today(raw, group, client), [], []),
        Shape("thin", lambda group: write_thin(connection, group, client), [], []),
        Shape("per class", lambda group: write_per_class(connection, group, client), [], []),
    ]


async def run(url: str) -> None:
    connection = await prepare(url)
    try:
        population = [uuid.uuid4() for _ in range(MEMBERS)]
        measured = shapes(connection)
        per_round = EVENTS // MEMBERS_A_READ
        print(f"preloading {PRELOAD:,} events into each shape (untimed)", flush=True)
        for shape in measured:
            total = PRELOAD // MEMBERS_A_READ
            for done in range(0, total, 1000):
                await write_reads(shape, reads(min(1000, total - done), population))
        await connection.execute("CHECKPOINT")
        for number in range(1, ROUNDS + 1):
            batch = reads(per_round, population)
            for shape in measured:
                began = time.perf_counter()
                cpu = await write_reads(shape, batch)
                shape.wall.append((time.perf_counter() - began) / EVENTS * 1e6)
                shape.cpu.append(cpu / EVENTS * 1e6)
                print(
                    f"round {number}, {shape.name}: {EVENTS:,} member accesses; PostgreSQL "
                    f"{shape.cpu[-1]:.1f} us CPU a member access ({shape.wall[-1]:.1f} us "
                    "wall, client included)",
                    flush=True,
                )
        looked_up = random.sample(population, LOOKUPS)
        print(f"medians of {ROUNDS} rounds, and one member's 50 newest accesses:")
        for shape in measured:
            await _lookups(connection, LOOKUP[shape.name], looked_up[:20])  # warm
            ms = await _lookups(connection, LOOKUP[shape.name], looked_up)
            print(
                f"  {shape.name}: PostgreSQL {statistics.median(shape.cpu):.1f} us a member "
                f"access ({statistics.median(shape.wall):.1f} us wall); a member's page "
                f"{ms:.2f} ms"
            )
    finally:
        await connection.close()


async def main() -> None:
    async with scratch_database("tillit_rows_bench", DATA_DIR) as url:
        await run(url)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
