"""Granting and withdrawing consent, by the member or by an app capturing it for them."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from gateway.audit.trail import AccessRecord
from gateway.domain import (
    AccessOutcome,
    Capability,
    Category,
    ClientPrincipal,
    ConsentMethod,
    LegalBasis,
    LocalizedText,
    Purpose,
)
from gateway.errors import BadUserInput, NotFound
from gateway.records.consent_changes import GrantRequest, grant_consent, withdraw_consent
from gateway.records.consents import ConsentEventRecord, fetch_grant
from resolvers.actors import (
    WriteScope,
    actor_of,
    audited_write,
    authorize_write,
    known_purpose,
    parse_uuid,
    target_of,
)
from resolvers.context import Context

RECEIPT_VERSION = "tillit-consent-receipt/1 (Kantara CR 1.1, ISO/IEC TS 27560 fields)"


@dataclass(frozen=True, slots=True)
class ReceiptView:
    """A consent receipt the member can keep."""

    receipt_id: uuid.UUID
    version: str
    jurisdiction: str
    controller: str
    member_id: uuid.UUID
    purpose: str
    purpose_title: LocalizedText
    purpose_description: LocalizedText
    legal_basis: LegalBasis
    data_categories: list[Category]
    method: ConsentMethod
    notice_version: str
    granted_at: dt.datetime
    expires_at: dt.datetime
    channel: str
    collected_by: str
    evidence_sha256: str | None
    replayed: bool


@dataclass(frozen=True, slots=True)
class WithdrawalView:
    withdrawn: bool
    message: str
    member_id: uuid.UUID
    purpose: str
    event_id: uuid.UUID | None
    withdrawn_at: dt.datetime | None
    purged_fields: list[str]
    replayed: bool


async def _consent_subject(
    context: Context, scope: WriteScope, member_id: str | None, purpose: str
) -> tuple[uuid.UUID, Purpose]:
    """The member and purpose of a consent change, once the caller may make it."""
    scope.target = target = target_of(context.principal, member_id)
    authorize_write(context.principal, target, Capability.CAPTURE_CONSENT, members_may=True)
    declared = await known_purpose(context, purpose)
    # Whether the member exists is asked with the consent lock
    # (gateway.records.consents.lock_consent).
    return target, declared


async def _purpose_of_receipt(
    context: Context, scope: WriteScope, member_id: str | None, receipt_id: str, purpose: str | None
) -> str:
    """The purpose a receipt is for, if the receipt is the target member's."""
    scope.target = target = target_of(context.principal, member_id)
    authorize_write(context.principal, target, Capability.CAPTURE_CONSENT, members_may=True)
    grant = await fetch_grant(context.db, target, parse_uuid(receipt_id, "receiptId"))
    if grant is None:
        raise NotFound("No receipt of this member has this id.", argument="receiptId")
    if purpose is not None and purpose != grant.purpose:
        raise BadUserInput("The receipt is for another purpose.", argument="receiptId")
    return grant.purpose


def _collected_by(context: Context) -> str:
    principal = context.principal
    return f"client:{principal.name}" if isinstance(principal, ClientPrincipal) else "member"


async def grant(
    context: Context,
    *,
    member_id: str | None,
    purpose: str,
    request: GrantRequest,
) -> ReceiptView:
    operation = "grantConsent"
    async with audited_write(context, operation=operation, purpose=purpose) as scope:
        target, declared = await _consent_subject(context, scope, member_id, purpose)
        result = await grant_consent(
            context.db,
            member_id=target,
            purpose=declared,
            actor=actor_of(context.principal),
            request=request,
        )
    event = result.event
    context.audit.record(
        AccessRecord(
            operation=operation,
            member_id=target,
            purpose=declared.key,
            legal_basis=LegalBasis.CONSENT,
            outcome=AccessOutcome.WRITTEN if result.created else AccessOutcome.UNCHANGED,
            consent_ids=(event.id,),
            details={
                "change": "GRANTED",
                "method": request.method.value,
                "channel": event.channel,
                "replayed": not result.created,
            },
        )
    )
    return receipt_view(
        context, event, declared, _collected_by(context), replayed=not result.created
    )


def receipt_view(
    context: Context,
    event: ConsentEventRecord,
    purpose: Purpose,
    collected_by: str,
    *,
    replayed: bool = False,
) -> ReceiptView:
    """The receipt of a grant: what the member consented to, how, where and until when."""
    assert event.method is not None
    assert event.notice_version is not None
    assert event.expires_at is not None
    return ReceiptView(
        receipt_id=event.id,
        version=RECEIPT_VERSION,
        jurisdiction="NO",
        controller=context.settings.controller_name,
        member_id=event.member_id,
        purpose=purpose.key,
        purpose_title=purpose.title,
        purpose_description=purpose.description,
        legal_basis=purpose.legal_basis,
        data_categories=sorted(purpose.categories, key=list(Category).index),
        method=event.method,
        notice_version=event.notice_version,
        granted_at=event.occurred_at,
        expires_at=event.expires_at,
        channel=event.channel,
        collected_by=collected_by,
        evidence_sha256=event.evidence_sha256,
        replayed=replayed,
    )


async def withdraw(
    context: Context,
    *,
    member_id: str | None,
    purpose: str | None,
    channel: str,
    idempotency_key: str | None,
    receipt_id: str | None = None,
) -> WithdrawalView:
    """Withdraw the consent to a purpose, named by its key or by a receipt of it."""
    operation = "withdrawConsent"
    async with audited_write(context, operation=operation, purpose=purpose) as scope:
        if receipt_id is not None:
            purpose = await _purpose_of_receipt(context, scope, member_id, receipt_id, purpose)
        if purpose is None:
            raise BadUserInput("Name the consent: `purpose` or `receiptId`.", argument="purpose")
        target, declared = await _consent_subject(context, scope, member_id, purpose)
        result = await withdraw_consent(
            context.db,
            member_id=target,
            purpose=declared,
            channel=channel,
            actor=actor_of(context.principal),
            purposes=await context.purposes(),
            idempotency_key=idempotency_key,
        )
    event = result.event
    purged = [field.value for field in result.purged]
    context.audit.record(
        AccessRecord(
            operation=operation,
            member_id=target,
            purpose=declared.key,
            legal_basis=LegalBasis.CONSENT,
            outcome=AccessOutcome.WRITTEN if result.created else AccessOutcome.UNCHANGED,
            consent_ids=(event.id,) if event else (),
            details={
                "change": "WITHDRAWN" if event else "NONE_IN_FORCE",
                "purged": purged,
                "replayed": event is not None and not result.created,
            },
        )
    )
    if event is None:
        message = "No consent to this purpose was in force; nothing changed."
    elif purged:
        message = f"Consent withdrawn; deleted: {', '.join(purged)}."
    else:
        message = "Consent withdrawn."
    return WithdrawalView(
        withdrawn=event is not None,
        message=message,
        member_id=target,
        purpose=declared.key,
        event_id=event.id if event else None,
        withdrawn_at=event.occurred_at if event else None,
        purged_fields=purged,
        replayed=event is not None and not result.created,
    )
