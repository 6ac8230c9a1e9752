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
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from gateway.access.caches import TtlCache
from gateway.domain import Anonymous, Capability, ClientPrincipal, MemberPrincipal, Principal, Role
from gateway.errors import Unauthenticated
from gateway.settings import DEV_MEMBER_TOKEN_SECRET, Settings
from gateway.store.db import Raw
from gateway.store.uuids import canonical_uuid

KEY_PREFIX = "tk"
_KEY_SHAPE = re.compile(r"^tk_([a-z2-7]{12})_([A-Za-z0-9_-]{43})$")
# Compared against when no client has the presented key id, so both paths cost the same.
_DUMMY_HASH = hashlib.sha256(b"no such key").hexdigest()
# Every request authenticates: one statement, raw SQL (the hot path; see gateway.store.db.Raw).
# A rotated client's previous key still works until its overlap ends (see access.clients).
_CLIENT_BY_KEY_ID = (
    "SELECT c.id, c.name, c.role, c.capabilities, c.disabled_at, "
    "CASE WHEN c.key_id = $1 THEN c.key_hash ELSE c.previous_key_hash END AS key_hash, "
    "coalesce(array_agg(p.purpose_key) FILTER (WHERE p.purpose_key IS NOT NULL), '{}') "
    "AS purposes FROM clients c LEFT JOIN client_purposes p ON p.client_id = c.id "
    "WHERE c.key_id = $1 OR (c.previous_key_id = $1 AND c.previous_key_expires_at > now()) "
    "GROUP BY c.id"
)
# A member token from an identity provider names its own subject; enrolment linked it.
_MEMBER_BY_SUBJECT = "SELECT id FROM members WHERE external_subject = $1"

MEMBER_TOKEN_ALGORITHM = "HS256"  # noqa: S105  # an algorithm name, not a secret
MEMBER_TOKEN_ISSUER = "tillit"  # noqa: S105  # a claim value, not a secret
MEMBER_TOKEN_AUDIENCE = "tillit-member"  # noqa: S105  # a claim value, not a secret
DEFAULT_LEEWAY_SECONDS = 5
_ASYMMETRIC: dict[str, type] = {"RS256": RSAPublicKey, "ES256": EllipticCurvePublicKey}


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


async def authenticate_key(connection: Raw, key: str) -> ClientPrincipal:
    """The client holding `key`, or Unauthenticated with no hint about why."""
    match = _KEY_SHAPE.match(key)
    if match is None:
        raise Unauthenticated()
    rows = await connection.fetch(_CLIENT_BY_KEY_ID, match.group(1))
    row = rows[0] if rows else None
    stored = row["key_hash"] if row is not None else _DUMMY_HASH
    if not hmac.compare_digest(hash_key(key), stored) or row is None or row["disabled_at"]:
        raise Unauthenticated()
    return ClientPrincipal(
        id=row["id"],
        name=row["name"],
        role=Role(row["role"]),
        purposes=frozenset(row["purposes"]),
        capabilities=frozenset(Capability(c) for c in row["capabilities"]),
    )


# -- Member tokens --------------------------------------------------------------------------------


def mint_member_token(
    member_id: uuid.UUID,
    secret: str,
    ttl: dt.timedelta,
    *,
    issuer: str = MEMBER_TOKEN_ISSUER,
    audience: str = MEMBER_TOKEN_AUDIENCE,
) -> str:
    now = dt.datetime.now(dt.UTC)
    claims = {
        "sub": str(member_id),
        "iss": issuer,
        "aud": audience,
        "iat": now,
        "nbf": now,
        "exp": now + ttl,
    }
    return jwt.encode(claims, secret, algorithm=MEMBER_TOKEN_ALGORITHM)


