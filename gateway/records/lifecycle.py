"""A member's life in the club: joining, changing their data, leaving, and being forgotten.

Each function runs inside its caller's transaction and writes all of its rows or (by raising)
none: the operation boundary commits them together with their access events.

Joining records the membership terms accepted and each consent chosen at sign-up with the exact
wording shown. Leaving closes the membership, withdraws every consent and purges the enriched
values. Erasure (GDPR Art. 17) deletes what identifies the person; what must be kept (the
consent evidence for a stated period, the access log for accountability) stays under the member
id, a random pseudonym whose link to the person is exactly the rows deleted here (see
docs/members.md, "Erasure").
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.domain import (
    ActorKind,
    ConsentEventKind,
    ConsentMethod,
    EnrichedField,
    ErrorCode,
    LegalBasis,
    MembershipStatus,
    ProfileField,
    Purpose,
)
from gateway.errors import BadUserInput, NotFound, Refused
from gateway.records.consent_changes import (
    MAX_CHANNEL,
    MAX_IDEMPOTENCY_KEY,
    consent_purpose,
    evidence_of,
)
from gateway.records.consents import (
    EVENT_COLUMNS,
    Actor,
    ConsentEventRecord,
    append_event,
    event_of,
    lock_consent,
    withdraw_if_in_force,
)
from gateway.records.locks import Hold, locked_at
from gateway.records.profile import check_changes
from gateway.store.db import Raw

MAX_EXTERNAL_SUBJECT = 255
_ALREADY_MEMBER = "This email address or identity is already registered; sign in instead."


def _already_member() -> Refused:
    # The same answer whichever it was, and nothing about the member it belongs to.
    return Refused(ErrorCode.ALREADY_MEMBER, _ALREADY_MEMBER)


def _inactive() -> Refused:
    return Refused(
        ErrorCode.MEMBERSHIP_INACTIVE, "The membership is closed: the member has left the club."
    )


# -- Joining ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SignUpConsent:
    """One consent chosen in the sign-up form, and the wording it showed."""

    purpose: str
    method: ConsentMethod
    notice_version: str
    evidence: str | None = None
    evidence_sha256: str | None = None


@dataclass(frozen=True, slots=True)
class Enrollment:
    member_id: uuid.UUID
    member_since: dt.date
    terms_version: str
    consents: tuple[tuple[Purpose, ConsentEventRecord], ...]
    replayed: bool = False  # True: an idempotency key returned an earlier sign-up


def _sign_up_consent(purpose: Purpose, consent: SignUpConsent) -> tuple[str | None, str]:
    """Whether `consent` may be recorded at sign-up; its wording and digest if so."""
    consent_purpose(purpose)
    wording_in_policy = purpose.sign_up_wording
    if wording_in_policy is None:
        raise BadUserInput(
            f"Purpose {purpose.key} is not offered at sign-up (the policy has no wording for it).",
            purpose=purpose.key,
        )
    required = purpose.required_consent_method or ConsentMethod.EXPLICIT
    hints = {"purpose": purpose.key, "requiredMethod": required.value}
    if consent.method is ConsentMethod.CONDITIONAL and not purpose.conditional_at_sign_up:
        raise Refused(
            ErrorCode.CONSENT_METHOD_INSUFFICIENT,
            f"Purpose {purpose.key} needs its own explicit choice; it cannot be tied to joining.",
            **hints,
        )
    if not consent.method.satisfies(required):
        raise Refused(
            ErrorCode.CONSENT_METHOD_INSUFFICIENT,
            f"Purpose {purpose.key} needs {required.value.lower()} consent.",
            **hints,
        )
    if consent.notice_version != purpose.notice_version:
        raise Refused(
            ErrorCode.NOTICE_OUTDATED,
            "Sign-up shows the privacy notice in force; show the current version.",
            purpose=purpose.key,
            noticeVersion=purpose.notice_version,
        )
    wording, digest = evidence_of(consent.evidence, consent.evidence_sha256)
    shown = {
        hashlib.sha256(text.encode()).hexdigest()
        for text in (wording_in_policy.nb, wording_in_policy.en)
    }
    if digest not in shown:
        raise BadUserInput(
            f"The wording shown for {purpose.key} is not the policy's sign-up wording "
            "(nb or en): show that text exactly.",
            argument="evidence",
            purpose=purpose.key,
        )
    return wording, digest


def check_external_subject(value: str | None) -> str | None:
    if value is None:
        return None
    text = value.strip()
    if not text or len(text) > MAX_EXTERNAL_SUBJECT or not text.isprintable():
        raise BadUserInput(
            f"`externalSubject` is the identity provider's `sub`: 1 to {MAX_EXTERNAL_SUBJECT} "
            "printable characters.",
            argument="externalSubject",
        )
    return text


_ENROL = (
    "INSERT INTO members (first_name, last_name, email, phone, street, postal_code, city, "
    "country, terms_version, external_subject, created_at, updated_at, member_since, "
    "enrolled_by_client_id, enrollment_key) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11, $12, $13, $14) "
    "ON CONFLICT DO NOTHING RETURNING id, member_since"
)
_BY_ENROLLMENT_KEY = (
    "SELECT id, member_since, terms_version, lower(email) AS email, created_at FROM members "
    "WHERE enrolled_by_client_id = $1 AND enrollment_key = $2"
)
# The grants the sign-up recorded: by its app, at the instant the member was created.
_SIGN_UP_GRANTS = (
    f"SELECT {EVENT_COLUMNS} FROM consent_events "  # noqa: S608
    "WHERE member_id = $1 AND kind = 'GRANTED' AND captured_by_client_id = $2 "
    "AND occurred_at = $3 ORDER BY seq"
)


async def _replay(
    connection: Raw,
    *,
    client_id: uuid.UUID,
    key: str,
    email: str,
    terms_version: str,
    channel: str,
    consents: Sequence[tuple[Purpose, SignUpConsent, str]],
) -> Enrollment | None:
    """The earlier sign-up this idempotency key names, if it asked for the same (email, terms,
    consents); a key sent again with something else is refused, as for consents.

    `consents` holds each purpose with its consent and the digest of the wording shown."""
    row = await connection.fetchrow(_BY_ENROLLMENT_KEY, client_id, key)
    if row is None:
        return None
    grants = [
        event_of(r)
        for r in await connection.fetch(_SIGN_UP_GRANTS, row["id"], client_id, row["created_at"])
    ]
    # Each consent as recorded, not only its purpose: replaying a grant of another method,
    # notice or wording would tell the app that what it sends now is what the member agreed to.
    asked = sorted(
        (purpose.key, consent.method, consent.notice_version, digest, channel)
        for purpose, consent, digest in consents
    )
    recorded = sorted(
        (g.purpose, g.method, g.notice_version, g.evidence_sha256, g.channel) for g in grants
    )
    if row["email"] != email.lower() or row["terms_version"] != terms_version or recorded != asked:
        raise Refused(
            ErrorCode.IDEMPOTENCY_KEY_REUSED,
            "This idempotency key was used for a different sign-up; send a new key.",
            argument="idempotencyKey",
        )
    by_key = {purpose.key: purpose for purpose, *_ in consents}
    return Enrollment(
        row["id"],
        row["member_since"],
        terms_version,
        tuple((by_key[g.purpose], g) for g in grants),
        replayed=True,
    )


async def enroll_member(
    connection: Raw,
    *,
    profile: Mapping[ProfileField, str | None],
    contract: Purpose,
    terms_version: str,
    consents: Sequence[tuple[Purpose, SignUpConsent]],
    channel: str,
    actor: Actor,
    external_subject: str | None,
    now: dt.datetime,
    idempotency_key: str | None = None,
) -> Enrollment:
    """Create a member under the membership contract, with the consents chosen at sign-up.

    Everything is checked before anything is written; an email (or external subject) already
    registered is refused without saying whose. With an idempotency key (per app), a sign-up
    sent again returns the first one's member and receipts."""
    if contract.legal_basis is not LegalBasis.CONTRACT:
        raise BadUserInput(
            f"Members join under a CONTRACT purpose; {contract.key} rests on "
            f"{contract.legal_basis.value}.",
            argument="purpose",
        )
    if terms_version != contract.notice_version:
        raise Refused(
            ErrorCode.NOTICE_OUTDATED,
            "Sign-up shows the membership terms in force; show the current version.",
            argument="termsVersion",
            noticeVersion=contract.notice_version,
        )
    missing = [
        f
        for f in (ProfileField.FIRST_NAME, ProfileField.LAST_NAME, ProfileField.EMAIL)
        if profile.get(f) is None
    ]
    if missing:
        raise BadUserInput(f"A new member needs {missing[0].value}.", field=missing[0].value)
    fields = check_changes(profile, {})
    channel_ = channel.strip()
    if not channel_ or len(channel_) > MAX_CHANNEL:
        raise BadUserInput(f"`channel` is 1 to {MAX_CHANNEL} characters.", argument="channel")
    seen: set[str] = set()
    checked: list[tuple[Purpose, SignUpConsent, str | None, str]] = []
    for purpose, consent in consents:
        if purpose.key in seen:
            raise BadUserInput(f"Purpose {purpose.key} is listed twice.", purpose=purpose.key)
        seen.add(purpose.key)
        checked.append((purpose, consent, *_sign_up_consent(purpose, consent)))
    subject = check_external_subject(external_subject)
    key = idempotency_key.strip() if idempotency_key is not None else None
    if key is not None and (not key or len(key) > MAX_IDEMPOTENCY_KEY or actor.client_id is None):
        raise BadUserInput(
            f"`idempotencyKey` is 1 to {MAX_IDEMPOTENCY_KEY} characters.",
            argument="idempotencyKey",
        )

    async def replayed() -> Enrollment | None:
        if key is None or actor.client_id is None:
            return None
        return await _replay(
            connection,
            client_id=actor.client_id,
            key=key,
            email=str(fields[ProfileField.EMAIL]),
            terms_version=terms_version,
            channel=channel_,
            consents=[(purpose, consent, digest) for purpose, consent, _, digest in checked],
        )

    earlier = await replayed()
    if earlier is not None:
        return earlier
    rows = await connection.fetch(
        _ENROL,
        fields[ProfileField.FIRST_NAME],
        fields[ProfileField.LAST_NAME],
        fields[ProfileField.EMAIL],
        fields.get(ProfileField.PHONE),
        fields.get(ProfileField.STREET),
        fields.get(ProfileField.POSTAL_CODE),
        fields.get(ProfileField.CITY),
        fields.get(ProfileField.COUNTRY),
        terms_version,
        subject,
        now,
        now.date(),
        actor.client_id if key is not None else None,
        key,
    )
    if not rows:
        # A twin of this request may have committed the same key meanwhile.
        earlier = await replayed()
        if earlier is not None:
            return earlier
        raise _already_member()
    member_id: uuid.UUID = rows[0]["id"]
    recorded: list[tuple[Purpose, ConsentEventRecord]] = []
    for purpose, consent, wording, digest in checked:
        assert purpose.consent_lifetime is not None
        await lock_consent(connection, member_id, purpose.key)
        event = await append_event(
            connection,
            member_id=member_id,
            purpose=purpose.key,
            kind=ConsentEventKind.GRANTED,
            actor=actor,
            channel=channel_,
            occurred_at=now,
            method=consent.method,
            notice_version=consent.notice_version,
            expires_at=now + purpose.consent_lifetime,
            evidence=wording,
            evidence_sha256=digest,
        )
        recorded.append((purpose, event))
    return Enrollment(member_id, rows[0]["member_since"], terms_version, tuple(recorded))


