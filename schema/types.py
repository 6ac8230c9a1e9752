"""GraphQL object types: purposes and members."""

from __future__ import annotations

import datetime as dt
import enum

import strawberry

from gateway import domain
from gateway.domain import Category
from gateway.records.members import Correction
from resolvers.members import AddressView, ConsentStatusView
from schema.categories import categorized, gated, ungated
from schema.enums import ConsentMethod, DataCategory, LegalBasis, MembershipStatus, Tier
from schema.renders import renders


@strawberry.type(description="A text in Norwegian (bokmål) and English.")
class LocalizedText:
    nb: str
    en: str


@renders(domain.Purpose)
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

    @strawberry.field(
        description="The exact wording a sign-up form shows for this consent (null: not "
        "offered at sign-up). enrollMember takes it, or its SHA-256, as the consent's evidence."
    )
    def sign_up_wording(self, root: strawberry.Parent[domain.Purpose]) -> LocalizedText | None:
        wording = root.sign_up_wording
        return LocalizedText(nb=wording.nb, en=wording.en) if wording else None

    @strawberry.field(
        description="True: at sign-up this consent may be part of the membership terms "
        "(CONDITIONAL). False: it is its own choice (EXPLICIT)."
    )
    def conditional_at_sign_up(self, root: strawberry.Parent[domain.Purpose]) -> bool:
        return root.conditional_at_sign_up


@renders(Correction)
@strawberry.type(
    description="A change cleansing made to the address, from a public register "
    "(legitimate interest; the member is told)."
)
class AddressCorrection:
    field: str = strawberry.field(description="`street`, `postal_code`, `city` or `country`.")
    source: str = strawberry.field(description="Where the correction came from.")
    recorded_at: dt.datetime

    @strawberry.field(description="The value before the correction.")
    def old_value(self, root: strawberry.Parent[Correction]) -> str | None:
        return None if root.old_value is None else str(root.old_value)

    @strawberry.field(description="The value after the correction.")
    def new_value(self, root: strawberry.Parent[Correction]) -> str | None:
        return None if root.new_value is None else str(root.new_value)


@renders(AddressView)
@strawberry.type(description="A postal address.")
class Address:
    street: str | None
    postal_code: str | None
    city: str | None
    country: str | None = strawberry.field(description="ISO 3166-1 alpha-2 code.")
    corrections: list[AddressCorrection] = strawberry.field(
        description="What cleansing changed in this address, newest first."
    )


@strawberry.enum(description="Where a member stands with a consent purpose.")
class ConsentStanding(enum.Enum):
    NOT_GIVEN = "NOT_GIVEN"
    GRANTED = "GRANTED"
    WITHDRAWN = "WITHDRAWN"
    EXPIRED = "EXPIRED"


@renders(ConsentStatusView)
@strawberry.type(description="A member's current consent for one consent purpose.")
class ConsentStatus:
    purpose: str = strawberry.field(description="The purpose's key.")
    method: ConsentMethod | None = strawberry.field(description="How the consent was given.")
    notice_version: str | None = strawberry.field(
        description="The privacy-notice version the member consented on."
    )
    changed_at: dt.datetime | None = strawberry.field(description="When the state last changed.")
    expires_at: dt.datetime | None = strawberry.field(description="When a grant lapses.")
    required_method: ConsentMethod = strawberry.field(
        description="The weakest method the purpose accepts."
    )
    current_notice_version: str = strawberry.field(
        description="The purpose's privacy-notice version now."
    )
    receipt_id: strawberry.ID | None = strawberry.field(
        description="The receipt of the grant in force, if any."
    )

    @strawberry.field(description="GRANTED, WITHDRAWN, EXPIRED or NOT_GIVEN.")
    def state(self, root: strawberry.Parent[ConsentStatusView]) -> ConsentStanding:
        return ConsentStanding(root.state)

    @strawberry.field(
        description="Whether this consent lets the purpose use the member's data now."
    )
    def valid(self, root: strawberry.Parent[ConsentStatusView]) -> bool:
        return root.problem is None

    @strawberry.field(
        description="Why not, as an error code (e.g. NOTICE_OUTDATED): ask the member again."
    )
    def problem(self, root: strawberry.Parent[ConsentStatusView]) -> str | None:
        return None if root.problem is None else str(root.problem.value)


@categorized
@strawberry.type(
    description="A member's profile as released under the declared purpose. Every field but `id` "
    "and `purpose` is gated: a withheld field is null and adds an error whose `extensions.code` "
    "says why."
)
class Member:
    id: strawberry.ID = ungated("The member's id.")
    purpose: str = ungated(
        "The purpose this view of the member was released under. With `id` it is the view's "
        "identity: a client cache must key Member objects by both (Apollo Client: "
        '`typePolicies: { Member: { keyFields: ["id", "purpose"] } }`), or a value released '
        "under one purpose would be shown under another."
    )
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
    # consent standing, so that an app can decide to ask
    consents: list[ConsentStatus] | None = gated(
        Category.MEMBERSHIP,
        "The member's standing with every consent purpose, so an app can decide to ask.",
    )
