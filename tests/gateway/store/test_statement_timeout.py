"""A statement that outlives the statement timeout ends its request cleanly: 503, nothing kept,
and the next request is served on the same pool."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.domain import Capability
from tests.conftest import add_client, add_member, make_settings, row_counts, serving
from tests.helpers import grant

READ = 'query($id: ID!) { member(id: $id, purpose: "personalized_offers") { id incomeBand } }'
GRANT = (
    'mutation($m: ID) { grantConsent(memberId: $m, purpose: "customer_insight", '
    'method: EXPLICIT, noticeVersion: "2026-01", channel: "app", evidence: "Ja") { receiptId } }'
)


async def test_a_slow_statement_ends_the_request_cleanly(db: AsyncEngine, gateway_url: str) -> None:
    client = await add_client(
        db,
        purposes=("personalized_offers", "customer_insight"),
        capabilities=(Capability.CAPTURE_CONSENT,),
    )
    member_id = await add_member(db)
    await grant(db, member_id, "personalized_offers")
    settings = make_settings(gateway_url, db_statement_timeout_ms=300)
    async with db.begin() as connection:
        await connection.execute(
            text(
                "CREATE FUNCTION slow_audit() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN PERFORM pg_sleep(2); RETURN NEW; END $$"
            )
        )
        await connection.execute(
            text(
                "CREATE TRIGGER slow_audit BEFORE INSERT ON access_events "
                "FOR EACH ROW EXECUTE FUNCTION slow_audit()"
            )
        )
    try:
        before = await row_counts(db)
        async with serving(settings, gateway_url) as api:
            read = await api.graphql(READ, {"id": str(member_id)}, token=client.key)
            write = await api.graphql(GRANT, {"m": str(member_id)}, token=client.key)
            after = await row_counts(db)
            async with db.begin() as connection:
                await connection.execute(text("DROP TRIGGER slow_audit ON access_events"))
            again = await api.graphql(READ, {"id": str(member_id)}, token=client.key)
    finally:
        async with db.begin() as connection:
            await connection.execute(text("DROP TRIGGER IF EXISTS slow_audit ON access_events"))
            await connection.execute(text("DROP FUNCTION IF EXISTS slow_audit()"))

    for refused in (read, write):
        assert refused.status_code == 503
        assert refused.json()["errors"][0]["extensions"]["code"] == "AUDIT_UNAVAILABLE"
        assert "data" not in refused.json()
    assert after == before
    assert again.status_code == 200
    assert again.json()["data"]["member"]["id"] == str(member_id)
