"""Authentication: API keys for clients and signed tokens for members."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import uuid
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.access.auth import (
    MEMBER_TOKEN_AUDIENCE,
    MEMBER_TOKEN_ISSUER,
    ExternalSubject,
    TokenKeys,
    authenticate,
    generate_key,
    mint_member_token,
    verify_member_token,
)
from gateway.domain import ClientPrincipal, MemberPrincipal, Role
from gateway.errors import Unauthenticated
from gateway.store.db import raw_of
from tests.conftest import TEST_SECRET, add_client, make_settings


async def test_good_key_yields_the_client_with_its_purposes(db: AsyncEngine) -> None:
    issued = await add_client(db, purposes=("membership_service", "personalized_offers"))

    async with db.connect() as connection:
        principal = await authenticate(
            await raw_of(connection), f"Bearer {issued.key}", token_secret=TEST_SECRET
        )

    assert isinstance(principal, ClientPrincipal)
    assert principal.id == issued.id
    assert principal.role is Role.APP
    assert principal.purposes == {"membership_service", "personalized_offers"}


async def test_key_is_stored_only_as_a_hash(db: AsyncEngine) -> None:
    issued = await add_client(db)

    async with db.connect() as connection:
        stored = (await connection.execute(text("SELECT key_id, key_hash FROM clients"))).one()

    assert issued.key not in stored
    assert issued.key.split("_", 2)[2] not in stored.key_hash  # the secret may hold "_"


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
            await authenticate(await raw_of(connection), presented, token_secret=TEST_SECRET)

    assert caught.value.message == Unauthenticated.default_message


async def test_disabled_client_is_refused(db: AsyncEngine) -> None:
    issued = await add_client(db)
    async with db.begin() as connection:
        await connection.execute(text("UPDATE clients SET disabled_at = now()"))

    async with db.connect() as connection:
        with pytest.raises(Unauthenticated):
            await authenticate(
                await raw_of(connection), f"Bearer {issued.key}", token_secret=TEST_SECRET
            )


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
        "wrong-audience",
        "garbage",
    ],
)
def test_bad_member_token_is_refused(token: str) -> None:
    with pytest.raises(Unauthenticated):
        verify_member_token(token, TEST_SECRET)


@pytest.mark.parametrize(
    "subject",
    [
        "auth0|5f7c8ec7c33c6c004bbafe82",
        "urn:uuid:566d4c1b-0374-4a00-b4d1-b9c1844fc311",
        "566d4c1b03744a00b4d1b9c1844fc311",
        "566D4C1B-0374-4A00-B4D1-B9C1844FC311",
        "{566d4c1b-0374-4a00-b4d1-b9c1844fc311}",
    ],
)
def test_tillits_own_tokens_name_a_member_id_in_its_canonical_form_only(subject: str) -> None:
    """Member ids come only in Tillit's own (HS256) tokens, and only spelled one way."""
    token = jwt.encode(_claims(sub=subject), TEST_SECRET)

    with pytest.raises(Unauthenticated):
        verify_member_token(token, TEST_SECRET)


@pytest.mark.parametrize(("expired_ago", "accepted"), [(3, True), (10, False), (30, False)])
def test_a_token_is_taken_past_its_expiry_only_within_the_default_leeway(
    expired_ago: int, accepted: bool
) -> None:
    """The default leeway is 5 s (TILLIT_MEMBER_TOKEN_LEEWAY_SECONDS)."""
    member = uuid.uuid4()
    token = jwt.encode(
        _claims(sub=str(member), exp=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=expired_ago)),
        TEST_SECRET,
    )

    if accepted:
        assert verify_member_token(token, TEST_SECRET).member_id == member
    else:
        with pytest.raises(Unauthenticated):
            verify_member_token(token, TEST_SECRET)


def test_the_leeway_is_a_setting() -> None:
    token = jwt.encode(_claims(exp=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)), TEST_SECRET)
    strict = TokenKeys.from_settings(make_settings(member_token_leeway_seconds=0))
    lenient = TokenKeys.from_settings(make_settings(member_token_leeway_seconds=60))

    with pytest.raises(Unauthenticated):
        verify_member_token(token, strict)
    assert verify_member_token(token, lenient)


# -- tokens from an external identity provider (RS256 / ES256) -----------------------------------


def _pem(public: Any) -> bytes:
    return public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _idp_token(key: Any, algorithm: str, **overrides: object) -> str:
    return jwt.encode(_claims(**overrides), key, algorithm=algorithm, headers={"kid": "idp-1"})


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
def test_tokens_of_an_external_provider_verify_with_its_pem_key(
    tmp_path: Path, rsa_key: Any, ec_key: Any, algorithm: str
) -> None:
    private = rsa_key if algorithm == "RS256" else ec_key
    pem = tmp_path / "idp.pem"
    pem.write_bytes(_pem(private.public_key()))
    keys = TokenKeys.load(secret=None, public_key_file=pem)
    member_id = uuid.uuid4()

    principal = verify_member_token(_idp_token(private, algorithm, sub=str(member_id)), keys)

    # A provider's subject is looked up as such, even when it is shaped like a member id.
    assert principal == ExternalSubject(str(member_id))


def test_tokens_verify_with_a_jwks_by_key_id(tmp_path: Path, ec_key: Any) -> None:
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key()))
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{**jwk, "kid": "idp-1", "alg": "ES256"}]}))
    keys = TokenKeys.load(secret=None, jwks_file=jwks)

    assert isinstance(verify_member_token(_idp_token(ec_key, "ES256"), keys), ExternalSubject)


def test_external_tokens_are_refused_when_misused(
    tmp_path: Path, rsa_key: Any, ec_key: Any
) -> None:
    pem = tmp_path / "idp.pem"
    pem.write_bytes(_pem(rsa_key.public_key()))
    keys = TokenKeys.load(secret=None, public_key_file=pem)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    refused = [
        _idp_token(other, "RS256"),  # signed by someone else
        _idp_token(ec_key, "ES256"),  # an EC token where the provider's key is RSA
        _idp_token(rsa_key, "RS256", exp=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)),
        # algorithm confusion: HS256 with the public key's PEM as the "secret"
        _hs_with_public_key(rsa_key),
        jwt.encode(_claims(), None, algorithm="none"),
        jwt.encode(_claims(), TEST_SECRET),  # HS256 is off when no secret is configured
    ]
    for token in refused:
        with pytest.raises(Unauthenticated):
            verify_member_token(token, keys)


def _hs_with_public_key(private: Any) -> str:
    """A token HMAC-signed with the provider's public key, as an attacker would forge it."""
    header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")
    body = base64.urlsafe_b64encode(
        json.dumps(_claims(), default=lambda v: int(v.timestamp())).encode()
    ).rstrip(b"=")
    signed = header + b"." + body
    mac = hmac.new(_pem(private.public_key()), signed, hashlib.sha256).digest()
    return (signed + b"." + base64.urlsafe_b64encode(mac).rstrip(b"=")).decode()
