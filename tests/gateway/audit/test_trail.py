"""The audit trail: append-only in the database, sealed into signed checkpoints, verifiable."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import random
import uuid
from collections.abc import AsyncIterator

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.audit.sealer import seal_once, seal_until_current
from gateway.audit.sealing import EVENT_COLUMNS, event_hash
from gateway.audit.trail import AccessRecord, AuditTrail
from gateway.domain import AccessOutcome, LegalBasis, SystemPrincipal
from gateway.signing import Signer
from gateway.store.db import raw_of
from tests.conftest import TEST_SIGNER, lift_audit_guards, restore_audit_guards
from tests.helpers import verify, write_events


async def tamper(engine: AsyncEngine, *statements: str) -> None:
    """Play the attacker: a superuser who lifts the guards, changes rows, and restores them."""
    async with engine.begin() as connection:
        partitions = await lift_audit_guards(connection)
        for statement in statements:
            await connection.execute(text(statement))
        await restore_audit_guards(connection, partitions)


@pytest.fixture
async def sealed(db: AsyncEngine) -> AsyncEngine:
    """Twelve events in three checkpoints of four."""
    for batch in range(3):
        await write_events(db, 4, request=f"req-{batch}")
        await seal_until_current(db, TEST_SIGNER)
    return db


# -- append-only in the database ------------------------------------------------------------------


@pytest.fixture
async def as_gateway(db: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection with the privileges of the role the gateway runs as."""
    await write_events(db, 2)
    async with db.connect() as connection:
        await connection.execute(text("SET ROLE tillit_gateway"))
        yield connection
        await connection.rollback()


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE access_events SET outcome = 'DENIED'",
        "DELETE FROM access_events",
        "TRUNCATE access_events",
        "UPDATE {partition} SET outcome = 'DENIED'",
        "DELETE FROM {partition}",
        "TRUNCATE {partition}",
        "UPDATE audit_checkpoints SET key_id = 'x'",
        "DELETE FROM audit_seals",
        "TRUNCATE audit_checkpoints",
        "DROP TABLE {partition}",
        "ALTER TABLE access_events DISABLE TRIGGER USER",
    ],
)
async def test_gateway_role_cannot_change_or_remove_audit_rows(
    as_gateway: AsyncConnection, statement: str
) -> None:
    partition = "access_events_" + dt.datetime.now(dt.UTC).strftime("%Y_%m")

    savepoint = await as_gateway.begin_nested()
    with pytest.raises(DBAPIError, match=r"permission denied|must be owner|append-only"):
        await as_gateway.execute(text(statement.format(partition=partition)))
    await savepoint.rollback()


async def test_gateway_role_may_insert_and_read_audit_rows(as_gateway: AsyncConnection) -> None:
    await as_gateway.execute(
        text(
            "INSERT INTO access_events (request_id, operation, actor_kind, outcome) "
            "VALUES ('r', 'member', 'SYSTEM', 'RELEASED')"
        )
    )

    assert await as_gateway.scalar(text("SELECT count(*) FROM access_events")) == 3


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE access_events SET outcome = 'DENIED'",
        "DELETE FROM access_events",
        "TRUNCATE access_events",
        "UPDATE {partition} SET outcome = 'DENIED'",
        "DELETE FROM {partition}",
        "TRUNCATE {partition}",
        "UPDATE audit_seals SET position = position + 100",
        "DELETE FROM audit_checkpoints",
        "TRUNCATE audit_seals",
    ],
)
async def test_triggers_refuse_even_a_superuser_in_replica_mode(
    sealed: AsyncEngine, statement: str
) -> None:
    partition = "access_events_" + dt.datetime.now(dt.UTC).strftime("%Y_%m")
    async with sealed.connect() as connection:
        await connection.execute(text("SET session_replication_role = replica"))
        with pytest.raises(DBAPIError, match="append-only"):
            await connection.execute(text(statement.format(partition=partition)))


# -- sealing and verification ---------------------------------------------------------------------


async def test_untouched_log_verifies(sealed: AsyncEngine) -> None:
    report = await verify(sealed)

    assert report.ok, report.problems
    assert report.checkpoints == 3
    assert report.events == 12
    assert report.unsealed == 0


async def test_verify_without_checkpoints_fails_instead_of_passing(db: AsyncEngine) -> None:
    await write_events(db, 3)

    report = await verify(db)

    assert not report.ok
    assert "no checkpoints yet" in report.problems[0]