# -- Changing --------------------------------------------------------------------------------------

_COLUMNS = ", ".join(f.value for f in ProfileField)
# The member's lock (gateway.records.locks) at CHANGE, and the values it changes, in one statement.
_CURRENT = f"SELECT membership_status, {_COLUMNS} FROM members WHERE id = $1 {Hold.CHANGE.value}"  # noqa: S608
_EMAIL_TAKEN = "SELECT EXISTS (SELECT 1 FROM members WHERE lower(email) = lower($1) AND id <> $2)"
_RECORD_CHANGES = (
    "INSERT INTO profile_changes (member_id, field, old_value, new_value, actor_kind, client_id, "
    "purpose_key, changed_at) "
    "SELECT $1, f, o, n, $5, $6, $7, $8 "
    "FROM unnest($2::text[], $3::text[], $4::text[]) AS c(f, o, n)"
)


@dataclass(frozen=True, slots=True)
class ProfileChangeRecord:
    field: ProfileField
    old_value: str | None
    new_value: str | None
    actor_kind: ActorKind
    client_name: str | None
    changed_at: dt.datetime


@dataclass(frozen=True, slots=True)
class ProfileUpdate:
    member_id: uuid.UUID
    changed: tuple[ProfileField, ...]
    unchanged: tuple[ProfileField, ...]


