"""Two callers at one member at once, in the orders that lost rights before the lock order.

Each test holds one side's transaction open at the point that matters (a closing or an erasure
that has taken its locks, a grant that has written its event), sends the other side through the
gateway, waits until PostgreSQL shows it waiting for a lock, and then commits: the interleaving
is forced, not hoped for. tests/test_histories.py runs random mixes of everything.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.access.purposes import fetch_purposes
from gateway.domain import ActorKind, Capability, ConsentMethod, ProfileField
from gateway.records.cleansing import lift_objection
from gateway.records.consent_changes import GrantRequest, grant_consent
from gateway.records.consents import Actor
from gateway.records.lifecycle import close_membership, erase_member, update_profile
from gateway.store.db import Raw, raw_of
from tests.conftest import Api, add_client, add_member, make_settings, member_token, serving
from tests.helpers import WORDING, grant

GRANT = """
mutation($member: ID, $purpose: String!, $method: ConsentMethod!, $evidence: String!) {
  grantConsent(memberId: $member, purpose: $purpose, method: $method, noticeVersion: "2026-01",
               channel: "web", evidence: $evidence) { receiptId }
}
"""
ENRICH = """
mutation($member: ID!) {
  recordEnrichment(memberId: $member, purpose: "personalized_offers", source: "Broker",
                   values: { incomeBand: "500-750k" }) { written }
}
"""
CLEANSE = """
mutation($member: ID!) {
  recordCleansing(memberId: $member, field: "city", newValue: "Bergen", source: "Register",
                  purpose: "data_quality") { changed }
}
"""
ERASE = "mutation($email: String!) { eraseMe(confirmEmail: $email) { receiptId } }"
OBJECT = 'mutation { objectToProcessing(purpose: "data_quality") { objectedAt } }'
LIFT = 'mutation { withdrawObjection(purpose: "data_quality") { lifted } }'
UPDATE_EMAIL = """
mutation($email: String!) { updateMyProfile(changes: { email: $email }) { changed } }
"""
EMAIL = "ola.races@example.no"


@pytest.fixture
async def api(db: AsyncEngine, gateway_url: str) -> AsyncIterator[Api]:
    """The gateway with a connection for each request these tests hold waiting at once (the
    suite's default pools have two, so a third request would wait for the pool, not the lock)."""
    async with serving(make_settings(gateway_url, db_pool_size=8), gateway_url) as client:
        yield client


@pytest.fixture
async def app_key(db: AsyncEngine) -> str:
    client = await add_client(
        db,
        name="campaign-app",
        purposes=("personalized_offers", "customer_insight", "data_quality"),
        capabilities=(Capability.CAPTURE_CONSENT, Capability.ENRICH, Capability.CLEANSE),
    )
    return client.key


def grant_vars(member_id: uuid.UUID | None, purpose: str) -> dict[str, Any]:
    method = "EXPLICIT" if purpose == "personalized_offers" else "CONDITIONAL"
    return {
        "member": str(member_id) if member_id else None,
        "purpose": purpose,
        "method": method,
        "evidence": WORDING,
    }


@asynccontextmanager
async def held(engine: AsyncEngine, work: Callable[[Raw], Awaitable[Any]]) -> AsyncIterator[Any]:
    """`work` run in a transaction that stays open (its locks held) until the block ends, and
    then commits."""
    async with engine.connect() as connection:
        transaction = await connection.begin()
        raw = await raw_of(connection)
        yield await work(raw)
        await transaction.commit()


async def policy(raw: Raw) -> dict[str, Any]:
    return {p.key: p for p in await fetch_purposes(raw)}


def erasing(member_id: uuid.UUID) -> Callable[[Raw], Awaitable[Any]]:
    """The member's erasure, as `eraseMe` runs it, for `held`."""

    async def erase(raw: Raw) -> Any:
        return await erase_member(
            raw,
            member_id=member_id,
            requested_by=ActorKind.MEMBER,
            purposes=await policy(raw),
            evidence_period=dt.timedelta(days=30),
            now=dt.datetime.now(dt.UTC),
        )

    return erase


async def waiting_for_locks(engine: AsyncEngine, count: int) -> None:
    """Until `count` of the gateway's backends wait for a lock (bounded: 20 s in steps)."""
    for _ in range(400):
        async with engine.connect() as connection:
            waiting = await connection.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE application_name = 'tillit' AND wait_event_type = 'Lock' "
                    "AND pid <> pg_backend_pid()"
                )
            )
        if waiting is not None and waiting >= count:
            return
        await asyncio.sleep(0.05)
    async with engine.connect() as connection:
        seen = await connection.execute(
            text(
                "SELECT application_name, state, wait_event_type, wait_event "
                "FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND backend_type = "
                "'client backend'"
            )
        )
        rows = seen.all()
    raise AssertionError(f"{count} requests never waited for a lock; the backends: {rows}")


