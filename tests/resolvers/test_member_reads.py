"""Consent-gated, purpose-bound, audited profile reads, end to end over HTTP.

Each test reads through POST /graphql and checks both the answer and the access event it left.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.access.auth import mint_member_token
from tests.conftest import (
    TEST_SECRET,
    Api,
    add_client,
    add_member,
    make_settings,
    row_counts,
    serving,
)
from tests.helpers import (
    AUDIT_FAILURES,
    NOW,
    ONE,
    access_events,
    audit_writes_fail,
    enrich,
    grant,
    read,
    withdraw,
)

ALL_PURPOSES = ("membership_service", "personalized_offers", "customer_insight", "data_quality")

MANY = """
query($ids: [ID!]!, $purpose: String!) {
  members(ids: $ids, purpose: $purpose) { id email tier lifestyleSegment }
}
"""


@pytest.fixture
async def app_key(db: AsyncEngine) -> str:
    return (await add_client(db, purposes=ALL_PURPOSES)).key


def codes(body: dict[str, Any]) -> dict[tuple[Any, ...], str]:
    return {tuple(e["path"]): e["extensions"]["code"] for e in body.get("errors", [])}


async def test_consented_member_releases_enriched_fields_and_audits_the_consent(
    api: Api, db: AsyncEngine, app_key: str
) -> None:
    member_id = await add_member(db)
    grant_id = await grant(db, member_id, "personalized_offers")
    await enrich(db, member_id, grant_id)

    body = await read(api, app_key, member_id, "personalized_offers")

    member = body["data"]["member"]
    assert member["points"] == 1200
    assert member["incomeBand"] == "500-750k"
    assert member["householdSize"] == 3
    assert member["lifestyleSegment"] == "active_outdoor"
    assert member["interests"] == ["outdoor", "travel"]
    # contact is not a category of personalized_offers
    assert codes(body) == {
        ("member", "firstName"): "CATEGORY_NOT_IN_PURPOSE",
        ("member", "email"): "CATEGORY_NOT_IN_PURPOSE",
    }
    [audited] = await access_events(db)
    assert audited["member_id"] == member_id
    assert audited["operation"] == "member"
    assert audited["purpose"] == "personalized_offers"
    assert audited["legal_basis"] == "CONSENT"
    assert audited["actor_kind"] == "CLIENT"
    assert audited["outcome"] == "PARTIAL"
    assert audited["fields_requested"] == [
        "email",
        "first_name",
        "household_size",
        "income_band",
        "interests",
        "lifestyle_segment",
        "points",
    ]
    assert audited["fields_released"] == [
        "household_size",
        "income_band",
        "interests",
        "lifestyle_segment",
        "points",
    ]
    assert audited["fields_withheld"] == {
        "email": "CATEGORY_NOT_IN_PURPOSE",
        "first_name": "CATEGORY_NOT_IN_PURPOSE",
    }
    assert audited["consent_ids"] == [grant_id]
    assert audited["request_id"]


async def test_partial_read_releases_base_and_withholds_enriched(
    api: Api, db: AsyncEngine, app_key: str
) -> None:
    member_id = await add_member(db, first_name="Ola")

    body = await read(api, app_key, member_id, "membership_service")

    member = body["data"]["member"]
    assert member["firstName"] == "Ola"
    assert member["incomeBand"] is None
    assert set(codes(body).values()) == {"CATEGORY_NOT_IN_PURPOSE"}
    assert len(codes(body)) == 4
    [audited] = await access_events(db)
    assert audited["legal_basis"] == "CONTRACT"
    assert audited["outcome"] == "PARTIAL"
    assert audited["fields_released"] == ["email", "first_name", "points"]
    assert audited["consent_ids"] == []


CONSENT_CASES = {
    "CONSENT_REQUIRED": {},
    "CONSENT_WITHDRAWN": {"withdrawn": True},
    "CONSENT_EXPIRED": {
        "granted_at": NOW - dt.timedelta(days=400),
        "expires_at": NOW - dt.timedelta(days=35),
    },
    "CONSENT_METHOD_INSUFFICIENT": {"method": "CONDITIONAL"},
    "NOTICE_OUTDATED": {"notice": "2025-01"},
}


@pytest.mark.parametrize("code", list(CONSENT_CASES))
async def test_each_consent_reason_withholds_enriched_fields_with_what_would_help(
    api: Api, db: AsyncEngine, app_key: str, code: str
) -> None:
    case = dict(CONSENT_CASES[code])
    member_id = await add_member(db)
    withdrawn = case.pop("withdrawn", False)
    if code != "CONSENT_REQUIRED":
        grant_id = await grant(db, member_id, "personalized_offers", **case)
        await enrich(db, member_id, grant_id)
    if withdrawn:
        await withdraw(db, member_id, "personalized_offers")

    response = await api.graphql(
        'query($id: ID!) { member(id: $id, purpose: "personalized_offers") '
        "{ points lifestyleSegment } }",
        {"id": str(member_id)},
        token=app_key,
    )

    body = response.json()
    assert body["data"]["member"] == {"points": None, "lifestyleSegment": None}
    for error in body["errors"]:
        assert error["extensions"] == {
            "code": code,
            "purpose": "personalized_offers",
            "requiredMethod": "EXPLICIT",
            "noticeVersion": "2026-01",
        }
    [audited] = await access_events(db)
    assert audited["outcome"] == "DENIED"
    assert audited["fields_withheld"] == {"lifestyle_segment": code, "points": code}
    assert audited["fields_released"] == []


async def test_withdrawn_then_granted_again_releases(
    api: Api, db: AsyncEngine, app_key: str
) -> None:
    member_id = await add_member(db)
    await grant(db, member_id, "personalized_offers")
    await withdraw(db, member_id, "personalized_offers")
    second = await grant(db, member_id, "personalized_offers", granted_at=NOW)

    body = await read(api, app_key, member_id, "personalized_offers")

    assert body["data"]["member"]["points"] == 1200
    [audited] = await access_events(db)
    assert audited["consent_ids"] == [second]


async def test_withdrawal_takes_effect_on_the_next_request(
    api: Api, db: AsyncEngine, app_key: str
) -> None:
    member_id = await add_member(db)
    await grant(db, member_id, "personalized_offers")
    before = await read(api, app_key, member_id, "personalized_offers")

    await withdraw(db, member_id, "personalized_offers")
    after = await read(api, app_key, member_id, "personalized_offers")

    assert before["data"]["member"]["points"] == 1200
    assert after["data"]["member"]["points"] is None
    assert codes(after)[("member", "points")] == "CONSENT_WITHDRAWN"


async def test_conditional_consent_satisfies_a_purpose_that_accepts_it(
    api: Api, db: AsyncEngine, app_key: str
) -> None:
    member_id = await add_member(db)
    grant_id = await grant(db, member_id, "customer_insight", method="CONDITIONAL")
    await enrich(db, member_id, grant_id)

    response = await api.graphql(
        'query($id: ID!) { member(id: $id, purpose: "customer_insight") '
        "{ incomeBand lifestyleSegment } }",
        {"id": str(member_id)},
        token=app_key,
    )

    body = response.json()
    assert body["data"]["member"] == {"incomeBand": "500-750k", "lifestyleSegment": None}
    assert codes(body) == {("member", "lifestyleSegment"): "CATEGORY_NOT_IN_PURPOSE"}


ADDRESS = """
query($id: ID!) { member(id: $id, purpose: "data_quality") {
  deceased address { city corrections { field oldValue newValue source } } } }
