"""Authentication: API keys for clients and signed tokens for members."""

from __future__ import annotations

import datetime as dt
import uuid

import jwt
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.auth import (
    MEMBER_TOKEN_AUDIENCE,
    MEMBER_TOKEN_ISSUER,
    ClientPrincipal,
    MemberPrincipal,
    authenticate,
    generate_key,
    mint_member_token,
    verify_member_token,
)
from gateway.domain import Role
from gateway.errors import Unauthenticated
from tests.conftest import TEST_SECRET, add_client


async def test_good_key_yields_the_client_with_its_purposes(db: AsyncEngine) -> None:
    issued = await add_client(db, purposes=("membership_service", "personalized_offers"))

    async with db.connect() as connection:
        principal = await authenticate(connection, f"Bearer {issued.key}", token_secret=TEST_SECRET)

    assert isinstance(principal, ClientPrincipal)
    assert principal.id == issued.id
    assert principal.role is Role.APP
    assert principal.purposes == {"membership_service", "personalized_offers"}


async def test_key_is_stored_only_as_a_hash(db: AsyncEngine) -> None:
    issued = await add_client(db)

    async with db.connect() as connection:
        stored = (await connection.execute(text("SELECT key_id, key_hash FROM clients"))).one()

    assert issued.key not in stored
    assert issued.key.split("_")[2] not in stored.key_hash


def _tampered(key: str) -> str:
    last = "A" if key[-1] != "A" else "B"
    return key[:-1] + last


@pytest.mark.parametrize(
    "header",
    [
        "Bearer {wrong_secret}",
        "Bearer {unknown_id}",
        "Bearer not-a-key",
        "Basic {key}",
        "Bearer ",
        "{key}",
    ],
    ids=["wrong-secret", "unknown-key-id", "malformed", "wrong-scheme", "empty", "no-scheme"],
)
async def test_bad_key_is_refused_without_hint(db: AsyncEngine, header: str) -> None:
    issued = await add_client(db)
    unknown = generate_key().key
    presented = header.format(
        wrong_secret=_tampered(issued.key), unknown_id=unknown, key=issued.key
    )

    async with db.connect() as connection:
        with pytest.raises(Unauthenticated) as caught:
            await authenticate(connection, presented, token_secret=TEST_SECRET)

    assert caught.value.message == Unauthenticated.default_message


async def test_disabled_client_is_refused(db: AsyncEngine) -> None:
    issued = await add_client(db)
    async with db.begin() as connection:
        await connection.execute(text("UPDATE clients SET disabled_at = now()"))

    async with db.connect() as connection:
        with pytest.raises(Unauthenticated):
            await authenticate(connection, f"Bearer {issued.key}", token_secret=TEST_SECRET)


def test_member_token_round_trip() -> None:
    member_id = uuid.uuid4()
    token = mint_member_token(member_id, TEST_SECRET, dt.timedelta(minutes=5))

    assert verify_member_token(token, TEST_SECRET) == MemberPrincipal(member_id)


def _claims(**overrides: object) -> dict[str, object]:
    now = dt.datetime.now(dt.UTC)
    claims: dict[str, object] = {
        "sub": str(uuid.uuid4()),
        "iss": MEMBER_TOKEN_ISSUER,
        "aud": MEMBER_TOKEN_AUDIENCE,
        "iat": now,
        "exp": now + dt.timedelta(minutes=5),
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


@pytest.mark.parametrize(
    "token",
    [
        jwt.encode(_claims(exp=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)), TEST_SECRET),
        jwt.encode(_claims(nbf=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)), TEST_SECRET),
        jwt.encode(_claims(), "another-secret-that-is-long-enough-for-hs256-keys"),
        jwt.encode(_claims(), None, algorithm="none"),
        jwt.encode(_claims(exp=None), TEST_SECRET),
        jwt.encode(_claims(sub=None), TEST_SECRET),
        jwt.encode(_claims(sub="not-a-uuid"), TEST_SECRET),
        jwt.encode(_claims(aud="someone-else"), TEST_SECRET),
        "eyJhbGciOiJIUzI1NiJ9.garbage.garbage",
    ],
    ids=[
        "expired",
        "not-yet-valid",
        "wrong-signature",
        "alg-none",
        "no-exp",
        "no-sub",
        "sub-not-uuid",
        "wrong-audience",
        "garbage",
    ],
)
def test_bad_member_token_is_refused(token: str) -> None:
    with pytest.raises(Unauthenticated):
        verify_member_token(token, TEST_SECRET)
