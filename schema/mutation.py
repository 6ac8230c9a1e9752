"""The root mutation type: consent, enrichment, cleansing, objection, and a member's life."""

from __future__ import annotations

import datetime as dt
from typing import Any

import strawberry
from strawberry.scalars import JSON

from gateway.domain import EnrichedField
from gateway.records.consent_changes import GrantRequest
from gateway.records.lifecycle import ErasureRecord
from resolvers import cleansing, consents, enrichment, lifecycle, me
from resolvers.cleansing import CleansingView, LiftView, ObjectionView
from resolvers.consents import ReceiptView, WithdrawalView
from resolvers.context import Context
from resolvers.enrichment import EnrichmentView
from resolvers.lifecycle import ClosingView, EnrollmentView, ProfileUpdateView
from schema.enums import ConsentMethod
from schema.lifecycle import (
    EnrollmentResult,
    ErasureReceipt,
    MembershipClosing,
    NewMemberInput,
    ObjectionWithdrawal,
    ProfileChangesInput,
    ProfileUpdateResult,
    SignUpConsentInput,
)
from schema.me import export_json
from schema.receipts import ConsentReceipt
from schema.renders import renders

Info = strawberry.Info[Context, None]


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


# The consent changes' fields, callable without a resolve info: the direct executor
# (gateway.web.fastwrite) calls them with the same arguments Strawberry would pass.
async def grant_consent(
    context: Context,
    *,
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
    return await consents.grant(context, member_id=member_id, purpose=purpose, request=request)


async def withdraw_consent(
    context: Context,
    *,
    purpose: str | None = None,
    member_id: strawberry.ID | None = None,
    channel: str = "api",
    idempotency_key: str | None = None,
    receipt_id: strawberry.ID | None = None,
) -> WithdrawalView:
    return await consents.withdraw(
        context,
        member_id=member_id,
        purpose=purpose,
        channel=channel,
        idempotency_key=idempotency_key,
        receipt_id=receipt_id,
    )


CONSENT_CHANGES: dict[str, tuple[Any, type]] = {
    "grantConsent": (grant_consent, ConsentReceipt),
    "withdrawConsent": (withdraw_consent, WithdrawalResult),
}


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
        return await grant_consent(
            info.context,
            purpose=purpose,
            method=method,
            notice_version=notice_version,
            channel=channel,
            member_id=member_id,
            evidence=evidence,
            evidence_sha256=evidence_sha256,
            idempotency_key=idempotency_key,
        )

    @strawberry.mutation(
        description="Withdraw a consent, effective at once; as easy as granting. Name it by "
        "`purpose` or by a `receiptId` of it. Withdrawing what is not in force changes nothing "
        "and says so.",
        graphql_type=WithdrawalResult | None,
    )
    async def withdraw_consent(
        self,
        info: Info,
        purpose: str | None = None,
        member_id: strawberry.ID | None = None,
        channel: str = "api",
        idempotency_key: str | None = None,
        receipt_id: strawberry.ID | None = None,
    ) -> WithdrawalView:
        return await withdraw_consent(
            info.context,
            purpose=purpose,
            member_id=member_id,
            channel=channel,
            idempotency_key=idempotency_key,
            receipt_id=receipt_id,
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
        description="Lift your objection to a legitimate-interest purpose, effective from the "
        "next request; the objection stays in your history. Members only.",
        graphql_type=ObjectionWithdrawal | None,
    )
    async def withdraw_objection(self, info: Info, purpose: str) -> LiftView:
        return await cleansing.withdraw_objection(info.context, purpose=purpose)

    @strawberry.mutation(
        description="Sign a new member up (app clients with the enroll capability, the web "
        "shop's sign-up): under the membership contract (`purpose`) on the terms shown "
        "(`termsVersion`), with the consents chosen in the form, each with the wording shown. "
        "Returns the member id and a receipt per consent. Send an `idempotencyKey` so that a "
        "retried sign-up gets the first one's answer instead of ALREADY_MEMBER.",
        graphql_type=EnrollmentResult | None,
    )
    async def enroll_member(
        self,
        info: Info,
        member: NewMemberInput,
        terms_version: str,
        channel: str,
        consents: list[SignUpConsentInput] | None = None,
        purpose: str = "membership_service",
        external_subject: str | None = None,
        idempotency_key: str | None = None,
    ) -> EnrollmentView:
        return await lifecycle.enroll(
            info.context,
            profile=member.fields(),
            purpose=purpose,
            terms_version=terms_version,
            consents=[c.to_request() for c in consents or ()],
            channel=channel,
            external_subject=external_subject,
            idempotency_key=idempotency_key,
        )

    @strawberry.mutation(
        description="Correct your contact details or address (GDPR Art. 16). Member token "
        "only; every change is kept in `me.profileChanges`.",
        graphql_type=ProfileUpdateResult | None,
    )
    async def update_my_profile(
        self, info: Info, changes: ProfileChangesInput
    ) -> ProfileUpdateView:
        return await lifecycle.update_my_profile(info.context, changes=changes.changes())

    @strawberry.mutation(
        description="Change a member's contact details or address (app clients with the "
        "update_profile capability, under a contract purpose that covers the fields).",
        graphql_type=ProfileUpdateResult | None,
    )
    async def update_member(
        self, info: Info, member_id: strawberry.ID, purpose: str, changes: ProfileChangesInput
    ) -> ProfileUpdateView:
        return await lifecycle.update_member(
            info.context, member_id=member_id, purpose=purpose, changes=changes.changes()
        )

    @strawberry.mutation(
        description="Leave the club: the membership closes, every consent is withdrawn and the "
        "values from data brokers deleted, at once. You keep `me` and the export. Members only.",
        graphql_type=MembershipClosing | None,
    )
    async def leave_club(self, info: Info) -> ClosingView:
        return await lifecycle.leave_club(info.context)

    @strawberry.mutation(
        description="Close a member's membership (app clients with the close_membership "
        "capability), with the same effects as leaveClub.",
        graphql_type=MembershipClosing | None,
    )
    async def close_membership(
        self, info: Info, member_id: strawberry.ID, purpose: str = "membership_service"
    ) -> ClosingView:
        return await lifecycle.close_member(info.context, member_id=member_id, purpose=purpose)

    @strawberry.mutation(
        description="Erase your data (GDPR Art. 17): confirm with your membership's email "
        "address. Your profile and everything about you is deleted at once; your consent "
        "history and the access log are kept under an id that no longer leads to you (see the "
        "receipt). Member token only; cannot be undone.",
        graphql_type=ErasureReceipt | None,
    )
    async def erase_me(self, info: Info, confirm_email: str) -> ErasureRecord:
        return await lifecycle.erase_me(info.context, confirm_email=confirm_email)

    @strawberry.mutation(
        description="Everything Tillit holds about you and everything done with it, as one JSON "
        "document (GDPR Art. 15 and 20). Member token only. Also at GET /me/export."
    )
    async def export_my_data(self, info: Info) -> JSON | None:
        exported: JSON = export_json(await me.export_my_data(info.context))
        return exported
