"""Group commit: concurrent reads' access events go in one INSERT, each read waits for its own."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.audit.group_commit import GroupCommit
from gateway.audit.sealer import seal_until_current
from gateway.audit.sealing import EVENT_COLUMNS, event_hash
from gateway.audit.trail import AccessRecord, AuditTrail, write_events
from gateway.domain import (
    AccessOutcome,
    Anonymous,
    ClientPrincipal,
    LegalBasis,
    MemberPrincipal,
    Principal,
    Role,
)
from gateway.settings import Settings as GatewaySettings
from gateway.store.db import create_raw_pool
from tests.conftest import TEST_SIGNER, Api, add_client, add_member, serving
from tests.helpers import audit_writes_fail, explained, plan_nodes, verify


def read(request_id: str, principal: Principal, members: int = 1) -> AuditTrail:
    """The events of one profile read of `members` members."""
    trail = AuditTrail(
        request_id=request_id, principal=principal, now=dt.datetime.now(dt.UTC).replace(minute=0)
    )
    for _ in range(members):
        trail.record(
            AccessRecord(
                operation="members",
                member_id=uuid.uuid4(),
                purpose="membership_service",
                legal_basis=LegalBasis.CONTRACT,
                outcome=AccessOutcome.PARTIAL,
                fields_requested=("email", "incomeBand"),
                fields_released=("email",),
                fields_withheld={"incomeBand": "CONSENT_REQUIRED"},
                consent_ids=(uuid.uuid4(),),
            )
        )
    return trail


@pytest.fixture
async def pool(
    db: AsyncEngine, gateway_url: str, settings: GatewaySettings
) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_raw_pool(gateway_url, settings)
    yield pool
    await pool.close()


async def stored(engine: AsyncEngine) -> list[dict[str, object]]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text(
                "SELECT request_id, actor_kind, client_id, actor_member_id, occurred_at, "
                "member_id, fields_withheld, consent_ids, txid::text AS txid "
                "FROM access_events ORDER BY id"
            )
        )
        return [dict(row._mapping) for row in rows]


async def test_concurrent_reads_go_in_one_statement_each_with_its_own_actor_and_time(
    db: AsyncEngine, pool: asyncpg.Pool
) -> None:
    client = await add_client(db, "shop", Role.APP)
    principals: list[Principal] = [
        ClientPrincipal(client.id, "shop", Role.APP, frozenset(), frozenset()),
        MemberPrincipal(uuid.uuid4()),
        Anonymous(),
    ]
    trails = [read(f"req-{n}", principals[n % 3], members=n % 4 + 1) for n in range(30)]
    expected = {
        t.request_id: (len(t.records), t.now, t.records[0].member_id, t.records[0].consent_ids)
        for t in trails
    }
    writer = GroupCommit(pool)

    written = await asyncio.gather(*(writer.write(trail) for trail in trails))

    assert written == [n % 4 + 1 for n in range(30)]
    assert (writer.statements, writer.events) == (1, sum(written))
    rows = await stored(db)
    assert len(rows) == sum(written)
    assert len({row["txid"] for row in rows}) == 1  # one statement, one commit
    for n, trail in enumerate(trails):
        mine = [row for row in rows if row["request_id"] == trail.request_id]
        count, now, first_member, first_consents = expected[trail.request_id]
        assert len(mine) == count
        assert {row["occurred_at"] for row in mine} == {now}
        assert mine[0]["member_id"] == first_member
        assert mine[0]["consent_ids"] == list(first_consents)
        assert mine[0]["fields_withheld"] == {"incomeBand": "CONSENT_REQUIRED"}
        kind = ("CLIENT", "MEMBER", "ANONYMOUS")[n % 3]
        assert {row["actor_kind"] for row in mine} == {kind}
        assert (mine[0]["client_id"] is not None) == (kind == "CLIENT")
        assert (mine[0]["actor_member_id"] is not None) == (kind == "MEMBER")


async def test_a_read_returns_only_once_its_events_are_durable(
    db: AsyncEngine, pool: asyncpg.Pool
) -> None:
    writer = GroupCommit(pool)
    for n in range(3):
        assert await writer.write(read(f"alone-{n}", Anonymous(), members=2)) == 2
        # Seen from another connection the moment the write returns: committed.
        assert len(await stored(db)) == 2 * (n + 1)
    assert writer.statements == 3  # a lone read waits for nobody


async def test_batches_stay_under_their_size(db: AsyncEngine, pool: asyncpg.Pool) -> None:
    writer = GroupCommit(pool, max_events=250)
    trails = [read(f"big-{n}", Anonymous(), members=100) for n in range(5)]
    await asyncio.gather(*(writer.write(trail) for trail in trails))
    assert (writer.statements, writer.events) == (3, 500)
    rows = await stored(db)
    # No read is split between statements.
    for trail in trails:
        assert len({row["txid"] for row in rows if row["request_id"] == trail.request_id}) == 1


async def test_a_read_whose_events_are_refused_fails_alone(
    db: AsyncEngine, pool: asyncpg.Pool
) -> None:
    client = await add_client(db, "shop", Role.APP)
    good = ClientPrincipal(client.id, "shop", Role.APP, frozenset(), frozenset())
    # A value the table refuses: an operation name longer than its column.
    refused = read("refused", good)
    refused.record(
        AccessRecord(
            operation="o" * 101,
            member_id=uuid.uuid4(),
            purpose="membership_service",
            legal_basis=None,
            outcome=AccessOutcome.DENIED,
        )
    )
    trails = [read("good-1", good), refused, read("good-2", good, members=3)]
    writer = GroupCommit(pool)

    results = await asyncio.gather(*(writer.write(t) for t in trails), return_exceptions=True)

    assert results[0] == 1
    assert isinstance(results[1], asyncpg.StringDataRightTruncationError)
    assert results[2] == 3
    assert sorted({row["request_id"] for row in await stored(db)}) == ["good-1", "good-2"]
    assert writer.statements == 4  # the batch, then each read on its own


async def test_when_the_write_fails_every_read_in_it_fails_and_nothing_is_written(
    db: AsyncEngine, pool: asyncpg.Pool
) -> None:
    writer = GroupCommit(pool)
    async with audit_writes_fail(db, "commit"):
        results = await asyncio.gather(
            *(writer.write(read(f"r{n}", Anonymous())) for n in range(5)), return_exceptions=True
        )
    assert all(isinstance(result, asyncpg.PostgresError) for result in results)
    assert writer.statements == 1  # not retried read by read: it is not one read's values
    assert await stored(db) == []


async def test_a_read_that_stopped_waiting_before_its_write_began_is_left_out(
    db: AsyncEngine, pool: asyncpg.Pool
) -> None:
    writer = GroupCommit(pool, writers=1)
    first = asyncio.create_task(writer.write(read("first", Anonymous())))
    await asyncio.sleep(0)  # the writer has taken `first` and is writing it
    gave_up = asyncio.create_task(writer.write(read("gave-up", Anonymous())))
    waits = asyncio.create_task(writer.write(read("waits", Anonymous())))
    await asyncio.sleep(0)
    gave_up.cancel()
    assert await first == 1
    assert await waits == 1
    await writer.close()
    assert sorted({row["request_id"] for row in await stored(db)}) == ["first", "waits"]
    assert writer.statements == 2


async def test_concurrent_requests_share_commits_and_each_answer_has_its_event(
    db: AsyncEngine, gateway_url: str, settings: GatewaySettings
) -> None:
    client = await add_client(db, "shop", Role.APP)
    members = [await add_member(db) for _ in range(3)]
    # A read the general path answers (an object field): its events go through the group
    # commit. (Reads of leaf fields write theirs in their own statement: gateway.records.set_reads.)
    query = (
        'query($id: ID!) { member(id: $id, purpose: "membership_service") '
        "{ id email address { city } } }"
    )
    async with serving(settings, gateway_url) as api:

        async def ask(n: int, api: Api = api) -> str:
            response = await api.http.post(
                "/graphql",
                json={"query": query, "variables": {"id": str(members[n % 3])}},
                headers={"Authorization": f"Bearer {client.key}", "X-Request-ID": f"http-{n}"},
            )
            assert response.status_code == 200, response.text
            assert response.json()["data"]["member"]["email"]
            return response.headers["x-request-id"]

        answered = await asyncio.gather(*(ask(n) for n in range(40)))
    rows = await stored(db)
    assert sorted(row["request_id"] for row in rows) == sorted(answered)
    # Fewer commits than requests (each commit is one transaction id).
    assert len({row["txid"] for row in rows}) < len(answered)


# -- the leaf hash written with the event --------------------------------------------------------

_text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=80
)
_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=6,
)


@st.composite
def records(draw: st.DrawFn) -> AccessRecord:
    fields = tuple(draw(st.lists(_text, max_size=4)))
    return AccessRecord(
        operation=draw(st.sampled_from(["member", "members", "purposes"])),
        member_id=draw(st.none() | st.uuids()),
        purpose=draw(st.none() | _text),
        legal_basis=draw(st.none() | st.sampled_from(LegalBasis)),
        outcome=draw(st.sampled_from([AccessOutcome.RELEASED, AccessOutcome.DENIED])),
        fields_requested=fields,
        fields_released=fields[:1],
        fields_withheld=draw(st.dictionaries(_text, _text, max_size=3)),
        consent_ids=tuple(draw(st.lists(st.uuids(), max_size=3))),
        details=draw(st.dictionaries(_text, _json_values, max_size=3)),
    )


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(drawn=st.lists(records(), min_size=1, max_size=6))
async def test_the_leaf_hash_written_is_the_hash_of_the_row_as_stored(
    db: AsyncEngine, pool: asyncpg.Pool, drawn: list[AccessRecord]
) -> None:
    trail = AuditTrail(
        request_id="hashed-" + uuid.uuid4().hex, principal=Anonymous(), now=dt.datetime.now(dt.UTC)
    )
    for record in drawn:
        trail.record(record)
    await GroupCommit(pool).write(trail)
    rows = await hashed_rows(db, trail.request_id)
    assert len(rows) == len(drawn)
    for row, record in zip(rows, drawn, strict=True):
        values = row._mapping
        # Left to the sealer only when a float was in its JSON (jsonb may write it back
        # otherwise: 1e16 as 10000000000000000).
        assert (values["leaf_hash"] is None) == has_float(record.details)
        if values["leaf_hash"] is not None:
            assert values["leaf_hash"] == event_hash(values)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    shared=records(),
    events=st.lists(
        st.tuples(st.none() | st.uuids(), st.lists(st.uuids(), max_size=3)), min_size=2, max_size=8
    ),
)
async def test_events_of_one_class_are_hashed_each_with_its_own_member_and_consents(
    db: AsyncEngine,
    pool: asyncpg.Pool,
    shared: AccessRecord,
    events: list[tuple[uuid.UUID | None, list[uuid.UUID]]],
) -> None:
    # A batch read: every event shares its decision's mappings (one class, one template for the
    # hash), and differs in its id, member and consents.
    trail = AuditTrail(
        request_id="class-" + uuid.uuid4().hex,
        principal=Anonymous(),
        now=dt.datetime.now(dt.UTC),
    )
    for member_id, consent_ids in events:
        trail.record(
            dataclasses.replace(shared, member_id=member_id, consent_ids=tuple(consent_ids))
        )
    await GroupCommit(pool).write(trail)
    rows = await hashed_rows(db, trail.request_id)
    assert [(row.member_id, list(row.consent_ids)) for row in rows] == events
    for row in rows:
        values = row._mapping
        assert (values["leaf_hash"] is None) == has_float(shared.details)
        if values["leaf_hash"] is not None:
            assert values["leaf_hash"] == event_hash(values)


async def hashed_rows(db: AsyncEngine, request_id: str) -> list[Any]:
    """A request's events as stored, with the leaf hash written with each."""
    async with db.connect() as connection:
        result = await connection.execute(
            text(
                f"SELECT {', '.join(EVENT_COLUMNS)}, leaf_hash FROM access_events "
                "WHERE request_id = :r ORDER BY id"
            ),
            {"r": request_id},
        )
        return list(result.all())