async def update_profile(
    connection: Raw,
    *,
    member_id: uuid.UUID,
    changes: Mapping[ProfileField, str | None],
    actor: Actor,
    purpose: str | None,
    now: dt.datetime,
) -> ProfileUpdate:
    """Change base fields, keeping each change (old and new value, by whom) as history."""
    if not changes:
        raise BadUserInput("Give at least one field to change.")
    row = await connection.fetchrow(_CURRENT, member_id)
    if row is None:
        raise NotFound("No member has this id.", argument="memberId")
    if row["membership_status"] != MembershipStatus.ACTIVE.value:
        raise _inactive()
    current = {f: row[f.value] for f in ProfileField}
    checked = check_changes(changes, current)
    changed = tuple(f for f in ProfileField if f in checked and checked[f] != current[f])
    unchanged = tuple(f for f in ProfileField if f in checked and f not in changed)
    if not changed:
        return ProfileUpdate(member_id, (), unchanged)
    email = checked.get(ProfileField.EMAIL)
    if ProfileField.EMAIL in changed:
        taken = await connection.fetchrow(_EMAIL_TAKEN, email, member_id)
        if taken[0]:
            raise _already_member()
    assignments = ", ".join(f"{f.value} = ${i}" for i, f in enumerate(changed, start=3))
    await connection.execute(
        f"UPDATE members SET updated_at = $2, {assignments} WHERE id = $1",  # noqa: S608
        member_id,
        now,
        *(checked[f] for f in changed),
    )
    await connection.execute(
        _RECORD_CHANGES,
        member_id,
        [f.value for f in changed],
        [current[f] for f in changed],
        [checked[f] for f in changed],
        actor.kind.value,
        actor.client_id,
        purpose,
        now,
    )
    return ProfileUpdate(member_id, changed, unchanged)


