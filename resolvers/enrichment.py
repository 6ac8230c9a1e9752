"""Recording third-party values for a member, only on a valid consent."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.audit.trail import AccessRecord
from gateway.domain import (
    AccessOutcome,
    Capability,
    EnrichedField,
    LegalBasis,
    MembershipStatus,
    MemberState,
)
from gateway.errors import BadUserInput, NotFound
from gateway.records.consents import fetch_consent_states, lock_consent
from gateway.records.enrichment import (
    EnrichmentRow,
    enrichment_refusal,
    upsert_values,
    validate_source,
    validate_value,
)
from resolvers.actors import (
    audited_write,
    authorize_write,
    client_may_use,
    known_purpose,
    target_of,
)
from resolvers.context import Context


@dataclass(frozen=True, slots=True)
class EnrichmentView:
    member_id: uuid.UUID
    purpose: str
    consent_id: uuid.UUID
    written: list[str]
    unchanged: list[str]


async def record(
    context: Context,
    *,
    member_id: str,
    purpose: str,
    source: str,
    values: Mapping[EnrichedField, Any],
    obtained_at: dt.datetime | None,
) -> EnrichmentView:
    """Store the given values with their provenance, all or none: refused unless the member
    holds a valid consent for `purpose` that covers each value's category."""
    operation = "recordEnrichment"
    fields = sorted(f.value for f in values)
    async with audited_write(context, operation=operation, purpose=purpose, fields=fields) as scope:
        scope.target = target = target_of(context.principal, member_id)
        authorize_write(context.principal, target, Capability.ENRICH, members_may=False)
        declared = await known_purpose(context, purpose)
        client_may_use(context.principal, declared)
        if not values:
            raise BadUserInput("Give at least one value.", argument="values")
        cleaned = {field: validate_value(field, value) for field, value in values.items()}
        origin = validate_source(source)
        obtained = obtained_at or context.now
        if obtained.tzinfo is None or obtained > context.now + dt.timedelta(minutes=5):
            raise BadUserInput(
                "`obtainedAt` is a past time with a time zone.", argument="obtainedAt"
            )
        # Hold the member and the consent still while we rely on them: a concurrent withdrawal,
        # closing or erasure waits for us and then purges what we wrote, or we wait for it and
        # are refused (the status is the one in force once the locks are held).
        status = await lock_consent(context.db, target, declared.key)
        if status is None:
            raise NotFound("No member has this id.", argument="memberId")
        # Read after the lock, not from the request's loader: the state we rely on is current.
        states = await fetch_consent_states(context.db, [target])
        state = MemberState(
            membership_active=status is MembershipStatus.ACTIVE, consents=states.get(target, {})
        )
        refusal, consent_id = enrichment_refusal(declared, cleaned, state, context.now)
        if refusal is not None:
            raise refusal
        assert consent_id is not None
        changed = await upsert_values(
            context.sql,
            [
                EnrichmentRow(target, field, value, origin, obtained, declared.key, consent_id)
                for field, value in cleaned.items()
            ],
            client_id=getattr(context.principal, "id", None),
        )
    written = sorted(field.value for _, field in changed)
    context.audit.record(
        AccessRecord(
            operation=operation,
            member_id=target,
            purpose=declared.key,
            legal_basis=LegalBasis.CONSENT,
            outcome=AccessOutcome.WRITTEN if written else AccessOutcome.UNCHANGED,
            fields_requested=tuple(fields),
            fields_released=tuple(written),
            consent_ids=(consent_id,),
            details={"source": origin, "written": written},
        )
    )
    return EnrichmentView(
        target, declared.key, consent_id, written, [f for f in fields if f not in written]
    )