def has_float(value: object) -> bool:
    if isinstance(value, dict):
        return any(has_float(item) for item in value.values())
    if isinstance(value, list):
        return any(has_float(item) for item in value)
    return isinstance(value, float)


async def test_the_sealer_seals_the_written_hash_and_verify_recomputes_it(
    db: AsyncEngine, pool: asyncpg.Pool
) -> None:
    writer = GroupCommit(pool)
    await asyncio.gather(*(writer.write(read(f"v{n}", Anonymous(), members=3)) for n in range(4)))
    floaty = read("float", Anonymous())
    floaty.records[0].details = {"share": 0.5, "big": 1e15}
    await writer.write(floaty)
    async with db.connect() as connection:
        hashed = await connection.scalar(
            text("SELECT count(*) FROM access_events WHERE leaf_hash IS NOT NULL")
        )
    assert hashed == 12  # the float one is left to the sealer
    await seal_until_current(db, TEST_SIGNER)
    assert (await verify(db)).ok

    # An event written with a hash that is not its own: sealed as written, and named by verify.
    async with db.connect() as connection:
        await connection.execute(
            text(
                "INSERT INTO access_events (request_id, operation, actor_kind, outcome, leaf_hash)"
                " VALUES ('liar', 'member', 'SYSTEM', 'RELEASED', :h)"
            ),
            {"h": b"\x01" * 32},
        )
        await connection.commit()
    await seal_until_current(db, TEST_SIGNER)
    async with db.connect() as connection:
        sealed = await connection.scalar(
            text(
                "SELECT s.event_hash FROM audit_seals s JOIN access_events e "
                "ON e.id = s.event_id WHERE e.request_id = 'liar'"
            )
        )
    assert sealed == b"\x01" * 32
    report = await verify(db)
    assert not report.ok
    assert any("altered" in problem or "hash" in problem for problem in report.problems)


