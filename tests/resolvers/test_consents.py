"""Granting and withdrawing consent: receipts, refusals, idempotency, purge, concurrency."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import itertools
import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.app import create_app
from gateway.domain import Capability, Role
from tests.conftest import Api, add_client, add_member, make_settings, member_token, row_counts
from tests.helpers import WORDING, access_events, enrich, grant, read

GRANT = """
mutation($member: ID, $purpose: String!, $method: ConsentMethod!, $notice: String!,
         $evidence: String, $key: String) {
  grantConsent(memberId: $member, purpose: $purpose, method: $method, noticeVersion: $notice,
               channel: "web-signup", evidence: $evidence, idempotencyKey: $key) {
    receiptId version jurisdiction controller memberId purpose legalBasis method noticeVersion
    grantedAt expiresAt channel collectedBy evidenceSha256 replayed dataCategories
    purposeTitle { nb en } purposeDescription { nb en }
  }
}
"""
WITHDRAW = """
mutation($member: ID, $purpose: String!, $key: String) {
  withdrawConsent(memberId: $member, purpose: $purpose, idempotencyKey: $key) {
    withdrawn message memberId purpose eventId withdrawnAt purgedFields replayed
  }
}
"""


def grant_vars(member_id: uuid.UUID | None, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "member": str(member_id) if member_id else None,
        "purpose": "personalized_offers",
        "method": "EXPLICIT",
        "notice": "2026-01",
        "evidence": WORDING,
        "key": None,
    }
    values.update(overrides)
    return values


@pytest.fixture
async def capture_key(db: AsyncEngine) -> str:
    client = await add_client(
        db,
        name="signup-app",
        purposes=("membership_service", "personalized_offers"),
        capabilities=(Capability.CAPTURE_CONSENT,),
    )
    return client.key


async def consent_events(db: AsyncEngine, member_id: uuid.UUID) -> list[dict[str, Any]]:
    async with db.connect() as connection:
        rows = await connection.execute(
            text("SELECT * FROM consent_events WHERE member_id = :m ORDER BY seq"),
            {"m": member_id},
        )
        return [dict(row._mapping) for row in rows]


async def test_member_grants_consent_and_gets_a_receipt(api: Api, db: AsyncEngine) -> None:
    member_id = await add_member(db)

    response = await api.graphql(GRANT, grant_vars(None), token=member_token(member_id))

    body = response.json()
    assert "errors" not in body, body
    receipt = body["data"]["grantConsent"]
    assert receipt["memberId"] == str(member_id)
    assert receipt["purpose"] == "personalized_offers"
    assert receipt["legalBasis"] == "CONSENT"
    assert receipt["method"] == "EXPLICIT"
    assert receipt["noticeVersion"] == "2026-01"
    assert receipt["collectedBy"] == "member"
    assert receipt["channel"] == "web-signup"
    assert receipt["controller"] == "Kundeklubben"
    assert receipt["jurisdiction"] == "NO"
    assert receipt["purposeTitle"]["nb"] == "Personlige tilbud"
    assert "eksterne kilder" in receipt["purposeDescription"]["nb"]
    assert receipt["dataCategories"] == [
        "MEMBERSHIP",
        "ENRICHED_DEMOGRAPHICS",
        "ENRICHED_LIFESTYLE",
    ]
    assert receipt["evidenceSha256"] == hashlib.sha256(WORDING.encode()).hexdigest()
    granted = dt.datetime.fromisoformat(receipt["grantedAt"])
    expires = dt.datetime.fromisoformat(receipt["expiresAt"])
    assert expires - granted == dt.timedelta(days=365)
    assert receipt["replayed"] is False
    [event] = await consent_events(db, member_id)
    assert event["id"] == uuid.UUID(receipt["receiptId"])
    assert event["kind"] == "GRANTED"
    assert event["actor_kind"] == "MEMBER"
    assert event["evidence"] == WORDING
    [audited] = await access_events(db)
    assert audited["operation"] == "grantConsent"
    assert audited["outcome"] == "WRITTEN"
    assert audited["actor_kind"] == "MEMBER"
    assert audited["consent_ids"] == [event["id"]]


async def test_app_captures_consent_for_a_member_with_the_channel(
    api: Api, db: AsyncEngine, capture_key: str
) -> None:
    member_id = await add_member(db)

    response = await api.graphql(GRANT, grant_vars(member_id), token=capture_key)

    receipt = response.json()["data"]["grantConsent"]
    assert receipt["collectedBy"] == "client:signup-app"
    [event] = await consent_events(db, member_id)
    assert event["actor_kind"] == "CLIENT"
    assert event["captured_by_client_id"] is not None
    assert event["channel"] == "web-signup"


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"method": "CONDITIONAL"}, "CONSENT_METHOD_INSUFFICIENT"),
        ({"notice": "2025-01"}, "NOTICE_OUTDATED"),
        ({"notice": ""}, "BAD_USER_INPUT"),
        ({"purpose": "telemarketing"}, "UNKNOWN_PURPOSE"),
        ({"purpose": "membership_service"}, "BAD_USER_INPUT"),
        ({"evidence": None}, "BAD_USER_INPUT"),
        ({"evidence": "x" * 20_001}, "BAD_USER_INPUT"),
        ({"member": str(uuid.uuid4())}, "NOT_FOUND"),
        ({"member": "not-a-uuid"}, "BAD_USER_INPUT"),
    ],
    ids=[
        "conditional-for-explicit",
        "old-notice",
        "no-notice",
        "unknown-purpose",
        "contract-purpose",
        "no-evidence",
        "oversized-evidence",
        "unknown-member",
        "bad-id",
    ],
)
async def test_bad_grants_are_refused_and_change_nothing(
    api: Api, db: AsyncEngine, capture_key: str, overrides: dict[str, Any], code: str
) -> None:
    member_id = await add_member(db)
    before = await row_counts(db)

    response = await api.graphql(GRANT, grant_vars(member_id, **overrides), token=capture_key)

    body = response.json()
    assert body["data"] == {"grantConsent": None}
    assert body["errors"][0]["extensions"]["code"] == code
    after = await row_counts(db)
    audited = after.pop("access_events") - before.pop("access_events")
    assert after == before
    assert audited <= 1  # refusals that targeted a valid member id are audited


async def test_conditional_consent_is_accepted_where_the_purpose_allows_it(
    api: Api, db: AsyncEngine
) -> None:
    member_id = await add_member(db)

    response = await api.graphql(
        GRANT,
        grant_vars(None, purpose="customer_insight", method="CONDITIONAL"),
        token=member_token(member_id),
    )

    assert response.json()["data"]["grantConsent"]["method"] == "CONDITIONAL"


@pytest.mark.parametrize("who", ["other-member", "client-without-capability", "auditor"])
async def test_acting_for_someone_else_is_forbidden_and_audited(
    api: Api, db: AsyncEngine, who: str
) -> None:
    member_id = await add_member(db)
    if who == "other-member":
        token = member_token(await add_member(db))
    elif who == "auditor":
        token = (await add_client(db, name="dpo", role=Role.AUDITOR, purposes=())).key
    else:
        token = (await add_client(db, name="shop", purposes=("personalized_offers",))).key

    response = await api.graphql(GRANT, grant_vars(member_id), token=token)

    assert response.json()["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    assert await consent_events(db, member_id) == []
    [audited] = await access_events(db)
    assert audited["member_id"] == member_id
    assert audited["outcome"] == "DENIED"


async def test_same_idempotency_key_gives_the_same_receipt_and_one_event(
    api: Api, db: AsyncEngine
) -> None:
    member_id = await add_member(db)
    token = member_token(member_id)

    first = await api.graphql(GRANT, grant_vars(None, key="k-1"), token=token)
    second = await api.graphql(GRANT, grant_vars(None, key="k-1"), token=token)

    one, two = first.json()["data"]["grantConsent"], second.json()["data"]["grantConsent"]
    assert one["receiptId"] == two["receiptId"]
    assert one["grantedAt"] == two["grantedAt"]
    assert two["replayed"] is True
    assert len(await consent_events(db, member_id)) == 1


@pytest.mark.parametrize(
    "changed",
    [{"evidence": "Another wording."}, {"method": "CONDITIONAL", "purpose": "customer_insight"}],
    ids=["other-wording", "other-method"],
)
async def test_an_idempotency_key_sent_again_with_another_payload_is_refused(
    api: Api, db: AsyncEngine, changed: dict[str, Any]
) -> None:
    member_id = await add_member(db)
    token = member_token(member_id)
    purpose = changed.get("purpose", "personalized_offers")
    first = await api.graphql(
        GRANT, grant_vars(None, key="k-1", purpose=purpose, method="EXPLICIT"), token=token
    )
    assert first.json()["data"]["grantConsent"]["replayed"] is False
    before = await consent_events(db, member_id)

    again = await api.graphql(GRANT, grant_vars(None, key="k-1", **changed), token=token)

    body = again.json()
    assert body["data"] == {"grantConsent": None}
    assert body["errors"][0]["extensions"]["code"] == "IDEMPOTENCY_KEY_REUSED"
    assert await consent_events(db, member_id) == before


async def test_an_idempotency_key_of_a_grant_cannot_replay_as_a_withdrawal(
    api: Api, db: AsyncEngine
) -> None:
    member_id = await add_member(db)
    token = member_token(member_id)
    await api.graphql(GRANT, grant_vars(None, key="k-1"), token=token)

    again = await api.graphql(
        WITHDRAW, {"purpose": "personalized_offers", "key": "k-1"}, token=token
    )

    assert again.json()["errors"][0]["extensions"]["code"] == "IDEMPOTENCY_KEY_REUSED"
    assert len(await consent_events(db, member_id)) == 1


async def test_withdrawal_is_immediate_and_purges_values_no_consent_covers(
    api: Api, db: AsyncEngine
) -> None:
    member_id = await add_member(db)
    token = member_token(member_id)
    offers = await grant(db, member_id, "personalized_offers")
    await enrich(db, member_id, offers)
    await grant(db, member_id, "customer_insight", method="CONDITIONAL")
    reader = (await add_client(db, name="reader", purposes=("personalized_offers",))).key

    response = await api.graphql(WITHDRAW, {"purpose": "personalized_offers"}, token=token)

    result = response.json()["data"]["withdrawConsent"]
    assert result["withdrawn"] is True
    # lifestyle values had only this consent; demographics are still covered by customer_insight
    assert result["purgedFields"] == ["interests", "lifestyle_segment"]
    async with db.connect() as connection:
        left = dict(
            (
                await connection.execute(
                    text("SELECT field, purpose_key FROM enrichment_records WHERE member_id = :m"),
                    {"m": member_id},
                )
            ).all()
        )
    assert left == {"income_band": "customer_insight", "household_size": "customer_insight"}
    after = await read(api, reader, member_id, "personalized_offers")
    assert after["data"]["member"]["lifestyleSegment"] is None
    codes = {e["path"][-1]: e["extensions"]["code"] for e in after["errors"]}
    assert codes["lifestyleSegment"] == "CONSENT_WITHDRAWN"
    audited = [e for e in await access_events(db) if e["operation"] == "withdrawConsent"]
    assert audited[0]["details"]["purged"] == ["interests", "lifestyle_segment"]


async def test_withdrawing_what_is_not_granted_says_so_and_writes_no_event(
    api: Api, db: AsyncEngine
) -> None:
    member_id = await add_member(db)

    response = await api.graphql(
        WITHDRAW, {"purpose": "personalized_offers"}, token=member_token(member_id)
    )

    result = response.json()["data"]["withdrawConsent"]
    assert result["withdrawn"] is False
    assert "nothing changed" in result["message"]
    assert await consent_events(db, member_id) == []
    [audited] = await access_events(db)
    assert audited["outcome"] == "UNCHANGED"


async def test_app_withdraws_for_a_member_as_easily_as_it_granted(
    api: Api, db: AsyncEngine, capture_key: str
) -> None:
    member_id = await add_member(db)
    await api.graphql(GRANT, grant_vars(member_id), token=capture_key)

    response = await api.graphql(
        WITHDRAW, {"member": str(member_id), "purpose": "personalized_offers"}, token=capture_key
    )

    assert response.json()["data"]["withdrawConsent"]["withdrawn"] is True
    kinds = [e["kind"] for e in await consent_events(db, member_id)]
    assert kinds == ["GRANTED", "WITHDRAWN"]


async def test_expired_consent_stops_releasing_without_any_job(api: Api, db: AsyncEngine) -> None:
    member_id = await add_member(db)
    now = dt.datetime.now(dt.UTC)
    await grant(
        db,
        member_id,
        "personalized_offers",
        granted_at=now - dt.timedelta(days=365),
        expires_at=now - dt.timedelta(seconds=1),
    )
    reader = (await add_client(db, name="reader", purposes=("personalized_offers",))).key

    body = await read(api, reader, member_id, "personalized_offers")

    assert body["data"]["member"]["points"] is None
    assert {e["extensions"]["code"] for e in body["errors"]} >= {"CONSENT_EXPIRED"}


@pytest.fixture
async def busy_api(db: AsyncEngine, gateway_url: str) -> AsyncIterator[Api]:
    """An app with a pool large enough for many requests in flight at once."""
    app = create_app(make_settings(gateway_url, db_pool_size=10), database_url=gateway_url)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://tillit.test") as client:
            yield Api(client)


async def test_fifty_concurrent_grants_and_withdrawals_serialise(
    busy_api: Api, db: AsyncEngine
) -> None:
    member_id = await add_member(db)
    token = member_token(member_id)
    rng = random.Random(50)
    plan = [rng.choice(["grant", "withdraw"]) for _ in range(50)]

    async def change(kind: str) -> dict[str, Any]:
        if kind == "grant":
            response = await busy_api.graphql(GRANT, grant_vars(None), token=token)
            return {"kind": "GRANTED", "wrote": True, **response.json()}
        response = await busy_api.graphql(WITHDRAW, {"purpose": "personalized_offers"}, token=token)
        body = response.json()
        return {"kind": "WITHDRAWN", "wrote": body["data"]["withdrawConsent"]["withdrawn"], **body}

    results = await asyncio.gather(*(change(kind) for kind in plan))

    assert all("errors" not in r for r in results), [r for r in results if "errors" in r][:1]
    events = await consent_events(db, member_id)
    assert len(events) == sum(r["wrote"] for r in results)  # no event lost
    kinds = [e["kind"] for e in events]
    # Serialised: a withdrawal only ever follows a grant (withdrawing nothing writes nothing).
    assert all(not (a == "WITHDRAWN" and b == "WITHDRAWN") for a, b in itertools.pairwise(kinds))
    assert kinds[0] == "GRANTED"
    # seq order is commit order, and occurred_at agrees with it
    times = [e["occurred_at"] for e in events]
    assert times == sorted(times)
    reader = (await add_client(db, name="reader", purposes=("personalized_offers",))).key
    final = await read(busy_api, reader, member_id, "personalized_offers")
    if kinds[-1] == "GRANTED":
        assert final["data"]["member"]["points"] == 1200
    else:
        assert final["data"]["member"]["points"] is None
