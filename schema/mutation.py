"""The root mutation type: consent, enrichment, cleansing and objection."""

from __future__ import annotations

import datetime as dt
from typing import Any

import strawberry
from strawberry.scalars import JSON

from gateway.domain import EnrichedField
from gateway.records.consent_changes import GrantRequest
from resolvers import cleansing, consents, enrichment, me
from resolvers.cleansing import CleansingView, ObjectionView
from resolvers.consents import ReceiptView, WithdrawalView
from resolvers.context import Context
from resolvers.enrichment import EnrichmentView
from schema.enums import ConsentMethod, DataCategory, LegalBasis
from schema.me import export_json
from schema.renders import renders
from schema.types import LocalizedText

Info = strawberry.Info[Context, None]


@renders(ReceiptView)
@strawberry.type(
    description="A consent receipt the member can keep. Its fields follow the Kantara Consent "
    "Receipt and the ISO/IEC TS 27560 consent record where they apply."
)
class ConsentReceipt:
    receipt_id: strawberry.ID = strawberry.field(
        description="The consent record's id; quote it to withdraw or to ask about it."
    )
    version: str = strawberry.field(description="The receipt format.")
    jurisdiction: str
    controller: str = strawberry.field(description="The data controller.")
    member_id: strawberry.ID = strawberry.field(description="The data subject.")
    purpose: str
    purpose_title: LocalizedText
    purpose_description: LocalizedText = strawberry.field(
        description="The plain-language description that was consented to."
    )
    legal_basis: LegalBasis
    data_categories: list[DataCategory]
    method: ConsentMethod
    notice_version: str = strawberry.field(description="The privacy-notice version shown.")
    granted_at: dt.datetime
    expires_at: dt.datetime = strawberry.field(
        description="When the consent lapses unless renewed; it can be withdrawn before."
    )
    channel: str = strawberry.field(description="Where the consent was given.")
    collected_by: str = strawberry.field(
        description="`member`, or `client:<name>` for an app capturing it."
    )
    evidence_sha256: str | None = strawberry.field(
        description="SHA-256 of the wording shown to the member."
    )
    replayed: bool = strawberry.field(
        description="True when an idempotency key returned an earlier receipt."
    )


@renders(WithdrawalView)
@strawberry.type(description="The outcome of a withdrawal.")
class WithdrawalResult:
    withdrawn: bool = strawberry.field(
        description="False when no consent was in force (nothing changed)."
    )
    message: str
    member_id: strawberry.ID
    purpose: str
    event_id: strawberry.ID | None
    withdrawn_at: dt.datetime | None
    purged_fields: list[str] = strawberry.field(
        description="Enriched values deleted because no consent covers them any more."
    )
    replayed: bool


@strawberry.input(description="Third-party values; give at least one.")
class EnrichmentValuesInput:
    income_band: str | None = None
    household_size: int | None = None
    lifestyle_segment: str | None = None
    interests: list[str] | None = None


@renders(EnrichmentView)
@strawberry.type(description="What recordEnrichment stored.")
class EnrichmentResult:
    member_id: strawberry.ID
    purpose: str
    consent_id: strawberry.ID = strawberry.field(description="The consent the values rest on.")
    written: list[str] = strawberry.field(description="Fields stored or changed.")
    unchanged: list[str] = strawberry.field(description="Fields already stored as given.")


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return str(value).lower() if isinstance(value, bool) else str(value)


@renders(CleansingView)
@strawberry.type(description="What recordCleansing changed, and the notice it owes the member.")
class CleansingResult:
    member_id: strawberry.ID
    field: str
    changed: bool = strawberry.field(description="False when the value was already right.")
    record_id: strawberry.ID | None
    notice_due_at: dt.datetime | None = strawberry.field(
        description="When the member must have been told (one month out)."
    )

    @strawberry.field(description="The value before, as text.")
    def old_value(self, root: strawberry.Parent[CleansingView]) -> str | None:
        return _text(root.old_value)

    @strawberry.field(description="The value after, as text.")
    def new_value(self, root: strawberry.Parent[CleansingView]) -> str | None:
        return _text(root.new_value)


