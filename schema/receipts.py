"""The consent receipt a member keeps: returned by a grant, by sign-up, and by `me`."""

from __future__ import annotations

import datetime as dt

import strawberry

from resolvers.consents import ReceiptView
from schema.enums import ConsentMethod, DataCategory, LegalBasis
from schema.renders import renders
from schema.types import LocalizedText


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
