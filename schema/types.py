"""GraphQL object types: purposes and members."""

from __future__ import annotations

import datetime as dt

import strawberry

from gateway import domain
from gateway.domain import Category
from schema.categories import categorized, gated, ungated
from schema.enums import ConsentMethod, DataCategory, LegalBasis, MembershipStatus, Tier


@strawberry.type(description="A text in Norwegian (bokmål) and English.")
class LocalizedText:
    nb: str
    en: str


@strawberry.type(description="A registered purpose member data may be used for.")
class Purpose:
    key: str = strawberry.field(description="Stable identifier, e.g. `personalized_offers`.")
    legal_basis: LegalBasis
    title: LocalizedText
    description: LocalizedText = strawberry.field(
        description="What the purpose means for the member, in plain language."
    )
    notice_version: str = strawberry.field(
        description="The privacy-notice version that describes this purpose now."
    )

    @strawberry.field(description="The data categories this purpose may use.")
    def categories(self, root: strawberry.Parent[domain.Purpose]) -> list[DataCategory]:
        return sorted(root.categories, key=list(domain.Category).index)

    @strawberry.field(description="Notice versions whose consents this purpose still accepts.")
    def accepted_notice_versions(self, root: strawberry.Parent[domain.Purpose]) -> list[str]:
        return sorted(root.accepted_notice_versions)

    @strawberry.field(description="For CONSENT purposes, the weakest consent method accepted.")
    def required_consent_method(
        self, root: strawberry.Parent[domain.Purpose]
    ) -> ConsentMethod | None:
        return root.required_consent_method

    @strawberry.field(description="For CONSENT purposes, how many days a consent lasts.")
    def consent_lifetime_days(self, root: strawberry.Parent[domain.Purpose]) -> int | None:
        return root.consent_lifetime.days if root.consent_lifetime else None


@strawberry.type(description="A postal address.")
class Address:
    street: str | None
    postal_code: str | None
    city: str | None
    country: str | None = strawberry.field(description="ISO 3166-1 alpha-2 code.")


@categorized
@strawberry.type(
    description="A member's profile as released under the declared purpose. Every field but `id` "
    "is gated: a withheld field is null and adds an error whose `extensions.code` says why."
)
class Member:
    id: strawberry.ID = ungated("The member's id.")
    # contact
    first_name: str | None = gated(Category.CONTACT, "Given name.")
    last_name: str | None = gated(Category.CONTACT, "Family name.")
    email: str | None = gated(Category.CONTACT, "E-mail address.")
    phone: str | None = gated(Category.CONTACT, "Phone number (E.164).")
    # address
    address: Address | None = gated(Category.ADDRESS, "Postal address.")
    # membership
    tier: Tier | None = gated(Category.MEMBERSHIP, "Membership tier.")
    points: int | None = gated(Category.MEMBERSHIP, "Loyalty points balance.")
    member_since: dt.date | None = gated(Category.MEMBERSHIP, "Date of joining.")
    membership_status: MembershipStatus | None = gated(Category.MEMBERSHIP, "Membership state.")
    # status
    deceased: bool | None = gated(Category.STATUS, "Registered as deceased (from cleansing).")
    # enriched: third-party data, released only on a valid consent
    income_band: str | None = gated(
        Category.ENRICHED_DEMOGRAPHICS, "Household income band, from a data broker."
    )
    household_size: int | None = gated(
        Category.ENRICHED_DEMOGRAPHICS, "Number of people in the household, from a data broker."
    )
    lifestyle_segment: str | None = gated(
        Category.ENRICHED_LIFESTYLE, "Lifestyle segment, from a data broker."
    )
    interests: list[str] | None = gated(
        Category.ENRICHED_LIFESTYLE, "Interests, from a data broker."
    )
