"""The vocabulary of the domain: legal bases, consent methods, data categories, roles and codes;
who is calling (the principals); and what the access decision reads about a member.

Plain enums and value types shared by the policy file, the database constraints, the access
decision and the GraphQL schema, so that every layer spells a value the same way. Nothing here
connects to anything, so the decision (gateway.access.policy) can import it and stay pure.
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field


class LegalBasis(enum.StrEnum):
    """GDPR Art. 6(1) grounds a purpose may rest on."""

    CONSENT = "CONSENT"
    CONTRACT = "CONTRACT"
    LEGITIMATE_INTEREST = "LEGITIMATE_INTEREST"
    LEGAL_OBLIGATION = "LEGAL_OBLIGATION"


class ConsentMethod(enum.StrEnum):
    """How a consent was captured; EXPLICIT is stronger than CONDITIONAL."""

    EXPLICIT = "EXPLICIT"
    CONDITIONAL = "CONDITIONAL"

    @property
    def strength(self) -> int:
        return _METHOD_STRENGTH[self]

    def satisfies(self, required: ConsentMethod) -> bool:
        """True when a consent captured this way is at least as strong as `required`."""
        return self.strength >= required.strength


_METHOD_STRENGTH = {ConsentMethod.CONDITIONAL: 1, ConsentMethod.EXPLICIT: 2}


class Category(enum.StrEnum):
    """The data category of a member field. Every member field belongs to exactly one."""

    CONTACT = "contact"
    MEMBERSHIP = "membership"
    ADDRESS = "address"
    STATUS = "status"
    ENRICHED_DEMOGRAPHICS = "enriched.demographics"
    ENRICHED_LIFESTYLE = "enriched.lifestyle"

    @property
    def is_enriched(self) -> bool:
        return self.value.startswith("enriched.")


class Role(enum.StrEnum):
    """What kind of API client a caller is."""

    APP = "app"
    AUDITOR = "auditor"
    ADMIN = "admin"


class Capability(enum.StrEnum):
    """Writes an app client may perform beyond reading, granted one by one."""

    CAPTURE_CONSENT = "capture_consent"
    ENRICH = "enrich"
    CLEANSE = "cleanse"
    ENROLL = "enroll"
    UPDATE_PROFILE = "update_profile"
    CLOSE_MEMBERSHIP = "close_membership"
    # Select and export the members a purpose may reach (audience pages, exports, syncs).
    AUDIENCE = "audience"


class ConsentEventKind(enum.StrEnum):
    GRANTED = "GRANTED"
    WITHDRAWN = "WITHDRAWN"
    EXPIRED = "EXPIRED"


class MembershipStatus(enum.StrEnum):
    ACTIVE = "ACTIVE"
    CLOSED = "CLOSED"


class ProfileField(enum.StrEnum):
    """Base fields a member (or an app, under a purpose that covers them) may change."""

    FIRST_NAME = "first_name"
    LAST_NAME = "last_name"
    EMAIL = "email"
    PHONE = "phone"
    STREET = "street"
    POSTAL_CODE = "postal_code"
    CITY = "city"
    COUNTRY = "country"

    @property
    def category(self) -> Category:
        return Category.ADDRESS if self in _ADDRESS_FIELDS else Category.CONTACT


class Tier(enum.StrEnum):
    BASIC = "BASIC"
    SILVER = "SILVER"
    GOLD = "GOLD"
    PLATINUM = "PLATINUM"


class ActorKind(enum.StrEnum):
    """Who performed an audited operation."""

    CLIENT = "CLIENT"
    MEMBER = "MEMBER"
    SYSTEM = "SYSTEM"
    ANONYMOUS = "ANONYMOUS"


class AccessOutcome(enum.StrEnum):
    """The outcome of one access event, as auditors filter it."""

    RELEASED = "RELEASED"
    PARTIAL = "PARTIAL"
    DENIED = "DENIED"
    NOT_FOUND = "NOT_FOUND"
    WRITTEN = "WRITTEN"
    UNCHANGED = "UNCHANGED"


class EnrichedField(enum.StrEnum):
    """Member fields whose values come from third parties (enrichment records)."""

    INCOME_BAND = "income_band"
    HOUSEHOLD_SIZE = "household_size"
    LIFESTYLE_SEGMENT = "lifestyle_segment"
    INTERESTS = "interests"

    @property
    def category(self) -> Category:
        return _ENRICHED_CATEGORY[self]


_ENRICHED_CATEGORY = {
    EnrichedField.INCOME_BAND: Category.ENRICHED_DEMOGRAPHICS,
    EnrichedField.HOUSEHOLD_SIZE: Category.ENRICHED_DEMOGRAPHICS,
    EnrichedField.LIFESTYLE_SEGMENT: Category.ENRICHED_LIFESTYLE,
    EnrichedField.INTERESTS: Category.ENRICHED_LIFESTYLE,
}


_ADDRESS_FIELDS = frozenset(
    {ProfileField.STREET, ProfileField.POSTAL_CODE, ProfileField.CITY, ProfileField.COUNTRY}
)


class CleansableField(enum.StrEnum):
    """Existing member fields that cleansing against a public register may correct."""

    STREET = "street"
    POSTAL_CODE = "postal_code"
    CITY = "city"
    COUNTRY = "country"
    DECEASED = "deceased"


class ErrorCode(enum.StrEnum):
    """`extensions.code` of every error Tillit returns on purpose."""

    UNAUTHENTICATED = "UNAUTHENTICATED"
    FORBIDDEN = "FORBIDDEN"
    UNKNOWN_PURPOSE = "UNKNOWN_PURPOSE"
    PURPOSE_NOT_PERMITTED = "PURPOSE_NOT_PERMITTED"
    CATEGORY_NOT_IN_PURPOSE = "CATEGORY_NOT_IN_PURPOSE"
    CONSENT_REQUIRED = "CONSENT_REQUIRED"
    CONSENT_WITHDRAWN = "CONSENT_WITHDRAWN"
    CONSENT_EXPIRED = "CONSENT_EXPIRED"
    CONSENT_METHOD_INSUFFICIENT = "CONSENT_METHOD_INSUFFICIENT"
    NOTICE_OUTDATED = "NOTICE_OUTDATED"
    OBJECTED = "OBJECTED"
    OBJECTION_NOT_APPLICABLE = "OBJECTION_NOT_APPLICABLE"
    MEMBERSHIP_INACTIVE = "MEMBERSHIP_INACTIVE"
    ALREADY_MEMBER = "ALREADY_MEMBER"
    CONFIRMATION_REQUIRED = "CONFIRMATION_REQUIRED"
    NOT_FOUND = "NOT_FOUND"
    BAD_USER_INPUT = "BAD_USER_INPUT"
    BAD_REQUEST = "BAD_REQUEST"
    GRAPHQL_PARSE_FAILED = "GRAPHQL_PARSE_FAILED"
    GRAPHQL_VALIDATION_FAILED = "GRAPHQL_VALIDATION_FAILED"
    OPERATION_LIMIT_EXCEEDED = "OPERATION_LIMIT_EXCEEDED"
    IDEMPOTENCY_KEY_REUSED = "IDEMPOTENCY_KEY_REUSED"
    RATE_LIMITED = "RATE_LIMITED"
    CONFLICT = "CONFLICT"
    AUDIT_UNAVAILABLE = "AUDIT_UNAVAILABLE"
    INTERNAL_SERVER_ERROR = "INTERNAL_SERVER_ERROR"


@dataclass(frozen=True, slots=True)
class LocalizedText:
    nb: str
    en: str


@dataclass(frozen=True, slots=True)
class Purpose:
    """A registered purpose, as the policy defines it."""

    key: str
    legal_basis: LegalBasis
    categories: frozenset[Category]
    title: LocalizedText
    description: LocalizedText
    notice_version: str
    accepted_notice_versions: frozenset[str] = field(default_factory=frozenset)
    required_consent_method: ConsentMethod | None = None
    consent_lifetime: dt.timedelta | None = None
    retired: bool = False
    # What the sign-up form shows for this consent (CONSENT purposes offered at sign-up), and
    # whether it may be tied to joining (CONDITIONAL) rather than a choice of its own.
    sign_up_wording: LocalizedText | None = None
    conditional_at_sign_up: bool = False


def consent_state_at(
    kind: ConsentEventKind, expires_at: dt.datetime | None, now: dt.datetime
) -> ConsentEventKind:
    """Where a consent whose newest event is `kind` stands at `now`: a grant past its expiry is
    EXPIRED from that instant, whether or not the history says so yet (the purge job appends the
    EXPIRED event later)."""
    if kind is ConsentEventKind.GRANTED and expires_at is not None and expires_at <= now:
        return ConsentEventKind.EXPIRED
    return kind


# -- Who is calling ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Anonymous:
    """No credentials were presented."""


@dataclass(frozen=True, slots=True)
class ClientPrincipal:
    id: uuid.UUID
    name: str
    role: Role
    purposes: frozenset[str]
    capabilities: frozenset[Capability]


@dataclass(frozen=True, slots=True)
class MemberPrincipal:
    member_id: uuid.UUID


@dataclass(frozen=True, slots=True)
class SystemPrincipal:
    """Tillit itself, acting from the command line or a scheduled job (never over HTTP)."""

    job: str


Principal = Anonymous | ClientPrincipal | MemberPrincipal | SystemPrincipal


# -- What the decision reads about a member ------------------------------------------------------


# Not frozen: made per member by a profile read (see MemberRecord in gateway.records.members).
@dataclass(slots=True)
class ConsentState:
    """The newest consent event of one member for one purpose, and the grant it concerns."""

    kind: ConsentEventKind
    grant_id: uuid.UUID | None
    method: ConsentMethod | None
    notice_version: str | None
    expires_at: dt.datetime | None
    changed_at: dt.datetime | None = None

    def state_at(self, now: dt.datetime) -> ConsentEventKind:
        return consent_state_at(self.kind, self.expires_at, now)


# Not frozen: made per member by a profile read (see MemberRecord in gateway.records.members).
@dataclass(slots=True)
class MemberState:
    """What the decision needs to know about one member."""

    membership_active: bool
    consents: Mapping[str, ConsentState] = field(default_factory=dict)
    objections: frozenset[str] = frozenset()