async def test_checkpoints_are_written_even_when_nothing_happened(db: AsyncEngine) -> None:
    first = await seal_until_current(db, TEST_SIGNER)
    second = await seal_until_current(db, TEST_SIGNER)

    assert [c.event_count for c in first + second] == [0, 0]
    assert second[0].id == first[0].id + 1
    assert (await verify(db)).ok


async def test_positions_are_contiguous_and_checkpoints_chained(sealed: AsyncEngine) -> None:
    async with sealed.connect() as connection:
        positions = list(
            (
                await connection.execute(text("SELECT position FROM audit_seals ORDER BY 1"))
            ).scalars()
        )
        ranges = (
            await connection.execute(
                text("SELECT first_position, last_position FROM audit_checkpoints ORDER BY id")
            )
        ).all()

    assert positions == list(range(1, 13))
    assert [tuple(r) for r in ranges] == [(1, 4), (5, 8), (9, 12)]


async def test_a_checkpoint_signed_with_another_key_fails(sealed: AsyncEngine) -> None:
    stranger, _ = Signer.generate()

    report = await verify(sealed, stranger)

    assert not report.ok
    assert "checkpoint 1 is signed by key" in report.problems[0]
    assert "not trusted here" in report.problems[0]


TAMPERING = {
    "changed-field": (
        ["UPDATE access_events SET outcome = 'DENIED' WHERE id = 6"],
        "event 6 at position 6 was altered",
    ),
    "deleted-event": (
        ["DELETE FROM access_events WHERE id = 7"],
        "event 7 at position 7 is missing",
    ),
    "forged-event": (
        [
            "INSERT INTO access_events (request_id, operation, actor_kind, outcome, txid) "
            "VALUES ('forged', 'member', 'SYSTEM', 'RELEASED', '3'::xid8)"
        ],
        "is not in any checkpoint",
    ),
    "swapped-events": (
        [
            "UPDATE access_events SET request_id = CASE id WHEN 2 THEN 'req-1' "
            "ELSE 'req-0' END WHERE id IN (2, 5)"
        ],
        "event 2 at position 2 was altered",
    ),
    "reordered-seals": (
        [
            "UPDATE audit_seals SET position = -position WHERE position IN (2, 3)",
            "UPDATE audit_seals SET position = 3 WHERE position = -2",
            "UPDATE audit_seals SET position = 2 WHERE position = -3",
        ],
        "event 2 at position 3 is out of order",
    ),
    "dropped-checkpoint": (
        ["DELETE FROM audit_checkpoints WHERE id = 2"],
        "checkpoint 2 is missing",
    ),
    "altered-checkpoint": (
        ["UPDATE audit_checkpoints SET event_count = 3, last_position = 7 WHERE id = 2"],
        "checkpoint 2 was altered",
    ),
}


@pytest.mark.parametrize("case", list(TAMPERING))
async def test_tampering_is_found_and_named(sealed: AsyncEngine, case: str) -> None:
    statements, expected = TAMPERING[case]
    await tamper(sealed, *statements)

    report = await verify(sealed)

    assert not report.ok
    assert expected in report.problems[0], report.problems


async def test_an_event_altered_together_with_its_seal_breaks_the_checkpoint(
    sealed: AsyncEngine,
) -> None:
    await tamper(sealed, "UPDATE access_events SET outcome = 'DENIED' WHERE id = 10")
    async with sealed.connect() as connection:
        row = (
            await connection.execute(
                text(f"SELECT {', '.join(EVENT_COLUMNS)} FROM access_events WHERE id = 10")
            )
        ).one()
    forged = event_hash(dict(row._mapping))
    async with sealed.begin() as connection:
        partitions = await lift_audit_guards(connection)
        await connection.execute(
            text("UPDATE audit_seals SET event_hash = :h WHERE position = 10"), {"h": forged}
        )
        await restore_audit_guards(connection, partitions)

    report = await verify(sealed)

    assert not report.ok
    assert "the seals of checkpoint 3 no longer match it" in report.problems[0]


