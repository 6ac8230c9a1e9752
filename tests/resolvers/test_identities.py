"""Who a token speaks for: an identity provider's subject is looked up as one, whatever its shape;
member ids come only in Tillit's own tokens, spelled one way; an identity linked to no member
reads public fields and finds no member."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.access.auth import MEMBER_TOKEN_AUDIENCE, MEMBER_TOKEN_ISSUER
from gateway.domain import Capability
from tests.conftest import Api, add_client, add_member, make_settings, member_token, serving

PROVIDER = ec.generate_private_key(ec.SECP256R1())
ENROLL = """
mutation($subject: String!, $email: String!) {
  enrollMember(member: { firstName: "Kari", lastName: "Nordmann", email: $email },
               termsVersion: "2026-01", channel: "web-signup", externalSubject: $subject,
               purpose: "membership_service") { memberId }
}
"""


def provider_token(subject: str) -> str:
    now = dt.datetime.now(dt.UTC)
    claims = {
        "sub": subject,
        "iss": MEMBER_TOKEN_ISSUER,
        "aud": MEMBER_TOKEN_AUDIENCE,
        "iat": now,
        "exp": now + dt.timedelta(minutes=5),
    }
    return jwt.encode(claims, PROVIDER, algorithm="ES256")


@pytest.fixture
async def gateway(db: AsyncEngine, gateway_url: str, tmp_path: Path) -> AsyncIterator[Api]:
    """The gateway with the provider's key beside Tillit's own secret."""
    pem = tmp_path / "provider.pem"
    pem.write_bytes(
        PROVIDER.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    settings = make_settings(gateway_url, member_token_public_key_file=pem)
    async with serving(settings, gateway_url) as api:
        yield api


async def enrol(api: Api, db: AsyncEngine, subject: str) -> str:
    shop = (
        await add_client(db, name=f"shop-{uuid.uuid4().hex[:6]}", capabilities=(Capability.ENROLL,))
    ).key
    email = f"kari.{uuid.uuid4().hex[:8]}@example.no"
    response = await api.graphql(ENROLL, {"subject": subject, "email": email}, token=shop)
    member_id: str = response.json()["data"]["enrollMember"]["memberId"]
    return member_id


async def test_a_providers_subject_equal_to_a_member_id_does_not_read_that_member(
    gateway: Api, db: AsyncEngine
) -> None:
    victim = await add_member(db)

    response = await gateway.graphql("{ me { id } }", token=provider_token(str(victim)))

    assert response.status_code == 200
    assert response.json()["data"]["me"] is None
    assert response.json()["errors"][0]["extensions"]["code"] == "NOT_FOUND"


async def test_a_member_linked_to_a_uuid_shaped_subject_reads_themself(
    gateway: Api, db: AsyncEngine
) -> None:
    oid = str(uuid.uuid4())  # Entra ID's `oid` is a UUID
    member_id = await enrol(gateway, db, oid)

    response = await gateway.graphql("{ me { id } }", token=provider_token(oid))

    assert response.json()["data"]["me"]["id"] == member_id


async def test_a_providers_subject_still_reaches_its_member(gateway: Api, db: AsyncEngine) -> None:
    member_id = await enrol(gateway, db, "auth0|5f7c8ec7c33c6c004bbafe82")

    mine = await gateway.graphql(
        "{ me { id } }", token=provider_token("auth0|5f7c8ec7c33c6c004bbafe82")
    )

    assert mine.json()["data"]["me"]["id"] == member_id


async def test_an_unlinked_identity_reads_public_fields_and_finds_no_member(gateway: Api) -> None:
    response = await gateway.graphql(
        "{ purposes { key } me { id } }", token=provider_token("auth0|never-enrolled")
    )

    body = response.json()
    assert response.status_code == 200
    assert {p["key"] for p in body["data"]["purposes"]} >= {"membership_service"}
    assert body["data"]["me"] is None
    assert [e["extensions"]["code"] for e in body["errors"]] == ["NOT_FOUND"]


@pytest.mark.parametrize(
    "spelling",
    [
        lambda i: i.upper(),
        lambda i: f"urn:uuid:{i}",
        lambda i: i.replace("-", ""),
        lambda i: "{" + i + "}",
    ],
)
async def test_member_ids_are_taken_in_their_canonical_form_only(
    gateway: Api, db: AsyncEngine, spelling: object
) -> None:
    member_id = str(await add_member(db))
    reader = (await add_client(db, name="reader")).key
    other = spelling(member_id)  # type: ignore[operator]

    read = await gateway.graphql(
        'query($id: ID!) { member(id: $id, purpose: "membership_service") { id } }',
        {"id": other},
        token=reader,
    )
    own = await gateway.graphql("{ me { id } }", token=member_token(uuid.UUID(member_id)))

    assert read.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert "canonical form" in read.json()["errors"][0]["message"]
    assert own.json()["data"]["me"]["id"] == member_id