@renders(ObjectionView)
@strawberry.type(description="A member's objection to a legitimate-interest purpose.")
class ObjectionResult:
    member_id: strawberry.ID
    purpose: str
    objected_at: dt.datetime
    already_objected: bool


def _values(values: EnrichmentValuesInput) -> dict[EnrichedField, Any]:
    given = {
        EnrichedField.INCOME_BAND: values.income_band,
        EnrichedField.HOUSEHOLD_SIZE: values.household_size,
        EnrichedField.LIFESTYLE_SEGMENT: values.lifestyle_segment,
        EnrichedField.INTERESTS: values.interests,
    }
    return {field: value for field, value in given.items() if value is not None}


@strawberry.type
class Mutation:
    @strawberry.mutation(
        description="Record a consent: by the member (member token), or by an app client with "
        "the capture_consent capability for the member it names. Returns a receipt.",
        graphql_type=ConsentReceipt | None,
    )
    async def grant_consent(
        self,
        info: Info,
        purpose: str,
        method: ConsentMethod,
        notice_version: str,
        channel: str,
        member_id: strawberry.ID | None = None,
        evidence: str | None = None,
        evidence_sha256: str | None = None,
        idempotency_key: str | None = None,
    ) -> ReceiptView:
        request = GrantRequest(
            method=method,
            notice_version=notice_version,
            channel=channel,
            evidence=evidence,
            evidence_sha256=evidence_sha256,
            idempotency_key=idempotency_key,
        )
        return await consents.grant(
            info.context, member_id=member_id, purpose=purpose, request=request
        )

    @strawberry.mutation(
        description="Withdraw a consent, effective at once; as easy as granting. Withdrawing "
        "what is not in force changes nothing and says so.",
        graphql_type=WithdrawalResult | None,
    )
    async def withdraw_consent(
        self,
        info: Info,
        purpose: str,
        member_id: strawberry.ID | None = None,
        channel: str = "api",
        idempotency_key: str | None = None,
    ) -> WithdrawalView:
        return await consents.withdraw(
            info.context,
            member_id=member_id,
            purpose=purpose,
            channel=channel,
            idempotency_key=idempotency_key,
        )

    @strawberry.mutation(
        description="Store third-party values for a member (app clients with the enrich "
        "capability), only on the member's valid consent for `purpose`. All or none.",
        graphql_type=EnrichmentResult | None,
    )
    async def record_enrichment(
        self,
        info: Info,
        member_id: strawberry.ID,
        purpose: str,
        source: str,
        values: EnrichmentValuesInput,
        obtained_at: dt.datetime | None = None,
    ) -> EnrichmentView:
        return await enrichment.record(
            info.context,
            member_id=member_id,
            purpose=purpose,
            source=source,
            values=_values(values),
            obtained_at=obtained_at,
        )

    @strawberry.mutation(
        description="Correct a member's address or deceased flag from a register (app clients "
        "with the cleanse capability), under a legitimate-interest purpose. Owes the member a "
        "notice within a month; refused if the member objected.",
        graphql_type=CleansingResult | None,
    )
    async def record_cleansing(
        self,
        info: Info,
        member_id: strawberry.ID,
        field: str,
        new_value: str,
        source: str,
        purpose: str = "data_quality",
    ) -> CleansingView:
        return await cleansing.cleanse(
            info.context,
            member_id=member_id,
            field=field,
            new_value=new_value,
            source=source,
            purpose=purpose,
        )

    @strawberry.mutation(
        description="Object (GDPR Art. 21) to processing under a legitimate-interest purpose; "
        "members only, for themselves.",
        graphql_type=ObjectionResult | None,
    )
    async def object_to_processing(
        self, info: Info, purpose: str, reason: str | None = None
    ) -> ObjectionView:
        return await cleansing.object_to_processing(info.context, purpose=purpose, reason=reason)

    @strawberry.mutation(
        description="Everything Tillit holds about you and everything done with it, as one JSON "
        "document (GDPR Art. 15 and 20). Member token only. Also at GET /me/export."
    )
    async def export_my_data(self, info: Info) -> JSON | None:
        exported: JSON = export_json(await me.export_my_data(info.context))
        return exported
