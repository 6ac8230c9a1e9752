"""Joining (enrollMember) and changing one's data (updateMyProfile, updateMember)."""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from typing import Any

import jwt
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.access.auth import MEMBER_TOKEN_AUDIENCE, MEMBER_TOKEN_ISSUER
from gateway.access.purposes import read_policy_file
from gateway.domain import Capability, Role
from tests.conftest import TEST_SECRET, Api, add_client, add_member, member_token, row_counts
from tests.helpers import access_events

POLICY = {p.key: p for p in read_policy_file()}
OFFERS = POLICY["personalized_offers"].sign_up_wording
INSIGHT = POLICY["customer_insight"].sign_up_wording
assert OFFERS is not None
assert INSIGHT is not None

ENROLL = """
mutation($member: NewMemberInput!, $terms: String!, $consents: [SignUpConsentInput!],
         $subject: String, $purpose: String! = "membership_service", $key: String) {
  enrollMember(member: $member, termsVersion: $terms, channel: "web-signup",
               consents: $consents, externalSubject: $subject, purpose: $purpose,
               idempotencyKey: $key) {
    memberId memberSince termsVersion replayed
    receipts { receiptId purpose method noticeVersion channel collectedBy evidenceSha256 }
  }
}
"""
UPDATE_ME = """
mutation($changes: ProfileChangesInput!) {
  updateMyProfile(changes: $changes) { memberId changed unchanged }
}
"""
UPDATE_MEMBER = """
mutation($id: ID!, $purpose: String!, $changes: ProfileChangesInput!) {
  updateMember(memberId: $id, purpose: $purpose, changes: $changes) { memberId changed unchanged }
}
"""
MY_PROFILE = """
{ me { profile { firstName email phone address { street postalCode city country } }
       profileChanges { field oldValue newValue by changedAt } } }
"""


def new_member(**overrides: Any) -> dict[str, Any]:
    return {
        "firstName": "Ola",
        "lastName": "Nordmann",
        "email": f"ola.{uuid.uuid4().hex[:8]}@example.no",
        "phone": "+4791234567",
        "street": "Storgata 1",
        "postalCode": "0150",
        "city": "Oslo",
        "country": "NO",
        **overrides,
    }


def offers(**overrides: Any) -> dict[str, Any]:
    return {
        "purpose": "personalized_offers",
        "method": "EXPLICIT",
        "noticeVersion": "2026-01",
        "evidence": OFFERS.nb if OFFERS else None,
        **overrides,
    }


def insight(**overrides: Any) -> dict[str, Any]:
    assert INSIGHT is not None
    return {
        "purpose": "customer_insight",
        "method": "CONDITIONAL",
        "noticeVersion": "2026-01",
        "evidenceSha256": hashlib.sha256(INSIGHT.en.encode()).hexdigest(),
        **overrides,
    }


@pytest.fixture
async def shop(db: AsyncEngine) -> str:
    client = await add_client(
        db, name="web-shop", purposes=("membership_service",), capabilities=(Capability.ENROLL,)
    )
    return client.key


async def enroll(api: Api, caller: str, **variables: Any) -> dict[str, Any]:
    values: dict[str, Any] = {"member": new_member(), "terms": "2026-01", "consents": []}
    values.update(variables)
    response = await api.graphql(ENROLL, values, token=caller)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def code_of(body: dict[str, Any]) -> str:
    assert body["data"] is None or next(iter(body["data"].values())) is None, body
    return str(body["errors"][0]["extensions"]["code"])


# -- Joining ---------------------------------------------------------------------------------------