class _Statements:
    """Stands where write_events expects a connection and keeps the statements it is given (the
    test then asks PostgreSQL how it would run them)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, tuple[Any, ...]]] = []

    async def execute(self, sql: str, *args: Any) -> None:
        self.sent.append((sql, args))


@pytest.mark.parametrize("hashed", [False, True], ids=["ids taken as written", "ids given"])
async def test_a_batch_casts_each_class_once_not_each_event(
    pool: asyncpg.Pool, hashed: bool
) -> None:
    # A 100-member read is a hundred events in a handful of classes. The lists and JSON of a class
    # are cast where the classes are read, below the join that pairs them with their events, so
    # once a class (they were cast once an event: 1.43 against 1.27 ms of PostgreSQL a 100-event
    # insert, with the sort left out as well).
    statements = _Statements()
    trails = [read("plan-a", Anonymous(), members=40), read("plan-b", Anonymous(), members=40)]
    await write_events(statements, trails, ids=range(1, 81) if hashed else None)  # type: ignore[arg-type]
    [(sql, args)] = statements.sent
    async with pool.acquire() as connection:
        [plan] = await connection.fetchrow("EXPLAIN (VERBOSE, FORMAT JSON) " + sql, *args)
    root = explained(plan)

    def casts(node: dict[str, Any]) -> bool:
        return "::jsonb" in " ".join(node.get("Output", ()))

    # Where the casts are made: the lowest nodes whose output holds them (above: passed on).
    casting = [
        node
        for node in plan_nodes(root)
        if casts(node) and not any(casts(child) for child in node.get("Plans", ()))
    ]
    assert casting
    for node in casting:
        below = [
            found.get("Alias")
            for found in plan_nodes(node)
            if found["Node Type"] == "Function Scan"
        ]
        assert below == ["u"], node["Node Type"]  # the classes' unnest only, not the events'
    # With their ids given, the events need no order: nothing is sorted.
    sorts = [node for node in plan_nodes(root) if "Sort" in node["Node Type"]]
    assert bool(sorts) != hashed