async def test_concurrent_writers_while_sealing_leave_a_verifiable_log_without_gaps(
    db: AsyncEngine,
) -> None:
    rng = random.Random(7)
    writers_done = asyncio.Event()

    async def writer(number: int) -> None:
        for round_ in range(8):
            async with db.begin() as connection:
                trail = AuditTrail(
                    request_id=f"w{number}-{round_}",
                    principal=SystemPrincipal("test"),
                    now=dt.datetime.now(dt.UTC),
                )
                for _ in range(rng.randint(1, 3)):
                    trail.record(
                        AccessRecord(
                            operation="member",
                            member_id=uuid.uuid4(),
                            purpose=None,
                            legal_basis=None,
                            outcome=AccessOutcome.NOT_FOUND,
                        )
                    )
                await trail.flush(await raw_of(connection))
                # Hold the transaction open for a while, so commits overtake each other.
                await asyncio.sleep(rng.random() / 50)

    async def sealer() -> None:
        while not writers_done.is_set():
            async with db.begin() as connection:
                await seal_once(connection, TEST_SIGNER)
            await asyncio.sleep(0.005)

    sealing = asyncio.create_task(sealer())
    await asyncio.gather(*(writer(n) for n in range(6)))
    writers_done.set()
    await sealing
    await seal_until_current(db, TEST_SIGNER)

    report = await verify(db)
    assert report.ok, report.problems
    async with db.connect() as connection:
        events = await connection.scalar(text("SELECT count(*) FROM access_events"))
        positions = list(
            (
                await connection.execute(text("SELECT position FROM audit_seals ORDER BY 1"))
            ).scalars()
        )
    assert report.events == events
    assert positions == list(range(1, events + 1))


async def test_a_transaction_larger_than_a_batch_is_sealed_in_several(db: AsyncEngine) -> None:
    await write_events(db, 25)  # one transaction

    passes = []
    for _ in range(4):
        async with db.begin() as connection:
            checkpoint = await seal_once(connection, TEST_SIGNER, max_batch=10)
        assert checkpoint is not None
        passes.append(checkpoint.event_count)

    assert passes == [10, 10, 5, 0]
    report = await verify(db)
    assert report.ok, report.problems
    assert report.events == 25


async def test_only_one_sealer_at_a_time(db: AsyncEngine) -> None:
    async with db.begin() as first, db.begin() as second:
        one = await seal_once(first, TEST_SIGNER)
        other = await seal_once(second, TEST_SIGNER)

    assert one is not None
    assert other is None