async def test_enrolment_creates_the_member_with_terms_and_consents(
    api: Api, db: AsyncEngine, shop: str
) -> None:
    member = new_member()
    body = await enroll(api, shop, member=member, consents=[offers(), insight()])

    result = body["data"]["enrollMember"]
    member_id = uuid.UUID(result["memberId"])
    assert result["termsVersion"] == "2026-01"
    assert result["memberSince"] == dt.date.today().isoformat()
    receipts = {r["purpose"]: r for r in result["receipts"]}
    assert receipts["personalized_offers"]["method"] == "EXPLICIT"
    assert receipts["customer_insight"]["method"] == "CONDITIONAL"
    assert receipts["personalized_offers"]["collectedBy"] == "client:web-shop"
    assert receipts["personalized_offers"]["channel"] == "web-signup"
    assert OFFERS is not None
    assert INSIGHT is not None
    assert receipts["personalized_offers"]["evidenceSha256"] == (
        hashlib.sha256(OFFERS.nb.encode()).hexdigest()
    )
    async with db.connect() as connection:
        row = (
            await connection.execute(
                text("SELECT email, terms_version, phone FROM members WHERE id = :id"),
                {"id": member_id},
            )
        ).one()
        stored = (
            await connection.execute(
                text(
                    "SELECT purpose_key, evidence FROM consent_events WHERE member_id = :id "
                    "ORDER BY purpose_key"
                ),
                {"id": member_id},
            )
        ).all()
    assert row.email == member["email"]
    assert row.terms_version == "2026-01"
    assert [(s.purpose_key, s.evidence) for s in stored] == [
        ("customer_insight", None),
        ("personalized_offers", OFFERS.nb),
    ]
    events = [e for e in await access_events(db) if e["operation"] == "enrollMember"]
    assert {(e["purpose"], e["outcome"]) for e in events} == {
        ("membership_service", "WRITTEN"),
        ("personalized_offers", "WRITTEN"),
        ("customer_insight", "WRITTEN"),
    }
    assert all(e["member_id"] == member_id for e in events)


async def test_the_new_member_reads_their_consents_at_once(
    api: Api, db: AsyncEngine, shop: str
) -> None:
    body = await enroll(api, shop, consents=[offers()])
    member_id = uuid.UUID(body["data"]["enrollMember"]["memberId"])

    response = await api.graphql(
        "{ me { consents { purpose state valid } } }", token=member_token(member_id)
    )

    states = {c["purpose"]: c for c in response.json()["data"]["me"]["consents"]}
    assert states["personalized_offers"] == {
        "purpose": "personalized_offers",
        "state": "GRANTED",
        "valid": True,
    }


@pytest.mark.parametrize(
    ("variables", "code"),
    [
        ({"consents": [offers(method="CONDITIONAL")]}, "CONSENT_METHOD_INSUFFICIENT"),
        ({"consents": [offers(evidence=None)]}, "BAD_USER_INPUT"),
        ({"consents": [offers(evidence="Vil du ha tilbud?")]}, "BAD_USER_INPUT"),
        ({"consents": [offers(noticeVersion="2025-01")]}, "NOTICE_OUTDATED"),
        ({"consents": [offers(), offers()]}, "BAD_USER_INPUT"),
        ({"consents": [insight(purpose="data_quality")]}, "BAD_USER_INPUT"),
        ({"consents": [offers(purpose="no_such_purpose")]}, "UNKNOWN_PURPOSE"),
        ({"terms": "2025-06"}, "NOTICE_OUTDATED"),
        ({"purpose": "data_quality"}, "PURPOSE_NOT_PERMITTED"),
        ({"member": new_member(email="not-an-email")}, "BAD_USER_INPUT"),
        ({"member": new_member(phone="91234567")}, "BAD_USER_INPUT"),
        ({"member": new_member(phone="+4700000")}, "BAD_USER_INPUT"),
        ({"member": new_member(postalCode="12345")}, "BAD_USER_INPUT"),
        ({"member": new_member(country="XX")}, "BAD_USER_INPUT"),
        ({"member": new_member(firstName="  ")}, "BAD_USER_INPUT"),
        ({"subject": ""}, "BAD_USER_INPUT"),
    ],
    ids=[
        "conditional-for-explicit-purpose",
        "no-wording",
        "wording-not-the-policys",
        "outdated-notice",
        "purpose-twice",
        "not-a-consent-purpose",
        "unknown-purpose",
        "outdated-terms",
        "not-a-contract",
        "email",
        "phone-not-e164",
        "phone-invalid",
        "postal-code-for-country",
        "country",
        "blank-name",
        "blank-subject",
    ],
)
async def test_refused_enrolments_change_nothing(
    api: Api, db: AsyncEngine, shop: str, variables: dict[str, Any], code: str
) -> None:
    before = await row_counts(db)

    body = await enroll(api, shop, **variables)

    assert code_of(body) == code
    after = await row_counts(db)
    assert {t: n for t, n in after.items() if t != "access_events"} == {
        t: n for t, n in before.items() if t != "access_events"
    }
    events = [e for e in await access_events(db) if e["operation"] == "enrollMember"]
    assert [(e["outcome"], e["member_id"]) for e in events] == [("DENIED", None)]


