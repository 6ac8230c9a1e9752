"""Register corrections under legitimate interest, and the member's objection to them."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

from gateway.audit.trail import AccessRecord
from gateway.domain import AccessOutcome, Capability, LegalBasis
from gateway.records.cleansing import (
    lift_objection,
    object_to,
    parse_field,
    parse_value,
    record_cleansing,
)
from gateway.records.enrichment import validate_source
from resolvers.actors import (
    audited_write,
    authorize_write,
    client_may_use,
    known_purpose,
    target_of,
    the_member,
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
    async with audited_write(context, operation=operation, purpose=purpose) as scope:
        scope.target = target = the_member(context.principal, "object")
        declared = await known_purpose(context, purpose)
        objection = await object_to(
            context.sql,
            member_id=target,
            purpose=declared,
            reason=reason,
            now=context.now,
        )
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


@dataclass(frozen=True, slots=True)
class LiftView:
    member_id: uuid.UUID
    purpose: str
    lifted: bool
    lifted_at: dt.datetime | None
    message: str


async def withdraw_objection(context: Context, *, purpose: str) -> LiftView:
    operation = "withdrawObjection"
    async with audited_write(context, operation=operation, purpose=purpose) as scope:
        scope.target = target = the_member(context.principal, "withdraw their objection")
        declared = await known_purpose(context, purpose)
        lifted = await lift_objection(
            context.db, member_id=target, purpose=declared, now=context.now
        )
    context.audit.record(
        AccessRecord(
            operation=operation,
            member_id=target,
            purpose=declared.key,
            legal_basis=declared.legal_basis,
            outcome=AccessOutcome.WRITTEN if lifted else AccessOutcome.UNCHANGED,
            details={"objection": str(lifted.id) if lifted else None},
        )
    )
    return LiftView(
        target,
        declared.key,
        lifted is not None,
        lifted.lifted_at if lifted else None,
        "Objection withdrawn; processing for this purpose may resume."
        if lifted
        else "No objection to this purpose was in force; nothing changed.",
    )