def test_canonical_event_bytes_equal_sorted_compact_json() -> None:
    import json

    from gateway.audit.sealing import canonical_event

    row = {
        "id": 7,
        "occurred_at": dt.datetime(2026, 11, 29, 12, 0, 0, 1234, tzinfo=dt.UTC),
        "request_id": "r\u2028\x01\x7f",
        "operation": "member",
        "actor_kind": "CLIENT",
        "client_id": uuid.uuid4(),
        "actor_member_id": None,
        "member_id": uuid.uuid4(),
        "purpose": '«øæå» "quoted" \\ ✓',
        "legal_basis": None,
        "outcome": "RELEASED",
        "fields_requested": ["b", "a"],
        "fields_released": [],
        "consent_ids": [uuid.uuid4()],
        "fields_withheld": {"z": "CONSENT_REQUIRED", "a": "OBJECTED"},
        "details": {"nested": {"b": 1, "a": [True, None]}},
    }

    produced = canonical_event(row)

    expected = json.loads(produced)
    assert (
        produced
        == json.dumps(expected, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    )
    assert expected["occurred_at"] == "2026-11-29T12:00:00.001234+00:00"
    # The sealer hands over the jsonb columns as their text: the same bytes.
    as_text = {
        **row,
        "fields_withheld": json.dumps(row["fields_withheld"]),
        "details": json.dumps(row["details"]),
    }
    assert canonical_event(as_text) == produced


@given(
    st.datetimes(
        min_value=dt.datetime(1970, 1, 2),
        max_value=dt.datetime(9999, 12, 30),
        timezones=st.sampled_from([dt.UTC, dt.timezone(dt.timedelta(hours=1, minutes=30))]),
    )
)
def test_event_times_are_written_as_isoformat_writes_them(moment: dt.datetime) -> None:
    from gateway.audit.sealing import _iso

    assert _iso(moment) == moment.astimezone(dt.UTC).isoformat(timespec="microseconds")
    assert _iso(moment.replace(microsecond=0)) == moment.replace(microsecond=0).astimezone(
        dt.UTC
    ).isoformat(timespec="microseconds")


async def test_list_values_reach_postgres_exactly(db: AsyncEngine) -> None:
    """The audit insert sends its lists as PostgreSQL array literals: quoting must hold."""
    from gateway.audit.trail import _array

    awkward = ("plain", 'with "quotes"', "back\\slash", "comma,brace}", "", "NULL")
    async with db.connect() as connection:
        back = await connection.scalar(
            text("SELECT CAST(CAST(:literal AS text) AS text[])"),
            {"literal": _array(awkward, {})},
        )

    assert tuple(back) == awkward


@pytest.mark.parametrize("together", [True, False], ids=["one insert", "an insert each"])
async def test_an_operations_events_are_stored_as_recorded_and_in_order(
    db: AsyncEngine, together: bool
) -> None:
    """The insert sends classes of alike events once and each event's consents as a slice of one
    array: every event must come back whole, in the order recorded. An event written alone (a
    write's) takes a plain VALUES insert: the same values must arrive."""

    shared_withheld = {"incomeBand": "CONSENT_REQUIRED"}
    grants = [uuid.uuid4() for _ in range(3)]

    def read(outcome: AccessOutcome, released: tuple[str, ...], **more: object) -> AccessRecord:
        fields = ("id", "incomeBand")
        return AccessRecord(
            "members",
            uuid.uuid4(),
            "offers",
            LegalBasis.CONSENT,
            outcome,
            fields,
            released,
            **more,  # type: ignore[arg-type]
        )

    released, partial = AccessOutcome.RELEASED, AccessOutcome.PARTIAL
    records = [
        read(released, ("id", "incomeBand"), consent_ids=(grants[0],)),
        read(partial, ("id",), fields_withheld=shared_withheld),
        read(released, ("id", "incomeBand"), consent_ids=(grants[1], grants[2])),
        read(partial, ("id",), fields_withheld=shared_withheld),
        AccessRecord(
            "accessLog",
            None,
            "x" * 80,
            None,
            AccessOutcome.DENIED,
            details={"reason": 'a "quoted", {braced} reason', "n": 1},
        ),
        read(released, ("id", "incomeBand"), consent_ids=(grants[0],)),
    ]
    request_id = uuid.uuid4().hex
    now = dt.datetime.now(dt.UTC)
    trails = [
        AuditTrail(request_id=request_id, principal=SystemPrincipal("test"), now=now)
        for _ in (range(1) if together else records)
    ]
    for n, record in enumerate(records):
        trails[0 if together else n].record(record)
    async with db.begin() as connection:
        for trail in trails:
            assert await trail.flush(await raw_of(connection)) == len(records) // len(trails)
        rows = (
            await connection.execute(
                text(
                    "SELECT operation, member_id, purpose, legal_basis, outcome, fields_requested,"
                    " fields_released, fields_withheld, consent_ids, details, actor_kind"
                    " FROM access_events WHERE request_id = :r ORDER BY id"
                ),
                {"r": request_id},
            )
        ).all()

    assert [tuple(row) for row in rows] == [
        (
            r.operation,
            r.member_id,
            r.purpose[:64] if r.purpose else None,
            r.legal_basis.value if r.legal_basis else None,
            r.outcome.value,
            list(r.fields_requested),
            list(r.fields_released),
            dict(r.fields_withheld),
            list(r.consent_ids),
            dict(r.details),
            "SYSTEM",
        )
        for r in records
    ]


def _rfc6962_root(leaves: list[bytes]) -> bytes:
    """RFC 6962, section 2.1, as written: split at the largest power of two below n."""
    if len(leaves) == 1:
        return leaves[0]
    split = 1 << ((len(leaves) - 1).bit_length() - 1)
    left, right = _rfc6962_root(leaves[:split]), _rfc6962_root(leaves[split:])
    return hashlib.sha256(b"\x01" + left + right).digest()


@pytest.mark.parametrize("count", [*range(1, 40), 63, 64, 65, 1000, 10_000])
def test_the_merkle_root_is_rfc_6962s(count: int) -> None:
    from gateway.audit.sealing import EMPTY_ROOT, merkle_root

    leaves = [hashlib.sha256(b"\x00" + str(n).encode()).digest() for n in range(count)]

    assert merkle_root(leaves) == _rfc6962_root(leaves)
    assert merkle_root([]) == EMPTY_ROOT
