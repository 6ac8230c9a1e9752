"""Joining, changing, leaving and being forgotten: who may, and what each leaves in the log."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gateway.access.purposes import fetch_purposes
from gateway.audit.trail import AccessRecord
from gateway.domain import (
    AccessOutcome,
    ActorKind,
    Anonymous,
    Capability,
    ClientPrincipal,
    ErrorCode,
    LegalBasis,
    ProfileField,
    Purpose,
    Role,
)
from gateway.errors import BadUserInput, Forbidden, Refused, TillitError, Unauthenticated
from gateway.records.consents import ConsentEventRecord, client_name, fetch_grant
from gateway.records.lifecycle import (
    ErasureRecord,
    SignUpConsent,
    close_membership,
    enroll_member,
    erase_member,
    update_profile,
)
from gateway.records.locks import Hold, lock_member
from gateway.records.member_data import fetch_member
from resolvers.actors import (
    actor_of,
    audited_write,
    authorize_write,
    client_may_use,
    known_purpose,
    parse_uuid,
    target_of,
    the_member,
)
from resolvers.consents import ReceiptView, receipt_view
from resolvers.context import Context


def _app_with(context: Context, capability: Capability) -> ClientPrincipal:
    principal = context.principal
    if isinstance(principal, Anonymous):
        raise Unauthenticated()
    if (
        not isinstance(principal, ClientPrincipal)
        or principal.role is not Role.APP
        or capability not in principal.capabilities
    ):
        raise Forbidden(f"This caller may not {capability.value.replace('_', ' ')}.")
    return principal


async def _contract_purpose(context: Context, key: str) -> Purpose:
    declared = await known_purpose(context, key)
    client_may_use(context.principal, declared)
    if declared.legal_basis is not LegalBasis.CONTRACT:
        raise BadUserInput(
            f"Base fields are processed under the membership contract; {declared.key} rests on "
            f"{declared.legal_basis.value}.",
            argument="purpose",
        )
    return declared


# -- Joining ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EnrollmentView:
    member_id: uuid.UUID
    member_since: dt.date
    terms_version: str
    receipts: list[ReceiptView]
    replayed: bool


async def enroll(
    context: Context,
    *,
    profile: Mapping[ProfileField, str | None],
    purpose: str,
    terms_version: str,
    consents: Sequence[SignUpConsent],
    channel: str,
    external_subject: str | None,
    idempotency_key: str | None = None,
) -> EnrollmentView:
    """A web shop's sign-up: the member, under the membership contract, with the consents
    chosen in the form."""
    operation = "enrollMember"
    try:
        client = _app_with(context, Capability.ENROLL)
        contract = await _contract_purpose(context, purpose)
        chosen: list[tuple[Purpose, SignUpConsent]] = []
        for consent in consents:
            chosen.append((await known_purpose(context, consent.purpose), consent))
        enrollment = await enroll_member(
            context.db,
            profile=profile,
            contract=contract,
            terms_version=terms_version,
            consents=chosen,
            channel=channel,
            actor=actor_of(client),
            external_subject=external_subject,
            now=context.now,
            idempotency_key=idempotency_key,
        )
    except TillitError as error:
        if isinstance(error, Unauthenticated):
            raise
        raise context.refused(operation, error) from None
    member_id = enrollment.member_id
    replayed = enrollment.replayed
    written = AccessOutcome.UNCHANGED if replayed else AccessOutcome.WRITTEN
    context.audit.record(
        AccessRecord(
            operation=operation,
            member_id=member_id,
            purpose=contract.key,
            legal_basis=LegalBasis.CONTRACT,
            outcome=written,
            fields_requested=tuple(sorted(f.value for f, v in profile.items() if v is not None)),
            consent_ids=tuple(event.id for _, event in enrollment.consents),
            details={
                "termsVersion": enrollment.terms_version,
                "channel": channel.strip(),
                "externalSubject": external_subject is not None,
                "replayed": replayed,
            },
        )
    )
    receipts = []
    for consent_purpose, event in enrollment.consents:
        context.audit.record(
            AccessRecord(
                operation=operation,
                member_id=member_id,
                purpose=consent_purpose.key,
                legal_basis=LegalBasis.CONSENT,
                outcome=written,
                consent_ids=(event.id,),
                details={"change": "GRANTED", "method": str(event.method), "atSignUp": True},
            )
        )
        receipts.append(
            receipt_view(
                context, event, consent_purpose, f"client:{client.name}", replayed=replayed
            )
        )
    return EnrollmentView(
        member_id, enrollment.member_since, enrollment.terms_version, receipts, replayed
    )


# -- Changing --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProfileUpdateView:
    member_id: uuid.UUID
    changed: list[str]
    unchanged: list[str]


async def _update(
    context: Context,
    *,
    operation: str,
    target: uuid.UUID,
    changes: Mapping[ProfileField, str | None],
    purpose: Purpose | None,
) -> ProfileUpdateView:
    result = await update_profile(
        context.db,
        member_id=target,
        changes=changes,
        actor=actor_of(context.principal),
        purpose=purpose.key if purpose else None,
        now=context.now,
    )
    changed = [f.value for f in result.changed]
    context.audit.record(
        AccessRecord(
            operation=operation,
            member_id=target,
            purpose=purpose.key if purpose else None,
            # A member correcting their own data exercises Art. 16; an app acts on the contract.
            legal_basis=LegalBasis.CONTRACT if purpose else LegalBasis.LEGAL_OBLIGATION,
            outcome=AccessOutcome.WRITTEN if changed else AccessOutcome.UNCHANGED,
            fields_requested=tuple(sorted(f.value for f in changes)),
            # Names only: the values are in the member's history, never in the log.
            details={"changed": changed},
        )
    )
    return ProfileUpdateView(target, changed, [f.value for f in result.unchanged])


async def update_my_profile(
    context: Context, *, changes: Mapping[ProfileField, str | None]
) -> ProfileUpdateView:
    operation = "updateMyProfile"
    fields = sorted(f.value for f in changes)
    async with audited_write(context, operation=operation, purpose=None, fields=fields) as scope:
        scope.target = target = the_member(context.principal, "change their profile this way")
        return await _update(
            context, operation=operation, target=target, changes=changes, purpose=None
        )


async def update_member(
    context: Context, *, member_id: str, purpose: str, changes: Mapping[ProfileField, str | None]
) -> ProfileUpdateView:
    operation = "updateMember"
    fields = sorted(f.value for f in changes)
    async with audited_write(context, operation=operation, purpose=purpose, fields=fields) as scope:
        scope.target = target = target_of(context.principal, member_id)
        authorize_write(context.principal, target, Capability.UPDATE_PROFILE, members_may=False)
        declared = await _contract_purpose(context, purpose)
        outside = sorted(
            {f.category.value for f in changes if f.category not in declared.categories}
        )
        if outside:
            raise Refused(
                ErrorCode.CATEGORY_NOT_IN_PURPOSE,
                f"Category {outside[0]} is not used by purpose {declared.key}.",
                purpose=declared.key,
            )
        return await _update(
            context, operation=operation, target=target, changes=changes, purpose=declared
        )


# -- Leaving ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClosingView:
    member_id: uuid.UUID
    closed: bool
    closed_at: dt.datetime
    withdrawn_purposes: list[str]
    purged_fields: list[str]
    message: str


async def _close(
    context: Context, *, operation: str, target: uuid.UUID, purpose: Purpose | None
) -> ClosingView:
    result = await close_membership(
        context.db,
        member_id=target,
        purposes=await context.purposes(),
        actor=actor_of(context.principal),
        channel="leave",
        now=context.now,
    )
    withdrawn = sorted(event.purpose for event in result.withdrawn)
    purged = [f.value for f in result.purged]
    context.audit.record(
        AccessRecord(
            operation=operation,
            member_id=target,
            purpose=purpose.key if purpose else None,
            legal_basis=LegalBasis.CONTRACT,
            outcome=AccessOutcome.WRITTEN if result.closed else AccessOutcome.UNCHANGED,
            consent_ids=tuple(event.id for event in result.withdrawn),
            details={"withdrawn": withdrawn, "purged": purged},
        )
    )
    message = (
        "The membership is closed; every consent was withdrawn and the values from data brokers "
        "deleted. You can still see and export your data, or ask to be erased."
        if result.closed
        else "The membership was closed already; nothing changed."
    )
    return ClosingView(target, result.closed, result.closed_at, withdrawn, purged, message)


async def leave_club(context: Context) -> ClosingView:
    operation = "leaveClub"
    async with audited_write(context, operation=operation, purpose=None) as scope:
        scope.target = target = the_member(context.principal, "leave the club")
        return await _close(context, operation=operation, target=target, purpose=None)


async def close_member(context: Context, *, member_id: str, purpose: str) -> ClosingView:
    operation = "closeMembership"
    async with audited_write(context, operation=operation, purpose=purpose) as scope:
        scope.target = target = target_of(context.principal, member_id)
        authorize_write(context.principal, target, Capability.CLOSE_MEMBERSHIP, members_may=False)
        declared = await _contract_purpose(context, purpose)
        return await _close(context, operation=operation, target=target, purpose=declared)


# -- Being forgotten -------------------------------------------------------------------------------


def erasure_record(operation: str, erasure: ErasureRecord) -> AccessRecord:
    return AccessRecord(
        operation=operation,
        member_id=erasure.member_id,
        purpose=None,
        # Art. 17(1): the controller must erase.
        legal_basis=LegalBasis.LEGAL_OBLIGATION,
        outcome=AccessOutcome.WRITTEN,
        details={
            "erasure": str(erasure.receipt_id),
            "deleted": erasure.deleted,
            "consentEventsKept": erasure.consent_events_kept,
        },
    )


async def erase_me(context: Context, *, confirm_email: str) -> ErasureRecord:
    operation = "eraseMe"
    async with audited_write(context, operation=operation, purpose=None) as scope:
        scope.target = target = the_member(context.principal, "erase their data")
        # The member held first: the address confirmed is the one in force when it is erased.
        await lock_member(context.db, target, Hold.END)
        record = await fetch_member(context.db, target)
        if record is not None and confirm_email.strip().lower() != record.email.lower():
            raise Refused(
                ErrorCode.CONFIRMATION_REQUIRED,
                "To erase your data, type the email address of your membership to confirm.",
                argument="confirmEmail",
            )
        erasure = await erase_member(
            context.db,
            member_id=target,
            requested_by=ActorKind.MEMBER,
            purposes=await context.purposes(),
            evidence_period=dt.timedelta(days=context.settings.erasure_evidence_days),
            now=context.now,
        )
    context.audit.record(erasure_record(operation, erasure))
    return erasure


# -- Receipts -----------------------------------------------------------------------


async def consent_receipt(
    context: Context, member_id: uuid.UUID, receipt_id: str
) -> ReceiptView | None:
    """The receipt of one of the member's grants, as it was issued (None: not theirs)."""
    grant = await fetch_grant(context.db, member_id, parse_uuid(receipt_id, "id"))
    if grant is None:
        return None
    purposes = {p.key: p for p in await fetch_purposes(context.db, include_retired=True)}
    return receipt_view(
        context, grant, purposes[grant.purpose], await _collected_by(context, grant)
    )


async def _collected_by(context: Context, event: ConsentEventRecord) -> str:
    if event.actor_kind is ActorKind.MEMBER:
        return "member"
    if event.captured_by_client_id is None:
        return "system"
    name = await client_name(context.db, event.captured_by_client_id)
    return f"client:{name}"
