"""Register corrections under legitimate interest, and the member's objection to them."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

from gateway.audit.trail import AccessRecord
from gateway.domain import AccessOutcome, Anonymous, Capability, LegalBasis, MemberPrincipal
from gateway.errors import Forbidden, Unauthenticated
from gateway.records.cleansing import object_to, parse_field, parse_value, record_cleansing
from gateway.records.enrichment import validate_source
from resolvers.actors import (
    audited_write,
    authorize_write,
    client_may_use,
    known_purpose,
    target_of,
)
from resolvers.context import Context


@dataclass(frozen=True, slots=True)
class CleansingView:
    member_id: uuid.UUID
    field: str
    old_value: Any
    new_value: Any
    changed: bool
    record_id: uuid.UUID | None
    notice_due_at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class ObjectionView:
    member_id: uuid.UUID
    purpose: str
    objected_at: dt.datetime
    already_objected: bool


async def cleanse(
    context: Context,
    *,
    member_id: str,
    field: str,
    new_value: str,
    source: str,
    purpose: str,
) -> CleansingView:
    operation = "recordCleansing"
    async with audited_write(
        context, operation=operation, purpose=purpose, fields=[field[:32]]
    ) as scope:
        scope.target = target = target_of(context.principal, member_id)
        authorize_write(context.principal, target, Capability.CLEANSE, members_may=False)
        declared = await known_purpose(context, purpose)
        client_may_use(context.principal, declared)
        which = parse_field(field)
        value = parse_value(which, new_value)
        result = await record_cleansing(
            context.sql,
            member_id=target,
            purpose=declared,
            field=which,
            new_value=value,
            source=validate_source(source),
            client_id=getattr(context.principal, "id", None),
            now=context.now,
        )
    changed = result.record_id is not None
    context.audit.record(
        AccessRecord(
            operation=operation,
            member_id=target,
            purpose=declared.key,
            legal_basis=LegalBasis.LEGITIMATE_INTEREST,
            outcome=AccessOutcome.WRITTEN if changed else AccessOutcome.UNCHANGED,
            fields_requested=(which.value,),
            fields_released=(which.value,) if changed else (),
            details={
                "cleansing_record": str(result.record_id) if changed else None,
                "notice": str(result.notice_id) if changed else None,
            },
        )
    )
    return CleansingView(
        target,
        which.value,
        result.old_value,
        result.new_value,
        changed,
        result.record_id,
        result.due_at,
    )


async def object_to_processing(
    context: Context, *, purpose: str, reason: str | None
) -> ObjectionView:
    """The member objects (GDPR Art. 21) to a legitimate-interest purpose."""
    operation = "objectToProcessing"
    principal = context.principal
    target = principal.member_id if isinstance(principal, MemberPrincipal) else None
    async with audited_write(context, operation=operation, purpose=purpose) as scope:
        scope.target = target
        if isinstance(principal, Anonymous):
            raise Unauthenticated()
        if target is None:
            raise Forbidden("Only the member can object, with a member token.")
        declared = await known_purpose(context, purpose)
        objection = await object_to(
            context.sql,
            member_id=target,
            purpose=declared,
            reason=reason,
            now=context.now,
        )
    assert target is not None
    context.audit.record(
        AccessRecord(
            operation=operation,
            member_id=target,
            purpose=declared.key,
            legal_basis=declared.legal_basis,
            outcome=AccessOutcome.WRITTEN if objection.created else AccessOutcome.UNCHANGED,
            details={"objection": str(objection.id)},
        )
    )
    return ObjectionView(target, declared.key, objection.objected_at, not objection.created)
