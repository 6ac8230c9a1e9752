"""Reading a member under a declared purpose: what is released, what is refused and why."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.access.auth import mint_member_token
from gateway.domain import Role
from tests.conftest import TEST_SECRET, Api, add_client, add_member

BASE = """
query($id: ID!, $purpose: String!) {
  member(id: $id, purpose: $purpose) {
    id firstName lastName email phone tier points memberSince membershipStatus
    address { street postalCode city country }
  }
}
"""


async def test_app_reads_base_fields_under_a_contract_purpose(api: Api, db: AsyncEngine) -> None:
    client = await add_client(db)
    member_id = await add_member(db, first_name="Kari", email="kari@example.org", points=1200)

    response = await api.graphql(
        BASE, {"id": str(member_id), "purpose": "membership_service"}, token=client.key
    )

    assert response.status_code == 200
    body = response.json()
    assert "errors" not in body
    member = body["data"]["member"]
    assert member["id"] == str(member_id)
    assert member["firstName"] == "Kari"
    assert member["email"] == "kari@example.org"
    assert member["points"] == 1200
    assert member["tier"] == "GOLD"
    assert member["membershipStatus"] == "ACTIVE"
    assert member["memberSince"] == dt.date.today().isoformat()
    assert member["address"] == {
        "street": "Storgata 1",
        "postalCode": "0150",
        "city": "Oslo",
        "country": "NO",
    }


async def test_field_outside_the_purpose_is_null_with_a_reason(api: Api, db: AsyncEngine) -> None:
    client = await add_client(db)
    member_id = await add_member(db)

    response = await api.graphql(
        'query($id: ID!) { member(id: $id, purpose: "membership_service") '
        "{ email deceased incomeBand } }",
        {"id": str(member_id)},
        token=client.key,
    )

    body = response.json()
    assert body["data"]["member"]["email"].endswith("@example.org")
    assert body["data"]["member"]["deceased"] is None
    assert body["data"]["member"]["incomeBand"] is None
    withheld = {tuple(e["path"]): e["extensions"] for e in body["errors"]}
    assert withheld == {
        ("member", "deceased"): {
            "code": "CATEGORY_NOT_IN_PURPOSE",
            "purpose": "membership_service",
        },
        ("member", "incomeBand"): {
            "code": "CATEGORY_NOT_IN_PURPOSE",
            "purpose": "membership_service",
        },
    }


async def test_fields_asked_through_fragments_are_decided_too(api: Api, db: AsyncEngine) -> None:
    client = await add_client(db)
    member_id = await add_member(db)

    response = await api.graphql(
        'query($id: ID!) { member(id: $id, purpose: "membership_service") '
        "{ ...Contact ... on Member { deceased } } } fragment Contact on Member { email }",
        {"id": str(member_id)},
        token=client.key,
    )

    body = response.json()
    assert body["data"]["member"]["email"].endswith("@example.org")
    assert [e["extensions"]["code"] for e in body["errors"]] == ["CATEGORY_NOT_IN_PURPOSE"]


async def test_purpose_the_client_may_not_use_is_refused(api: Api, db: AsyncEngine) -> None:
    client = await add_client(db, purposes=("membership_service",))
    member_id = await add_member(db)

    response = await api.graphql(
        BASE, {"id": str(member_id), "purpose": "data_quality"}, token=client.key
    )

    body = response.json()
    assert body["data"] == {"member": None}
    assert body["errors"][0]["extensions"] == {
        "code": "PURPOSE_NOT_PERMITTED",
        "purpose": "data_quality",
    }


async def test_unknown_member_is_not_found(api: Api, db: AsyncEngine) -> None:
    client = await add_client(db)

    response = await api.graphql(
        BASE, {"id": str(uuid.uuid4()), "purpose": "membership_service"}, token=client.key
    )

    body = response.json()
    assert body["data"] == {"member": None}
    assert body["errors"][0]["extensions"]["code"] == "NOT_FOUND"


async def test_member_id_of_the_wrong_form_is_bad_user_input(api: Api, db: AsyncEngine) -> None:
    client = await add_client(db)

    response = await api.graphql(
        BASE, {"id": "42; DROP TABLE members", "purpose": "membership_service"}, token=client.key
    )

    body = response.json()
    assert body["data"] == {"member": None}
    assert body["errors"][0]["extensions"] == {"code": "BAD_USER_INPUT", "argument": "id"}


async def test_auditor_may_not_read_profiles(api: Api, db: AsyncEngine) -> None:
    auditor = await add_client(db, name="dpo", role=Role.AUDITOR, purposes=())
    member_id = await add_member(db)

    response = await api.graphql(
        BASE, {"id": str(member_id), "purpose": "membership_service"}, token=auditor.key
    )

    assert response.json()["errors"][0]["extensions"]["code"] == "FORBIDDEN"


async def test_member_token_cannot_read_through_member(api: Api, db: AsyncEngine) -> None:
    member_id = await add_member(db)
    other = await add_member(db)
    token = mint_member_token(member_id, TEST_SECRET, dt.timedelta(minutes=5))

    for target in (member_id, other):
        response = await api.graphql(
            BASE, {"id": str(target), "purpose": "membership_service"}, token=token
        )
        body = response.json()
        assert body["data"] == {"member": None}
        assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN"
