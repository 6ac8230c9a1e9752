"""Who is calling: API keys for clients, signed tokens for members, and the principals they yield.

An API key reads `tk_<key id>_<secret>`. The key id finds the client's row; the whole key is
compared, hashed, in constant time. Keys carry 256 random bits, so a fast hash (SHA-256) is the
right tool: slow password hashes protect guessable secrets, and would cost every request
milliseconds.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import re
import secrets
import uuid
from dataclasses import dataclass

import jwt
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway import models
from gateway.domain import Capability, Role
from gateway.errors import Unauthenticated

KEY_PREFIX = "tk"
_KEY_SHAPE = re.compile(r"^tk_([a-z2-7]{12})_([A-Za-z0-9_-]{43})$")
# Compared against when no client has the presented key id, so both paths cost the same.
_DUMMY_HASH = hashlib.sha256(b"no such key").hexdigest()

MEMBER_TOKEN_ALGORITHM = "HS256"  # noqa: S105  # an algorithm name, not a secret
MEMBER_TOKEN_ISSUER = "tillit"  # noqa: S105  # a claim value, not a secret
MEMBER_TOKEN_AUDIENCE = "tillit-member"  # noqa: S105  # a claim value, not a secret


@dataclass(frozen=True, slots=True)
class Anonymous:
    """No credentials were presented."""


@dataclass(frozen=True, slots=True)
class ClientPrincipal:
    id: uuid.UUID
    name: str
    role: Role
    purposes: frozenset[str]
    capabilities: frozenset[Capability]


@dataclass(frozen=True, slots=True)
class MemberPrincipal:
    member_id: uuid.UUID


@dataclass(frozen=True, slots=True)
class SystemPrincipal:
    """Tillit itself, acting from the command line or a scheduled job (never over HTTP)."""

    job: str


Principal = Anonymous | ClientPrincipal | MemberPrincipal | SystemPrincipal


# -- API keys -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewKey:
    key: str
    key_id: str
    key_hash: str


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key() -> NewKey:
    """A fresh API key; only its hash and id are ever stored."""
    key_id = base64.b32encode(secrets.token_bytes(8)).decode().lower()[:12]
    key = f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
    return NewKey(key=key, key_id=key_id, key_hash=hash_key(key))


async def authenticate_key(connection: AsyncConnection, key: str) -> ClientPrincipal:
    """The client holding `key`, or Unauthenticated with no hint about why."""
    match = _KEY_SHAPE.match(key)
    if match is None:
        raise Unauthenticated()
    c = models.Client
    row = (
        await connection.execute(
            select(c.id, c.name, c.role, c.key_hash, c.capabilities, c.disabled_at).where(
                c.key_id == match.group(1)
            )
        )
    ).first()
    stored = row.key_hash if row is not None else _DUMMY_HASH
    if not hmac.compare_digest(hash_key(key), stored) or row is None or row.disabled_at:
        raise Unauthenticated()
    purposes = (
        await connection.execute(
            select(models.ClientPurpose.purpose_key).where(models.ClientPurpose.client_id == row.id)
        )
    ).scalars()
    return ClientPrincipal(
        id=row.id,
        name=row.name,
        role=Role(row.role),
        purposes=frozenset(purposes),
        capabilities=frozenset(Capability(c) for c in row.capabilities),
    )


# -- Member tokens --------------------------------------------------------------------------------


def mint_member_token(member_id: uuid.UUID, secret: str, ttl: dt.timedelta) -> str:
    now = dt.datetime.now(dt.UTC)
    claims = {
        "sub": str(member_id),
        "iss": MEMBER_TOKEN_ISSUER,
        "aud": MEMBER_TOKEN_AUDIENCE,
        "iat": now,
        "nbf": now,
        "exp": now + ttl,
    }
    return jwt.encode(claims, secret, algorithm=MEMBER_TOKEN_ALGORITHM)


def verify_member_token(token: str, secret: str) -> MemberPrincipal:
    """The member a token speaks for; refuses expired, unsigned, wrongly signed or odd tokens."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[MEMBER_TOKEN_ALGORITHM],  # never "none", never a key-confusion algorithm
            audience=MEMBER_TOKEN_AUDIENCE,
            issuer=MEMBER_TOKEN_ISSUER,
            options={"require": ["exp", "sub"]},
            leeway=dt.timedelta(seconds=30),
        )
        return MemberPrincipal(member_id=uuid.UUID(str(claims["sub"])))
    except (jwt.PyJWTError, ValueError):
        raise Unauthenticated() from None


def looks_like_jwt(credential: str) -> bool:
    return credential.count(".") == 2 and not credential.startswith(f"{KEY_PREFIX}_")


async def authenticate(
    connection: AsyncConnection, authorization: str | None, *, token_secret: str
) -> Principal:
    """Resolve an `Authorization` header to a principal; Anonymous when there is none."""
    if authorization is None:
        return Anonymous()
    scheme, _, credential = authorization.strip().partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential or len(credential) > 4096:
        raise Unauthenticated()
    if looks_like_jwt(credential):
        return verify_member_token(credential, token_secret)
    return await authenticate_key(connection, credential)