"""


async def test_legitimate_interest_releases_until_the_member_objects(
    api: Api, db: AsyncEngine, app_key: str
) -> None:
    member_id = await add_member(db, city="Bergen")
    async with db.begin() as connection:
        record = await connection.scalar(
            text(
                "INSERT INTO cleansing_records (member_id, purpose_key, field, old_value, "
                "new_value, source) VALUES (:m, 'data_quality', 'city', '\"Oslo\"', '\"Bergen\"', "
                "'Folkeregisteret') RETURNING id"
            ),
            {"m": member_id},
        )
    assert record is not None

    released = (await api.graphql(ADDRESS, {"id": str(member_id)}, token=app_key)).json()
    async with db.begin() as connection:
        await connection.execute(
            text("INSERT INTO objections (member_id, purpose_key) VALUES (:m, 'data_quality')"),
            {"m": member_id},
        )
    objected = (await api.graphql(ADDRESS, {"id": str(member_id)}, token=app_key)).json()

    assert released["data"]["member"] == {
        "deceased": False,
        "address": {
            "city": "Bergen",
            "corrections": [
                {
                    "field": "city",
                    "oldValue": "Oslo",
                    "newValue": "Bergen",
                    "source": "Folkeregisteret",
                }
            ],
        },
    }
    assert objected["data"]["member"] == {"deceased": None, "address": None}
    assert set(codes(objected).values()) == {"OBJECTED"}
    first, second = await access_events(db)
    assert first["legal_basis"] == second["legal_basis"] == "LEGITIMATE_INTEREST"
    assert first["outcome"] == "RELEASED"
    assert second["outcome"] == "DENIED"
    assert second["fields_withheld"] == {"address": "OBJECTED", "deceased": "OBJECTED"}


async def test_closed_membership_withholds_contract_fields(
    api: Api, db: AsyncEngine, app_key: str
) -> None:
    member_id = await add_member(db, membership_status="CLOSED")

    body = await read(api, app_key, member_id, "membership_service")

    assert body["data"]["member"]["email"] is None
    assert codes(body)[("member", "email")] == "MEMBERSHIP_INACTIVE"


async def test_consent_standing_tells_an_app_whom_to_ask(
    api: Api, db: AsyncEngine, app_key: str
) -> None:
    member_id = await add_member(db)
    await grant(db, member_id, "customer_insight", method="CONDITIONAL")
    await grant(db, member_id, "personalized_offers", notice="2025-01")

    response = await api.graphql(
        'query($id: ID!) { member(id: $id, purpose: "membership_service") '
        "{ consents { purpose state valid problem method requiredMethod currentNoticeVersion } } }",
        {"id": str(member_id)},
        token=app_key,
    )

    standing = {c["purpose"]: c for c in response.json()["data"]["member"]["consents"]}
    assert set(standing) == {"customer_insight", "personalized_offers", "email_marketing"}
    assert standing["email_marketing"]["valid"] is False  # never asked: ask
    assert standing["email_marketing"]["problem"] == "CONSENT_REQUIRED"
    assert standing["customer_insight"]["state"] == "GRANTED"
    assert standing["customer_insight"]["valid"] is True
    assert standing["personalized_offers"]["valid"] is False
    assert standing["personalized_offers"]["problem"] == "NOTICE_OUTDATED"
    assert standing["personalized_offers"]["requiredMethod"] == "EXPLICIT"


async def test_members_mixes_released_denied_and_unknown_by_position(
    api: Api, db: AsyncEngine, app_key: str
) -> None:
    consenting = await add_member(db)
    grant_id = await grant(db, consenting, "personalized_offers")
    await enrich(db, consenting, grant_id)
    refusing = await add_member(db)
    unknown = uuid.uuid4()

    response = await api.graphql(
        MANY,
        {"ids": [str(consenting), str(unknown), str(refusing)], "purpose": "personalized_offers"},
        token=app_key,
    )

    body = response.json()
    first, missing, third = body["data"]["members"]
    assert first == {
        "id": str(consenting),
        "email": None,
        "tier": "GOLD",
        "lifestyleSegment": "active_outdoor",
    }
    assert missing is None
    assert third == {"id": str(refusing), "email": None, "tier": None, "lifestyleSegment": None}
    assert codes(body) == {
        ("members", 0, "email"): "CATEGORY_NOT_IN_PURPOSE",
        ("members", 1): "NOT_FOUND",
        ("members", 2, "email"): "CATEGORY_NOT_IN_PURPOSE",
        ("members", 2, "tier"): "CONSENT_REQUIRED",
        ("members", 2, "lifestyleSegment"): "CONSENT_REQUIRED",
    }
    audited = {row["member_id"]: row for row in await access_events(db)}
    assert set(audited) == {consenting, unknown, refusing}
    assert audited[consenting]["outcome"] == "PARTIAL"
    assert audited[consenting]["consent_ids"] == [grant_id]
    assert audited[unknown]["outcome"] == "NOT_FOUND"
    assert audited[unknown]["fields_released"] == []
    assert audited[refusing]["outcome"] == "DENIED"
    assert audited[refusing]["fields_withheld"] == {
        "email": "CATEGORY_NOT_IN_PURPOSE",
        "lifestyle_segment": "CONSENT_REQUIRED",
        "tier": "CONSENT_REQUIRED",
    }
    assert {row["operation"] for row in audited.values()} == {"members"}
    assert len({row["request_id"] for row in audited.values()}) == 1


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        ([], "at least one"),
        (["same", "same"], "twice"),
        (["not-a-uuid"], "UUID"),
        # Caught before execution by the operation limits (TILLIT_MAX_LIST_SIZE, default 100).
        ([str(uuid.uuid4()) for _ in range(101)], "more than 100 items"),
    ],
    ids=["empty", "duplicate", "wrong-form", "too-many"],
)
async def test_bad_id_lists_are_refused_and_write_nothing(
    api: Api, db: AsyncEngine, app_key: str, ids: list[str], message: str
) -> None:
    if ids == ["same", "same"]:
        same = str(await add_member(db))
        ids = [same, same]
    before = await row_counts(db)

    response = await api.graphql(MANY, {"ids": ids, "purpose": "membership_service"}, token=app_key)

    body = response.json()
    if len(ids) > 100:
        assert response.status_code == 400
        assert body["errors"][0]["extensions"]["code"] == "OPERATION_LIMIT_EXCEEDED"
    else:
        assert body["data"] == {"members": None}
        assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert message in body["errors"][0]["message"]
    assert await row_counts(db) == before


@pytest.mark.parametrize(
    ("purpose", "code"),
    [("telemarketing", "UNKNOWN_PURPOSE"), ("data_quality", "PURPOSE_NOT_PERMITTED")],
)
async def test_refused_purpose_is_audited_for_the_targeted_member(
    api: Api, db: AsyncEngine, purpose: str, code: str
) -> None:
    key = (await add_client(db, purposes=("membership_service",))).key
    member_id = await add_member(db)

    body = await read(api, key, member_id, purpose)

    assert body["data"] == {"member": None}
    assert body["errors"][0]["extensions"]["code"] == code
    [audited] = await access_events(db)
    assert audited["member_id"] == member_id
    assert audited["purpose"] == purpose
    assert audited["outcome"] == "DENIED"
    assert audited["fields_released"] == []
    assert set(audited["fields_withheld"].values()) == {code}


async def test_member_token_on_another_member_is_refused_and_audited(
    api: Api, db: AsyncEngine
) -> None:
    me = await add_member(db)
    other = await add_member(db)
    token = mint_member_token(me, TEST_SECRET, dt.timedelta(minutes=5))

    body = await read(api, token, other, "membership_service")

    assert body["data"] == {"member": None}
    assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    [audited] = await access_events(db)
    assert audited["actor_kind"] == "MEMBER"
    assert audited["actor_member_id"] == me
    assert audited["member_id"] == other
    assert audited["outcome"] == "DENIED"


async def test_unknown_member_is_audited_as_not_found(
    api: Api, db: AsyncEngine, app_key: str
) -> None:
    unknown = uuid.uuid4()

    body = await read(api, app_key, unknown, "membership_service")

    assert body["errors"][0]["extensions"]["code"] == "NOT_FOUND"
    [audited] = await access_events(db)
    assert audited["member_id"] == unknown
    assert audited["outcome"] == "NOT_FOUND"


@pytest.mark.parametrize("failing", list(AUDIT_FAILURES))
async def test_audit_failure_releases_nothing_and_commits_nothing(
    api: Api, db: AsyncEngine, app_key: str, failing: str
) -> None:
    member_id = await add_member(db, first_name="Sensitive")
    async with audit_writes_fail(db, failing):
        before = await row_counts(db)
        response = await api.graphql(
            ONE, {"id": str(member_id), "purpose": "membership_service"}, token=app_key
        )
        after = await row_counts(db)

    assert response.status_code == 503
    body = response.json()
    assert "data" not in body
    assert body["errors"][0]["extensions"]["code"] == "AUDIT_UNAVAILABLE"
    assert "Sensitive" not in response.text
    assert "@example.org" not in response.text
    assert after == before


async def test_members_runs_as_many_statements_for_100_ids_as_for_2(
    api: Api, db: AsyncEngine, app_key: str
) -> None:
    ids = [await add_member(db) for _ in range(100)]
    for member_id in ids[::2]:
        grant_id = await grant(db, member_id, "personalized_offers")
        await enrich(db, member_id, grant_id)
    query = """
    query($ids: [ID!]!) { members(ids: $ids, purpose: "personalized_offers") {
      id tier incomeBand lifestyleSegment consents { purpose state } } }
    """
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement.split()[0])

    async def statements_for(subset: list[uuid.UUID]) -> int:
        statements.clear()
        event.listen(Engine, "before_cursor_execute", count)
        try:
            response = await api.graphql(query, {"ids": [str(i) for i in subset]}, token=app_key)
        finally:
            event.remove(Engine, "before_cursor_execute", count)
        assert response.status_code == 200
        assert len(response.json()["data"]["members"]) == len(subset)
        return len(statements)

    two = await statements_for(ids[:2])
    hundred = await statements_for(ids)

    assert two == hundred
    assert len(await access_events(db)) == 102


@pytest.mark.parametrize("skip", [True, False])
async def test_a_field_left_out_by_skip_or_include_is_neither_decided_nor_audited(
    api: Api, db: AsyncEngine, app_key: str, skip: bool
) -> None:
    member_id = await add_member(db)  # a contract purpose: enriched fields are not in it
    document = """
        query($id: ID!, $skip: Boolean!) {
          member(id: $id, purpose: "membership_service") {
            points
            incomeBand @skip(if: $skip)
            ...Segment @include(if: false)
            ... @include(if: true) { tier }
          }
        }
        fragment Segment on Member { lifestyleSegment }
    """

    # The same document twice, with the other value first: nothing cached decides for it.
    await api.graphql(document, {"id": str(member_id), "skip": not skip}, token=app_key)
    response = await api.graphql(document, {"id": str(member_id), "skip": skip}, token=app_key)

    body = response.json()
    expected = (
        {"points": 1200, "tier": "GOLD"}
        if skip
        else {"points": 1200, "incomeBand": None, "tier": "GOLD"}
    )
    assert body["data"]["member"] == expected
    withheld_paths = [error["path"] for error in body.get("errors", [])]
    assert withheld_paths == ([] if skip else [["member", "incomeBand"]])
    latest = (await access_events(db))[-1]
    assert latest["fields_requested"] == (
        ["points", "tier"] if skip else ["income_band", "points", "tier"]
    )


@pytest.mark.parametrize("fast_path", [True, False], ids=["direct", "graphql-core"])
async def test_a_member_carries_the_purpose_it_was_released_under(
    db: AsyncEngine, gateway_url: str, app_key: str, fast_path: bool
) -> None:
    """With `id`, the identity a client cache keys a Member by (README: partial results)."""
    member_id = await add_member(db)
    document = 'query($id: ID!) { member(id: $id, purpose: "membership_service") { id purpose } }'

    async with serving(make_settings(gateway_url, fast_path=fast_path), gateway_url) as api:
        response = await api.graphql(document, {"id": str(member_id)}, token=app_key)

    assert response.json()["data"]["member"] == {
        "id": str(member_id),
        "purpose": "membership_service",
    }


# -- The channel an offer reaches a member by ------------------------------------------------------

CHANNEL = """
query($id: ID!, $purpose: String!) {
  member(id: $id, purpose: $purpose) { firstName email phone tier incomeBand }
}
"""


async def test_email_marketing_releases_the_channel_only_on_its_own_explicit_consent(
    api: Api, db: AsyncEngine
) -> None:
    """Being profiled for offers and being sent them by e-mail or SMS are two consents
    (markedsføringsloven § 15; GDPR's specific consent): email_marketing releases contact details
    and tier on its own consent, and neither consent covers the other's fields."""
    campaigns = (
        await add_client(db, name="esp", purposes=("email_marketing", "personalized_offers"))
    ).key
    both = await add_member(db)
    await grant(db, both, "email_marketing")
    offers_grant = await grant(db, both, "personalized_offers")
    await enrich(db, both, offers_grant)
    offers_only = await add_member(db)
    await grant(db, offers_only, "personalized_offers")
    conditional = await add_member(db)
    await grant(db, conditional, "email_marketing", method="CONDITIONAL")

    async def ask(member_id: uuid.UUID, purpose: str) -> dict[str, Any]:
        response = await api.graphql(
            CHANNEL, {"id": str(member_id), "purpose": purpose}, token=campaigns
        )
        body: dict[str, Any] = response.json()
        return body

    sent = await ask(both, "email_marketing")
    profiled = await ask(both, "personalized_offers")
    not_asked = await ask(offers_only, "email_marketing")
    too_weak = await ask(conditional, "email_marketing")

    assert sent["data"]["member"]["email"].endswith("@example.org")
    assert sent["data"]["member"]["tier"] == "GOLD"
    assert codes(sent) == {("member", "incomeBand"): "CATEGORY_NOT_IN_PURPOSE"}
    assert codes(profiled)[("member", "email")] == "CATEGORY_NOT_IN_PURPOSE"
    assert profiled["data"]["member"]["incomeBand"] == "500-750k"
    assert codes(not_asked)[("member", "email")] == "CONSENT_REQUIRED"
    assert codes(too_weak)[("member", "email")] == "CONSENT_METHOD_INSUFFICIENT"
