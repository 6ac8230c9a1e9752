"""GraphQL types of a member's life: joining, changing, leaving, being forgotten."""

from __future__ import annotations

import datetime as dt

import strawberry

from gateway.domain import ProfileField
from gateway.records.lifecycle import ErasureRecord, ProfileChangeRecord, SignUpConsent
from resolvers.cleansing import LiftView
from resolvers.lifecycle import ClosingView, EnrollmentView, ProfileUpdateView
from schema.enums import ConsentMethod
from schema.receipts import ConsentReceipt
from schema.renders import renders


@strawberry.input(description="A new member's base fields, as the sign-up form collected them.")
class NewMemberInput:
    first_name: str
    last_name: str
    email: str = strawberry.field(description="Unique among members (case-insensitive).")
    phone: str | None = strawberry.field(default=None, description="E.164, e.g. +4791234567.")
    street: str | None = None
    postal_code: str | None = strawberry.field(
        default=None, description="In the shape the country uses (0150 in NO, 114 55 in SE)."
    )
    city: str | None = None
    country: str | None = strawberry.field(default=None, description="ISO 3166-1 alpha-2.")

    def fields(self) -> dict[ProfileField, str | None]:
        return {
            ProfileField.FIRST_NAME: self.first_name,
            ProfileField.LAST_NAME: self.last_name,
            ProfileField.EMAIL: self.email,
            ProfileField.PHONE: self.phone,
            ProfileField.STREET: self.street,
            ProfileField.POSTAL_CODE: self.postal_code,
            ProfileField.CITY: self.city,
            ProfileField.COUNTRY: self.country,
        }


@strawberry.input(
    description="A consent chosen in the sign-up form: the purpose's `signUpWording` was shown."
)
class SignUpConsentInput:
    purpose: str
    method: ConsentMethod = strawberry.field(
        description="CONDITIONAL only where the purpose's `conditionalAtSignUp` is true."
    )
    notice_version: str
    evidence: str | None = strawberry.field(
        default=None, description="The wording shown, exactly (the nb or the en text)."
    )
    evidence_sha256: str | None = strawberry.field(default=None, description="Or its SHA-256, hex.")

    def to_request(self) -> SignUpConsent:
        return SignUpConsent(
            purpose=self.purpose,
            method=self.method,
            notice_version=self.notice_version,
            evidence=self.evidence,
            evidence_sha256=self.evidence_sha256,
        )


@strawberry.input(
    description="The fields to change; leave a field out to keep it, send null to remove an "
    "optional one (phone, street, postalCode, city, country)."
)
class ProfileChangesInput:
    first_name: str | None = strawberry.UNSET
    last_name: str | None = strawberry.UNSET
    email: str | None = strawberry.UNSET
    phone: str | None = strawberry.UNSET
    street: str | None = strawberry.UNSET
    postal_code: str | None = strawberry.UNSET
    city: str | None = strawberry.UNSET
    country: str | None = strawberry.UNSET

    def changes(self) -> dict[ProfileField, str | None]:
        given = {
            ProfileField.FIRST_NAME: self.first_name,
            ProfileField.LAST_NAME: self.last_name,
            ProfileField.EMAIL: self.email,
            ProfileField.PHONE: self.phone,
            ProfileField.STREET: self.street,
            ProfileField.POSTAL_CODE: self.postal_code,
            ProfileField.CITY: self.city,
            ProfileField.COUNTRY: self.country,
        }
        return {field: value for field, value in given.items() if value is not strawberry.UNSET}


@renders(EnrollmentView)
@strawberry.type(description="The new member, and a receipt for each consent given at sign-up.")
class EnrollmentResult:
    member_id: strawberry.ID
    member_since: dt.date
    terms_version: str = strawberry.field(description="The membership terms accepted.")
    receipts: list[ConsentReceipt] = strawberry.field(graphql_type=list[ConsentReceipt])
    replayed: bool = strawberry.field(
        description="True when an idempotency key returned an earlier sign-up's answer."
    )


@renders(ProfileUpdateView)
@strawberry.type(description="What a profile change changed (the values are in `me`'s history).")
class ProfileUpdateResult:
    member_id: strawberry.ID
    changed: list[str] = strawberry.field(description="Fields whose value changed.")
    unchanged: list[str] = strawberry.field(description="Fields given with the value they had.")


@renders(ClosingView)
@strawberry.type(description="The end of a membership.")
class MembershipClosing:
    member_id: strawberry.ID
    closed: bool = strawberry.field(description="False when it was closed already.")
    closed_at: dt.datetime
    withdrawn_purposes: list[str] = strawberry.field(description="Consents withdrawn by leaving.")
    purged_fields: list[str] = strawberry.field(description="Values from data brokers deleted.")
    message: str


@renders(LiftView)
@strawberry.type(description="The outcome of withdrawing an objection.")
class ObjectionWithdrawal:
    member_id: strawberry.ID
    purpose: str
    lifted: bool = strawberry.field(description="False when no objection was in force.")
    lifted_at: dt.datetime | None
    message: str


@strawberry.type(description="How many of one kind of record were deleted.")
class DeletedCount:
    what: str
    count: int


@renders(ErasureRecord)
@strawberry.type(
    description="Proof that Tillit forgot you (GDPR Art. 17), and what it keeps, why and how long."
)
class ErasureReceipt:
    receipt_id: strawberry.ID
    member_id: strawberry.ID = strawberry.field(
        description="The id your data had: nothing in Tillit links it to you any more."
    )
    erased_at: dt.datetime
    consent_events_kept: int = strawberry.field(
        description="Your consent history, kept (with no name or contact) to prove past consents "
        "(Art. 17(3)(e)), until evidenceKeptUntil."
    )
    evidence_kept_until: dt.datetime

    @strawberry.field(description="What was deleted, by kind.")
    def deleted(self, root: strawberry.Parent[ErasureRecord]) -> list[DeletedCount]:
        return [DeletedCount(what=k, count=v) for k, v in sorted(root.deleted.items())]

    @strawberry.field(description="What is kept, and why.")
    def kept(self) -> list[str]:
        return [
            "consent history: to prove the consents you gave and withdrew (GDPR Art. 7(1), "
            "17(3)(e)); deleted when evidenceKeptUntil passes",
            "access log: who used your data and why, for accountability (Art. 5(2), 17(3)(b)); "
            "it names no person, only the id above, and is deleted with the log's retention",
        ]


@renders(ProfileChangeRecord)
@strawberry.type(description="One change of your profile: before, after, by whom and when.")
class MyProfileChange:
    old_value: str | None
    new_value: str | None
    changed_at: dt.datetime

    @strawberry.field(description="The field (first_name, email, postal_code, ...).")
    def field(self, root: strawberry.Parent[ProfileChangeRecord]) -> str:
        return root.field.value

    @strawberry.field(description="`you`, or the app that changed it.")
    def by(self, root: strawberry.Parent[ProfileChangeRecord]) -> str:
        return "you" if root.client_name is None else root.client_name