_CHANGES = (
    "SELECT p.field, p.old_value, p.new_value, p.actor_kind, c.name AS client_name, p.changed_at "
    "FROM profile_changes p LEFT JOIN clients c ON c.id = p.client_id "
    "WHERE p.member_id = $1 ORDER BY p.changed_at DESC, p.id LIMIT $2"
)


async def fetch_profile_changes(
    connection: Raw, member_id: uuid.UUID, *, limit: int = 500
) -> list[ProfileChangeRecord]:
    """The member's profile changes, newest first."""
    return [
        ProfileChangeRecord(
            ProfileField(r["field"]),
            r["old_value"],
            r["new_value"],
            ActorKind(r["actor_kind"]),
            r["client_name"],
            r["changed_at"],
        )
        for r in await connection.fetch(_CHANGES, member_id, limit)
    ]


# -- Leaving ---------------------------------------------------------------------------------------

# The member's lock at END (gateway.records.locks): every change in flight commits first.
_LOCK_MEMBER = f"SELECT membership_status, closed_at FROM members WHERE id = $1 {Hold.END.value}"  # noqa: S608
_CLOSE = (
    "UPDATE members SET membership_status = 'CLOSED', closed_at = $2, updated_at = $2 WHERE id = $1"
)
_CONSENTED = "SELECT DISTINCT purpose_key FROM consent_events WHERE member_id = $1"
_PURGE_ALL = "DELETE FROM enrichment_records WHERE member_id = $1 RETURNING field"


@dataclass(frozen=True, slots=True)
class Closing:
    member_id: uuid.UUID
    closed: bool  # False: it was closed already, nothing changed
    closed_at: dt.datetime
    withdrawn: tuple[ConsentEventRecord, ...]
    purged: tuple[EnrichedField, ...]


async def _withdraw_everything(
    connection: Raw,
    member_id: uuid.UUID,
    *,
    purposes: Mapping[str, Purpose],
    actor: Actor,
    channel: str,
    now: dt.datetime,
) -> tuple[tuple[ConsentEventRecord, ...], tuple[EnrichedField, ...]]:
    """Withdraw every consent in force and delete every enriched value. Takes each consent lock
    (in key order: no deadlock with another such call), so a grant running at the same time
    either commits first and is withdrawn here, or waits and finds the membership closed."""
    keys = {key for key, p in purposes.items() if p.legal_basis is LegalBasis.CONSENT}
    keys |= {row["purpose_key"] for row in await connection.fetch(_CONSENTED, member_id)}
    withdrawn: list[ConsentEventRecord] = []
    for key in sorted(keys):
        await lock_consent(connection, member_id, key)
        event = await withdraw_if_in_force(
            connection,
            member_id=member_id,
            purpose=key,
            actor=actor,
            channel=channel,
            occurred_at=now,
        )
        if event is not None:
            withdrawn.append(event)
    purged = sorted(
        {EnrichedField(r["field"]) for r in await connection.fetch(_PURGE_ALL, member_id)}
    )
    return tuple(withdrawn), tuple(purged)