async def consents_in_force(engine: AsyncEngine, member_id: uuid.UUID) -> list[str]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text(
                "SELECT purpose_key FROM consent_states WHERE member_id = :m "
                "AND kind = 'GRANTED' AND expires_at > now()"
            ),
            {"m": member_id},
        )
        return sorted(row[0] for row in rows)


async def count(engine: AsyncEngine, sql: str, value: object) -> int:
    async with engine.connect() as connection:
        return int(await connection.scalar(text(sql), {"m": value}) or 0)


def code_of(response: Any) -> str:
    body = response.json()
    assert "errors" in body, body
    return str(body["errors"][0]["extensions"]["code"])


async def test_grants_that_wait_for_a_closing_are_refused_and_nothing_stays_in_force(
    api: Api, db: AsyncEngine, app_key: str
) -> None:
    member_id = await add_member(db)

    async def close(raw: Raw) -> Any:
        purposes = await policy(raw)
        return await close_membership(
            raw,
            member_id=member_id,
            purposes=purposes,
            actor=Actor(ActorKind.MEMBER),
            channel="leave",
            now=dt.datetime.now(dt.UTC),
        )

    async with held(db, close):
        by_member = asyncio.create_task(
            api.graphql(
                GRANT,
                grant_vars(None, "personalized_offers"),
                token=member_token(member_id),
            )
        )
        by_app = asyncio.create_task(
            api.graphql(GRANT, grant_vars(member_id, "customer_insight"), token=app_key)
        )
        await waiting_for_locks(db, 2)
    answers = [await by_member, await by_app]

    assert [code_of(a) for a in answers] == ["MEMBERSHIP_INACTIVE"] * 2
    assert await consents_in_force(db, member_id) == []
    enrich = await api.graphql(ENRICH, {"member": str(member_id)}, token=app_key)
    assert code_of(enrich) in ("MEMBERSHIP_INACTIVE", "CONSENT_REQUIRED", "CONSENT_WITHDRAWN")
    enriched = "SELECT count(*) FROM enrichment_records WHERE member_id = :m"
    assert await count(db, enriched, member_id) == 0


async def test_writes_that_wait_for_an_erasure_are_not_found_and_the_erasure_stands(
    api: Api, db: AsyncEngine, app_key: str
) -> None:
    member_id = await add_member(db, email=EMAIL)
    await grant(db, member_id, "personalized_offers")

    async with held(db, erasing(member_id)):
        racing = [
            asyncio.create_task(
                api.graphql(GRANT, grant_vars(member_id, "customer_insight"), token=app_key)
            ),
            asyncio.create_task(api.graphql(ENRICH, {"member": str(member_id)}, token=app_key)),
            asyncio.create_task(api.graphql(CLEANSE, {"member": str(member_id)}, token=app_key)),
            asyncio.create_task(api.graphql(OBJECT, token=member_token(member_id))),
        ]
        await waiting_for_locks(db, len(racing))
    answers = [await task for task in racing]

    assert [a.status_code for a in answers] == [200] * len(answers)
    assert [code_of(a) for a in answers] == ["NOT_FOUND"] * len(answers)
    assert await count(db, "SELECT count(*) FROM members WHERE id = :m", member_id) == 0
    assert await consents_in_force(db, member_id) == []
    for table in ("enrichment_records", "cleansing_records", "objections"):
        sql = f"SELECT count(*) FROM {table} WHERE member_id = :m"
        assert await count(db, sql, member_id) == 0, table


async def test_an_erasure_that_waits_for_a_grant_succeeds_and_withdraws_it(
    api: Api, db: AsyncEngine, app_key: str
) -> None:
    member_id = await add_member(db, email=EMAIL)

    async def grant_by_member(raw: Raw) -> Any:
        purposes = await policy(raw)
        return await grant_consent(
            raw,
            member_id=member_id,
            purpose=purposes["customer_insight"],
            actor=Actor(ActorKind.MEMBER),
            request=GrantRequest(ConsentMethod.CONDITIONAL, "2026-01", "web", evidence=WORDING),
        )

    async with held(db, grant_by_member):
        erasure = asyncio.create_task(
            api.graphql(ERASE, {"email": EMAIL}, token=member_token(member_id))
        )
        await waiting_for_locks(db, 1)
    answer = await erasure

    assert answer.status_code == 200
    assert answer.json()["data"]["eraseMe"]["receiptId"]
    assert await count(db, "SELECT count(*) FROM members WHERE id = :m", member_id) == 0
    assert await consents_in_force(db, member_id) == []