async def test_an_email_already_a_member_is_refused_without_revealing_whose(
    api: Api, db: AsyncEngine, shop: str
) -> None:
    existing = await add_member(db, email="kari@example.no")
    before = await row_counts(db)

    body = await enroll(api, shop, member=new_member(email="Kari@Example.NO"))

    assert code_of(body) == "ALREADY_MEMBER"
    assert str(existing) not in str(body)
    assert "Kari" not in str(body)
    assert (await row_counts(db))["members"] == before["members"]


@pytest.mark.parametrize("caller", ["anonymous", "member", "app-without-enroll", "auditor"])
async def test_only_apps_with_the_enroll_capability_enrol(
    api: Api, db: AsyncEngine, caller: str
) -> None:
    tokens = {
        "anonymous": None,
        "member": member_token(await add_member(db)),
        "app-without-enroll": (await add_client(db, name="campaigns")).key,
        "auditor": (await add_client(db, name="auditor", role=Role.AUDITOR, purposes=())).key,
    }
    before = await row_counts(db)

    response = await api.graphql(
        ENROLL, {"member": new_member(), "terms": "2026-01"}, token=tokens[caller]
    )

    expected = "UNAUTHENTICATED" if caller == "anonymous" else "FORBIDDEN"
    assert code_of(response.json()) == expected
    assert (await row_counts(db))["members"] == before["members"]


async def test_tillits_own_token_cannot_name_an_identity_providers_subject(
    api: Api, db: AsyncEngine, shop: str
) -> None:
    """A linked subject is reached with the provider's token (tests/resolvers/test_identities.py);
    Tillit's own HS256 tokens name member ids only."""
    await enroll(api, shop, subject="auth0|5f7c8ec7c33c6c004bbafe82")
    now = dt.datetime.now(dt.UTC)
    claims = {
        "sub": "auth0|5f7c8ec7c33c6c004bbafe82",
        "iss": MEMBER_TOKEN_ISSUER,
        "aud": MEMBER_TOKEN_AUDIENCE,
        "exp": now + dt.timedelta(minutes=5),
    }
    token = jwt.encode(claims, TEST_SECRET, algorithm="HS256")

    response = await api.graphql("{ me { id } }", token=token)

    assert response.status_code == 401
    assert response.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


async def test_the_same_subject_cannot_be_linked_twice(
    api: Api, db: AsyncEngine, shop: str
) -> None:
    await enroll(api, shop, subject="idp|1")

    body = await enroll(api, shop, subject="idp|1")

    assert code_of(body) == "ALREADY_MEMBER"


# -- Changing --------------------------------------------------------------------------------------


async def test_a_member_corrects_their_data_and_sees_the_history(api: Api, db: AsyncEngine) -> None:
    member_id = await add_member(db, phone="+4791234567")
    token = member_token(member_id)

    response = await api.graphql(
        UPDATE_ME,
        {"changes": {"phone": "+4798765432", "street": "Kirkegata 2", "city": "Oslo"}},
        token=token,
    )

    result = response.json()["data"]["updateMyProfile"]
    assert result["changed"] == ["phone", "street"]
    assert result["unchanged"] == ["city"]
    me = (await api.graphql(MY_PROFILE, token=token)).json()["data"]["me"]
    assert me["profile"]["phone"] == "+4798765432"
    changes = {c["field"]: c for c in me["profileChanges"]}
    assert changes["phone"]["oldValue"] == "+4791234567"
    assert changes["phone"]["newValue"] == "+4798765432"
    assert changes["phone"]["by"] == "you"
    [event] = [e for e in await access_events(db) if e["operation"] == "updateMyProfile"]
    assert event["outcome"] == "WRITTEN"
    assert event["member_id"] == member_id
    assert event["details"]["changed"] == ["phone", "street"]
    # Names of the fields, never their values, in the log.
    assert "98765432" not in str(event)
    assert "Kirkegata" not in str(event)


