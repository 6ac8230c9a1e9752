"""Granting and withdrawing consent, and purging the enriched values a consent no longer covers.

Every change for one (member, purpose) holds an advisory lock until its transaction ends, so
concurrent grants and withdrawals apply one after another, in commit order.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.domain import (
    ActorKind,
    ConsentEventKind,
    ConsentMethod,
    EnrichedField,
    ErrorCode,
    LegalBasis,
    MembershipStatus,
    Purpose,
    consent_state_at,
)
from gateway.errors import BadUserInput, NotFound, Refused
from gateway.records.consents import (
    Actor,
    ConsentEventRecord,
    append_event,
    current_event,
    event_by_idempotency_key,
    lock_consent,
    withdraw_if_in_force,
)
from gateway.records.enrichment import purge_uncovered
from gateway.records.locks import Hold
from gateway.store.db import Raw

MAX_EVIDENCE = 20_000
MAX_CHANNEL = 64
MAX_IDEMPOTENCY_KEY = 128


@dataclass(frozen=True, slots=True)
class GrantRequest:
    """A consent as the touchpoint reports it: how it was given, on which privacy notice,
    where, and what the member was shown (the wording, or its SHA-256). Checked by
    grant_consent; the GraphQL arguments of `grantConsent` are made into one of these once."""

    method: ConsentMethod
    notice_version: str
    channel: str
    evidence: str | None = None
    evidence_sha256: str | None = None
    idempotency_key: str | None = None


@dataclass(frozen=True, slots=True)
class Grant:
    event: ConsentEventRecord
    created: bool  # False when an idempotency key replayed an earlier grant


@dataclass(frozen=True, slots=True)
class Withdrawal:
    event: ConsentEventRecord | None  # None: nothing was in force, nothing was written
    created: bool
    purged: tuple[EnrichedField, ...] = ()


def _check_text(value: str | None, name: str, limit: int, *, required: bool = True) -> str | None:
    if value is None or not value.strip():
        if required:
            raise BadUserInput(f"`{name}` must not be empty.", argument=name)
        return None
    if len(value) > limit:
        raise BadUserInput(f"`{name}` is longer than {limit} characters.", argument=name)
    return value.strip() if name != "evidence" else value


def evidence_of(evidence: str | None, evidence_sha256: str | None) -> tuple[str | None, str]:
    """The wording shown (if sent) and its SHA-256: one of them is required, since a consent
    that cannot be proven is not a consent (GDPR Art. 7(1)); both must agree."""
    wording = _check_text(evidence, "evidence", MAX_EVIDENCE, required=False)
    digest = evidence_sha256.lower() if evidence_sha256 else None
    if digest is not None and (
        len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest)
    ):
        raise BadUserInput("`evidenceSha256` is a SHA-256 hex digest.", argument="evidenceSha256")
    if wording is not None:
        computed = hashlib.sha256(wording.encode()).hexdigest()
        if digest is not None and digest != computed:
            raise BadUserInput("`evidenceSha256` does not match `evidence`.", argument="evidence")
        digest = computed
    if digest is None:
        raise BadUserInput(
            "Give the wording shown to the member (`evidence`) or its SHA-256 digest.",
            argument="evidence",
        )
    return wording, digest


def consent_purpose(purpose: Purpose) -> Purpose:
    if purpose.legal_basis is not LegalBasis.CONSENT:
        raise BadUserInput(
            f"Purpose {purpose.key} rests on {purpose.legal_basis.value}, not on consent.",
            purpose=purpose.key,
        )
    return purpose


def _replayed(
    existing: ConsentEventRecord, kind: ConsentEventKind, actor: Actor, **asked: object
) -> ConsentEventRecord:
    """The earlier event an idempotency key names, if this request asks for exactly what it
    recorded; a key sent again with another payload is refused, as payment APIs do, since
    replaying the old receipt would tell the caller that what it asked for now was done."""
    recorded = {name: getattr(existing, name) for name in asked}
    if (
        existing.kind is not kind
        or existing.actor_kind is not actor.kind
        or existing.captured_by_client_id != actor.client_id
        or recorded != asked
    ):
        raise Refused(
            ErrorCode.IDEMPOTENCY_KEY_REUSED,
            "This idempotency key was used for a different consent change; send a new key.",
            argument="idempotencyKey",
        )
    return existing


async def grant_consent(
    connection: Raw,
    *,
    member_id: uuid.UUID,
    purpose: Purpose,
    actor: Actor,
    request: GrantRequest,
) -> Grant:
    """Record an informed consent: which method, on which notice, through which channel, shown
    what. Refuses a method weaker than the purpose needs and a notice that is not current."""
    method, notice_version, channel = request.method, request.notice_version, request.channel
    evidence, evidence_sha256 = request.evidence, request.evidence_sha256
    idempotency_key = request.idempotency_key
    consent_purpose(purpose)
    required = purpose.required_consent_method or ConsentMethod.EXPLICIT
    hints = {
        "purpose": purpose.key,
        "requiredMethod": required.value,
        "noticeVersion": purpose.notice_version,
    }
    if not method.satisfies(required):
        raise Refused(
            ErrorCode.CONSENT_METHOD_INSUFFICIENT,
            f"Purpose {purpose.key} needs {required.value.lower()} consent.",
            **hints,
        )
    version = _check_text(notice_version, "noticeVersion", 32)
    if version != purpose.notice_version:
        raise Refused(
            ErrorCode.NOTICE_OUTDATED,
            "Consent must be given on the privacy notice in force; show the current version.",
            **hints,
        )
    channel_ = _check_text(channel, "channel", MAX_CHANNEL)
    wording, digest = evidence_of(evidence, evidence_sha256)
    key = _check_text(idempotency_key, "idempotencyKey", MAX_IDEMPOTENCY_KEY, required=False)
    assert purpose.consent_lifetime is not None
    assert channel_ is not None

    status = await lock_consent(connection, member_id, purpose.key)
    if status is None:
        raise NotFound("No member has this id.", argument="memberId")
    if status is not MembershipStatus.ACTIVE:
        raise Refused(
            ErrorCode.MEMBERSHIP_INACTIVE,
            "The membership is closed: a member who has left gives no new consents.",
        )
    if key is not None:
        existing = await event_by_idempotency_key(connection, member_id, purpose.key, key)
        if existing is not None:
            replayed = _replayed(
                existing,
                ConsentEventKind.GRANTED,
                actor,
                method=method,
                notice_version=version,
                channel=channel_,
                evidence_sha256=digest,
            )
            return Grant(replayed, created=False)
    now = dt.datetime.now(dt.UTC)
    event = await append_event(
        connection,
        member_id=member_id,
        purpose=purpose.key,
        kind=ConsentEventKind.GRANTED,
        actor=actor,
        channel=channel_,
        occurred_at=now,
        method=method,
        notice_version=version,
        expires_at=now + purpose.consent_lifetime,
        evidence=wording,
        evidence_sha256=digest,
        idempotency_key=key,
    )
    return Grant(event, created=True)


async def withdraw_consent(
    connection: Raw,
    *,
    member_id: uuid.UUID,
    purpose: Purpose,
    channel: str,
    actor: Actor,
    purposes: Mapping[str, Purpose],
    idempotency_key: str | None = None,
) -> Withdrawal:
    """Withdraw a consent in force, at once, and purge the enriched values it alone covered.

    Withdrawing what is not in force writes nothing and says so.
    """
    consent_purpose(purpose)
    channel_ = _check_text(channel, "channel", MAX_CHANNEL)
    key = _check_text(idempotency_key, "idempotencyKey", MAX_IDEMPOTENCY_KEY, required=False)
    assert channel_ is not None

    if await lock_consent(connection, member_id, purpose.key, Hold.CHANGE) is None:
        raise NotFound("No member has this id.", argument="memberId")
    if key is not None:
        existing = await event_by_idempotency_key(connection, member_id, purpose.key, key)
        if existing is not None:
            replayed = _replayed(existing, ConsentEventKind.WITHDRAWN, actor, channel=channel_)
            return Withdrawal(replayed, created=False)
    now = dt.datetime.now(dt.UTC)
    event = await withdraw_if_in_force(
        connection,
        member_id=member_id,
        purpose=purpose.key,
        actor=actor,
        channel=channel_,
        occurred_at=now,
        idempotency_key=key,
    )
    if event is None:
        return Withdrawal(None, created=False)
    purged = await purge_uncovered(connection, member_id=member_id, purposes=purposes, now=now)
    return Withdrawal(event, created=True, purged=tuple(purged))


@dataclass(frozen=True, slots=True)
class Expiry:
    member_id: uuid.UUID
    purpose: str
    event: ConsentEventRecord
    purged: tuple[EnrichedField, ...]


async def expire_lapsed_consent(
    connection: Raw,
    *,
    member_id: uuid.UUID,
    purpose: Purpose,
    purposes: Mapping[str, Purpose],
) -> Expiry | None:
    """Close a grant past its lifetime: append an EXPIRED event to the history and purge the
    values no valid consent covers any more. None if it was renewed or withdrawn meanwhile, or
    the member was erased.

    Reads stop releasing at the expiry instant without this; it makes the history say so and
    deletes what may no longer be kept.
    """
    if await lock_consent(connection, member_id, purpose.key, Hold.CHANGE) is None:
        return None  # erased: its lapsed grant is kept as evidence, never appended to
    now = dt.datetime.now(dt.UTC)
    current = await current_event(connection, member_id, purpose.key)
    if current is None or current.kind is not ConsentEventKind.GRANTED:
        return None
    if consent_state_at(current.kind, current.expires_at, now) is not ConsentEventKind.EXPIRED:
        return None  # renewed meanwhile
    event = await append_event(
        connection,
        member_id=member_id,
        purpose=purpose.key,
        kind=ConsentEventKind.EXPIRED,
        actor=Actor(ActorKind.SYSTEM),
        channel="expiry",
        occurred_at=now,
    )
    purged = await purge_uncovered(connection, member_id=member_id, purposes=purposes, now=now)
    return Expiry(member_id, purpose.key, event, tuple(purged))
