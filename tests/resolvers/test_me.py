"""`me`, the member mutations, the export document, and the isolation rule."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.access.auth import mint_member_token
from gateway.domain import Capability, Role
from tests.conftest import TEST_SECRET, Api, add_client, add_member
from tests.helpers import access_events, enrich, grant, withdraw

ME = """
query {
  me {
    id
    profile { firstName lastName email phone tier points memberSince membershipStatus deceased
              address { street city corrections { field oldValue newValue source } } }
    enriched { field value source obtainedAt purpose consentId }
    consents { purpose state valid receiptId method }
    consentHistory { eventId receiptId purpose change method noticeVersion channel by at }
    notices { field oldValue newValue source deliveredAt }
    objections { purpose reason }
    accessLog(first: 10) { edges { node { occurredAt by byRole purpose outcome fieldsReleased
                                          fieldsWithheld { field code } } }
                           pageInfo { hasNextPage } }
  }
}
"""


def token_for(member_id: uuid.UUID) -> str:
    return mint_member_token(member_id, TEST_SECRET, dt.timedelta(minutes=10))


async def fixture_member(db: AsyncEngine) -> tuple[uuid.UUID, uuid.UUID]:
    """A member with a consent, enriched values, a withdrawn consent, a cleansing notice, an
    objection, and one read by a shop."""
    member_id = await add_member(db, first_name="Kari", city="Bergen")
    offers = await grant(db, member_id, "personalized_offers")
    await enrich(db, member_id, offers)
    await grant(db, member_id, "customer_insight", method="CONDITIONAL")
    await withdraw(db, member_id, "customer_insight")
    async with db.begin() as connection:
        record = await connection.scalar(
            text(
                "INSERT INTO cleansing_records (member_id, purpose_key, field, old_value, "
                "new_value, source) VALUES (:m, 'data_quality', 'city', '\"Oslo\"', '\"Bergen\"', "
                "'Folkeregisteret') RETURNING id"
            ),
            {"m": member_id},
        )
        await connection.execute(
            text(
                "INSERT INTO member_notices (member_id, cleansing_record_id, kind, due_at) "
                "VALUES (:m, :r, 'CLEANSING', now() + interval '30 days')"
            ),
            {"m": member_id, "r": record},
        )
        await connection.execute(
            text(
                "INSERT INTO objections (member_id, purpose_key, reason) "
                "VALUES (:m, 'data_quality', 'nei takk')"
            ),
            {"m": member_id},
        )
    return member_id, offers


async def test_me_shows_everything_held_about_the_member(api: Api, db: AsyncEngine) -> None:
    member_id, offers = await fixture_member(db)
    shop = (await add_client(db, name="Nettbutikken")).key
    await api.graphql(
        'query($id: ID!) { member(id: $id, purpose: "membership_service") { email } }',
        {"id": str(member_id)},
        token=shop,
    )

    body = (await api.graphql(ME, token=token_for(member_id))).json()

    assert "errors" not in body, body
    me = body["data"]["me"]
    assert me["id"] == str(member_id)
    assert me["profile"]["firstName"] == "Kari"
    assert me["profile"]["address"]["corrections"] == [
        {"field": "city", "oldValue": "Oslo", "newValue": "Bergen", "source": "Folkeregisteret"}
    ]
    enriched = {v["field"]: v for v in me["enriched"]}
    assert enriched["interests"]["value"] == "outdoor, travel"
    assert enriched["income_band"]["source"] == "Broker"
    assert enriched["income_band"]["consentId"] == str(offers)
    standing = {c["purpose"]: c for c in me["consents"]}
    assert standing["personalized_offers"]["valid"] is True
    assert standing["personalized_offers"]["receiptId"] == str(offers)
    assert standing["customer_insight"]["state"] == "WITHDRAWN"
    changes = [(e["purpose"], e["change"]) for e in me["consentHistory"]]
    assert changes == [
        ("personalized_offers", "GRANTED"),
        ("customer_insight", "GRANTED"),
        ("customer_insight", "WITHDRAWN"),
    ]
    assert me["consentHistory"][0]["receiptId"] == str(offers)
    assert me["consentHistory"][2]["receiptId"] is None
    [notice] = me["notices"]
    assert (notice["field"], notice["oldValue"], notice["newValue"]) == ("city", "Oslo", "Bergen")
    assert me["objections"] == [{"purpose": "data_quality", "reason": "nei takk"}]
    [access] = me["accessLog"]["edges"]
    assert access["node"]["by"] == "Nettbutikken"
    assert access["node"]["byRole"] == "app"
    assert access["node"]["purpose"] == "membership_service"
    assert access["node"]["fieldsReleased"] == ["email"]


async def test_consent_history_is_ordered_by_the_time_of_each_change(
    api: Api, db: AsyncEngine
) -> None:
    member_id = await add_member(db)
    now = dt.datetime.now(dt.UTC)
    # Inserted newest first, as an import of an older register may.
    await grant(db, member_id, "personalized_offers", granted_at=now - dt.timedelta(days=1))
    await grant(db, member_id, "customer_insight", granted_at=now - dt.timedelta(days=30))

    response = await api.graphql(
        "{ me { consentHistory { purpose at } } }", token=token_for(member_id)
    )

    history = response.json()["data"]["me"]["consentHistory"]
    assert [e["purpose"] for e in history] == ["customer_insight", "personalized_offers"]


async def test_reading_notices_marks_them_delivered(api: Api, db: AsyncEngine) -> None:
    member_id, _ = await fixture_member(db)

    first = (
        await api.graphql("{ me { notices { deliveredAt } } }", token=token_for(member_id))
    ).json()
    second = (
        await api.graphql("{ me { notices { deliveredAt } } }", token=token_for(member_id))
    ).json()

    assert first["data"]["me"]["notices"][0]["deliveredAt"] is None  # shown as it was owed
    assert second["data"]["me"]["notices"][0]["deliveredAt"] is not None


async def test_reading_me_is_an_access_event(api: Api, db: AsyncEngine) -> None:
    member_id = await add_member(db)

    await api.graphql("{ me { profile { email } } }", token=token_for(member_id))

    [event] = await access_events(db)
    assert event["operation"] == "me"
    assert event["actor_kind"] == "MEMBER"
    assert event["member_id"] == event["actor_member_id"] == member_id
    assert event["legal_basis"] == "LEGAL_OBLIGATION"


async def test_access_log_of_me_pages(api: Api, db: AsyncEngine) -> None:
    member_id = await add_member(db)
    shop = (await add_client(db, name="shop")).key
    for _ in range(3):
        await api.graphql(
            'query($id: ID!) { member(id: $id, purpose: "membership_service") { email } }',
            {"id": str(member_id)},
            token=shop,
        )
    query = "query($after: String) { me { accessLog(first: 2, after: $after) { edges { cursor } pageInfo { hasNextPage endCursor } } } }"  # noqa: E501

    first = (await api.graphql(query, token=token_for(member_id))).json()["data"]["me"]
    cursor = first["accessLog"]["pageInfo"]["endCursor"]
    second = (await api.graphql(query, {"after": cursor}, token=token_for(member_id))).json()

    assert first["accessLog"]["pageInfo"]["hasNextPage"] is True
    # newest first: the page after the cursor holds the oldest of the three reads
    assert len(second["data"]["me"]["accessLog"]["edges"]) == 1


async def test_member_grants_withdraws_and_objects_on_their_own_behalf(
    api: Api, db: AsyncEngine
) -> None:
    member_id = await add_member(db)
    token = token_for(member_id)

    granted = await api.graphql(
        'mutation { grantConsent(purpose: "personalized_offers", method: EXPLICIT, '
        'noticeVersion: "2026-01", channel: "self-service", evidence: "Ja") { receiptId } }',
        token=token,
    )
    withdrawn = await api.graphql(
        'mutation { withdrawConsent(purpose: "personalized_offers") { withdrawn } }', token=token
    )
    objected = await api.graphql(
        'mutation { objectToProcessing(purpose: "data_quality") { alreadyObjected } }',
        token=token,
    )

    assert granted.json()["data"]["grantConsent"]["receiptId"]
    assert withdrawn.json()["data"]["withdrawConsent"]["withdrawn"] is True
    assert objected.json()["data"]["objectToProcessing"]["alreadyObjected"] is False
    history = (
        await api.graphql(
            "{ me { consentHistory { change } objections { purpose } } }", token=token
        )
    ).json()["data"]["me"]
    assert [e["change"] for e in history["consentHistory"]] == ["GRANTED", "WITHDRAWN"]
    assert history["objections"] == [{"purpose": "data_quality"}]


async def test_export_document_is_complete_for_the_fixture_member(
    api: Api, db: AsyncEngine
) -> None:
    member_id, offers = await fixture_member(db)

    body = (await api.graphql("mutation { exportMyData }", token=token_for(member_id))).json()

    document = body["data"]["exportMyData"]
    json.dumps(document)  # plain JSON all the way down
    assert document["format"] == "tillit-member-export/1"
    assert document["member"]["id"] == str(member_id)
    assert document["member"]["address"]["city"] == "Bergen"
    assert {v["field"] for v in document["enriched"]} == {
        "income_band",
        "household_size",
        "lifestyle_segment",
        "interests",
    }
    assert all(v["consent_id"] == str(offers) for v in document["enriched"])
    assert [c["change"] for c in document["consents"]] == ["GRANTED", "GRANTED", "WITHDRAWN"]
    assert document["notices"][0]["new_value"] == "Bergen"
    assert document["objections"][0]["purpose"] == "data_quality"
    assert {p["key"] for p in document["purposes"]} >= {"personalized_offers", "data_quality"}
    assert isinstance(document["access_log"], list)
    [event] = [e for e in await access_events(db) if e["operation"] == "exportMyData"]
    assert event["member_id"] == member_id


async def test_me_export_download_matches_the_mutation(api: Api, db: AsyncEngine) -> None:
    member_id, _ = await fixture_member(db)

    response = await api.http.get(
        "/me/export", headers={"Authorization": f"Bearer {token_for(member_id)}"}
    )

    assert response.status_code == 200
    assert "attachment" in response.headers["content-disposition"]
    document = response.json()
    assert document["member"]["id"] == str(member_id)
    assert len(document["consents"]) == 3


@pytest.mark.parametrize(
    ("who", "status", "code"),
    [
        ("anonymous", 401, "UNAUTHENTICATED"),
        ("app", 403, "FORBIDDEN"),
        ("ghost", 404, "NOT_FOUND"),
        ("expired", 401, "UNAUTHENTICATED"),
    ],
)
async def test_me_export_refusals(
    api: Api, db: AsyncEngine, who: str, status: int, code: str
) -> None:
    headers = {}
    if who == "app":
        headers["Authorization"] = f"Bearer {(await add_client(db, name='shop')).key}"
    elif who == "ghost":
        headers["Authorization"] = f"Bearer {token_for(uuid.uuid4())}"
    elif who == "expired":
        old = mint_member_token(await add_member(db), TEST_SECRET, dt.timedelta(seconds=-120))
        headers["Authorization"] = f"Bearer {old}"

    response = await api.http.get("/me/export", headers=headers)

    assert response.status_code == status
    assert response.json()["errors"][0]["extensions"]["code"] == code


async def test_the_self_service_page_is_served(api: Api) -> None:
    response = await api.http.get("/me")

    assert response.status_code == 200
    assert '<form id="sign-in-form">' in response.text
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]


# -- the isolation rule: every root field and mutation x every caller kind ------------------------

OPERATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "me": ("{ me { id } }", {}),
    "member": (
        'query($other: ID!) { member(id: $other, purpose: "membership_service") { id } }',
        {},
    ),
    "members": (
        'query($other: ID!) { members(ids: [$other], purpose: "membership_service") { id } }',
        {},
    ),
    "purposes": ("{ purposes { key } }", {}),
    "accessLog": ("{ accessLog(first: 1) { edges { cursor } } }", {}),
    "transparencyReport": (
        '{ transparencyReport(from: "2026-01-01T00:00:00Z", to: "2027-01-01T00:00:00Z") '
        "{ accesses } }",
        {},
    ),
    "grantConsent": (
        'mutation($other: ID!) { grantConsent(memberId: $other, purpose: "personalized_offers", '
        'method: EXPLICIT, noticeVersion: "2026-01", channel: "x", evidence: "x") { receiptId } }',
        {},
    ),
    "withdrawConsent": (
        "mutation($other: ID!) { withdrawConsent(memberId: $other, "
        'purpose: "personalized_offers") { withdrawn } }',
        {},
    ),
    "recordEnrichment": (
        "mutation($other: ID!) { recordEnrichment(memberId: $other, purpose: "
        '"personalized_offers", source: "x", values: {incomeBand: "x"}) { written } }',
        {},
    ),
    "recordCleansing": (
        'mutation($other: ID!) { recordCleansing(memberId: $other, field: "city", '
        'newValue: "x", source: "x") { changed } }',
        {},
    ),
    "objectToProcessing": (
        'mutation { objectToProcessing(purpose: "data_quality") { purpose } }',
        {},
    ),
    "exportMyData": ("mutation { exportMyData }", {}),
}

# What a member token may do, and what it meets acting on another member.
MEMBER_ON_OTHER = {
    "me": None,  # only ever themself
    "member": "FORBIDDEN",
    "members": "FORBIDDEN",
    "purposes": None,
    "accessLog": "FORBIDDEN",
    "transparencyReport": "FORBIDDEN",
    "grantConsent": "FORBIDDEN",
    "withdrawConsent": "FORBIDDEN",
    "recordEnrichment": "FORBIDDEN",
    "recordCleansing": "FORBIDDEN",
    "objectToProcessing": None,  # only ever themself
    "exportMyData": None,  # only ever themself
}


@pytest.mark.parametrize("operation", list(OPERATIONS))
async def test_a_member_can_never_reach_another_member(
    api: Api, db: AsyncEngine, operation: str
) -> None:
    me = await add_member(db)
    other = await add_member(db, first_name="Other")
    query, _ = OPERATIONS[operation]
    variables = {"other": str(other)} if "$other" in query else None

    body = (await api.graphql(query, variables, token=token_for(me))).json()

    expected = MEMBER_ON_OTHER[operation]
    if expected is None:
        assert "errors" not in body, body
        assert str(other) not in json.dumps(body)
        assert "Other" not in json.dumps(body)
    else:
        assert body["errors"][0]["extensions"]["code"] == expected
        assert str(other) not in json.dumps(body["data"])
    # nothing about the other member was written or changed
    async with db.connect() as connection:
        touched = await connection.scalar(
            text("SELECT count(*) FROM consent_events WHERE member_id = :m"), {"m": other}
        )
        city = await connection.scalar(text("SELECT city FROM members WHERE id = :m"), {"m": other})
    assert touched == 0
    assert city == "Oslo"


async def test_another_members_refused_attempt_is_shown_without_naming_them(
    api: Api, db: AsyncEngine
) -> None:
    attacker = await add_member(db, first_name="Attacker")
    victim = await add_member(db)
    query, _ = OPERATIONS["grantConsent"]
    await api.graphql(query, {"other": str(victim)}, token=token_for(attacker))

    response = await api.graphql(
        "{ me { accessLog(first: 10) { edges { node { by operation outcome } } } } }",
        token=token_for(victim),
    )
    export = await api.http.get(
        "/me/export", headers={"Authorization": f"Bearer {token_for(victim)}"}
    )

    nodes = [e["node"] for e in response.json()["data"]["me"]["accessLog"]["edges"]]
    attempt = next(n for n in nodes if n["operation"] == "grantConsent")
    assert attempt == {"by": "another member", "operation": "grantConsent", "outcome": "DENIED"}
    assert str(attacker) not in response.text
    assert str(attacker) not in export.text
    exported = [a for a in export.json()["access_log"] if a["operation"] == "grantConsent"]
    assert exported[0]["by"] == "another member"
    audited = [e for e in await access_events(db) if e["operation"] == "grantConsent"]
    assert audited[0]["actor_member_id"] == attacker  # auditors still see who it was


@pytest.mark.parametrize("operation", ["me", "exportMyData"])
@pytest.mark.parametrize("caller", ["app", "auditor", "anonymous", "ghost"])
async def test_member_only_operations_refuse_everyone_else(
    api: Api, db: AsyncEngine, operation: str, caller: str
) -> None:
    token = None
    if caller == "app":
        token = (await add_client(db, name="shop", capabilities=(Capability.CAPTURE_CONSENT,))).key
    elif caller == "auditor":
        token = (await add_client(db, name="dpo", role=Role.AUDITOR, purposes=())).key
    elif caller == "ghost":
        token = token_for(uuid.uuid4())
    query, _ = OPERATIONS[operation]

    body = (await api.graphql(query, token=token)).json()

    expected = {
        "app": "FORBIDDEN",
        "auditor": "FORBIDDEN",
        "anonymous": "UNAUTHENTICATED",
        "ghost": "NOT_FOUND",
    }[caller]
    assert body["errors"][0]["extensions"]["code"] == expected
    assert body["data"] in (None, {operation: None})
    if caller != "anonymous":
        [event] = await access_events(db)
        assert event["operation"] == operation
        assert event["outcome"] in ("DENIED", "NOT_FOUND")


async def test_the_access_log_lists_others_and_the_members_own_visits_apart(
    api: Api, db: AsyncEngine
) -> None:
    member_id = await add_member(db)
    app = await add_client(db, name="Kampanjeverktøy", purposes=("membership_service",))
    token = mint_member_token(member_id, TEST_SECRET, dt.timedelta(minutes=5))
    await api.graphql(
        'query($id: ID!) { member(id: $id, purpose: "membership_service") { email } }',
        {"id": str(member_id)},
        token=app.key,
    )
    await api.graphql("{ me { id } }", token=token)

    response = await api.graphql(
        "{ me { others: accessLog(by: OTHERS) { edges { node { by operation } } } "
        "own: accessLog(by: ME) { edges { node { by operation } } } "
        "all: accessLog { edges { node { by } } } } }",
        token=token,
    )

    me = response.json()["data"]["me"]
    assert [e["node"] for e in me["others"]["edges"]] == [
        {"by": "Kampanjeverktøy", "operation": "member"}
    ]
    assert [e["node"] for e in me["own"]["edges"]] == [{"by": "you", "operation": "me"}]
    assert len(me["all"]["edges"]) == 2