async def test_removing_an_optional_field_and_keeping_the_rest(api: Api, db: AsyncEngine) -> None:
    member_id = await add_member(db)

    response = await api.graphql(
        UPDATE_ME, {"changes": {"phone": None}}, token=member_token(member_id)
    )

    assert response.json()["data"]["updateMyProfile"]["changed"] == ["phone"]
    me = (await api.graphql(MY_PROFILE, token=member_token(member_id))).json()["data"]["me"]
    assert me["profile"]["phone"] is None
    assert me["profile"]["firstName"] == "Kari"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"email": "kari@"}, "email"),
        ({"email": None}, "email"),
        ({"firstName": None}, "first_name"),
        ({"phone": "0047 912 34 567"}, "phone"),
        ({"postalCode": "ABC"}, "postal_code"),
        ({"country": "SE"}, "postal_code"),  # 0150 is no Swedish postal code
        ({"country": "Norway"}, "country"),
        ({"city": "x" * 101}, "city"),
        ({}, None),
    ],
)
async def test_invalid_changes_are_refused_and_change_nothing(
    api: Api, db: AsyncEngine, changes: dict[str, Any], field: str | None
) -> None:
    member_id = await add_member(db)
    before = await row_counts(db)

    response = await api.graphql(UPDATE_ME, {"changes": changes}, token=member_token(member_id))

    error = response.json()["errors"][0]
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert error["extensions"].get("field") == field
    after = await row_counts(db)
    assert after["members"] == before["members"]
    assert after["profile_changes"] == 0


async def test_a_country_and_its_postal_code_change_together(api: Api, db: AsyncEngine) -> None:
    member_id = await add_member(db)

    response = await api.graphql(
        UPDATE_ME,
        {"changes": {"country": "SE", "postalCode": "114 55", "city": "Stockholm"}},
        token=member_token(member_id),
    )

    assert response.json()["data"]["updateMyProfile"]["changed"] == [
        "postal_code",
        "city",
        "country",
    ]


async def test_an_email_of_another_member_is_refused(api: Api, db: AsyncEngine) -> None:
    await add_member(db, email="taken@example.no")
    member_id = await add_member(db)

    response = await api.graphql(
        UPDATE_ME, {"changes": {"email": "TAKEN@example.no"}}, token=member_token(member_id)
    )

    assert response.json()["errors"][0]["extensions"]["code"] == "ALREADY_MEMBER"


async def test_members_cannot_change_membership_fields(api: Api, db: AsyncEngine) -> None:
    member_id = await add_member(db)

    response = await api.graphql(
        UPDATE_ME, {"changes": {"tier": "PLATINUM"}}, token=member_token(member_id)
    )

    # Not a field of the input type at all: refused before anything runs.
    assert response.status_code == 400
    assert response.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert (await row_counts(db))["profile_changes"] == 0


async def test_an_app_updates_a_member_under_the_contract(api: Api, db: AsyncEngine) -> None:
    member_id = await add_member(db)
    app = await add_client(
        db, name="crm", purposes=("membership_service",), capabilities=(Capability.UPDATE_PROFILE,)
    )

    response = await api.graphql(
        UPDATE_MEMBER,
        {"id": str(member_id), "purpose": "membership_service", "changes": {"lastName": "Hansen"}},
        token=app.key,
    )

    assert response.json()["data"]["updateMember"]["changed"] == ["last_name"]
    me = (await api.graphql(MY_PROFILE, token=member_token(member_id))).json()["data"]["me"]
    assert me["profileChanges"][0]["by"] == "crm"
    [event] = [e for e in await access_events(db) if e["operation"] == "updateMember"]
    assert event["purpose"] == "membership_service"
    assert event["legal_basis"] == "CONTRACT"


