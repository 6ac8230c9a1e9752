"""recordEnrichment, recordCleansing and objectToProcessing, end to end."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.access.auth import mint_member_token
from gateway.domain import Capability
from tests.conftest import TEST_SECRET, Api, add_client, add_member, row_counts
from tests.helpers import access_events, grant, withdraw

ENRICH = """
mutation($member: ID!, $purpose: String!, $values: EnrichmentValuesInput!, $source: String!) {
  recordEnrichment(memberId: $member, purpose: $purpose, source: $source, values: $values) {
    memberId purpose consentId written unchanged
  }
}
"""
CLEANSE = """
mutation($member: ID!, $field: String!, $value: String!, $purpose: String! = "data_quality") {
  recordCleansing(memberId: $member, field: $field, newValue: $value,
                  source: "Folkeregisteret", purpose: $purpose) {
    memberId field oldValue newValue changed recordId noticeDueAt
  }
}
"""
OBJECT = """
mutation($purpose: String!) {
  objectToProcessing(purpose: $purpose, reason: "Jeg vil ikke") {
    memberId purpose objectedAt alreadyObjected
  }
}
"""
VALUES = {
    "incomeBand": "500-750k",
    "householdSize": 3,
    "lifestyleSegment": "active_outdoor",
    "interests": ["travel", "outdoor"],
}


@pytest.fixture
async def broker_key(db: AsyncEngine) -> str:
    client = await add_client(
        db,
        name="broker-feed",
        purposes=("personalized_offers", "customer_insight"),
        capabilities=(Capability.ENRICH,),
    )
    return client.key


@pytest.fixture
async def register_key(db: AsyncEngine) -> str:
    client = await add_client(
        db, name="register-feed", purposes=("data_quality",), capabilities=(Capability.CLEANSE,)
    )
    return client.key


async def stored(db: AsyncEngine, member_id: uuid.UUID) -> dict[str, dict[str, Any]]:
    async with db.connect() as connection:
        rows = await connection.execute(
            text("SELECT * FROM enrichment_records WHERE member_id = :m"), {"m": member_id}
        )
        return {row.field: dict(row._mapping) for row in rows}


def enrich_vars(member_id: uuid.UUID, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "member": str(member_id),
        "purpose": "personalized_offers",
        "values": VALUES,
        "source": "Broker AS",
    }
    values.update(overrides)
    return values


async def test_enrichment_on_a_valid_consent_is_stored_with_provenance(
    api: Api, db: AsyncEngine, broker_key: str
) -> None:
    member_id = await add_member(db)
    grant_id = await grant(db, member_id, "personalized_offers")

    response = await api.graphql(ENRICH, enrich_vars(member_id), token=broker_key)

    result = response.json()["data"]["recordEnrichment"]
    assert result["consentId"] == str(grant_id)
    assert result["written"] == ["household_size", "income_band", "interests", "lifestyle_segment"]
    values = await stored(db, member_id)
    assert values["income_band"]["value"] == "500-750k"
    assert values["interests"]["value"] == ["outdoor", "travel"]
    assert {v["source"] for v in values.values()} == {"Broker AS"}
    assert {v["consent_event_id"] for v in values.values()} == {grant_id}
    [audited] = await access_events(db)
    assert audited["operation"] == "recordEnrichment"
    assert audited["outcome"] == "WRITTEN"
    assert audited["consent_ids"] == [grant_id]


async def test_the_same_enrichment_twice_changes_nothing(
    api: Api, db: AsyncEngine, broker_key: str
) -> None:
    member_id = await add_member(db)
    await grant(db, member_id, "personalized_offers")
    await api.graphql(ENRICH, enrich_vars(member_id), token=broker_key)
    before = await stored(db, member_id)

    again = await api.graphql(ENRICH, enrich_vars(member_id), token=broker_key)

    assert again.json()["data"]["recordEnrichment"]["written"] == []
    assert await stored(db, member_id) == before


@pytest.mark.parametrize(
    ("setup", "overrides", "code"),
    [
        (None, {}, "CONSENT_REQUIRED"),
        ("withdrawn", {}, "CONSENT_WITHDRAWN"),
        ("expired", {}, "CONSENT_EXPIRED"),
        ("conditional", {}, "CONSENT_METHOD_INSUFFICIENT"),
        ("old-notice", {}, "NOTICE_OUTDATED"),
        (
            "granted",
            {"purpose": "customer_insight", "values": {"incomeBand": "x"}},
            "CONSENT_REQUIRED",
        ),
        (
            "insight",
            {"purpose": "customer_insight", "values": {"lifestyleSegment": "x"}},
            "CATEGORY_NOT_IN_PURPOSE",
        ),
        ("granted", {"purpose": "data_quality"}, "PURPOSE_NOT_PERMITTED"),
        ("granted", {"purpose": "nope"}, "UNKNOWN_PURPOSE"),
        ("granted", {"values": {}}, "BAD_USER_INPUT"),
        ("granted", {"values": {"householdSize": 0}}, "BAD_USER_INPUT"),
        ("granted", {"values": {"incomeBand": "x" * 33}}, "BAD_USER_INPUT"),
        ("granted", {"values": {"interests": []}}, "BAD_USER_INPUT"),
        ("granted", {"source": " "}, "BAD_USER_INPUT"),
        ("granted", {"member": str(uuid.uuid4())}, "NOT_FOUND"),
    ],
    ids=[
        "no-consent",
        "withdrawn",
        "expired",
        "conditional",
        "old-notice",
        "other-purpose-consent",
        "category-outside-purpose",
        "purpose-not-permitted",
        "unknown-purpose",
        "no-values",
        "household-zero",
        "oversized",
        "empty-list",
        "blank-source",
        "unknown-member",
    ],
)
async def test_enrichment_is_refused_without_a_valid_covering_consent(
    api: Api,
    db: AsyncEngine,
    broker_key: str,
    setup: str | None,
    overrides: dict[str, Any],
    code: str,
) -> None:
    member_id = await add_member(db)
    now = dt.datetime.now(dt.UTC)
    if setup in ("granted", "withdrawn"):
        await grant(db, member_id, "personalized_offers")
    if setup == "withdrawn":
        await withdraw(db, member_id, "personalized_offers")
    if setup == "expired":
        await grant(
            db,
            member_id,
            "personalized_offers",
            granted_at=now - dt.timedelta(days=400),
            expires_at=now - dt.timedelta(days=1),
        )
    if setup == "conditional":
        await grant(db, member_id, "personalized_offers", method="CONDITIONAL")
    if setup == "old-notice":
        await grant(db, member_id, "personalized_offers", notice="2025-01")
    if setup == "insight":
        await grant(db, member_id, "customer_insight", method="CONDITIONAL")
    before = await row_counts(db)

    response = await api.graphql(ENRICH, enrich_vars(member_id, **overrides), token=broker_key)

    body = response.json()
    assert body["data"] == {"recordEnrichment": None}
    assert body["errors"][0]["extensions"]["code"] == code
    after = await row_counts(db)
    assert after["enrichment_records"] == before["enrichment_records"] == 0
    assert after["access_events"] - before["access_events"] == 1


async def test_only_clients_with_the_enrich_capability_may_enrich(
    api: Api, db: AsyncEngine
) -> None:
    member_id = await add_member(db)
    await grant(db, member_id, "personalized_offers")
    shop = (await add_client(db, name="shop", purposes=("personalized_offers",))).key
    token = mint_member_token(member_id, TEST_SECRET, dt.timedelta(minutes=5))

    for credential in (shop, token):
        response = await api.graphql(ENRICH, enrich_vars(member_id), token=credential)
        assert response.json()["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    assert await stored(db, member_id) == {}


async def test_cleansing_corrects_the_field_and_owes_a_notice(
    api: Api, db: AsyncEngine, register_key: str
) -> None:
    member_id = await add_member(db, city="Oslo")

    response = await api.graphql(
        CLEANSE, {"member": str(member_id), "field": "city", "value": "Bergen"}, token=register_key
    )

    result = response.json()["data"]["recordCleansing"]
    assert result["changed"] is True
    assert (result["oldValue"], result["newValue"]) == ("Oslo", "Bergen")
    due = dt.datetime.fromisoformat(result["noticeDueAt"])
    assert dt.timedelta(days=27) < due - dt.datetime.now(dt.UTC) <= dt.timedelta(days=31)
    async with db.connect() as connection:
        city = await connection.scalar(
            text("SELECT city FROM members WHERE id = :m"), {"m": member_id}
        )
        record = (await connection.execute(text("SELECT * FROM cleansing_records"))).one()
        notice = (await connection.execute(text("SELECT * FROM member_notices"))).one()
    assert city == "Bergen"
    assert (record.old_value, record.new_value, record.source) == (
        "Oslo",
        "Bergen",
        "Folkeregisteret",
    )
    assert notice.cleansing_record_id == record.id
    assert notice.delivered_at is None
    [audited] = await access_events(db)
    assert audited["legal_basis"] == "LEGITIMATE_INTEREST"
    assert audited["fields_released"] == ["city"]


async def test_deceased_flag_is_cleansed_as_a_boolean(
    api: Api, db: AsyncEngine, register_key: str
) -> None:
    member_id = await add_member(db)

    response = await api.graphql(
        CLEANSE,
        {"member": str(member_id), "field": "deceased", "value": "TRUE"},
        token=register_key,
    )

    result = response.json()["data"]["recordCleansing"]
    assert (result["oldValue"], result["newValue"]) == ("false", "true")


async def test_a_country_is_corrected_to_its_iso_code(
    api: Api, db: AsyncEngine, register_key: str
) -> None:
    member_id = await add_member(db, country="NO")

    response = await api.graphql(
        CLEANSE, {"member": str(member_id), "field": "country", "value": "se"}, token=register_key
    )

    result = response.json()["data"]["recordCleansing"]
    assert (result["oldValue"], result["newValue"]) == ("NO", "SE")


@pytest.mark.parametrize(
    ("variables", "code"),
    [
        ({"field": "email", "value": "x@example.org"}, "BAD_USER_INPUT"),
        ({"field": "city", "value": ""}, "BAD_USER_INPUT"),
        ({"field": "city", "value": "x" * 201}, "BAD_USER_INPUT"),
        ({"field": "country", "value": "Norway"}, "BAD_USER_INPUT"),
        ({"field": "country", "value": "ZZ"}, "BAD_USER_INPUT"),
        ({"field": "deceased", "value": "maybe"}, "BAD_USER_INPUT"),
        (
            {"field": "city", "value": "Bergen", "purpose": "personalized_offers"},
            "PURPOSE_NOT_PERMITTED",
        ),
        ({"field": "city", "value": "Bergen", "member": str(uuid.uuid4())}, "NOT_FOUND"),
    ],
    ids=[
        "unknown-field",
        "empty",
        "oversized",
        "bad-country",
        "unassigned-country",
        "bad-boolean",
        "purpose-not-permitted",
        "unknown-member",
    ],
)
async def test_bad_cleansing_is_refused_and_changes_nothing(
    api: Api, db: AsyncEngine, register_key: str, variables: dict[str, Any], code: str
) -> None:
    member_id = await add_member(db, city="Oslo")
    before = await row_counts(db)

    response = await api.graphql(
        CLEANSE, {"member": str(member_id), **variables}, token=register_key
    )

    assert response.json()["errors"][0]["extensions"]["code"] == code
    after = await row_counts(db)
    after.pop("access_events")
    before.pop("access_events")
    assert after == before


async def test_objection_stops_cleansing_end_to_end(
    api: Api, db: AsyncEngine, register_key: str
) -> None:
    member_id = await add_member(db, city="Oslo")
    token = mint_member_token(member_id, TEST_SECRET, dt.timedelta(minutes=5))

    objected = await api.graphql(OBJECT, {"purpose": "data_quality"}, token=token)
    again = await api.graphql(OBJECT, {"purpose": "data_quality"}, token=token)
    cleansing = await api.graphql(
        CLEANSE, {"member": str(member_id), "field": "city", "value": "Bergen"}, token=register_key
    )

    assert objected.json()["data"]["objectToProcessing"]["alreadyObjected"] is False
    assert again.json()["data"]["objectToProcessing"]["alreadyObjected"] is True
    assert cleansing.json()["errors"][0]["extensions"]["code"] == "OBJECTED"
    async with db.connect() as connection:
        city = await connection.scalar(
            text("SELECT city FROM members WHERE id = :m"), {"m": member_id}
        )
        objections = await connection.scalar(text("SELECT count(*) FROM objections"))
    assert city == "Oslo"
    assert objections == 1
    operations = [(e["operation"], e["outcome"]) for e in await access_events(db)]
    assert operations == [
        ("objectToProcessing", "WRITTEN"),
        ("objectToProcessing", "UNCHANGED"),
        ("recordCleansing", "DENIED"),
    ]


@pytest.mark.parametrize(
    ("purpose", "code"),
    [
        ("personalized_offers", "OBJECTION_NOT_APPLICABLE"),
        ("membership_service", "OBJECTION_NOT_APPLICABLE"),
        ("nope", "UNKNOWN_PURPOSE"),
    ],
)
async def test_objection_applies_only_to_legitimate_interest(
    api: Api, db: AsyncEngine, purpose: str, code: str
) -> None:
    member_id = await add_member(db)
    token = mint_member_token(member_id, TEST_SECRET, dt.timedelta(minutes=5))

    response = await api.graphql(OBJECT, {"purpose": purpose}, token=token)

    assert response.json()["errors"][0]["extensions"]["code"] == code


async def test_apps_cannot_object_for_a_member(
    api: Api, db: AsyncEngine, register_key: str
) -> None:
    response = await api.graphql(OBJECT, {"purpose": "data_quality"}, token=register_key)

    assert response.json()["errors"][0]["extensions"]["code"] == "FORBIDDEN"
