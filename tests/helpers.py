"""Helpers several test files share: rows written as the tests' world needs them, and reads.

Fixtures live in conftest.py; functions that test files import live here, not in a test file.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.audit.trail import AccessRecord, AuditTrail
from gateway.audit.verify import VerifyReport, verify_log
from gateway.domain import AccessOutcome, LegalBasis, SystemPrincipal
from gateway.signing import Signer
from gateway.store.db import raw_of
from tests.conftest import TEST_SIGNER, Api

NOW = dt.datetime.now(dt.UTC)
# The wording of the personalised-offers consent, as an app shows it.
WORDING = "Ja, jeg vil ha personlige tilbud basert på opplysninger fra eksterne kilder."

ONE = """
query($id: ID!, $purpose: String!) {
  member(id: $id, purpose: $purpose) {
    id firstName email points incomeBand householdSize lifestyleSegment interests
  }
}
"""


async def grant(
    engine: AsyncEngine,
    member_id: uuid.UUID,
    purpose: str,
    *,
    method: str = "EXPLICIT",
    notice: str = "2026-01",
    granted_at: dt.datetime | None = None,
    expires_at: dt.datetime | None = None,
) -> uuid.UUID:
    at = granted_at or NOW - dt.timedelta(days=1)
    async with engine.begin() as connection:
        grant_id = await connection.scalar(
            text(
                "INSERT INTO consent_events (member_id, purpose_key, kind, method, "
                "notice_version, channel, actor_kind, occurred_at, expires_at) VALUES "
                "(:m, :p, 'GRANTED', :method, :notice, 'test', 'MEMBER', :at, :exp) RETURNING id"
            ),
            {
                "m": member_id,
                "p": purpose,
                "method": method,
                "notice": notice,
                "at": at,
                "exp": expires_at or at + dt.timedelta(days=365),
            },
        )
    assert isinstance(grant_id, uuid.UUID)
    return grant_id


async def withdraw(engine: AsyncEngine, member_id: uuid.UUID, purpose: str) -> None:
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO consent_events (member_id, purpose_key, kind, channel, actor_kind) "
                "VALUES (:m, :p, 'WITHDRAWN', 'test', 'MEMBER')"
            ),
            {"m": member_id, "p": purpose},
        )


async def enrich(engine: AsyncEngine, member_id: uuid.UUID, grant_id: uuid.UUID) -> None:
    values = {
        "income_band": ("enriched.demographics", "500-750k"),
        "household_size": ("enriched.demographics", 3),
        "lifestyle_segment": ("enriched.lifestyle", "active_outdoor"),
        "interests": ("enriched.lifestyle", ["outdoor", "travel"]),
    }
    async with engine.begin() as connection:
        for field, (category, value) in values.items():
            await connection.execute(
                text(
                    "INSERT INTO enrichment_records (member_id, field, category, value, source, "
                    "obtained_at, purpose_key, consent_event_id) VALUES "
                    "(:m, :f, :c, CAST(:v AS jsonb), 'Broker', now(), 'personalized_offers', :g)"
                ),
                {"m": member_id, "f": field, "c": category, "v": json.dumps(value), "g": grant_id},
            )


async def access_events(engine: AsyncEngine) -> list[dict[str, Any]]:
    async with engine.connect() as connection:
        rows = await connection.execute(text("SELECT * FROM access_events ORDER BY id"))
        return [dict(row._mapping) for row in rows]


async def read(api: Api, key: str, member_id: uuid.UUID | str, purpose: str) -> dict[str, Any]:
    response = await api.graphql(ONE, {"id": str(member_id), "purpose": purpose}, token=key)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def write_events(
    engine: AsyncEngine, count: int, *, request: str = "req", member_id: uuid.UUID | None = None
) -> None:
    """`count` access events, each about `member_id` (or each about a member of its own)."""
    trail = AuditTrail(
        request_id=request, principal=SystemPrincipal("test"), now=dt.datetime.now(dt.UTC)
    )
    for _ in range(count):
        trail.record(
            AccessRecord(
                operation="member",
                member_id=member_id or uuid.uuid4(),
                purpose="membership_service",
                legal_basis=LegalBasis.CONTRACT,
                outcome=AccessOutcome.RELEASED,
                fields_requested=("email",),
                fields_released=("email",),
            )
        )
    async with engine.begin() as connection:
        await trail.flush(await raw_of(connection))


def plan_nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    """A node of an EXPLAIN (FORMAT JSON) plan and every node below it, top first."""
    return [node, *(found for child in node.get("Plans", ()) for found in plan_nodes(child))]


def explained(result: Any) -> dict[str, Any]:
    """The top node of an EXPLAIN (FORMAT JSON) result, as text (a plain asyncpg connection) or
    decoded (one SQLAlchemy's driver has set up)."""
    return (json.loads(result) if isinstance(result, str) else result)[0]["Plan"]  # type: ignore[no-any-return]


async def verify(engine: AsyncEngine, signer: Signer = TEST_SIGNER) -> VerifyReport:
    async with engine.connect() as connection:
        return await verify_log(connection, signer.verifier)


# Ways the audit write can fail: its INSERT, or (the INSERT succeeding) the COMMIT.
AUDIT_FAILURES = {
    "insert": "CREATE TRIGGER refuse_audit BEFORE INSERT ON access_events "
    "FOR EACH STATEMENT EXECUTE FUNCTION refuse_audit()",
    "commit": "CREATE CONSTRAINT TRIGGER refuse_audit AFTER INSERT ON access_events "
    "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse_audit()",
}


@asynccontextmanager
async def audit_writes_fail(engine: AsyncEngine, failing: str = "insert") -> AsyncIterator[None]:
    """While inside, writing access events fails as `failing` says."""
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "CREATE FUNCTION refuse_audit() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'audit store refuses'; END $$"
            )
        )
        await connection.execute(text(AUDIT_FAILURES[failing]))
    try:
        yield
    finally:
        async with engine.begin() as connection:
            await connection.execute(text("DROP TRIGGER refuse_audit ON access_events"))
            await connection.execute(text("DROP FUNCTION refuse_audit()"))


async def leaves_of(engine: AsyncEngine) -> list[bytes]:
    """The log's leaf hashes (each sealed event's hash), in position order."""
    async with engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT event_hash FROM audit_seals ORDER BY position")
        )
        return [bytes(r.event_hash) for r in rows]