async def test_apps_need_the_capability_the_purpose_and_its_categories(
    api: Api, db: AsyncEngine
) -> None:
    member_id = await add_member(db)
    async with db.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO purposes (key, legal_basis, title_nb, title_en, description_nb, "
                "description_en, notice_version, accepted_notice_versions) VALUES ('newsletter', "
                "'CONTRACT', 'Nyhetsbrev', 'Newsletter', 'x', 'x', '2026-01', '{2026-01}')"
            )
        )
        await connection.execute(
            text("INSERT INTO purpose_categories VALUES ('newsletter', 'contact')")
        )
    plain = await add_client(db, name="plain", purposes=("membership_service",))
    able = await add_client(
        db,
        name="able",
        purposes=("membership_service", "newsletter", "data_quality"),
        capabilities=(Capability.UPDATE_PROFILE,),
    )
    cases = [
        (plain.key, "membership_service", {"city": "Bergen"}, "FORBIDDEN"),
        (able.key, "newsletter", {"city": "Bergen"}, "CATEGORY_NOT_IN_PURPOSE"),
        (able.key, "data_quality", {"city": "Bergen"}, "BAD_USER_INPUT"),
        (able.key, "personalized_offers", {"city": "Bergen"}, "PURPOSE_NOT_PERMITTED"),
        (member_token(member_id), "membership_service", {"city": "Bergen"}, "FORBIDDEN"),
    ]
    for key, purpose, changes, code in cases:
        response = await api.graphql(
            UPDATE_MEMBER, {"id": str(member_id), "purpose": purpose, "changes": changes}, token=key
        )
        assert response.json()["errors"][0]["extensions"]["code"] == code, (purpose, code)
    assert (await row_counts(db))["profile_changes"] == 0
    refused = [e for e in await access_events(db) if e["operation"] == "updateMember"]
    assert len(refused) == len(cases)
    assert {e["outcome"] for e in refused} == {"DENIED"}


async def test_a_retried_sign_up_with_its_key_gets_the_first_answer(
    api: Api, db: AsyncEngine, shop: str
) -> None:
    member = new_member()
    first = await enroll(api, shop, member=member, consents=[offers()], key="signup-42")
    counts = await row_counts(db)

    again = await enroll(api, shop, member=member, consents=[offers()], key="signup-42")

    one, two = first["data"]["enrollMember"], again["data"]["enrollMember"]
    assert two["memberId"] == one["memberId"]
    assert two["replayed"] is True
    assert one["replayed"] is False
    assert [r["receiptId"] for r in two["receipts"]] == [r["receiptId"] for r in one["receipts"]]
    after = await row_counts(db)
    assert {t: n for t, n in after.items() if t != "access_events"} == {
        t: n for t, n in counts.items() if t != "access_events"
    }
    replays = [e for e in await access_events(db) if e["details"].get("replayed")]
    assert {e["outcome"] for e in replays} == {"UNCHANGED"}


@pytest.mark.parametrize(
    "changed",
    [{"member": new_member(email="another@example.no")}, {"consents": []}],
    ids=["another-email", "other-consents"],
)
async def test_a_key_sent_again_with_another_sign_up_is_refused(
    api: Api, db: AsyncEngine, shop: str, changed: dict[str, Any]
) -> None:
    member = new_member()
    await enroll(api, shop, member=member, consents=[offers()], key="signup-43")
    before = await row_counts(db)

    body = await enroll(
        api, shop, **{"member": member, "consents": [offers()], **changed}, key="signup-43"
    )

    assert code_of(body) == "IDEMPOTENCY_KEY_REUSED"
    assert (await row_counts(db))["members"] == before["members"]


@pytest.mark.parametrize(
    ("first", "again"),
    [
        (insight(method="EXPLICIT"), insight()),
        (offers(), offers(evidence=OFFERS.en)),
    ],
    ids=["another-method", "another-wording"],
)
async def test_a_key_sent_again_with_other_consent_terms_is_refused(
    api: Api, db: AsyncEngine, shop: str, first: dict[str, Any], again: dict[str, Any]
) -> None:
    """The same purposes are not the same consents: a replay would tell the app that the method
    or the wording it sends now is what the member agreed to."""
    member = new_member()
    await enroll(api, shop, member=member, consents=[first], key="signup-44")
    before = await row_counts(db)

    body = await enroll(api, shop, member=member, consents=[again], key="signup-44")

    assert code_of(body) == "IDEMPOTENCY_KEY_REUSED"
    after = await row_counts(db)
    assert after.pop("access_events") == before.pop("access_events") + 1
    assert after == before


async def test_keys_belong_to_the_app_that_sent_them(api: Api, db: AsyncEngine, shop: str) -> None:
    other = await add_client(
        db, name="mobile-app", purposes=("membership_service",), capabilities=(Capability.ENROLL,)
    )
    await enroll(api, shop, key="same-key")

    body = await enroll(api, other.key, key="same-key")

    assert body["data"]["enrollMember"]["replayed"] is False
    assert (await row_counts(db))["members"] == 2
