"""The set-based read (gateway.records.set_reads): each event it writes carries the leaf hash the
sealer would compute from the row as stored, and the sealed log verifies. (Its answers and events
against graphql-core's path: tests/gateway/web/test_fastpath.py.)"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.audit.sealer import seal_until_current
from gateway.audit.sealing import EVENT_COLUMNS, event_hash
from tests.conftest import TEST_SIGNER, Api, add_client, add_member
from tests.helpers import enrich, grant, verify, withdraw

MANY = """
query($ids: [ID!]!, $purpose: String!) {
  members(ids: $ids, purpose: $purpose) {
    id __typename tier points memberSince incomeBand householdSize lifestyleSegment interests
    firstName email
  }
}
"""


async def rows_of(db: AsyncEngine, request_id: str) -> list[Any]:
    async with db.connect() as connection:
        result = await connection.execute(
            text(
                f"SELECT {', '.join(EVENT_COLUMNS)}, leaf_hash FROM access_events "
                "WHERE request_id = :r ORDER BY id"
            ),
            {"r": request_id},
        )
        return list(result.all())


async def test_each_event_carries_its_own_leaf_hash_and_the_log_verifies(
    api: Api, db: AsyncEngine
) -> None:
    key = (await add_client(db, purposes=("personalized_offers", "membership_service"))).key
    consenting = await add_member(db, first_name="Ada")
    await enrich(db, consenting, await grant(db, consenting, "personalized_offers"))
    withdrawn = await add_member(db)
    await grant(db, withdrawn, "personalized_offers")
    await withdraw(db, withdrawn, "personalized_offers")
    never = await add_member(db)
    unknown = uuid.uuid4()
    ids = [str(m) for m in (consenting, withdrawn, never, unknown)]

    for purpose in ("personalized_offers", "membership_service"):
        request_id = f"set-{purpose}"
        response = await api.graphql(
            MANY, {"ids": ids, "purpose": purpose}, token=key, headers={"X-Request-ID": request_id}
        )
        assert response.status_code == 200
        rows = await rows_of(db, request_id)
        assert [row.member_id for row in rows] == [consenting, withdrawn, never, unknown]
        for row in rows:
            assert row.leaf_hash is not None
            assert row.leaf_hash == event_hash(row._mapping)

    offers = (
        await api.graphql(MANY, {"ids": ids[:1], "purpose": "personalized_offers"}, token=key)
    ).json()
    assert offers["data"]["members"][0]["incomeBand"] is not None
    assert offers["data"]["members"][0]["__typename"] == "Member"
    await seal_until_current(db, TEST_SIGNER)
    assert (await verify(db)).ok