async def close_membership(
    connection: Raw,
    *,
    member_id: uuid.UUID,
    purposes: Mapping[str, Purpose],
    actor: Actor,
    channel: str,
    now: dt.datetime,
) -> Closing:
    """The member leaves: the membership is closed, every consent withdrawn and every enriched
    value purged, together. The member keeps reaching `me` and the export."""
    row = await connection.fetchrow(_LOCK_MEMBER, member_id)
    if row is None:
        raise NotFound("No member has this id.", argument="memberId")
    if row["membership_status"] != MembershipStatus.ACTIVE.value:
        return Closing(member_id, False, row["closed_at"], (), ())
    now = locked_at(now)
    await connection.execute(_CLOSE, member_id, now)
    withdrawn, purged = await _withdraw_everything(
        connection, member_id, purposes=purposes, actor=actor, channel=channel, now=now
    )
    return Closing(member_id, True, now, withdrawn, purged)


# -- Being forgotten -------------------------------------------------------------------------------

# Children first: notices point at cleansing records, everything at the member.
_ERASE = (
    ("notices", "DELETE FROM member_notices WHERE member_id = $1"),
    ("cleansing_records", "DELETE FROM cleansing_records WHERE member_id = $1"),
    ("objections", "DELETE FROM objections WHERE member_id = $1"),
    ("enrichment_records", "DELETE FROM enrichment_records WHERE member_id = $1"),
    ("profile_changes", "DELETE FROM profile_changes WHERE member_id = $1"),
    ("profile", "DELETE FROM members WHERE id = $1"),
)
_KEPT = "SELECT count(*) FROM consent_events WHERE member_id = $1"
_RECORD_ERASURE = (
    "INSERT INTO erasures (member_id, erased_at, requested_by, evidence_kept_until, deleted) "
    "VALUES ($1, $2, $3, $4, $5::jsonb) RETURNING receipt_id"
)


@dataclass(frozen=True, slots=True)
class ErasureRecord:
    receipt_id: uuid.UUID
    member_id: uuid.UUID
    erased_at: dt.datetime
    deleted: dict[str, int]
    consent_events_kept: int
    evidence_kept_until: dt.datetime


def _deleted_count(status: Any) -> int:
    # asyncpg's command tag: "DELETE 3".
    return int(str(status).rsplit(" ", 1)[-1])


async def erase_member(
    connection: Raw,
    *,
    member_id: uuid.UUID,
    requested_by: ActorKind,
    purposes: Mapping[str, Purpose],
    evidence_period: dt.timedelta,
    now: dt.datetime,
) -> ErasureRecord:
    """Forget a member (Art. 17): withdraw every consent, then delete the profile, the enriched
    and cleansing values, the notices, objections and profile history, in one transaction.

    Kept, under the member id only: the consent history (the evidence of past consents, until
    `now + evidence_period`, then `purge_erased_evidence` deletes it) and the access log."""
    row = await connection.fetchrow(_LOCK_MEMBER, member_id)
    if row is None:
        raise NotFound("No member has this id.", argument="memberId")
    now = locked_at(now)
    actor = Actor(ActorKind.MEMBER if requested_by is ActorKind.MEMBER else ActorKind.SYSTEM)
    withdrawn, purged = await _withdraw_everything(
        connection, member_id, purposes=purposes, actor=actor, channel="erasure", now=now
    )
    deleted: dict[str, int] = {"consents_withdrawn": len(withdrawn)}
    async with connection.locked() as driver:
        for name, statement in _ERASE:
            deleted[name] = _deleted_count(await driver.execute(statement, member_id))
    deleted["enrichment_records"] += len(purged)
    kept = await connection.fetchrow(_KEPT, member_id)
    until = now + evidence_period
    receipt = await connection.fetchrow(
        _RECORD_ERASURE, member_id, now, requested_by.value, until, json.dumps(deleted)
    )
    return ErasureRecord(receipt["receipt_id"], member_id, now, deleted, int(kept[0]), until)


_PURGE_EVIDENCE = """
WITH due AS (
    UPDATE erasures SET evidence_purged_at = $1
    WHERE evidence_kept_until <= $1 AND evidence_purged_at IS NULL
    RETURNING member_id
), gone AS (
    DELETE FROM consent_events WHERE member_id IN (SELECT member_id FROM due) RETURNING 1
)
SELECT (SELECT count(*) FROM due) AS members, (SELECT count(*) FROM gone) AS events
"""


async def purge_erased_evidence(connection: Raw, *, now: dt.datetime) -> tuple[int, int]:
    """Delete the consent evidence of erased members whose keeping period has ended; returns
    (members, events)."""
    row = await connection.fetchrow(_PURGE_EVIDENCE, now)
    return int(row["members"]), int(row["events"])