async def test_objecting_and_lifting_with_an_erased_members_token_are_not_found(
    api: Api, db: AsyncEngine
) -> None:
    member_id = await add_member(db, email=EMAIL)
    token = member_token(member_id)
    erased = await api.graphql(ERASE, {"email": EMAIL}, token=token)
    assert erased.json()["data"]["eraseMe"]["receiptId"]

    objected = await api.graphql(OBJECT, token=token)
    lifted = await api.graphql(LIFT, token=token)

    assert (objected.status_code, code_of(objected)) == (200, "NOT_FOUND")
    assert objected.json()["data"]["objectToProcessing"] is None
    assert (lifted.status_code, code_of(lifted)) == (200, "NOT_FOUND")
    assert lifted.json()["data"]["withdrawObjection"] is None


async def test_an_email_another_transaction_is_taking_is_already_member(
    api: Api, db: AsyncEngine
) -> None:
    first = await add_member(db)
    second = await add_member(db)
    wanted = "taken.meanwhile@example.no"

    async def take(raw: Raw) -> None:
        await raw.execute("UPDATE members SET email = $2 WHERE id = $1", first, wanted)

    async with held(db, take):
        racing = asyncio.create_task(
            api.graphql(UPDATE_EMAIL, {"email": wanted}, token=member_token(second))
        )
        await waiting_for_locks(db, 1)
    answer = await racing

    assert (answer.status_code, code_of(answer)) == (200, "ALREADY_MEMBER")
    taken = "SELECT count(*) FROM members WHERE lower(email) = lower(:m)"
    assert await count(db, taken, wanted) == 1


async def test_an_erasure_confirms_the_address_in_force_once_it_holds_the_member(
    api: Api, db: AsyncEngine
) -> None:
    """The address changes while the erasure waits: the old one no longer confirms it."""
    member_id = await add_member(db, email=EMAIL)

    async def change_address(raw: Raw) -> Any:
        return await update_profile(
            raw,
            member_id=member_id,
            changes={ProfileField.EMAIL: "ola.moved@example.no"},
            actor=Actor(ActorKind.MEMBER),
            purpose=None,
            now=dt.datetime.now(dt.UTC),
        )

    async with held(db, change_address):
        erasure = asyncio.create_task(
            api.graphql(ERASE, {"email": EMAIL}, token=member_token(member_id))
        )
        await waiting_for_locks(db, 1)
    answer = await erasure

    assert code_of(answer) == "CONFIRMATION_REQUIRED"
    assert await count(db, "SELECT count(*) FROM members WHERE id = :m", member_id) == 1


async def test_my_export_waiting_for_an_erasure_finds_no_member(api: Api, db: AsyncEngine) -> None:
    member_id = await add_member(db, email=EMAIL)

    async with held(db, erasing(member_id)):
        export = asyncio.create_task(
            api.http.get(
                "/me/export", headers={"Authorization": f"Bearer {member_token(member_id)}"}
            )
        )
        await waiting_for_locks(db, 1)
    answer = await export

    assert answer.status_code == 404
    assert answer.json()["errors"][0]["extensions"]["code"] == "NOT_FOUND"


async def test_a_cleansing_that_waited_for_a_lifting_is_dated_after_it(
    api: Api, db: AsyncEngine, app_key: str
) -> None:
    member_id = await add_member(db)
    objected = await api.graphql(OBJECT, token=member_token(member_id))
    assert objected.json()["data"]["objectToProcessing"]["objectedAt"]

    async def lift(raw: Raw) -> Any:
        purposes = await policy(raw)
        return await lift_objection(
            raw, member_id=member_id, purpose=purposes["data_quality"], now=dt.datetime.now(dt.UTC)
        )

    cleansing: asyncio.Task[Any] | None = None
    async with held(db, lift):
        cleansing = asyncio.create_task(
            api.graphql(CLEANSE, {"member": str(member_id)}, token=app_key)
        )
        await waiting_for_locks(db, 1)
    answer = await cleansing

    assert answer.json()["data"]["recordCleansing"]["changed"] is True
    in_order = (
        "SELECT (SELECT recorded_at FROM cleansing_records WHERE member_id = :m) >= "
        "(SELECT lifted_at FROM objections WHERE member_id = :m)"
    )
    async with db.connect() as connection:
        assert await connection.scalar(text(in_order), {"m": member_id}) is True