@dataclass(frozen=True)
class TokenKeys:
    """What member tokens are verified with: an HS256 secret (development, `tillit token`) and/or
    the public keys of an external identity provider (RS256/ES256, from a PEM file or a JWKS)."""

    secret: str | None = None
    public_keys: Mapping[str | None, Any] = field(default_factory=dict)
    issuer: str = MEMBER_TOKEN_ISSUER
    audience: str = MEMBER_TOKEN_AUDIENCE
    # Seconds a token is still taken past `exp` (and before `nbf`), for clocks that disagree.
    leeway_seconds: int = DEFAULT_LEEWAY_SECONDS

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenKeys:
        """The keys member tokens are verified with (read from files: call once, at start)."""
        secret = (
            settings.member_token_secret.get_secret_value()
            if settings.member_token_secret
            else None
        )
        if secret is None and settings.dev:
            secret = DEV_MEMBER_TOKEN_SECRET
        return cls.load(
            secret=secret,
            public_key_file=settings.member_token_public_key_file,
            jwks_file=settings.member_token_jwks_file,
            issuer=settings.member_token_issuer,
            audience=settings.member_token_audience,
            leeway_seconds=settings.member_token_leeway_seconds,
        )

    @classmethod
    def load(
        cls,
        *,
        secret: str | None,
        public_key_file: Path | None = None,
        jwks_file: Path | None = None,
        issuer: str = MEMBER_TOKEN_ISSUER,
        audience: str = MEMBER_TOKEN_AUDIENCE,
        leeway_seconds: int = DEFAULT_LEEWAY_SECONDS,
    ) -> TokenKeys:
        keys: dict[str | None, Any] = {}
        if public_key_file is not None:
            keys[None] = load_pem_public_key(public_key_file.read_bytes())
        if jwks_file is not None:
            for jwk in jwt.PyJWKSet.from_json(jwks_file.read_text(encoding="utf-8")).keys:
                keys[jwk.key_id] = jwk.key
        return cls(
            secret=secret,
            public_keys=keys,
            issuer=issuer,
            audience=audience,
            leeway_seconds=leeway_seconds,
        )

    def key_for(self, header: Mapping[str, Any]) -> tuple[Any, str]:
        """The key and the one algorithm a token with this header may be checked with."""
        algorithm = header.get("alg")
        if algorithm == "HS256" and self.secret:
            return self.secret, "HS256"
        if algorithm in _ASYMMETRIC and self.public_keys:
            key = self.public_keys.get(header.get("kid")) or self.public_keys.get(None)
            if key is None and len(self.public_keys) == 1:
                key = next(iter(self.public_keys.values()))
            # The key's type must match the algorithm: no RSA key for an EC token, and never a
            # public key used as an HMAC secret (algorithm confusion).
            if key is not None and isinstance(key, _ASYMMETRIC[algorithm]):
                return key, algorithm
        raise Unauthenticated()


def verify_member_token(token: str, keys: TokenKeys | str) -> MemberPrincipal | ExternalSubject:
    """The member a token speaks for; refuses expired, not-yet-valid, unsigned (`alg: none`),
    wrongly signed or otherwise odd tokens."""
    if isinstance(keys, str):
        keys = TokenKeys(secret=keys)
    try:
        key, algorithm = keys.key_for(jwt.get_unverified_header(token))
        claims = jwt.decode(
            token,
            key,
            algorithms=[algorithm],
            audience=keys.audience,
            issuer=keys.issuer,
            options={"require": ["exp", "sub"]},
            leeway=dt.timedelta(seconds=keys.leeway_seconds),
        )
        subject = str(claims["sub"])
    except (jwt.PyJWTError, ValueError):
        raise Unauthenticated() from None
    if algorithm != MEMBER_TOKEN_ALGORITHM:
        # The identity provider's token names its own subject, whatever it looks like (Entra
        # ID's `oid` is a UUID): never a member id, always looked up as an external subject.
        return ExternalSubject(subject)
    # Tillit's own token (`tillit token`, development) carries the member id, canonical only.
    try:
        return MemberPrincipal(member_id=canonical_uuid(subject))
    except ValueError:
        raise Unauthenticated() from None


@dataclass(frozen=True, slots=True)
class ExternalSubject:
    """A verified token whose `sub` is the identity provider's, not a member id: `authenticate`
    maps it to the member enrolment linked it to."""

    subject: str


# The namespace of the ids that unlinked identities act under (see member_of_subject).
_UNLINKED = uuid.UUID("2c8e3a51-4f0b-5d7e-9a6c-1b2d3e4f5a6b")


async def member_of_subject(connection: Raw, subject: str) -> MemberPrincipal:
    """The member an identity provider's subject was linked to at enrolment.

    A subject linked to no member (never enrolled, or erased) acts as a member nobody is: its id
    is a name-based UUID (version 5) of the subject, which no member id (random, version 4) can
    equal. Public fields answer; everything of a member is NOT_FOUND, as for an erased member's
    id, and each such identity has a rate limit of its own."""
    rows = await connection.fetch(_MEMBER_BY_SUBJECT, subject[:255])
    if not rows:
        return MemberPrincipal(member_id=uuid.uuid5(_UNLINKED, subject))
    return MemberPrincipal(member_id=rows[0]["id"])


def looks_like_jwt(credential: str) -> bool:
    return credential.count(".") == 2 and not credential.startswith(f"{KEY_PREFIX}_")


async def authenticate(
    connection: Raw,
    authorization: str | None,
    *,
    token_secret: str | TokenKeys,
    clients: TtlCache[str, ClientPrincipal] | None = None,
) -> Principal:
    """Resolve an `Authorization` header to a principal; Anonymous when there is none."""
    if authorization is None:
        return Anonymous()
    scheme, _, credential = authorization.strip().partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential or len(credential) > 4096:
        raise Unauthenticated()
    if looks_like_jwt(credential):
        verified = verify_member_token(credential, token_secret)
        if isinstance(verified, ExternalSubject):
            return await member_of_subject(connection, verified.subject)
        return verified
    if clients is None:
        return await authenticate_key(connection, credential)
    # Only successful lookups are kept (by the key's hash), so a new key works at once and
    # failures cost a lookup every time.
    return await clients.get(hash_key(credential), lambda: authenticate_key(connection, credential))
