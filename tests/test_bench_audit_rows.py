"""`make bench-audit-rows` compares what three shapes of the access log cost to write; a shape that
wrote less than the others would look cheaper, so each must hold the same member accesses."""

from __future__ import annotations

import uuid

from bench import audit_rows

# Each shape's member accesses, as (member, time, operation, purpose, outcome), and what it holds
# a member's page from.
ACCESSES = {
    "today": "SELECT member_id, occurred_at, operation, purpose, outcome FROM access_events",
    "thin": "SELECT e.member_id, e.occurred_at, c.operation, c.purpose, c.outcome "
    "FROM rows_thin e JOIN rows_classes c ON c.id = e.class_id AND c.occurred_at = e.occurred_at",
    "per class": "SELECT unnest(member_ids), occurred_at, operation, purpose, outcome "
    "FROM rows_per_class",
}


async def test_every_shape_holds_the_same_member_accesses(empty_database_url: str) -> None:
    connection = await audit_rows.prepare(empty_database_url)
    try:
        population = [uuid.uuid4() for _ in range(300)]
        reads = audit_rows.reads(10, population)  # two statements: eight reads, then two
        measured = audit_rows.shapes(connection)
        for shape in measured:
            await audit_rows.write_reads(shape, reads)
        held = {
            shape.name: sorted(tuple(row) for row in await connection.fetch(ACCESSES[shape.name]))
            for shape in measured
        }
        expected = sorted(
            (
                member,
                read.occurred_at,
                "members",
                "personalized_offers",
                "RELEASED" if consent else "PARTIAL",
            )
            for read in reads
            for member, consent in read.members
        )
        assert len(expected) == 10 * audit_rows.MEMBERS_A_READ
        assert held == dict.fromkeys(held, expected)
        # A member's page finds that member's accesses, and only theirs, in every shape.
        member = reads[0].members[0][0]
        pages = {
            shape.name: [
                (row["occurred_at"], row["outcome"])
                for row in await connection.fetch(audit_rows.LOOKUP[shape.name], member)
            ]
            for shape in measured
        }
        mine = sorted(
            ((a[1], a[4]) for a in expected if a[0] == member), key=lambda a: a[0], reverse=True
        )
        assert pages == dict.fromkeys(pages, mine)
    finally:
        await connection.close()
